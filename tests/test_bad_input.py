"""Bad input at the command line: every case is one line on stderr naming the culprit, the right exit
code (2: bad input; 1: a bug), and nothing left behind (no output, no temporary files).

The table is the issue's campaign of bad inputs, each turned into a case."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from pathlib import Path

import jax
import pytest

from weightspace.cli import main
from weightspace.nets import MLP
from weightspace.zoo import Zoo, save_zoo

ARCH = MLP(in_features=6, hidden=(8,), out_features=3)
PROBES = ["--probes", "uniform", "--shape", "6", "--n", "8", "--no-progress"]


def _zoo(n: int = 4, *, classes: list[str] | None = None, name: str = "tiny", scale: float = 1.0) -> Zoo:
    z = Zoo.init(ARCH, n, key=jax.random.key(0), name=name, scale=scale)
    meta = dict(z.meta)
    meta["classes"] = [list(classes or ["a", "b", "c"]) for _ in range(n)]
    return Zoo(z.arch, z.params, meta, name)


def _rewrite_header(src: Path, dst: Path, **changes: str | None) -> Path:
    """Copy a safetensors file with some of its ``__metadata__`` entries replaced (None: removed)."""
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.get("__metadata__", {})
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    header["__metadata__"] = meta
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    dst.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    return dst


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("base")
    zoo_file = save_zoo(_zoo(), root / "zoo.safetensors")
    assert main(["search", "index", str(zoo_file), *PROBES, "--out", str(root / "gallery")]) == 0
    return {"root": root, "zoo": zoo_file, "gallery": root / "gallery"}


def _wide(base: dict[str, Path], tmp: Path) -> Path:
    """The base zoo file with 4 class names for its 3 outputs (written past Zoo's own check)."""
    raw = base["zoo"].read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    cols = json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["meta"])
    cols["classes"] = [["a", "b", "c", "d"] for _ in cols["id"]]
    return _rewrite_header(base["zoo"], tmp / "wide.safetensors", name="wide", meta=json.dumps(cols))


def _copy_gallery(base: dict[str, Path], dst: Path, edit: Callable[[dict], None]) -> Path:
    import shutil

    shutil.copytree(base["gallery"], dst)
    m = json.loads((dst / "gallery.json").read_text())
    edit(m)
    (dst / "gallery.json").write_text(json.dumps(m))
    return dst


def _setup(case: str, base: dict[str, Path], tmp: Path) -> list[str]:
    """The argv of a case (creating its bad files under ``tmp``)."""
    zoo = str(base["zoo"])
    gallery = str(base["gallery"])
    out = str(tmp / "out")
    if case == "out-under-a-file":
        (tmp / "file.txt").write_text("x")
        return ["search", "index", zoo, *PROBES, "--out", str(tmp / "file.txt" / "g")]
    if case == "index-out-is-a-file":
        (tmp / "out").write_text("x")
        return ["search", "index", zoo, *PROBES, "--out", out]
    if case == "index-out-holds-a-model":
        (tmp / "out").mkdir()
        save_zoo(_zoo(), tmp / "out" / "other.safetensors")
        return ["search", "index", zoo, *PROBES, "--out", out]
    if case == "packed-arch-not-json":
        return ["zoo", "info", str(_rewrite_header(base["zoo"], tmp / "z.safetensors", arch="{not json"))]
    if case == "packed-arch-a-list":
        return [
            "search",
            "index",
            str(_rewrite_header(base["zoo"], tmp / "z.safetensors", arch="[1, 2]")),
            *PROBES,
            "--out",
            out,
        ]
    if case == "packed-meta-not-json":
        return [
            "search",
            "index",
            str(_rewrite_header(base["zoo"], tmp / "z.safetensors", meta="{oops")),
            *PROBES,
            "--out",
            out,
        ]
    if case == "packed-meta-a-list":
        return ["zoo", "info", str(_rewrite_header(base["zoo"], tmp / "z.safetensors", meta="[1]"))]
    if case == "gallery-manifest-missing-key":
        g = _copy_gallery(base, tmp / "g", lambda m: m.pop("dtype"))
        return ["search", "query", str(g), "--logit", "tiny-000001:0"]
    if case == "gallery-manifest-wrong-type":
        g = _copy_gallery(base, tmp / "g", lambda m: m.__setitem__("zoos", "nope"))
        return ["search", "query", str(g), "--logit", "tiny-000001:0"]
    if case == "zoo-dir-without-ids":
        d = tmp / "zd"
        save_zoo(_zoo(), d, format="directory")
        m = json.loads((d / "zoo.json").read_text())
        m.pop("ids")
        (d / "zoo.json").write_text(json.dumps(m))
        return ["search", "index", str(d), *PROBES, "--out", out]
    if case == "rank-limit-negative":
        return ["selection", "rank", "--models", zoo, "--task", "digits", "--limit", "-1"]
    if case == "build-seed-negative":
        return ["zoo", "build", "digits-hub", "--seed", "-1"]
    if case == "probegen-n-probes-0":
        return ["probegen", "train", zoo, "--task", "rank", "--n-probes", "0", "--out", out]
    if case == "probegen-steps-0":
        return ["probegen", "train", zoo, "--task", "rank", "--steps", "0", "--out", out]
    if case == "probegen-run-broken-config":
        run = tmp / "run"
        (run / "model").mkdir(parents=True)
        (run / "model" / "config.json").write_text("{broken")
        return ["probegen", "predict", str(run), zoo, "--out", str(tmp / "pred.json")]
    if case in ("models-per-shard-negative", "models-per-shard-0"):
        return [
            "search",
            "index",
            zoo,
            *PROBES,
            "--out",
            out,
            "--models-per-shard",
            "-2" if "negative" in case else "0",
        ]
    if case == "probe-inf-responses":
        inf = save_zoo(_zoo(scale=1e38, name="inf"), tmp / "inf.safetensors")  # overflows to Inf in the forward pass
        return ["probe", "run", str(inf), *PROBES, "--out", str(tmp / "r.npy")]
    if case == "index-inf-responses":
        inf = save_zoo(_zoo(scale=1e38, name="inf"), tmp / "inf.safetensors")
        return ["search", "index", str(inf), *PROBES, "--out", out]
    if case == "classes-longer-than-outputs-search":
        bad = _wide(base, tmp)
        return ["search", "query", gallery, "--model", str(bad)]
    if case == "classes-longer-than-outputs-info":
        bad = _wide(base, tmp)
        return ["zoo", "info", str(bad)]
    if case == "classes-longer-than-outputs-index":
        bad = _wide(base, tmp)
        return ["search", "index", str(bad), *PROBES, "--out", out]
    if case in ("top-0", "top-negative"):
        return ["search", "query", gallery, "--logit", "tiny-000001:0", "--top", "0" if case == "top-0" else "-3"]
    if case == "k-above-probes":
        return ["search", "query", gallery, "--logit", "tiny-000001:0", "--k", "100000"]
    if case == "probes-do-not-fit":
        return ["probe", "run", zoo, "--probes", "uniform", "--shape", "10x10", "--n", "4", "--out", str(tmp / "r.npy")]
    if case == "same-zoo-twice":
        return ["search", "index", zoo, zoo, *PROBES, "--out", out]
    raise AssertionError(case)


# (case, exit code, what the one line must name)
CASES = [
    ("out-under-a-file", 2, r"file\.txt"),
    ("index-out-is-a-file", 2, r"out.*(not a directory|is a file)"),
    ("index-out-holds-a-model", 2, r"out.*not a gallery"),
    ("packed-arch-not-json", 2, r"z\.safetensors.*arch"),
    ("packed-arch-a-list", 2, r"z\.safetensors.*arch"),
    ("packed-meta-not-json", 2, r"z\.safetensors.*meta"),
    ("packed-meta-a-list", 2, r"z\.safetensors.*meta"),
    ("gallery-manifest-missing-key", 2, r"gallery\.json.*dtype"),
    ("gallery-manifest-wrong-type", 2, r"gallery\.json.*zoos"),
    ("zoo-dir-without-ids", 2, r"zoo\.json.*ids"),
    ("rank-limit-negative", 2, r"--limit"),
    ("build-seed-negative", 2, r"--seed"),
    ("probegen-n-probes-0", 2, r"--n-probes"),
    ("probegen-steps-0", 2, r"--steps"),
    ("probegen-run-broken-config", 2, r"run"),
    ("models-per-shard-negative", 2, r"--models-per-shard"),
    ("models-per-shard-0", 2, r"--models-per-shard"),
    ("probe-inf-responses", 2, r"inf.*NaN/Inf"),
    ("index-inf-responses", 2, r"inf.*NaN/Inf"),
    ("classes-longer-than-outputs-search", 2, r"wide\.safetensors.*4 class names for 3 outputs"),
    ("classes-longer-than-outputs-info", 2, r"wide\.safetensors.*4 class names for 3 outputs"),
    ("classes-longer-than-outputs-index", 2, r"wide\.safetensors.*4 class names for 3 outputs"),
    ("top-0", 2, r"--top"),
    ("top-negative", 2, r"--top"),
    ("k-above-probes", 2, r"k .*between 1 and .*8 probes"),
    ("probes-do-not-fit", 2, r"tiny.*probes of shape \(10, 10\).*\(6,\)"),
    ("same-zoo-twice", 2, r"'tiny' and 'tiny#1' are the same models"),
]


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(("case", "code", "names"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_leaves_nothing(case, code, names, base, tmp_path, capsys):
    argv = _setup(case, base, tmp_path)
    before, base_before = _listing(tmp_path), _listing(base["root"])
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    err = [e for e in err if not e.startswith("weightspace: note:")]
    assert len(err) == 1, err
    assert err[0].startswith(("weightspace: error:", "usage:")) or "error:" in err[0], err
    assert "Traceback" not in err[0] and re.search(names, err[0]), err[0]
    assert _listing(tmp_path) == before, "the failed command left files behind"
    assert _listing(base["root"]) == base_before


def test_internal_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys, base):
    import weightspace.zoo._cli as zcli

    def boom(args):
        raise RuntimeError("something the library did not expect")

    monkeypatch.setattr(zcli, "_info", boom)  # the parser is built per call: the command now fails
    assert main(["zoo", "info", str(base["zoo"])]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error: RuntimeError" in err[0] and "--debug" in err[0], err
    with pytest.raises(RuntimeError, match="did not expect"):
        main(["zoo", "info", str(base["zoo"]), "--debug"])

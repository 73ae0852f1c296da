"""kill -9 during `zoo build`: the same command afterwards gives the uninterrupted result, trains
no finished chunk again, and leaves no stray files; an `--out` killed while it is written keeps the
previous build whole.

Each run is a subprocess that registers a small recipe (two families trained with fit_population,
two chunks each) and kills itself with SIGKILL at a chosen point, as `kill -9` would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from weightspace.zoo import load_collection

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    import jax, jax.numpy as jnp, numpy as np
    from weightspace.train import fit_population
    from weightspace.zoo import Collection, Zoo, register_recipe
    import weightspace.zoo._recipes as recipes
    from weightspace.nets import MLP
    from weightspace.cli import main

    KILL = os.environ.get("KILL_AT", "")
    LOG = os.environ["RUN_LOG"]

    def loss(p, batch, key):
        h = jnp.tanh(batch["x"] @ p["layers.0.weight"].T + p["layers.0.bias"])
        out = h @ p["layers.1.weight"].T + p["layers.1.bias"]
        return jnp.mean((out[:, 0] - batch["y"]) ** 2)

    def build(size, seed, progress):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(64, 3)).astype(np.float32)
        data = {"x": x, "y": np.sin(x.sum(1)).astype(np.float32)}
        arch = MLP(in_features=3, hidden=(4,), out_features=1)
        coll = Collection()
        for fam in range(2):
            params = jax.vmap(lambda k: arch.init(k))(jax.random.split(jax.random.key(fam), size))

            def cb(p, fam=fam):
                with open(LOG, "a") as f:
                    f.write(json.dumps([fam, p.chunk, p.step]) + "\\n")
                if KILL == f"train:{fam}:{p.chunk}:{p.step}":
                    os.kill(os.getpid(), signal.SIGKILL)

            res = fit_population(loss, params, data, key=jax.random.key(7), steps=40, batch_size=16,
                                 model_chunk=(size + 1) // 2, segment_steps=10, callback=cb)
            meta = {"id": [f"f{fam}-{i}" for i in range(size)]}
            coll.add(Zoo(arch, {k: np.asarray(v) for k, v in res.params.items()}, meta, f"fam{fam}"))
        return coll

    register_recipe("toy-kill", build, description="kill test", default_size=4, tiny_size=4, returns="Collection")
    if KILL.startswith("save:"):  # die after the first part file of the output is written
        real = recipes._save_zoos
        def dying(result, directory):
            files = real(result, directory)
            if str(directory).find(KILL[5:]) >= 0 or KILL[5:] == "any":
                os.kill(os.getpid(), signal.SIGKILL)
            return files
        recipes._save_zoos = dying
    sys.exit(main(sys.argv[1:]))
    """
)


def _run(tmp: Path, *argv: str, kill: str = "", cache: str = "cache") -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        WEIGHTSPACE_CACHE=str(tmp / cache),
        KILL_AT=kill,
        RUN_LOG=str(tmp / "log.jsonl"),
        JAX_PLATFORMS="cpu",
    )
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )


def _log(tmp: Path) -> list[list[int]]:
    text = (tmp / "log.jsonl").read_text() if (tmp / "log.jsonl").exists() else ""
    (tmp / "log.jsonl").unlink(missing_ok=True)
    return [json.loads(line) for line in text.splitlines()]


def _params(path: Path) -> dict[str, np.ndarray]:
    return {f"{z.name}/{k}": np.asarray(v) for z in load_collection(path) for k, v in z.params.items()}


def _debris(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.startswith(".") and "jax" not in p.parts)


@pytest.mark.slow
def test_killed_build_resumes_and_leaves_nothing(tmp_path):
    # the uninterrupted reference, in its own cache
    ref = _run(tmp_path, "zoo", "build", "toy-kill", "--out", str(tmp_path / "ref"), cache="ref-cache")
    assert ref.returncode == 0, ref.stderr[-2000:]
    full_log = _log(tmp_path)
    assert len(full_log) == 2 * 2 * 4  # 2 families x 2 chunks x 4 segments

    out = tmp_path / "out"
    killed = _run(tmp_path, "zoo", "build", "toy-kill", "--out", str(out), kill="train:1:1:20")
    assert killed.returncode == -9
    first = _log(tmp_path)
    assert first[-1] == [1, 1, 20] and not out.exists()  # nothing half-written
    resumed = _run(tmp_path, "zoo", "build", "toy-kill", "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = _log(tmp_path)
    # family 0 and chunk 0 of family 1 were finished and are not trained again; the killed chunk
    # (checkpointed at most every 30 s and at its end) trains again from its start
    assert again == [[1, 1, 10], [1, 1, 20], [1, 1, 30], [1, 1, 40]], again
    for k, v in _params(tmp_path / "ref").items():
        np.testing.assert_array_equal(_params(out)[k], v, err_msg=k)
    assert _debris(tmp_path / "cache") == [] and _debris(tmp_path) == []

    # --out over an existing build, killed while the new one is written: the old one stays whole
    before = (out / "recipe.json").read_text()
    killed = _run(tmp_path, "zoo", "build", "toy-kill", "--size", "2", "--out", str(out), kill="save:.out.")
    assert killed.returncode == -9
    assert (out / "recipe.json").read_text() == before
    assert _params(out).keys() == _params(tmp_path / "ref").keys()
    assert _debris(tmp_path) != []  # the killed writer's temporary directory ...
    done = _run(tmp_path, "zoo", "build", "toy-kill", "--size", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "recipe.json").read_text())["size"] == 2
    assert _debris(tmp_path) == [] and _debris(tmp_path / "cache") == []  # ... is gone after the next run

"""weightspace.parallel: meshes, model-axis padding and sharding (8 fake CPU devices)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weightspace import ConfigError, InvalidValueError, ShapeError
from weightspace.parallel import (
    chunk_rows,
    chunk_size,
    initialize_distributed,
    make_mesh,
    map_chunks,
    model_axis_size,
    pad_models,
    shard_models,
)
from weightspace.testing import assert_no_recompile, assert_tree_allclose


def test_make_mesh() -> None:
    mesh = make_mesh()
    assert mesh.axis_names == ("models",) and mesh.size == jax.device_count() == 8
    sub = make_mesh("zoo", devices=jax.devices()[:3])
    assert sub.axis_names == ("zoo",) and sub.size == 3
    assert model_axis_size(sub, "zoo") == 3
    with pytest.raises(ConfigError, match="'models' axis"):
        model_axis_size(sub)
    with pytest.raises(ConfigError, match="no devices"):
        make_mesh(devices=[])
    with pytest.raises(ConfigError, match="axis"):
        make_mesh("")


@pytest.mark.parametrize("kind", ["numpy", "jax"], ids=["numpy", "jax"])
def test_pad_models_repeats_the_last_model(kind: str) -> None:
    w = np.arange(10.0, dtype=np.float32).reshape(5, 2)
    b = np.arange(5.0, dtype=np.float32)
    tree = {"w": w, "b": b} if kind == "numpy" else {"w": jnp.asarray(w), "b": jnp.asarray(b)}
    out = pad_models(tree, 4)
    # oracle: explicit list of rows, the last real row repeated
    rows = [min(i, 4) for i in range(8)]
    assert_tree_allclose({k: np.asarray(v) for k, v in out.items()}, {"w": w[rows], "b": b[rows]})
    assert type(out["w"]) is type(tree["w"])
    assert pad_models(tree, 5) is tree  # already a multiple: untouched
    with pytest.raises(InvalidValueError, match="multiple"):
        pad_models(tree, 0)
    with pytest.raises(ShapeError, match="model axis"):
        pad_models({"w": w, "b": b[:3]}, 2)
    with pytest.raises(ShapeError, match="no leaves"):
        pad_models({}, 2)


def test_shard_models_places_models_on_devices() -> None:
    mesh = make_mesh()
    w = np.random.default_rng(0).normal(size=(11, 3, 2)).astype(np.float32)
    out = shard_models({"w": w}, mesh)["w"]
    assert out.shape == (16, 3, 2)
    assert out.sharding.spec[0] == "models"
    shards = sorted(out.addressable_shards, key=lambda s: s.index[0].start)
    assert len({s.device for s in shards}) == 8 and all(s.data.shape == (2, 3, 2) for s in shards)
    assert_tree_allclose(np.asarray(out), w[[min(i, 10) for i in range(16)]])


def test_shard_models_on_a_2d_mesh_replicates_the_other_axis() -> None:
    mesh = jax.make_mesh((2, 4), ("data", "models"))
    out = shard_models({"w": np.ones((6, 5), np.float32)}, mesh)["w"]
    assert out.shape == (8, 5)
    assert {s.data.shape for s in out.addressable_shards} == {(2, 5)}


def test_initialize_distributed_validates_and_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidValueError, match="num_processes"):
        initialize_distributed("localhost:1234", num_processes=0, process_id=0)
    with pytest.raises(InvalidValueError, match="process_id"):
        initialize_distributed("localhost:1234", num_processes=2, process_id=2)
    calls: list[dict[str, object]] = []
    state = {"up": False}
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: state["up"])

    def fake_initialize(**kw: object) -> None:
        calls.append(kw)
        state["up"] = True

    monkeypatch.setattr(jax.distributed, "initialize", fake_initialize)
    assert initialize_distributed("host:1", num_processes=2, process_id=1, local_device_ids=[0]) is True
    assert calls == [{"coordinator_address": "host:1", "num_processes": 2, "process_id": 1, "local_device_ids": [0]}]
    assert initialize_distributed("host:1", num_processes=2, process_id=1) is False
    assert len(calls) == 1


def test_map_chunks_matches_one_call_and_the_last_chunk_does_not_recompile() -> None:
    """The one pad-and-chunk helper: same result as one call; every chunk (the padded last one too) has one shape."""
    f = jax.jit(lambda t: {"y": t["a"] * 2 + t["b"][:, :1]})
    rng = np.random.default_rng(0)
    tree = {"a": rng.normal(size=(10, 3)).astype(np.float32), "b": rng.normal(size=(10, 2)).astype(np.float32)}
    want = np.asarray(f(tree)["y"])
    got = map_chunks(lambda t: f(t)["y"], tree, chunk=4)  # chunks of 4: 4, 4, 2 real rows (the last padded)
    assert_tree_allclose(got, want)
    warm = {k: v[:4] for k, v in tree.items()}
    f(warm)
    with assert_no_recompile(f):
        map_chunks(lambda t: f(t)["y"], tree, chunk=4)
    assert chunk_rows(8, 4, 10).tolist() == [8, 9, 9, 9]
    assert chunk_size(3, 64) == 4 and chunk_size(1000, 64, multiple=8) == 64


def test_map_chunks_output_axis_and_placement() -> None:
    x = np.arange(12.0, dtype=np.float32).reshape(6, 2)
    placed = []
    out = map_chunks(lambda c: np.stack([c, -c]), x, chunk=4, out_axis=1, place=lambda c: placed.append(len(c)) or c)
    assert out.shape == (2, 6, 2) and placed == [4, 4]
    assert_tree_allclose(out[1], -x)
    with pytest.raises(InvalidValueError, match="chunk"):
        map_chunks(lambda c: c, x, chunk=0)

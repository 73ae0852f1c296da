"""weightspace.parallel: meshes, model-axis padding and sharding (8 fake CPU devices)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weightspace import ConfigError, InvalidValueError, ShapeError
from weightspace.parallel import initialize_distributed, make_mesh, model_axis_size, pad_models, shard_models
from weightspace.testing import assert_tree_allclose


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

"""Zoo, Collection and on-disk formats: round trips, lazy loading, validation, atomicity."""

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from weightspace import ConfigError, InvalidValueError, LoadError, ShapeError, WeightspaceError
from weightspace.nets import CNN, MLP, SIREN
from weightspace.zoo import (
    Collection,
    Zoo,
    concat,
    infer_architecture,
    load_collection,
    load_hub,
    load_model,
    load_tensors,
    load_zoo,
    read_header,
    save_model,
    save_zoo,
)

MLP_A = MLP(in_features=6, hidden=(5,), out_features=3)
CNN_A = CNN(image_shape=(8, 8, 1), channels=(4, 4), out_features=2)


def _zoo(arch=MLP_A, n=4, seed=0, name="z"):
    z = Zoo.init(arch, n, key=jax.random.key(seed), name=name)
    return z.with_meta(
        classes=[[f"c{j}" for j in range(arch.num_outputs)] for _ in range(n)],
        test_acc=[0.5 + 0.1 * i for i in range(n)],
    )


def _same(a: Zoo, b: Zoo) -> None:
    assert a.arch == b.arch and a.meta == b.meta
    for k in a.params:
        x, y = np.asarray(a.params[k]), np.asarray(b.params[k])
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()  # bit-exact


@pytest.mark.parametrize("fmt", ["packed", "directory"], ids=["packed", "directory"])
@pytest.mark.parametrize("arch", [MLP_A, CNN_A, SIREN(hidden=(8,))], ids=lambda a: type(a).__name__)
def test_round_trip_bit_exact(tmp_path, fmt, arch):
    z = _zoo(arch)
    path = save_zoo(z, tmp_path / ("z.safetensors" if fmt == "packed" else "zdir"), format=fmt)
    _same(z, load_zoo(path))
    assert not list(tmp_path.rglob("*.tmp"))


def test_zoo_views_and_concat():
    z = _zoo(n=5)
    assert len(z) == 5 and z.ids[2] == "z-000002" and z.classes(1) == ["c0", "c1", "c2"]
    sub = z.select([4, 1])
    assert sub.ids == ["z-000004", "z-000001"]
    np.testing.assert_array_equal(sub.params["layers.0.weight"][0], z.params["layers.0.weight"][4])
    assert z.select(np.arange(5) % 2 == 0).ids == ["z-000000", "z-000002", "z-000004"]
    both = concat([z.select(slice(0, 2)), _zoo(n=2, seed=1, name="y")])
    assert len(both) == 4 and both.ids[-1] == "y-000001"
    assert z.row(0)["test_acc"] == 0.5 and z.index_of("z-000003") == 3
    rows = list(z)
    assert rows[0][0] == "z-000000" and set(rows[0][1]) == set(MLP_A.param_shapes())


def test_determinism_same_seed_same_params():
    a, b = _zoo(seed=3), _zoo(seed=3)
    _same(a, b)
    assert not np.array_equal(a.params["layers.0.weight"], _zoo(seed=4).params["layers.0.weight"])
    # model i depends only on (key, i): a bigger zoo extends a smaller one
    np.testing.assert_array_equal(_zoo(n=6, seed=3).params["layers.0.weight"][:4], a.params["layers.0.weight"])


def test_collection_buckets_by_architecture(tmp_path):
    c = Collection([_zoo(MLP_A, 2, name="a"), _zoo(CNN_A, 3, name="b"), _zoo(MLP_A, 2, seed=5, name="c")])
    assert len(c) == 2 and c.num_models == 7
    zoo, i = c.find("c-000001")
    assert zoo.arch == MLP_A and i == 3
    mixed = tmp_path / "hub"
    for z in c:
        save_zoo(z, mixed, format="directory")
    (mixed / "zoo.json").unlink()  # a plain hub-like folder of mixed files
    loaded = load_collection(mixed)
    assert loaded.num_models == 7 and len(loaded) == 2
    with pytest.raises(ShapeError, match="different architectures"):
        load_zoo(mixed)
    with pytest.raises(InvalidValueError, match="already in the collection"):
        c.add(_zoo(MLP_A, 1, name="a"))


def test_lazy_tensor_loading(tmp_path):
    z = _zoo(n=6)
    save_zoo(z, tmp_path, format="directory")
    files = [tmp_path / f"{i}.safetensors" for i in z.ids]
    got = load_tensors(files, ["layers.1.bias"], workers=3)
    assert list(got) == ["layers.1.bias"]
    np.testing.assert_array_equal(got["layers.1.bias"], z.params["layers.1.bias"])


def test_hub_loader_offline_and_inference(tmp_path):
    arch = MLP(in_features=6, hidden=(7, 5), out_features=3)
    for i in range(3):  # plain torch-style state_dicts, no weightspace header
        p = {k: np.asarray(v) for k, v in arch.init(jax.random.key(i)).items()}
        (tmp_path / f"user{i}").mkdir()
        save_file(p, str(tmp_path / f"user{i}" / "model.safetensors"))
    coll = load_hub([str(tmp_path / f"user{i}") for i in range(3)])
    (zoo,) = coll.zoos
    assert zoo.arch == arch and zoo.ids == ["user0", "user1", "user2"]

    def fake_fetch(repo_id, filename, *, revision, cache_dir):
        return str(tmp_path / repo_id.split("/")[1] / filename)

    coll = load_hub(["someone/user1"], fetch=fake_fetch)
    assert coll.zoos[0].ids == ["someone--user1"]
    assert infer_architecture(CNN_A.param_shapes()).channels == (4, 4)


def test_read_header(tmp_path):
    z = _zoo()
    p = save_zoo(z, tmp_path / "z.safetensors")
    h = read_header(p)
    assert h["models"] == 4 and h["arch"]["type"] == "MLP" and "test_acc" in h["meta_columns"]


# ---- malformed input: every case gives a clear weightspace error and leaves no partial file ----
def _write_bad(tmp_path: Path, case: str) -> Path:
    z = _zoo()
    good = save_zoo(z, tmp_path / "good.safetensors")
    bad = tmp_path / f"{case}.safetensors"
    if case == "missing_file":
        return tmp_path / "nope.safetensors"
    if case == "not_safetensors":
        bad.write_text("this is a pickle, honest")
    elif case == "truncated":
        data = good.read_bytes()
        bad.write_bytes(data[: len(data) - 40])
    elif case == "empty_file":
        bad.write_bytes(b"")
    elif case == "nan_weights":
        p = {k: np.asarray(v).copy() for k, v in z.params.items()}
        p["layers.0.weight"][2, 0, 0] = np.nan
        save_zoo(Zoo(z.arch, p, z.meta, "z"), bad)
    elif case == "inf_weights":
        p = {k: np.asarray(v).copy() for k, v in z.params.items()}
        p["layers.1.bias"][1, 0] = np.inf
        save_zoo(Zoo(z.arch, p, z.meta, "z"), bad)
    elif case == "missing_tensor":
        p = {k: np.asarray(v) for k, v in z.params.items() if k != "layers.1.bias"}
        save_file(p, str(bad), metadata={"weightspace": "zoo/1", "arch": json.dumps(z.arch.to_config()), "meta": "{}"})
    elif case == "wrong_shape":
        p = {k: np.asarray(v) for k, v in z.params.items()}
        p["layers.0.weight"] = np.zeros((4, 5, 7), np.float32)
        save_file(p, str(bad), metadata={"weightspace": "zoo/1", "arch": json.dumps(z.arch.to_config()), "meta": "{}"})
    elif case == "int_dtype":
        p = {k: np.asarray(v).astype(np.int32) for k, v in z.params.items()}
        save_file(p, str(bad), metadata={"weightspace": "zoo/1", "arch": json.dumps(z.arch.to_config()), "meta": "{}"})
    elif case == "bad_meta_json":
        p = {k: np.asarray(v) for k, v in z.params.items()}
        save_file(
            p, str(bad), metadata={"weightspace": "zoo/1", "arch": json.dumps(z.arch.to_config()), "meta": "{oops"}
        )
    elif case == "unknown_arch":
        p = {k: np.asarray(v) for k, v in z.params.items()}
        save_file(p, str(bad), metadata={"weightspace": "zoo/1", "arch": '{"type": "Nope"}', "meta": "{}"})
    elif case == "empty_dir":
        bad = tmp_path / "emptydir"
        bad.mkdir()
    elif case == "dir_dtype_mismatch":
        bad = tmp_path / "mixdir"
        save_zoo(z, bad, format="directory")
        (bad / "zoo.json").unlink()
        p = {k: np.asarray(v[0]).astype(np.float64) for k, v in z.params.items()}
        save_model(bad / "zz.safetensors", z.arch, p)
    elif case == "dir_missing_model":
        bad = tmp_path / "holedir"
        save_zoo(z, bad, format="directory")
        (bad / f"{z.ids[1]}.safetensors").unlink()
    return bad


BAD_CASES = {
    "missing_file": (LoadError, "no such file"),
    "not_safetensors": (LoadError, "not a readable safetensors"),
    "truncated": (LoadError, "safetensors"),
    "empty_file": (LoadError, "safetensors"),
    "nan_weights": (InvalidValueError, r"'layers.0.weight' of model 'z-000002' \(1 NaN/Inf\)"),
    "inf_weights": (InvalidValueError, "'layers.1.bias' of model 'z-000001'"),
    "missing_tensor": (LoadError, r"missing tensors \['layers.1.bias'\]"),
    "wrong_shape": (ShapeError, "'layers.0.weight' has shape"),
    "int_dtype": (ShapeError, "dtype int32"),
    "bad_meta_json": (LoadError, "not valid JSON"),
    "unknown_arch": (ConfigError, "unknown architecture type 'Nope'"),
    "empty_dir": (LoadError, "empty zoo"),
    "dir_dtype_mismatch": (ShapeError, "dtype float64"),
    "dir_missing_model": (LoadError, "no such file"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES), ids=sorted(BAD_CASES))
def test_malformed_inputs_give_clear_errors(tmp_path, case):
    exc, match = BAD_CASES[case]
    bad = _write_bad(tmp_path, case)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(exc, match=match) as info:
        load_zoo(bad)
    assert isinstance(info.value, WeightspaceError)
    if case not in ("missing_file", "empty_dir") and bad.exists() and bad.is_file():
        assert str(bad.name) in str(info.value) or "model" in str(info.value)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written by a failed load


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    z = _zoo()
    target = save_zoo(z, tmp_path / "z.safetensors")
    original = target.read_bytes()
    import weightspace._safetensors as st

    class FullDisk:  # fails after the temporary file is opened, before any byte is written
        @staticmethod
        def pack(*args):
            raise OSError("disk full")

    monkeypatch.setattr(st, "struct", FullDisk)
    with pytest.raises(OSError, match="disk full"):
        save_zoo(_zoo(seed=9), target)
    assert target.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.safetensors"]


def test_empty_and_inconsistent_zoos():
    with pytest.raises(ShapeError, match="empty"):
        Zoo.stack(MLP_A, [])
    with pytest.raises(ShapeError, match="rows"):
        Zoo(MLP_A, _zoo().params, {"test_acc": [1.0]})
    with pytest.raises(InvalidValueError, match="unique"):
        Zoo(MLP_A, _zoo().params, {"id": ["a", "a", "b", "c"]})
    with pytest.raises(ShapeError, match="architectures differ"):
        concat([_zoo(), _zoo(CNN_A)])
    with pytest.raises(ConfigError, match="cannot be a file name"):
        save_zoo(_zoo().with_meta(id=["a/b", "c", "d", "e"]), "/tmp/never", format="directory")


def test_load_model_roundtrip(tmp_path):
    p = MLP_A.init(jax.random.key(0))
    save_model(tmp_path / "m.safetensors", MLP_A, p, {"classes": ["x", "y", "z"]})
    arch, params, meta = load_model(tmp_path / "m.safetensors")
    assert arch == MLP_A and meta == {"classes": ["x", "y", "z"], "id": "m"}
    assert all(np.array_equal(params[k], p[k]) for k in p)

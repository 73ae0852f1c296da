"""weightspace.learn datasets: split_models and WeightDataset (zoo and per-file construction)."""

import numpy as np
import pytest

from weightspace import ConfigError, InvalidValueError, ShapeError
from weightspace.learn import Splits, WeightDataset, split_models
from weightspace.nets import MLP
from weightspace.zoo import Zoo, save_zoo


def _check_partition(s: Splits, n: int) -> None:
    allidx = np.concatenate(list(s))
    assert np.array_equal(np.sort(allidx), np.arange(n))
    for part in s:
        assert part.dtype == np.int64
        assert np.array_equal(part, np.sort(part))


@pytest.mark.parametrize("n", [3, 10, 57, 1000], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("fractions", [(0.7, 0.15, 0.15), (0.5, 0.25, 0.25), (0.8, 0.1, 0.1)], ids=["70", "50", "80"])
def test_split_models_partition_and_sizes(n, fractions):
    s = split_models(n, fractions=fractions, seed=3)
    _check_partition(s, n)
    assert all(len(p) >= 1 for p in s)
    for frac, part in zip(fractions, s, strict=True):
        assert abs(len(part) - frac * n) <= 1 + (2 if n < 10 else 0)
    assert all(np.array_equal(a, b) for a, b in zip(s, split_models(n, fractions=fractions, seed=3), strict=True))
    if n >= 57:
        other = split_models(n, fractions=fractions, seed=4)
        assert not np.array_equal(s.test, other.test)


def test_split_models_groups_never_straddle():
    rng = np.random.default_rng(0)
    groups = [f"run{g}" for g in rng.integers(0, 20, size=200)]
    s = split_models(200, groups=groups, seed=1)
    _check_partition(s, 200)
    where = {}
    for name, part in zip(("train", "val", "test"), s, strict=True):
        for i in part:
            assert where.setdefault(groups[i], name) == name, f"group {groups[i]} straddles splits"
    assert all(len(p) >= 1 for p in s)
    # Roughly the requested fractions (groups are ~10 models each).
    assert 0.5 < len(s.train) / 200 < 0.9


def test_split_models_zero_fraction_and_errors():
    s = split_models(10, fractions=(0.8, 0.0, 0.2))
    assert len(s.val) == 0 and len(s.train) == 8 and len(s.test) == 2
    with pytest.raises(InvalidValueError, match="need at least 3 groups"):
        split_models(2)
    with pytest.raises(InvalidValueError, match="need at least 3 groups"):
        split_models(10, groups=["a"] * 5 + ["b"] * 5)
    with pytest.raises(InvalidValueError, match="fractions"):
        split_models(10, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ShapeError, match="groups has 3 labels"):
        split_models(10, groups=["a", "b", "c"])


@pytest.fixture(scope="module")
def zoo():
    # Random weights built in NumPy (Zoo.init would compile its vmapped init: seconds on a loaded CPU).
    arch, rng = MLP(in_features=4, hidden=(8,), out_features=3), np.random.default_rng(0)
    z = Zoo(arch, {k: rng.standard_normal((12, *s)).astype(np.float32) for k, s in arch.param_shapes().items()})
    return z.with_meta(acc=[i / 12 for i in range(12)], run=[i // 2 for i in range(12)], classes=[["a", "b", "c"]] * 12)


def test_from_zoo_targets_tensors_and_groups(zoo):
    ds = WeightDataset.from_zoo(
        zoo,
        targets={"acc": "acc", "arr": np.arange(12.0), "fn": lambda row: row["run"] * 10},
        tensors=["layers.1.weight", "layers.0.bias"],
        group="run",
        seed=2,
    )
    assert len(ds) == 12 and ds.ids == zoo.ids and ds.arch == zoo.arch
    assert list(ds.inputs) == ["layers.1.weight", "layers.0.bias"]
    np.testing.assert_array_equal(ds.inputs["layers.1.weight"], np.asarray(zoo.params["layers.1.weight"]))
    assert ds.inputs["layers.0.bias"].dtype == np.float32
    assert ds.targets["acc"].dtype == np.float32
    np.testing.assert_allclose(ds.targets["acc"], np.arange(12) / 12, rtol=1e-6)
    np.testing.assert_array_equal(ds.targets["fn"], [i // 2 * 10 for i in range(12)])
    for part in ds.splits:  # the two models of each run stay together
        runs = [ds.meta["run"][i] for i in part]
        assert all(runs.count(r) == 2 for r in runs)
    x, y = ds.split("test")
    np.testing.assert_array_equal(y["arr"], ds.splits.test.astype(np.float32))
    assert x["layers.1.weight"].shape == (len(ds.splits.test), 3, 8)
    full = WeightDataset.from_zoo(zoo, targets={})
    assert list(full.inputs) == sorted(zoo.params)


def test_from_zoo_errors(zoo):
    with pytest.raises(ConfigError, match=r"no meta column 'accuracy'.*'acc'"):
        WeightDataset.from_zoo(zoo, targets={"y": "accuracy"})
    with pytest.raises(ShapeError, match=r"target 'y' has shape \(5,\)"):
        WeightDataset.from_zoo(zoo, targets={"y": np.zeros(5)})
    with pytest.raises(ConfigError, match="has no tensors"):
        WeightDataset.from_zoo(zoo, targets={}, tensors=["nope"])
    with pytest.raises(ConfigError, match="no meta column 'family'"):
        WeightDataset.from_zoo(zoo, targets={}, group="family")


def test_subset_keeps_split_membership(zoo):
    ds = WeightDataset.from_zoo(zoo, targets={"acc": "acc"})
    tr = ds.subset("train")
    assert len(tr) == len(ds.splits.train) and len(tr.splits.train) == len(tr) and len(tr.splits.test) == 0
    assert tr.ids == [ds.ids[i] for i in ds.splits.train]
    idx = np.array([ds.splits.test[0], ds.splits.train[0]])
    sub = ds.subset(idx)
    assert sub.ids == [ds.ids[i] for i in idx]
    assert sub.splits.test.tolist() == [0] and sub.splits.train.tolist() == [1]
    np.testing.assert_array_equal(sub.targets["acc"], ds.targets["acc"][idx])
    with pytest.raises(InvalidValueError, match="unknown split"):
        ds.subset("dev")


def test_check_finite_names_models(zoo):
    w = np.asarray(zoo.params["layers.0.weight"]).copy()
    w[5, 0, 0] = np.inf
    bad = Zoo(zoo.arch, {**zoo.params, "layers.0.weight": w}, zoo.meta)
    ds = WeightDataset.from_zoo(bad, targets={}, tensors=["layers.0.weight"])
    with pytest.raises(InvalidValueError, match=rf"input 'layers.0.weight' of model '{zoo.ids[5]}' \(1 NaN/Inf\)"):
        ds.check_finite()


def test_from_files_reads_only_named_tensors(zoo, tmp_path):
    save_zoo(zoo, tmp_path, format="directory")
    files = sorted(tmp_path.glob("*.safetensors"))
    ds = WeightDataset.from_files(files, tensors=["layers.1.weight"], targets={"acc": "acc"}, group="run")
    assert list(ds.inputs) == ["layers.1.weight"]
    order = [zoo.index_of(f.stem) for f in files]
    np.testing.assert_array_equal(ds.inputs["layers.1.weight"], np.asarray(zoo.params["layers.1.weight"])[order])
    np.testing.assert_allclose(ds.targets["acc"], np.asarray(zoo.meta["acc"])[order], rtol=1e-6)
    assert ds.meta["classes"][0] == ["a", "b", "c"]
    with pytest.raises(Exception, match="missing tensors"):
        WeightDataset.from_files(files, tensors=["layers.9.weight"])

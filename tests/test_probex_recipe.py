"""The fmnist-trees recipe: the 20-class pool, fine-tunes of a tree's base, the registered recipe."""

from __future__ import annotations

import numpy as np
import pytest

from weightspace import InvalidValueError
from weightspace.probex import MAX_CLASSES, POOL_CLASSES, TREES, ModelTrees, fine_tune, pool_dataset, trees_from
from weightspace.zoo import RECIPES, build_recipe, load_model


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WEIGHTSPACE_CACHE", str(tmp_path_factory.getbasetemp() / "probex-cache"))


def test_pool_and_registry():
    ds = pool_dataset("test")
    assert ds.class_names == POOL_CLASSES and len(POOL_CLASSES) == 20
    assert np.bincount(ds.labels).tolist() == [200] * 10 + [100] * 10
    tr = pool_dataset("train")
    assert np.bincount(tr.labels).tolist() == [1000] * 10 + [400] * 10
    r = RECIPES["fmnist-trees"]
    assert (r.returns, r.default_size, r.tiny_size) == ("ModelTrees", 250, 4)
    # two pairs of trees share an architecture: routing cannot go by shape alone
    shapes = {t: tuple(sorted(s.arch(MAX_CLASSES).param_shapes().items())) for t, s in TREES.items()}
    assert shapes["mlp-fmnist"] == shapes["mlp-mnist"] and shapes["cnn-mix"] == shapes["cnn-digits"]
    with pytest.raises(InvalidValueError, match="split"):
        pool_dataset("val")


def test_fine_tunes_stay_in_their_tree():
    zoo = fine_tune("mlp-mnist", 3, tiny=True, progress=False)
    from weightspace._cache import cache_dir
    from weightspace.probex._recipe import NAME, RECIPE_VERSION

    _, base, meta = load_model(cache_dir("zoos") / f"{NAME}-base-mlp-mnist-t100-v{RECIPE_VERSION}.safetensors")
    assert meta["tree"] == "mlp-mnist" and meta["pretrain"] == "mnist-5k"
    assert zoo.meta["tree"] == ["mlp-mnist"] * 3 and zoo.arch.out_features == MAX_CLASSES
    for i in range(3):
        k = zoo.meta["n_outputs"][i]
        assert 3 <= k <= MAX_CLASSES and len(zoo.meta["class_indices"][i]) == k
        assert zoo.meta["classes"][i][:k] == [POOL_CLASSES[c] for c in zoo.meta["class_indices"][i]]
        assert zoo.meta["classes"][i][k:] == [None] * (MAX_CLASSES - k)
        assert zoo.meta["test_acc"][i] > 1.5 / k  # well above chance on its own classes
    # the inner layer moved away from the base, but far less than its own norm: a tree
    w, w0 = zoo.params["layers.0.weight"], base["layers.0.weight"]
    moved = np.linalg.norm(w - w0, axis=(1, 2)) / np.linalg.norm(w0)
    assert np.all(moved > 0) and np.all(moved < 0.5)
    # deterministic for (tree, n, seed)
    again = fine_tune("mlp-mnist", 3, tiny=True, progress=False)
    np.testing.assert_array_equal(again.params["layers.1.weight"], zoo.params["layers.1.weight"])


def test_trees_from_groups_a_zoo_by_tree():
    zoo = fine_tune("mlp-mnist", 3, tiny=True, progress=False)
    grouped = trees_from(zoo.with_meta(tree=["a", "b", "a"]))
    assert {t: len(z) for t, z in grouped.items()} == {"a": 2, "b": 1}
    mt = ModelTrees({"mlp-mnist": zoo})
    assert len(mt) == 3 and mt.trees == ["mlp-mnist"] and mt.summary()[0]["models"] == 3
    with pytest.raises(InvalidValueError, match="no tree"):
        mt["cnn-mix"]


@pytest.mark.slow
def test_tiny_build_cli_and_cache(tmp_path, capsys):
    from weightspace.cli import main
    from weightspace.probex import load_trees

    trees = build_recipe("fmnist-trees", size=4, progress=False)
    assert isinstance(trees, ModelTrees) and trees.trees == list(TREES) and len(trees) == 16
    again = build_recipe("fmnist-trees", size=4)  # from the cache
    np.testing.assert_array_equal(again["cnn-mix"].params["convs.1.weight"], trees["cnn-mix"].params["convs.1.weight"])
    assert main(["zoo", "build", "fmnist-trees", "--size", "4", "--out", str(tmp_path / "t"), "--json"]) == 0
    capsys.readouterr()
    back = load_trees(tmp_path / "t")
    assert back.trees == trees.trees and back["mlp-fmnist"].ids == trees["mlp-fmnist"].ids

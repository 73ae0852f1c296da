"""weightspace.learn baselines: StatNN / flat features (per-model loop oracle) and predicting the
accuracy of a real population of digit classifiers from their weights."""

import dataclasses

import jax
import numpy as np
import pytest

from weightspace import ConfigError, InvalidValueError, ShapeError
from weightspace.learn import (
    BASELINES,
    TrainConfig,
    WeightDataset,
    fit_baseline,
    flat_features,
    kendall_tau,
    mean_average_precision,
    run_baseline,
    statnn_features,
)

FAST = TrainConfig(steps=300, batch_size=32, learning_rate=3e-3, weight_decay=1e-4, eval_every=25, patience=4)


def test_statnn_and_flat_features_match_loop():
    rng = np.random.default_rng(0)
    params = {"z.bias": rng.standard_normal((5, 3)), "a.weight": rng.standard_normal((5, 4, 2)) * 3}
    got = statnn_features(params)
    assert got.shape == (5, 14) and got.dtype == np.float32
    for m in range(5):
        row = []
        for name in ("a.weight", "z.bias"):  # sorted names
            v = params[name][m].ravel()
            row += [v.mean(), v.var(), *np.percentile(v, [0, 25, 50, 75, 100])]
        np.testing.assert_allclose(got[m], row, rtol=1e-5, atol=1e-6)
    flat = flat_features(params)
    np.testing.assert_allclose(flat[2], np.r_[params["a.weight"][2].ravel(), params["z.bias"][2]], rtol=1e-6)
    with pytest.raises(ShapeError, match=r"'z\.bias' has 4 models"):
        statnn_features({"a": np.zeros((5, 2)), "z.bias": np.zeros((4, 2))})


@pytest.mark.parametrize(
    "name", ["statnn-gbt", "linear", pytest.param("mlp", marks=pytest.mark.slow)], ids=["gbt", "linear", "mlp"]
)
def test_fit_baseline_classify_and_multilabel(name):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((240, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0.5).astype(int)  # 4 classes
    cfg = FAST
    pred = fit_baseline(name, x[:160], y[:160], task="classify", val_x=x[160:200], val_y=y[160:200], config=cfg)
    logits = pred(x[200:])
    assert logits.shape == (40, 4)
    assert np.mean(np.argmax(logits, 1) == y[200:]) > 0.75
    ml = np.stack([x[:, 0] > 0, x[:, 2] < 0], axis=1).astype(int)
    pred = fit_baseline(name, x[:200], ml[:200], task="multilabel", config=dataclasses.replace(cfg, learning_rate=2e-2))
    assert pred(x[200:]).shape == (40, 2)
    assert mean_average_precision(pred(x[200:]), ml[200:]) > 0.9


def test_fit_baseline_errors():
    x = np.zeros((10, 3), np.float32)
    with pytest.raises(ConfigError, match="unknown baseline 'svm'"):
        fit_baseline("svm", x, np.zeros(10), task="regress")
    with pytest.raises(ConfigError, match="unknown task 'ranking'"):
        fit_baseline("gbt", x, np.zeros(10), task="ranking")
    with pytest.raises(InvalidValueError, match="non-negative int labels"):
        fit_baseline("gbt", x, np.full(10, 0.5), task="classify")
    predict = fit_baseline("gbt", np.random.default_rng(0).standard_normal((30, 3)), np.arange(30.0), task="regress")
    with pytest.raises(ShapeError, match="x has 4 features, the baseline was fit on 3"):
        predict(np.zeros((2, 4)))


@pytest.fixture(scope="module")
def digits_zoo():
    """A real population: 32 MLPs trained on scikit-learn digits with varied learning rates, init
    scales and data fractions, each kept after 3, 10, 40 and 100 steps (128 models)."""
    from weightspace.data import load_dataset
    from weightspace.nets import MLP
    from weightspace.zoo import train_population

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    rng = np.random.default_rng(0)
    n = 32
    arch = MLP(in_features=64, hidden=(16,), image_shape=(8, 8, 1), input_mean=0.305, input_std=0.377)
    plan = {
        "optimizer": ["adam"] * n,
        "learning_rate": np.exp(rng.uniform(np.log(1e-4), np.log(3e-2), n)),
        "init_scale": rng.uniform(0.5, 2.0, n),
        "train_fraction": rng.uniform(0.1, 1.0, n),
        "steps": 100,
        "seed": np.arange(n),
    }
    return train_population(
        arch,
        train,
        plan,
        key=jax.random.key(0),
        test=test,
        snapshot_steps=(3, 10, 40),
        optimizers=("adam",),
        eval_size=None,
        progress=False,
        name="digits-pop",
    )


def test_statnn_predicts_accuracy_of_real_models(digits_zoo):
    ds = WeightDataset.from_zoo(digits_zoo, targets={"acc": "test_acc"}, group="run", seed=0)
    acc = ds.targets["acc"]
    assert acc.min() < 0.3 and acc.max() > 0.85  # a real spread of accuracies
    test_acc = acc[ds.splits.test]
    tau = kendall_tau(run_baseline("statnn-gbt", ds, target="acc", task="regress"), test_acc)
    assert tau > 0.5, tau
    # The same features with the targets shuffled across models carry no signal.
    perm = np.random.default_rng(0).permutation(len(ds))
    noise = WeightDataset(ds.inputs, {"acc": acc[perm]}, ds.ids, ds.splits, ds.meta)
    tau_noise = kendall_tau(run_baseline("statnn-gbt", noise, target="acc", task="regress"), acc[perm][ds.splits.test])
    assert abs(tau_noise) < tau - 0.3
    lin = run_baseline("flat-linear", ds, target="acc", task="regress", config=FAST)
    assert kendall_tau(lin, test_acc) > 0.3


def test_run_baseline_errors(digits_zoo):
    ds = WeightDataset.from_zoo(digits_zoo, targets={"acc": "test_acc"})
    assert "statnn-gbt" in BASELINES
    with pytest.raises(ConfigError, match="no target 'accuracy'"):
        run_baseline("statnn-gbt", ds, target="accuracy", task="regress")
    with pytest.raises(ConfigError, match="run_baseline knows"):
        run_baseline("gbt", ds, target="acc", task="regress")


@pytest.mark.slow
@pytest.mark.parametrize("name", BASELINES, ids=BASELINES)
def test_every_baseline_predicts_accuracy(digits_zoo, name):
    ds = WeightDataset.from_zoo(digits_zoo, targets={"acc": "test_acc"}, group="run", seed=1)
    pred = run_baseline(name, ds, target="acc", task="regress")
    assert kendall_tau(pred, ds.targets["acc"][ds.splits.test]) > 0.3

"""Population training: fit_population against per-model optax oracles, resume, errors; train_population."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from weightspace import ConfigError, ShapeError
from weightspace.nets import CNN, MLP
from weightspace.testing import TOLERANCES, assert_no_recompile, assert_tree_allclose
from weightspace.train._population import _segment
from weightspace.zoo import (
    OPTIMIZERS,
    FitProgress,
    batch_rows,
    cnn_forward_im2col,
    fit_population,
    split_outputs,
    train_population,
)

ARCH = MLP(in_features=8, hidden=(16,), out_features=3)


def _data(n: int = 96, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    w = rng.normal(size=(8, 3)).astype(np.float32)
    return {"x": x, "y": np.argmax(x @ w, axis=1).astype(np.int32)}


def _ce(params, batch, key):
    logits = ARCH.apply(params, batch["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def _ce_dropout(params, batch, key):
    # Uses the key, so the oracle must reproduce the per-step loss key too.
    keep = jax.random.bernoulli(key, 0.9, batch["x"].shape)
    logits = ARCH.apply(params, jnp.where(keep, batch["x"] / 0.9, 0.0))
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def _init(n: int, seed: int = 1):
    keys = jax.random.split(jax.random.key(seed), n)
    return jax.vmap(ARCH.init)(keys)


def _oracle(loss_fn, params, data, *, key, seed, steps, batch_size, rows, optimizer, hp):
    """One model alone with plain optax and a Python loop (the documented batch/key schedule)."""
    tx = OPTIMIZERS[optimizer]({k: jnp.float32(v) for k, v in hp.items()})
    state = tx.init(params)
    km = jax.random.fold_in(key, seed)
    grad = jax.jit(jax.value_and_grad(loss_fn))
    losses = []
    for t in range(steps):
        pos = batch_rows(km, t, len(rows), batch_size)
        batch = {k: v[rows[np.asarray(pos)]] for k, v in data.items()}
        kl = jax.random.split(jax.random.fold_in(km, t))[1]
        loss, g = grad(params, batch, kl)
        upd, state = tx.update(g, state, params)
        params = optax.apply_updates(params, upd)
        losses.append(float(loss))
    return params, np.array(losses, np.float32)


# Tests share one configuration (5 models, batch 8, segments of 3 steps, all four optimizers, an index
# table) so that they reuse a handful of compiled programs: compiles dominate test time on CPU.
N, B, SEG = 5, 8, 3
OPTS = ["sgd", "momentum", "adam", "adamw", "adam"]


def _index(n_rows: int = 96) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [np.sort(rng.choice(n_rows, size=s, replace=False)) for s in (96, 40, 17, 60, 33)]


def _kw(**over):
    kw = dict(batch_size=B, segment_steps=SEG, index=_index(), hparams={"optimizer": OPTS, "learning_rate": 0.05})
    kw.update(over)
    return kw


def test_matches_per_model_optax_oracle():
    data = _data()
    params = _init(N)
    hp = {
        "optimizer": OPTS,
        "learning_rate": [0.1, 0.05, 0.01, 0.02, 0.003],
        "weight_decay": [0.0, 1e-3, 1e-2, 0.1, 0.0],
        "momentum": 0.8,
    }
    steps = [10, 7, 10, 4, 0]
    key = jax.random.key(7)
    index = _index()
    res = fit_population(_ce_dropout, params, data, key=key, steps=steps, **_kw(hparams=hp))
    for m in range(N):
        p_m = {k: v[m] for k, v in params.items()}
        h = {k: (v[m] if isinstance(v, list) else v) for k, v in hp.items() if k != "optimizer"}
        want, losses = _oracle(
            _ce_dropout,
            p_m,
            data,
            key=key,
            seed=m,
            steps=steps[m],
            batch_size=B,
            rows=index[m],
            optimizer=OPTS[m],
            hp=h,
        )
        got = {k: v[m] for k, v in res.params.items()}
        assert_tree_allclose(got, want)
        assert_tree_allclose(res.losses[m, : steps[m]], losses)
        assert np.all(np.isnan(res.losses[m, steps[m] :]))
    # Model 4 trains 0 steps: untouched.
    assert_tree_allclose({k: v[4] for k, v in res.params.items()}, {k: v[4] for k, v in params.items()})


def test_optimizer_and_lr_change_the_result():
    data = _data()
    params = jax.tree.map(lambda a: jnp.repeat(a[:1], N, axis=0), _init(1))
    res = fit_population(
        _ce,
        params,
        data,
        key=jax.random.key(0),
        steps=6,
        seeds=[0] * N,
        **_kw(
            index=[np.arange(96)] * N,
            hparams={"optimizer": ["sgd", "adam", "sgd", "adam", "sgd"], "learning_rate": [0.1, 0.1, 0.01, 0.1, 0.1]},
        ),
    )
    w = np.asarray(res.params["layers.0.weight"])
    assert not np.allclose(w[0], w[1]) and not np.allclose(w[0], w[2])
    np.testing.assert_array_equal(w[1], w[3])  # same seed, same hyper-parameters: identical
    np.testing.assert_array_equal(w[0], w[4])


def _assert_equal_nan(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_chunking_matches_one_program():
    data = _data()
    params = _init(N)
    kw = _kw(key=jax.random.key(3), steps=[8, 3, 8, 6, 1])
    a = fit_population(_ce, params, data, **kw)
    b = fit_population(_ce, params, data, model_chunk=2, **kw)
    assert_tree_allclose(a.params, b.params)
    np.testing.assert_allclose(a.losses, b.losses, *TOLERANCES["float32"], equal_nan=True)


class _Stop(Exception):
    pass


def test_resume_after_interrupt_is_bit_identical(tmp_path):
    data = _data()
    params = _init(N)
    kw = _kw(key=jax.random.key(11), steps=[10, 7, 10, 4, 10], model_chunk=2, snapshot_steps=(3, 9))
    full = fit_population(_ce, params, data, checkpoint_dir=tmp_path / "a", **kw)

    seen: list[FitProgress] = []

    def stop_after(k):
        def cb(p: FitProgress) -> None:
            seen.append(p)
            if len(seen) == k:
                raise _Stop

        return cb

    # Interrupt in the middle of the second chunk, then once more in the third.
    with pytest.raises(_Stop):
        fit_population(_ce, params, data, checkpoint_dir=tmp_path / "b", callback=stop_after(6), **kw)
    assert (seen[-1].chunk, seen[-1].step) == (1, 6)
    seen.clear()
    with pytest.raises(_Stop):
        fit_population(_ce, params, data, checkpoint_dir=tmp_path / "b", callback=stop_after(3), **kw)
    assert (seen[0].chunk, seen[0].step) == (1, 9)  # resumed, not restarted
    resumed = fit_population(_ce, params, data, checkpoint_dir=tmp_path / "b", **kw)
    _assert_equal_nan(full, resumed)
    assert sorted(resumed.snapshots) == [3, 9]
    # ... and equal to a run without checkpoints.
    _assert_equal_nan(full, fit_population(_ce, params, data, **kw))
    # A different run refuses the stale checkpoints.
    with pytest.raises(ConfigError, match="different training run"):
        fit_population(_ce, params, data, checkpoint_dir=tmp_path / "b", **{**kw, "steps": 9})


def test_snapshots_equal_shorter_runs():
    data = _data()
    params = _init(N)
    res = fit_population(_ce, params, data, **_kw(key=jax.random.key(2), steps=9, snapshot_steps=(3, 6)))
    short = fit_population(_ce, params, data, **_kw(key=jax.random.key(2), steps=6))
    assert sorted(res.snapshots) == [3, 6]
    _assert_equal_nan(res.snapshots[6], short.params)


def _ce_permuted(params, batch, key, *, model_data, shared):
    logits = ARCH.apply(params, batch["x"] * shared["scale"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, model_data["perm"][batch["y"]]).mean()


def test_model_data_and_shared_reach_the_loss():
    data = _data()
    params = jax.tree.map(lambda a: jnp.repeat(a[:1], 2, axis=0), _init(1))
    perm = np.array([[0, 1, 2], [2, 0, 1]], np.int32)
    res = fit_population(
        _ce_permuted,
        params,
        data,
        key=jax.random.key(0),
        steps=150,
        batch_size=32,
        seeds=[0, 0],
        hparams={"learning_rate": 0.02},
        model_data={"perm": perm},
        shared={"scale": np.float32(1.0)},
    )
    for m in range(2):
        pred = np.argmax(ARCH.apply({k: v[m] for k, v in res.params.items()}, data["x"]), axis=1)
        assert np.mean(pred == perm[m][data["y"]]) > 0.8  # each model learned its own label order


def test_no_recompile_on_second_call():
    data = _data()
    kw = _kw(key=jax.random.key(0), steps=4)
    fit_population(_ce, _init(N), data, **kw)
    with assert_no_recompile(_segment):
        fit_population(
            _ce,
            _init(N, seed=5),
            data,
            **{
                **kw,
                "key": jax.random.key(1),
                "steps": [3, 4, 5, 6, 2],
                "hparams": {"optimizer": OPTS[::-1], "learning_rate": 0.1},
            },
        )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"hparams": {"optimizer": ["adam", "lamb", "sgd"]}}, "unknown optimizer"),
        ({"hparams": {"learning_rate": [0.1, -1.0, 0.1]}}, "learning_rate must be > 0"),
        ({"hparams": {"learning_rate": [0.1, 0.1]}}, "one entry per model"),
        ({"hparams": {"learning_rate": [0.1, np.nan, 0.1]}}, "not finite"),
        ({"hparams": {"momentum": 1.5}}, "momentum"),
        ({"hparams": {"weight_decay": -0.1}}, "weight_decay"),
        ({"hparams": {"lr": 0.1}}, "unknown hyper-parameter"),
        ({"steps": [3, -1, 2]}, "non-negative"),
        ({"steps": 2.5}, "non-negative ints"),
        ({"batch_size": 0}, "batch_size"),
        ({"index": [np.arange(3), np.arange(200), np.arange(4)]}, "outside the data"),
        ({"index": [np.arange(3), np.arange(0), np.arange(4)]}, "empty data index"),
        ({"snapshot_steps": (7,)}, "snapshot_steps"),
        ({"model_chunk": 0}, "model_chunk"),
    ],
    ids=[
        "optimizer",
        "negative-lr",
        "lr-length",
        "nan-lr",
        "momentum",
        "weight-decay",
        "unknown-hparam",
        "negative-steps",
        "fractional-steps",
        "batch-size",
        "index-outside",
        "index-empty",
        "snapshot-steps",
        "model-chunk",
    ],
)
def test_bad_tables_raise_config_errors(kw, match):
    args = {"key": jax.random.key(0), "steps": 3, "batch_size": 4, **kw}
    with pytest.raises(ConfigError, match=match):
        fit_population(_ce, _init(3), _data(), **args)


def test_bad_shapes_raise():
    params = _init(3)
    params["layers.0.bias"] = params["layers.0.bias"][:2]
    with pytest.raises(ShapeError, match="leading models axis"):
        fit_population(_ce, params, _data(), key=jax.random.key(0), steps=2)
    with pytest.raises(ShapeError, match="index table has 2 rows"):
        fit_population(_ce, _init(3), _data(), key=jax.random.key(0), steps=2, index=[np.arange(3)] * 2)
    with pytest.raises(ShapeError, match="model_data"):
        fit_population(
            functools.partial(_ce_permuted),
            _init(3),
            _data(),
            key=jax.random.key(0),
            steps=2,
            model_data={"perm": np.zeros((2, 3), np.int32)},
        )


# ---- train_population ------------------------------------------------------------------------

DIGITS_MLP = MLP(in_features=64, hidden=(16,), out_features=3, image_shape=(8, 8, 1), input_mean=0.3, input_std=0.38)


@pytest.fixture(scope="module")
def digits():
    from weightspace.data import load_dataset

    return load_dataset("digits", "train"), load_dataset("digits", "test")


@pytest.fixture(scope="module")
def digits_zoo(digits):
    train, test = digits
    plan = {
        "classes": [[0, 1, 2], [9, 4, 7], [3, 8, 5], [2, 1]],
        "optimizer": ["adam", "sgd", "momentum", "adamw"],
        "learning_rate": [0.01, 0.2, 0.05, 0.01],
        "weight_decay": [0.0, 1e-4, 0.0, 0.01],
        "train_fraction": [1.0, 0.5, 0.3, 1.0],
        "init_scale": [1.0, 0.8, 1.2, 1.0],
        "steps": [120, 120, 60, 120],
    }
    return train_population(
        DIGITS_MLP,
        train,
        plan,
        key=jax.random.key(0),
        test=test,
        batch_size=32,
        eval_size=None,
        pad_outputs=True,
        snapshot_steps=(60,),
        name="digits-test",
    )


def _oracle_accuracy(arch, params, ds, classes):
    """Per-model NumPy loop: accuracy on the examples of ``classes`` with labels in that order."""
    keep = np.isin(ds.labels, classes)
    y = np.array([classes.index(c) for c in ds.labels[keep]])
    logits = np.asarray(arch.apply(params, ds.images[keep]))[:, : len(classes)]
    return float(np.mean(np.argmax(logits, 1) == y))


def test_train_population_meta_matches_oracle_and_beats_chance(digits, digits_zoo):
    train, test = digits
    zoo = digits_zoo
    assert len(zoo) == 8 and zoo.meta["final"] == [False] * 4 + [True] * 4
    assert zoo.meta["step"] == [60, 60, 60, 60, 120, 120, 60, 120]
    for i in range(len(zoo)):
        row = zoo.row(i)
        cls = row["class_indices"]
        assert row["classes"][: len(cls)] == [train.class_names[c] for c in cls]
        assert row["test_acc"] == pytest.approx(_oracle_accuracy(zoo.arch, zoo.model(i), test, cls), abs=1e-6)
        assert row["train_acc"] >= 0 and row["generalization_gap"] == pytest.approx(row["train_acc"] - row["test_acc"])
        if row["final"]:
            assert row["test_acc"] > 1.5 / len(cls)  # well above chance on held-out data
    final = zoo.select(np.flatnonzero(zoo.meta["final"]))
    assert final.meta["optimizer"] == ["adam", "sgd", "momentum", "adamw"]
    assert final.meta["learning_rate"] == pytest.approx([0.01, 0.2, 0.05, 0.01])
    n_cls = [int(np.isin(train.labels, c).sum()) for c in ([0, 1, 2], [9, 4, 7], [3, 8, 5], [2, 1])]
    assert final.meta["n_train"] == [round(f * n) for f, n in zip([1.0, 0.5, 0.3, 1.0], n_cls, strict=True)]


def test_split_outputs_keeps_the_real_logits(digits, digits_zoo):
    _, test = digits
    final = digits_zoo.select(np.flatnonzero(digits_zoo.meta["final"]))
    parts = split_outputs(final)
    assert [p.arch.out_features for p in parts] == [2, 3]
    two = parts[0]
    assert two.classes(0) == ["2", "1"] and two.ids == [final.ids[3]]
    x = test.images[:20]
    want = np.asarray(final.arch.apply(final.model(3), x))[:, :2]
    assert_tree_allclose(np.asarray(two.arch.apply(two.model(0), x)), want)


@pytest.mark.parametrize(
    ("plan", "match"),
    [
        ({"classes": [[0, 1], [2, 3, 4]]}, "2 classes"),
        ({"classes": [[0, 1, 1]]}, "distinct"),
        ({"classes": [[0, 1, 12]]}, "distinct indices in 0..9"),
        ({"classes": [[0, 1, 2]], "colour": ["red"]}, "unknown plan columns"),
        ({"classes": [[0, 1, 2]] * 2, "learning_rate": [0.1, 0.1, 0.1]}, "disagree"),
        ({"classes": [[0, 1, 2]], "train_fraction": 1.5}, "train_fraction"),
        ({"classes": [[0, 1, 2]], "init_scale": 0.0}, "init_scale"),
        ({"classes": [[0, 1, 2]], "dropout": 0.5}, "needs a CNN"),
        ({"classes": [[0, 1, 2]], "optimizer": "rmsprop"}, "unknown optimizer"),
        ({"learning_rate": 0.1}, "per-model column"),
    ],
    ids=[
        "class-count",
        "repeated-class",
        "class-range",
        "unknown-column",
        "length-mismatch",
        "train-fraction",
        "init-scale",
        "dropout-mlp",
        "optimizer",
        "scalar-column",
    ],
)
def test_train_population_rejects_bad_plans(digits, plan, match):
    with pytest.raises(ConfigError, match=match):
        train_population(DIGITS_MLP, digits[0], plan, key=jax.random.key(0))


@pytest.mark.parametrize(
    "arch",
    [
        CNN(image_shape=(28, 28, 1), channels=(16, 16, 16), strides=2, input_mean=0.3, input_std=0.35),
        CNN(
            image_shape=(12, 12, 3),
            channels=(6, 8),
            kernel_size=5,
            padding=2,
            strides=1,
            dense=(7,),
            activation="tanh",
            out_features=4,
        ),
    ],
    ids=["small-cnn-zoo", "k5-rgb-dense"],
)
def test_im2col_forward_matches_lax_conv(arch):
    p = arch.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (5, *arch.image_shape))
    got = cnn_forward_im2col(arch, p, x)
    # The oracle: the architecture's own lax.conv forward; sums of ~150 products, hence scale.
    assert_tree_allclose(np.asarray(got), np.asarray(arch.apply(p, x)), scale=10)


def test_im2col_dropout_draws_one_mask_per_key():
    arch = CNN(image_shape=(8, 8, 1), channels=(4, 4), strides=2)
    p = arch.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (16, 8, 8, 1))
    plain = np.asarray(cnn_forward_im2col(arch, p, x))
    # Rate 0 keeps every activation (uniform draws are < 1): exactly the deterministic pass.
    np.testing.assert_array_equal(np.asarray(cnn_forward_im2col(arch, p, x, key=jax.random.key(2))), plain)
    a = np.asarray(cnn_forward_im2col(arch, p, x, key=jax.random.key(2), dropout=0.5))
    b = np.asarray(cnn_forward_im2col(arch, p, x, key=jax.random.key(3), dropout=0.5))
    assert not np.allclose(a, plain) and not np.allclose(a, b)
    np.testing.assert_array_equal(a, np.asarray(cnn_forward_im2col(arch, p, x, key=jax.random.key(2), dropout=0.5)))


def test_target_loss_stops_each_model_early():
    data = _data()
    params = _init(N)
    kw = _kw(key=jax.random.key(5), steps=12)
    res = fit_population(_ce, params, data, target_loss=[10.0, 0.0, 0.9, 0.0, 10.0], **kw)
    assert res.updates[0] == res.updates[4] == 0  # the first loss already meets a loose target
    assert res.updates[1] == res.updates[3] == 12  # an unreachable target: all steps
    u = int(res.updates[2])
    assert np.all(np.isfinite(res.losses[2, : u + 1])) and np.all(np.isnan(res.losses[2, u + 1 :]))
    if u < 12:
        assert res.losses[2, u] <= 0.9 < res.losses[2, :u].min()
    # Oracle: the same models trained for exactly their number of updates.
    again = fit_population(_ce, params, data, **{**kw, "steps": res.updates.tolist()})
    _assert_equal_nan(res.params, again.params)

"""ProbeGen: gradients through the probe engine, the generator, training through learn.fit, errors, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from weightspace import ConfigError, ShapeError
from weightspace.learn import TrainConfig, TrainingDivergedError
from weightspace.nets import CNN, MLP, SIREN, coordinate_grid
from weightspace.nets._standard import fast_sin
from weightspace.parallel import make_mesh
from weightspace.probegen import (
    DEFAULT_TRAIN,
    ProbeGen,
    ProbeGenConfig,
    ProbeGenerator,
    dataset_architectures,
    load_run,
    predict,
    predict_zoo,
    save_run,
    train_probegen,
    weight_dataset,
)
from weightspace.probing import apply_models, probe
from weightspace.testing import assert_tree_allclose
from weightspace.zoo import Collection, Zoo, save_zoo


def _train_cfg(**over: object) -> TrainConfig:
    """The paper's optimisation (DEFAULT_TRAIN) with test-sized overrides, as train_probegen's keywords gave."""
    return dataclasses.replace(DEFAULT_TRAIN, **over)  # type: ignore[arg-type]


ARCHS = {
    "mlp": MLP(in_features=16, hidden=(32, 24), out_features=5),
    "cnn": CNN(image_shape=(16, 16, 1), channels=(4, 4, 4), strides=2, input_mean=0.29, input_std=0.35),
    "cnn-tanh": CNN(image_shape=(16, 16, 1), channels=(4, 4), strides=2, activation="tanh"),
    "cnn-dense": CNN(image_shape=(12, 12, 3), channels=(4, 6), strides=1, padding=0, dense=(7,), out_features=3),
    "siren": SIREN(hidden=(32, 32), w0=30.0),
}


def _probes(name: str, n: int, seed: int = 1) -> jax.Array:
    arch = ARCHS[name]
    rng = np.random.default_rng(seed)
    if name == "siren":
        return jnp.asarray(coordinate_grid(28, 28))[100 : 100 + n]
    lo = 0.0 if len(arch.input_shape) == 3 else -1.0
    return jnp.asarray(rng.uniform(lo, 1.0, (n, *arch.input_shape)).astype(np.float32))


def _zoo(name: str, n: int = 4) -> Zoo:
    return Zoo.init(ARCHS[name], n, key=jax.random.key(3), name=name)


def _weights(name: str, n_models: int, n_probes: int) -> jax.Array:
    out = ARCHS[name].num_outputs
    return jnp.asarray(np.random.default_rng(2).normal(size=(n_models, n_probes, out)).astype(np.float32))


def _oracle_grad(zoo: Zoo, x: jax.Array, w: jax.Array) -> jax.Array:
    """d/dx sum_m <w_m, f_m(x)> by a per-model Python loop of the plain ``arch.apply`` (exact sin)."""

    def loss(x: jax.Array) -> jax.Array:
        return sum(jnp.sum(zoo.arch.apply(zoo.model(i), x) * w[i]) for i in range(len(zoo)))

    return jax.grad(loss)(x)


@pytest.mark.parametrize("name", list(ARCHS), ids=list(ARCHS))
def test_apply_models_gradient_equals_per_model_oracle(name: str) -> None:
    zoo, x = _zoo(name), _probes(name, 5)
    w = _weights(name, len(zoo), 5)
    # the default path: arch.grad_formulation (einsum for MLP/SIREN) or the engine's CPU choice
    # (im2col CNN); range-reduced sin with its custom JVP for SIREN
    got = jax.jit(jax.grad(lambda x: jnp.sum(apply_models(zoo.arch, zoo.params, x) * w)))(x)
    want = _oracle_grad(zoo, x, w)
    # a sum over 4 models of products amplified by w0 = 30 (SIREN): a few float32 ulps of the terms
    assert_tree_allclose(got, want, scale=10.0)
    assert float(jnp.max(jnp.abs(want))) > 1e-3  # a non-trivial gradient


@pytest.mark.parametrize("formulation", ["vmap", "einsum", "scan"], ids=["vmap", "einsum", "scan"])
def test_apply_models_formulations_and_responses_match_probe(formulation: str) -> None:
    zoo, x = _zoo("siren"), _probes("siren", 7)
    r = apply_models(zoo.arch, zoo.params, x, formulation=formulation)
    assert_tree_allclose(r, probe(zoo, np.asarray(x), mesh=False), scale=10.0)
    w = _weights("siren", len(zoo), 7)
    g = jax.grad(lambda x: jnp.sum(apply_models(zoo.arch, zoo.params, x, formulation=formulation) * w))(x)
    assert_tree_allclose(g, _oracle_grad(zoo, x, w), scale=10.0)


def test_fast_sin_derivative_matches_cos_and_finite_differences() -> None:
    x = jnp.linspace(-60.0, 60.0, 4001, dtype=jnp.float32)
    d = jax.vmap(jax.grad(fast_sin))(x)
    assert float(jnp.max(jnp.abs(d - jnp.cos(x)))) < 2e-6
    x64 = np.linspace(-3.0, 3.0, 61)
    h = 1e-3
    fd = (
        np.asarray(fast_sin(jnp.asarray(x64 + h, jnp.float32)))
        - np.asarray(fast_sin(jnp.asarray(x64 - h, jnp.float32)))
    ) / (2 * h)
    assert np.max(np.abs(fd - np.asarray(jax.vmap(jax.grad(fast_sin))(jnp.asarray(x64, jnp.float32))))) < 1e-3


@pytest.mark.parametrize("name", ["siren", pytest.param("cnn", marks=pytest.mark.slow)], ids=["siren", "cnn"])
def test_sharded_gradient_equals_unsharded(name: str) -> None:
    zoo, x = _zoo(name, 6), _probes(name, 4)  # 6 models over 8 devices: padded inside apply_models
    w = _weights(name, 6, 4)
    mesh = make_mesh()

    def loss(x: jax.Array, mesh: object = None) -> jax.Array:
        return jnp.sum(apply_models(zoo.arch, zoo.params, x, mesh=mesh) * w)

    g0 = jax.jit(jax.grad(loss))(x)
    g1 = jax.jit(jax.grad(lambda x: loss(x, mesh)))(x)
    assert_tree_allclose(g1, g0)
    r = jax.jit(lambda p, x: apply_models(zoo.arch, p, x, mesh=mesh))(
        jax.device_put(_zoo(name, 8).params, NamedSharding(mesh, PartitionSpec("models"))), x
    )
    assert len(r.sharding.device_set) == 8


def test_apply_models_rejects_probes_of_the_wrong_shape() -> None:
    zoo = _zoo("siren")
    with pytest.raises(ShapeError, match=r"do not fit SIREN input \(2,\)"):
        apply_models(zoo.arch, zoo.params, jnp.zeros((4, 3)))
    with pytest.raises(ShapeError, match="fixed probes have 3 rows"):
        ProbeGen([zoo.arch], n_out=2, n_probes=4, probes="fixed", fixed=np.zeros((3, 2)), rngs=nnx.Rngs(0))
    with pytest.raises(ShapeError, match="do not fit SIREN"):
        ProbeGen([zoo.arch], n_out=2, n_probes=4, probes="fixed", fixed=np.zeros((4, 5)), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", ["siren", "cnn"], ids=["coords", "images"])
def test_generator_is_deep_linear_and_nonlinear_ablation_is_not(name: str) -> None:
    arch = ARCHS[name]
    lin = ProbeGenerator(arch, 4, rngs=nnx.Rngs(0))
    assert lin().shape == (4, *arch.input_shape)

    def at(gen: ProbeGenerator, z: jax.Array) -> jax.Array:  # the generator before its final tanh
        gen.latents[...] = z
        if name == "cnn":  # images: 0.5 * (tanh + 1)
            return jnp.arctanh(2 * jnp.clip(gen(), 1e-6, 1 - 1e-6) - 1)
        return jnp.arctanh(jnp.clip(gen(), -1 + 1e-6, 1 - 1e-6))  # bounded coordinates: tanh

    z1, z2 = (jax.random.normal(jax.random.key(i), (4, 32)) * 0.05 for i in (1, 2))
    for gen, linear in ((lin, True), (ProbeGenerator(arch, 4, nonlinear=True, rngs=nnx.Rngs(0)), False)):
        mid = at(gen, 0.5 * (z1 + z2))
        avg = 0.5 * (at(gen, z1) + at(gen, z2))
        assert bool(jnp.allclose(mid, avg, atol=1e-4)) == linear


def _separable_zoo(n: int = 48) -> Zoo:
    """SIRENs in two classes whose mean output differs by about 2 response standard deviations
    (what probes can see; the predictor must generalise to models it never saw)."""
    arch = SIREN(hidden=(16, 16), w0=30.0)
    labels = np.arange(n) % 2
    keys = jax.random.split(jax.random.key(5), n)
    params = jax.vmap(arch.init)(keys)
    shift = jnp.where(jnp.asarray(labels) == 1, 0.03, -0.03)
    params["layers.2.bias"] = params["layers.2.bias"] * 0.1 + shift[:, None]
    return Zoo(arch, params, {"label": labels.tolist(), "run": [f"r{i // 2}" for i in range(n)]}, "separable")


@pytest.fixture(scope="module")
def trained() -> tuple[Zoo, object, object]:
    zoo = _separable_zoo()
    ds = weight_dataset(zoo, task="classify")
    run = train_probegen(
        ds,
        ProbeGenConfig(task="classify", n_probes=16, depth=3, width=64),
        train_config=TrainConfig(steps=150, batch_size=16, learning_rate=1e-3, schedule="cosine", eval_every=50),
    )
    return zoo, ds, run


def test_probegen_learns_and_splits_by_group(trained: tuple) -> None:
    zoo, ds, run = trained
    runs = np.asarray(zoo.meta["run"])
    tr, va, te = (set(runs[s]) for s in ds.splits)
    assert not (tr & va or tr & te or va & te)  # two models of one run never straddle splits
    assert run.val_score >= 0.75 and run.test_score >= 0.75, (run.val_score, run.test_score)
    assert run.report.history[-1]["loss"] < run.report.history[0]["loss"]
    assert run.test_embeddings.shape == (len(ds.splits.test), 64)
    np.testing.assert_allclose(
        predict(run.model, ds, "test", scale=run.scale), run.test_predictions, rtol=1e-5, atol=1e-5
    )


def test_save_load_predict_round_trip(trained: tuple, tmp_path: Path) -> None:
    zoo, ds, run = trained
    save_run(run, tmp_path)
    loaded = load_run(tmp_path)
    ids, pred = predict_zoo(loaded.model, zoo, scale=loaded.scale)
    assert ids == zoo.ids
    np.testing.assert_allclose(pred[ds.splits.test], run.test_predictions, rtol=1e-5, atol=1e-5)


def test_vanilla_and_fixed_probes_train_only_what_they_should() -> None:
    ds = weight_dataset(_separable_zoo(16), task="classify")
    for probes, fixed in (("vanilla", None), ("fixed", "grid")):
        run = train_probegen(
            ds,
            ProbeGenConfig(task="classify", probes=probes, fixed=fixed, n_probes=9, depth=2, width=8),
            train_config=_train_cfg(steps=4, batch_size=4, eval_every=2),
        )
        moved = not np.allclose(
            np.asarray(run.model.probes()),
            np.asarray(
                ProbeGen(
                    run.model.archs,
                    n_out=2,
                    n_probes=9,
                    probes=probes,
                    fixed=None if fixed is None else np.asarray(run.model.probes()),
                    depth=2,
                    width=8,
                    rngs=nnx.Rngs(0),
                ).probes()
            ),
        )
        assert moved == (probes == "vanilla")


@pytest.mark.slow  # two CNN kernels under lax.switch: the longest compile of this file
def test_collection_of_two_architectures_and_regression() -> None:
    """The ReLU and tanh zoos of a Small-CNN-like collection share probes; one arch per batch."""
    zoos = []
    for j, act in enumerate(("relu", "tanh")):
        arch = CNN(image_shape=(8, 8, 1), channels=(4, 4), strides=2, activation=act)
        z = Zoo.init(arch, 10, key=jax.random.key(j), name=act)
        zoos.append(z.with_meta(test_acc=np.linspace(0.1, 0.9, 10).tolist(), run=[f"{act}{i}" for i in range(10)]))
    coll = Collection(zoos)
    ds = weight_dataset(coll, task="rank")
    archs, idx = dataset_architectures(ds)
    assert len(archs) == 2 and sorted(set(idx.tolist())) == [0, 1]
    run = train_probegen(
        ds,
        ProbeGenConfig(task="rank", n_probes=4, depth=2, width=8),
        train_config=_train_cfg(steps=6, batch_size=4, eval_every=3),
    )
    assert run.test_predictions.shape == (len(ds.splits.test),) and np.isfinite(run.test_score)
    ids, pred = predict_zoo(run.model, coll, scale=run.scale)
    assert len(ids) == 20 and np.isfinite(pred).all()


def test_missing_label_column_names_it_and_lists_columns() -> None:
    zoo = _separable_zoo(8)
    with pytest.raises(ConfigError, match=r"needs the meta column 'test_acc'.*columns are \['id', 'label', 'run'\]"):
        weight_dataset(zoo, task="rank")
    with pytest.raises(ConfigError, match="'nope'"):
        weight_dataset(zoo, task="classify", target="nope")


def test_nan_loss_names_the_step_and_keeps_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose responses make the loss NaN (here: marked by a finite bias of 123 that the loss
    turns into NaN; real cases are overflowing responses) stops training with the step named."""
    from weightspace.probegen import _train

    zoo = _separable_zoo(16)
    params = {k: np.array(v) for k, v in zoo.params.items()}
    ds = weight_dataset(Zoo(zoo.arch, params, zoo.meta, "poisoned"), task="classify")
    # Poison a training model that the first batch does not draw (fit's shuffled epochs, seed 0),
    # so at least one good step is checkpointed before the NaN.
    from weightspace.train._fit import _Epochs

    n_train = len(ds.splits.train)
    first = set(_Epochs(jax.random.split(jax.random.key(0))[0], n_train, 4)(0).tolist())
    poison = int(ds.splits.train[min(set(range(n_train)) - first)])
    ds.inputs["layers.2.bias"][poison] = 123.0
    original = _train._probegen_loss

    def poisoned(model: object, batch: dict, key: jax.Array) -> tuple:
        loss, aux = original(model, batch, key)
        bad = jnp.any(batch["params"]["layers.2.bias"] == 123.0)
        return loss + jnp.where(bad, jnp.nan, 0.0), aux

    monkeypatch.setattr(_train, "_probegen_loss", poisoned)
    with pytest.raises(
        TrainingDivergedError, match=r"loss of step \d+ \(of 40\) is nan; the last good checkpoint"
    ) as e:
        # a checkpoint is written every step
        train_probegen(
            ds,
            ProbeGenConfig(task="classify", probes="vanilla", n_probes=4, depth=2, width=8),
            train_config=_train_cfg(steps=40, batch_size=4, eval_every=1, seed=0),
            checkpoint_dir=tmp_path / "ckpt",
        )
    assert e.value.checkpoint_step is not None and e.value.checkpoint_step < e.value.step
    assert (tmp_path / "ckpt" / str(e.value.checkpoint_step)).exists()


def test_cli_train_predict_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from weightspace.cli import main

    zoo_file = save_zoo(_separable_zoo(24), tmp_path / "zoo.safetensors")
    out = tmp_path / "run"
    assert (
        main(
            [
                "probegen",
                "train",
                str(zoo_file),
                "--task",
                "classify",
                "--out",
                str(out),
                "--steps",
                "20",
                "--batch-size",
                "8",
                "--eval-every",
                "10",
                "--n-probes",
                "8",
                "--no-progress",
            ]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    assert res["metric"] == "accuracy" and res["steps_done"] == 20 and (out / "probes.npy").exists()
    assert np.load(out / "probes.npy").shape == (8, 2)
    pred = tmp_path / "pred.json"
    assert main(["probegen", "predict", str(out), str(zoo_file), "--out", str(pred)]) == 0
    assert len(json.loads(pred.read_text())["class"]) == 24
    capsys.readouterr()
    assert main(["probegen", "train", str(zoo_file), "--task", "accuracy", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "'test_acc'" in err and "'label'" in err


def test_sharded_training_equals_unsharded() -> None:
    """learn.fit shards each batch over 8 devices; apply_models runs the kernel under shard_map."""
    ds = weight_dataset(_separable_zoo(24), task="classify")
    cfg = ProbeGenConfig(task="classify", n_probes=8, depth=2, width=16)
    train = _train_cfg(steps=6, batch_size=8, learning_rate=1e-3, eval_every=3)
    a = train_probegen(ds, cfg, train_config=train)
    b = train_probegen(ds, cfg, train_config=train, mesh=make_mesh())
    assert_tree_allclose(b.report.losses, a.report.losses)
    # predictions after 6 updates of a 2-layer MLP: the per-step float32 differences compound
    assert_tree_allclose(b.test_predictions, a.test_predictions, scale=10.0)

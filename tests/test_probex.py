"""ProbeX: the module against a NumPy oracle, training on real trained models, experts on disk,
routing, Model-J-layout readers, bad input, the CLI, and sharded == unsharded training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from weightspace import ConfigError, InvalidValueError, ShapeError
from weightspace.learn import mean_average_precision, split_models
from weightspace.nets import MLP
from weightspace.probex import (
    DEFAULT_TRAIN,
    SWEEP_TRAIN,
    Expert,
    ProbeX,
    ProbeXConfig,
    ProbeXSpec,
    Router,
    check_layer,
    layer_sweep,
    load_lora_subset,
    load_modelj,
    make_ensemble,
    routing_accuracy,
    train_expert,
    write_lora_subset,
    write_modelj,
    zero_shot_logits,
    zoo_layer,
    zoo_targets,
)
from weightspace.zoo import Zoo, concat, save_zoo, train_population

DIGITS = [str(d) for d in range(10)]
SMALL = ProbeXConfig(r_u=8, r_v=8, r_t=16)


def _tree(name: str, n: int, seed: int) -> Zoo:
    """A real model tree: a digit classifier (MLP 64-16) pre-trained on all digits, then fine-tuned
    ``n`` times (fresh 5-way head, first layer from the base) on random 3-5 digit subsets."""
    from weightspace.data import load_dataset
    from weightspace.zoo import ClassifierLoss, fit_population

    ds = load_dataset("digits", "train")
    base = train_population(
        MLP(in_features=64, hidden=(16,), out_features=10, image_shape=(8, 8, 1)),
        ds,
        {"steps": [150], "learning_rate": 0.01, "seed": [seed]},
        key=jax.random.key(seed),
        eval_size=100,
    )
    arch = MLP(in_features=64, hidden=(16,), out_features=5, image_shape=(8, 8, 1))
    rng = np.random.default_rng(seed)
    classes = [rng.permutation(10)[: rng.integers(3, 6)].tolist() for _ in range(n)]
    params = {k: np.asarray(v) for k, v in Zoo.init(arch, n, key=jax.random.key(seed + 7)).params.items()}
    params["layers.0.weight"] = np.repeat(base.params["layers.0.weight"], n, axis=0)
    params["layers.0.bias"] = np.repeat(base.params["layers.0.bias"], n, axis=0)
    label_map = np.zeros((n, 10), np.int32)
    for m, cl in enumerate(classes):
        label_map[m, cl] = np.arange(len(cl))
    rows = [np.flatnonzero(np.isin(ds.labels, cl)) for cl in classes]
    res = fit_population(
        ClassifierLoss(arch, mask_outputs=True),
        params,
        {"x": ds.images, "y": ds.labels},
        key=jax.random.key(seed),
        steps=40,
        batch_size=32,
        index=rows,
        hparams={"learning_rate": rng.uniform(3e-3, 1e-2, n)},
        model_data={"label_map": label_map, "n_out": np.array([len(c) for c in classes], np.int32)},
    )
    meta = {
        "id": [f"{name}-{i:03d}" for i in range(n)],
        "tree": [name] * n,
        "classes": [[str(c) for c in cl] + [None] * (5 - len(cl)) for cl in classes],
        "steps": [40] * n,
    }
    return Zoo(arch, res.params, meta, name)


@pytest.fixture(scope="module")
def trees() -> dict[str, Zoo]:
    return {"tree-a": _tree("tree-a", 40, 1), "tree-b": _tree("tree-b", 24, 2)}


def test_module_matches_numpy_oracle():
    cfg = ProbeXSpec(d_h=6, d_w=5, n_out=3, method=ProbeXConfig(r_u=4, r_v=3, r_t=7), x_scale=2.0)
    m = ProbeX(cfg, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(2, 6, 5)).astype(np.float32)
    u, v = np.asarray(m.probes[...]), np.asarray(m.proj[...])
    w, b = np.asarray(m.encoder.kernel[...]), np.asarray(m.encoder.bias[...])
    wh, bh = np.asarray(m.head.kernel[...]), np.asarray(m.head.bias[...])
    e = []
    for xi in x / 2.0:  # one model at a time; per-probe encoders summed
        z = xi @ u  # [d_h, r_u]
        h = np.maximum(v.T @ z, 0.0)  # [r_v, r_u]: column l = sigma(V^T z_l)
        w3 = w.reshape(cfg.r_u, cfg.r_v, cfg.r_t)
        e.append(sum(h[:, ll] @ w3[ll] for ll in range(cfg.r_u)) + b)
    e = np.stack(e)
    np.testing.assert_allclose(np.asarray(m.represent(jnp.asarray(x))), e, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(m(jnp.asarray(x))), e @ wh + bh, rtol=1e-4, atol=1e-5)


def test_zero_shot_logits_oracle():
    rng = np.random.default_rng(1)
    o, t = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    want = (o / np.linalg.norm(o, axis=1, keepdims=True)) @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T / 0.1
    np.testing.assert_allclose(
        np.asarray(zero_shot_logits(jnp.asarray(o), jnp.asarray(t), temperature=0.1)), want, rtol=1e-5
    )


def test_ensemble_members_differ_and_config_errors():
    m = make_ensemble(ProbeXSpec(4, 3, 2, ProbeXConfig(r_u=2, r_v=2, r_t=3)), 3, seed=0)
    p = np.asarray(m.probes[...])
    assert p.shape == (3, 3, 2) and not np.allclose(p[0], p[1])
    with pytest.raises(ConfigError, match="readout"):
        ProbeXConfig(readout="regress")
    with pytest.raises(ConfigError, match="r_u"):
        ProbeXConfig(r_u=0)


def test_train_learns_classes_and_roundtrips(trees, tmp_path):
    zoo = trees["tree-a"]
    x, y = zoo_layer(zoo, "layers.1.weight"), zoo_targets(zoo, DIGITS)
    assert x.shape == (40, 5, 16) and y.sum(1).min() >= 3
    sp = split_models(len(zoo), seed=0)
    e, rep = train_expert(
        x,
        y,
        class_names=DIGITS,
        train_idx=sp.train,
        val_idx=sp.val,
        layer="layers.1.weight",
        members=2,
        train_config=DEFAULT_TRAIN.replace(steps=150, eval_every=50, learning_rate=3e-3),
        config=SMALL,
    )
    assert rep.best_step is not None and e.info["train_models"] == len(sp.train)
    s = e.scores(x[sp.train])
    assert s.shape == (2, len(sp.train), 10)
    # the head reads the layer: on its own training models it beats the class prevalence by far
    assert min(mean_average_precision(si, y[sp.train]) for si in s) > 0.9
    e.save(tmp_path / "ex")
    back = Expert.load(tmp_path / "ex")
    np.testing.assert_allclose(back.scores(x[:4]), e.scores(x[:4]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="readout"):
        Expert.load(tmp_path / "ex", expect={"readout": "zero-shot"})
    with pytest.raises(ShapeError, match=r"expects \[5, 16\]"):
        e.scores(np.zeros((2, 16, 64), np.float32))


def test_zero_shot_scores_unseen_classes(trees):
    zoo = trees["tree-a"]
    x, y = zoo_layer(zoo, "layers.1.weight"), zoo_targets(zoo, DIGITS)
    sp = split_models(len(zoo), seed=0)
    text = np.random.default_rng(0).normal(size=(10, 12)).astype(np.float32)  # any text space
    z, _ = train_expert(
        x,
        y,
        class_names=DIGITS,
        train_idx=sp.train,
        config=SMALL.replace(readout="zero-shot"),
        held_out=["3", "7"],
        text=text,
        train_config=DEFAULT_TRAIN.replace(steps=20),
    )
    assert z.classes == [c for c in DIGITS if c not in ("3", "7")] and z.spec.n_out == 12
    assert z.scores(x[:3], ["3", "7"], text=text[[3, 7]]).shape == (1, 3, 2)
    with pytest.raises(InvalidValueError, match="held-out"):
        train_expert(
            x,
            y,
            class_names=DIGITS,
            train_idx=sp.train,
            config=SMALL.replace(readout="zero-shot"),
            held_out=["cat"],
            text=text,
        )


def test_bad_layers_and_nan(trees):
    zoo = trees["tree-a"]
    with pytest.raises(InvalidValueError, match=r"layers\.0\.weight"):
        zoo_layer(zoo, "conv9.weight")
    bad = dict(zoo.params)
    w = np.array(bad["layers.0.weight"])
    w[3, 0, 0] = np.nan
    bad["layers.0.weight"] = w
    with pytest.raises(InvalidValueError, match="tree-a-003"):
        check_layer(w, zoo.ids, layer="layers.0.weight")


def test_layer_sweep_picks_on_validation(trees):
    rows = layer_sweep(trees["tree-b"], class_names=DIGITS, config=SMALL, train_config=SWEEP_TRAIN.replace(steps=20))
    assert [r["layer"] for r in rows] == ["layers.0.weight", "layers.1.weight"]
    best = [r for r in rows if r["best"]]
    assert len(best) == 1 and best[0]["val_map"] == max(r["val_map"] for r in rows)


def test_router_routes_held_out_and_permuted_models(trees):
    sp = {t: split_models(len(z), seed=0) for t, z in trees.items()}
    router = Router.fit({t: {k: v[sp[t].train] for k, v in z.params.items()} for t, z in trees.items()})
    test = {t: {k: v[sp[t].test] for k, v in z.params.items()} for t, z in trees.items()}
    assert routing_accuracy(router, test)["all"] == 1.0
    # with permutation-invariant summaries, permuting hidden neurons does not change a model's route
    router = Router.fit(
        {t: {k: v[sp[t].train] for k, v in z.params.items()} for t, z in trees.items()}, features="summary"
    )
    p = {k: np.asarray(v)[:3].copy() for k, v in trees["tree-b"].params.items()}
    perm = np.random.default_rng(0).permutation(16)
    q = dict(
        p,
        **{
            "layers.0.weight": p["layers.0.weight"][:, perm],
            "layers.0.bias": p["layers.0.bias"][:, perm],
            "layers.1.weight": p["layers.1.weight"][:, :, perm],
        },
    )
    assert router.route(q) == router.route(p)
    back = Router.from_json(router.to_json())
    assert back.features == "summary" and back.route(p) == router.route(p)
    other = {"layers.0.weight": np.zeros((1, 8, 64)), "layers.0.bias": np.zeros((1, 8))}
    with pytest.raises(ShapeError, match="no expert tree"):
        router.route(other)


def test_modelj_layout_roundtrip(trees, tmp_path):
    zoo = trees["tree-b"]
    sp = split_models(len(zoo), seed=0)
    write_modelj(zoo, tmp_path / "subset", splits={"train": sp.train, "val": sp.val, "test": sp.test})
    got = load_modelj(tmp_path / "subset", layer="layers.1.weight")
    order = [zoo.ids.index(i) for i in got.ids]
    np.testing.assert_array_equal(got.x, zoo_layer(zoo, "layers.1.weight")[order])
    assert got.labels[0] == [c for c in zoo.meta["classes"][order[0]] if c is not None]
    assert sorted(got.split_indices()["test"].tolist()) == sorted(order.index(i) for i in sp.test)
    assert got.hparams[0]["steps"] == 40
    with pytest.raises(InvalidValueError, match=r"layers\.1\.weight"):
        load_modelj(tmp_path / "subset", layer="head.weight")
    # a model of another width in the same subset: the error names models and shapes
    from weightspace._safetensors import write_safetensors

    write_safetensors(
        tmp_path / "subset" / "odd.safetensors",
        {"layers.1.weight": np.zeros((7, 16), np.float32)},
        {"dataset_chosen_targets": "['0', '1']"},
    )
    with pytest.raises(ShapeError, match=r"\[7, 16\].*odd"):
        load_modelj(tmp_path / "subset", layer="layers.1.weight")


def test_lora_subset_file(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 2, 6)).astype(np.float32), rng.normal(size=(5, 4, 2)).astype(np.float32)
    write_lora_subset(
        tmp_path / "sd.safetensors",
        {"up.0": (a, b)},
        ids=[f"l{i}" for i in range(5)],
        labels=["cat", "dog", "cat", ["dog", "cat"], "owl"],
        alpha=4.0,
    )
    got = load_lora_subset(tmp_path / "sd.safetensors", layer="up.0")
    np.testing.assert_allclose(got.x, 2.0 * (b @ a), rtol=1e-6)
    assert got.labels[3] == ["dog", "cat"] and got.classes == ["cat", "dog", "owl"]
    with pytest.raises(InvalidValueError, match=r"\['up.0'\]"):
        load_lora_subset(tmp_path / "sd.safetensors", layer="down.0")


def test_cli_train_predict_layers(trees, tmp_path, capsys):
    from weightspace.cli import main

    both = tmp_path / "both.safetensors"
    save_zoo(concat([trees["tree-a"], trees["tree-b"]]), both)  # same arch: one zoo, a `tree` column
    out = tmp_path / "px"
    assert (
        main(
            [
                "probex",
                "train",
                str(both),
                "--layer",
                "layers.1.weight",
                "--out",
                str(out),
                "--steps",
                "20",
                "--r-u",
                "8",
                "--r-v",
                "8",
                "--r-t",
                "16",
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["trees"]) == {"tree-a", "tree-b"} and (out / "router.json").exists()
    model = tmp_path / "one.safetensors"
    from weightspace.zoo import save_model

    z = trees["tree-b"]
    save_model(model, z.arch, z.model(0), z.row(0))
    assert main(["probex", "predict", str(out), str(model), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["id"] == "tree-b-000" and rows[0]["tree"] == "tree-b" and len(rows[0]["scores"]) == 10
    assert main(["probex", "train", str(both), "--layer", "nope", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "layers.0.weight" in err and not (tmp_path / "bad").exists()
    assert main(["probex", "predict", str(tmp_path), str(model)]) == 2
    assert "not a ProbeX directory" in capsys.readouterr().err


SHARDED = textwrap.dedent(
    """
    import os, json
    import numpy as np, jax
    from weightspace.parallel import make_mesh
    from weightspace.probex import DEFAULT_TRAIN, ProbeXConfig, train_expert
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6, 5)).astype(np.float32)
    y = (x.mean((1, 2))[:, None] > np.array([-0.1, 0.0, 0.1])).astype(np.float32)
    kw = dict(class_names=["a", "b", "c"], train_idx=np.arange(64), members=2, config=ProbeXConfig(r_u=4, r_v=4, r_t=8),
              train_config=DEFAULT_TRAIN.replace(steps=15, batch_size=32))
    e1, _ = train_expert(x, y, **kw)
    e2, _ = train_expert(x, y, mesh=make_mesh(), **kw)
    print(json.dumps({"devices": len(jax.devices()),
                      "diff": float(np.abs(e1.outputs(x) - e2.outputs(x)).max())}))
    """
)


def test_sharded_training_equals_unsharded():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    res = subprocess.run(
        [sys.executable, "-c", SHARDED],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["devices"] == 8 and got["diff"] < 1e-4


def test_expert_inference_last_chunk_does_not_recompile() -> None:
    """ProbeX inference goes through the one pad-and-chunk helper: a ragged last chunk reuses the program."""
    from weightspace.probex._experts import _apply, _apply_jit
    from weightspace.testing import assert_no_recompile

    model = make_ensemble(ProbeXSpec(4, 3, 2, ProbeXConfig(r_u=2, r_v=2, r_t=3)), 2, seed=0)
    x = np.random.default_rng(0).normal(size=(10, 4, 3)).astype(np.float32)
    first = _apply(model, x[:4], "represent", chunk=4)
    with assert_no_recompile(_apply_jit):
        out = _apply(model, x, "represent", chunk=4)  # 4 + 4 + 2 (padded to 4)
    assert out.shape == (2, 10, 3)
    np.testing.assert_allclose(out[:, :4], first, rtol=1e-6)

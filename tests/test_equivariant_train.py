"""weightspace.equivariant training: the contrastive loss, augmentations, fit on learn, save/load, the embedding
gallery and its CLI."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weightspace._errors import ConfigError
from weightspace.equivariant import (
    Augment,
    augment,
    bucketize,
    build_encoder,
    contrastive_loss,
    embed_gallery,
    embed_zoo,
    features_of,
    load_encoder,
    neighbours,
    save_encoder,
    task_labels,
    train_contrastive,
)
from weightspace.learn import TrainConfig
from weightspace.nets import SIREN
from weightspace.testing import assert_tree_allclose
from weightspace.zoo import Zoo, concat


def test_contrastive_losses_rank_good_above_bad() -> None:
    z = jax.random.normal(jax.random.key(0), (8, 4))
    z = jnp.concatenate([z, z + 0.01])  # views: i and i + 8
    right = jnp.concatenate([jnp.arange(8)] * 2)
    wrong = jnp.concatenate([jnp.arange(8), jnp.roll(jnp.arange(8), 1)])
    for loss in ("ntxent", "margin"):
        assert float(contrastive_loss(z, right, loss=loss)) < float(contrastive_loss(z, wrong, loss=loss))
    with pytest.raises(ConfigError, match="unknown contrastive loss"):
        contrastive_loss(z, right, loss="triplet")


def test_task_labels_treat_class_lists_as_sets() -> None:
    assert task_labels([["a", "b"], ["b", "a"], ["c"], "x"]).tolist() == [0, 0, 1, 2]


@pytest.fixture(scope="module")
def tasks_zoo() -> Zoo:
    """Two 'tasks' of tiny SIRENs that differ in how they were initialised (a learnable difference)."""
    arch = SIREN(hidden=(6, 6))
    a = Zoo.init(arch, 12, key=jax.random.key(0), scale=0.3, name="ta")
    b = Zoo.init(arch, 12, key=jax.random.key(1), scale=1.0, name="tb")
    z = concat([a, b], name="tasks")
    return z.with_meta(
        id=[f"m{i:02d}" for i in range(24)], task=["A"] * 12 + ["B"] * 12, label_name=["A"] * 12 + ["B"] * 12
    )


@pytest.mark.slow
def test_augment_keeps_padding_and_permutation_only_positives_are_identical(tasks_zoo: Zoo) -> None:
    enc = build_encoder(
        {"kind": "np", "taps": [1], "width": 4, "depth": 1, "embed_dim": 8, "max_inputs": 2, "max_outputs": 1}
    )
    f = jax.tree_util.tree_map(lambda a: a[0], features_of(tasks_zoo))
    run = jax.jit(augment, static_argnums=2)
    embed = jax.jit(lambda v: enc(v))
    y = run(f, jax.random.key(0), Augment())
    assert not np.allclose(np.asarray(y.weights[1]), np.asarray(f.weights[1]))
    # a positive made only of a permutation: the invariant encoder gives it the anchor's embedding
    only_perm = Augment(noise=0.0, dropout=0.0, rescale=1.0, flip=0.0, permute=True)
    p = run(f, jax.random.key(1), only_perm)
    assert not np.allclose(np.asarray(p.weights[1]), np.asarray(f.weights[1]))
    assert_tree_allclose(embed(p), embed(f))


@pytest.mark.slow
def test_train_save_load_embed_neighbours(tasks_zoo: Zoo, tmp_path) -> None:
    buckets = bucketize(tasks_zoo)
    labels = [task_labels([tasks_zoo.meta["task"][r] for _, r in b.rows]) for b in buckets]
    enc = build_encoder(
        {"kind": "np", "taps": [1], "width": 8, "depth": 1, "embed_dim": 8, "max_inputs": 2, "max_outputs": 1}, seed=0
    )
    before, _ = embed_zoo(enc, tasks_zoo)
    cfg = TrainConfig(steps=200, batch_size=24, learning_rate=1e-2, schedule="cosine", warmup=10, eval_every=50, seed=0)
    _, rep = train_contrastive(enc, buckets, labels, train_config=cfg)
    assert rep.steps_done == 200
    assert rep.history[-1]["loss"] < rep.history[0]["loss"]
    after, _ = embed_zoo(enc, tasks_zoo)
    assert not np.allclose(before, after)
    path = save_encoder(enc, tmp_path / "enc", extra={"task": "task"})
    again = load_encoder(path)
    assert_tree_allclose(embed_zoo(again, tasks_zoo)[0], after)
    g = embed_gallery(again, tasks_zoo, tmp_path / "gallery")
    assert len(g) == 24 and g.num_probes == 8
    hits = neighbours(g, "m03", top=5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5] and "m03" not in [h.model_id for h in hits]
    # trained: the nearest neighbours of a task-A model are mostly task-A models
    assert sum(h.class_name == "A" for h in hits) >= 3
    # the CLI over the same gallery
    from weightspace.cli import main

    assert main(["neighbours", str(tmp_path / "gallery"), "m03", "--top", "3", "--json"]) == 0


def test_cli_embed_and_bad_gallery(tasks_zoo: Zoo, tmp_path, capsys) -> None:
    from weightspace.cli import main
    from weightspace.zoo import save_zoo

    enc = build_encoder(
        {"kind": "graph", "taps": [1], "width": 4, "rounds": 1, "embed_dim": 8, "max_inputs": 2, "max_outputs": 1},
        seed=0,
    )
    save_encoder(enc, tmp_path / "enc")
    save_zoo(tasks_zoo, tmp_path / "zoo.safetensors")
    assert (
        main(
            [
                "embed",
                str(tmp_path / "zoo.safetensors"),
                "--encoder",
                str(tmp_path / "enc"),
                "--out",
                str(tmp_path / "g"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["neighbours", str(tmp_path / "g"), "m20", "--top", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in out] == [1, 2]
    # a ProbeLog gallery is not an embedding gallery
    from weightspace.search import Responses, build_gallery

    build_gallery(
        Responses("r", np.random.default_rng(0).normal(size=(2, 6, 1)), ["a", "b"]),
        np.zeros((6, 2), np.float32),
        tmp_path / "probelog",
    )
    with pytest.raises(ConfigError, match="not an embedding gallery"):
        neighbours(tmp_path / "probelog", "a")


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"kind": "mlp"}, "unknown encoder kind 'mlp'"),
        ({"taps": [1]}, "unknown encoder kind None"),
        ({"kind": "np", "rounds": 2}, r"unknown fields \['rounds'\]"),
        ({"kind": "graph", "width": 0}, "GraphEncoderConfig.width must be a positive int"),
        ({"kind": "np", "taps": []}, "NPEncoderConfig.taps must be a non-empty tuple"),
    ],
    ids=["bad-kind", "no-kind", "field-of-other-kind", "zero-width", "no-taps"],
)
def test_encoder_configs_are_frozen_and_checked(cfg, match) -> None:
    from weightspace.equivariant import GraphEncoderConfig, NPEncoderConfig, encoder_config

    with pytest.raises(ConfigError, match=match):
        build_encoder(cfg)
    for c in (NPEncoderConfig(taps=(1,), width=4, embed_dim=8), GraphEncoderConfig(taps=(1, 9), rounds=1)):
        assert encoder_config(c.to_dict()) == c and hash(c) == hash(encoder_config(c.to_dict()))
        assert build_encoder(c).config == c  # the module keeps its frozen config (static graph data)

"""Penultimate features through the probe engine, and the ``weightspace rank`` command."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import weightspace.selection as S
from weightspace import ConfigError
from weightspace.cli import main
from weightspace.nets import ACTIVATIONS, CNN, MLP, SIREN
from weightspace.testing import assert_tree_allclose
from weightspace.zoo import Zoo, save_zoo


def _mlp_hidden(p, x):
    h = x.reshape(x.shape[0], -1)
    h = ACTIVATIONS["relu"](h @ p["layers.0.weight"].T + p["layers.0.bias"])
    return h


def test_penultimate_features_equal_hand_written_forward():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((5, 8, 8, 1), np.float32))
    mlp = MLP(in_features=64, hidden=(16,), out_features=10, image_shape=(8, 8, 1))
    p = mlp.init(jax.random.key(0))
    assert_tree_allclose(PF(mlp).apply(p, x), _mlp_hidden(p, x))
    cnn = CNN(image_shape=(8, 8, 1), channels=(4, 6), dense=(7,), out_features=3)
    q = cnn.init(jax.random.key(1))
    h = PF(cnn).apply(q, x)
    assert h.shape == (5, 7)
    assert_tree_allclose(h @ q["head.weight"].T + q["head.bias"], cnn.apply(q, x))
    assert S.final_layer(cnn) == "head"
    with pytest.raises(ConfigError, match="no final dense layer"):
        S.final_layer(_NoHead())


def PF(arch):
    return S.PenultimateFeatures(base=arch)


class _NoHead(SIREN):
    @property
    def num_outputs(self):
        return 5


def test_extract_features_equals_per_model_loop():
    arch = CNN(image_shape=(8, 8, 1), channels=(4,), out_features=3)
    zoo = Zoo.init(arch, 3, key=jax.random.key(0))
    images = np.random.default_rng(0).random((11, 8, 8, 1)).astype(np.float32)
    feats, probs = S.extract_features(zoo, images)
    for i in range(3):
        p = zoo.model(i)
        assert_tree_allclose(feats[i], np.asarray(PF(arch).apply(p, jnp.asarray(images))))
        assert_tree_allclose(probs[i], np.asarray(jax.nn.softmax(arch.apply(p, jnp.asarray(images)))))


def test_rank_command_prints_every_metric(tmp_path, capsys):
    arch = MLP(in_features=64, hidden=(16,), out_features=10, image_shape=(8, 8, 1))
    zoo = Zoo.init(arch, 3, key=jax.random.key(0), name="tiny")
    path = save_zoo(zoo, tmp_path / "tiny.safetensors")
    assert (
        main(
            [
                "rank",
                "--models",
                str(path),
                "--task",
                "digits",
                "--limit",
                "200",
                "--json",
                "--metrics",
                "logme",
                "leep",
                "h_score",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in out["ranking"]] == [1, 2, 3]
    logmes = [r["logme"] for r in out["ranking"]]
    assert logmes == sorted(logmes, reverse=True)
    assert {r["id"] for r in out["ranking"]} == set(zoo.ids)
    assert main(["rank", "--models", str(path), "--task", "digits", "--limit", "200", "--metrics", "otce"]) == 2
    assert "source data" in capsys.readouterr().err

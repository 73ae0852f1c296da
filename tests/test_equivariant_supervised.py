"""weightspace.equivariant.train_supervised: encoder + head trained end to end on a per-model target."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from weightspace._errors import ConfigError, ShapeError
from weightspace.equivariant import bucketize, build_encoder, train_supervised
from weightspace.learn import TrainConfig, kendall_tau
from weightspace.nets import SIREN
from weightspace.testing import assert_permutation_invariant
from weightspace.zoo import Zoo, concat

ENC = {"kind": "np", "taps": [1], "width": 8, "depth": 1, "embed_dim": 16, "max_inputs": 2, "max_outputs": 1}


@pytest.fixture(scope="module")
def scaled_zoo() -> Zoo:
    """SIRENs initialised at 6 scales: a learnable class (small vs large) and a learnable value (the scale)."""
    arch = SIREN(hidden=(6, 6))
    scales = [0.2, 0.35, 0.5, 0.8, 1.1, 1.5]
    zoos = [Zoo.init(arch, 8, key=jax.random.key(i), scale=s, name=f"s{i}") for i, s in enumerate(scales)]
    z = concat(zoos, name="scaled")
    scale = np.repeat(scales, 8)
    return z.with_meta(
        id=[f"m{i:02d}" for i in range(len(z))], scale=scale.tolist(), big=(scale > 0.6).astype(int).tolist()
    )


def _split(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = np.random.default_rng(0).permutation(n)
    return idx[: n // 2], idx[n // 2 : 3 * n // 4], idx[3 * n // 4 :]


@pytest.mark.parametrize("task", ["classify", "regress"], ids=["classify", "regress"])
def test_supervised_learns_held_out_targets_and_stays_invariant(scaled_zoo: Zoo, task: str) -> None:
    bucket = bucketize(scaled_zoo)[0]
    tr, va, te = _split(len(bucket))
    column = "big" if task == "classify" else "scale"
    y = np.asarray(scaled_zoo.meta[column], np.float32 if task == "regress" else np.int64)
    run = train_supervised(
        build_encoder(ENC, seed=0),
        bucket,
        y,
        task=task,
        train=tr,
        val=va,
        train_config=TrainConfig(steps=120, batch_size=16, learning_rate=3e-3, eval_every=40),
        progress=False,
    )
    pred = run.predict(bucket.select(te))
    if task == "classify":
        # 24 training models overfit the scale-free pooled features: 8 of 12 held-out right (chance 6)
        assert np.mean(pred == y[te]) >= 0.65
    else:
        assert kendall_tau(pred, y[te]) > 0.6
        assert abs(float(pred.mean()) - float(y[te].mean())) < 0.3  # standardisation is undone
    assert run.report.best_step is not None
    assert_permutation_invariant(run.model, scaled_zoo)


def test_supervised_bad_input(scaled_zoo: Zoo) -> None:
    bucket = bucketize(scaled_zoo)[0]
    enc = build_encoder(ENC, seed=0)
    with pytest.raises(ConfigError, match="unknown task"):
        train_supervised(enc, bucket, np.zeros(len(bucket)), task="ranking", train=np.arange(4))
    with pytest.raises(ShapeError, match=r"must be \[models\] with 48 models, got \(47,\)"):
        train_supervised(enc, bucket, np.zeros(len(bucket) - 1), task="regress", train=np.arange(4))

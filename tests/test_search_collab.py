"""Collaborative probing: matrix completion recovers a planted low-rank matrix; probing bookkeeping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weightspace import ConfigError, InvalidValueError, ShapeError
from weightspace.data import ProbeSet
from weightspace.nets import MLP
from weightspace.search import collaborative_probe, complete_matrix, randomized_svd
from weightspace.testing import assert_tree_allclose
from weightspace.zoo import Zoo


def _planted(rows=120, cols=80, rank=4, seed=0, observed=0.4):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(rows, rank)) @ rng.normal(size=(rank, cols))) * rng.uniform(0.5, 3, (rows, 1))
    return x.astype(np.float32), rng.random((rows, cols)) < observed


# the exact SVD is slow under XLA on CPU (~35 ms for 120 x 80): it gets a denser mask, fewer iterations
@pytest.mark.parametrize(
    "method,observed,iters", [("svd", 0.6, 40), ("randomized", 0.4, 300)], ids=["svd", "randomized"]
)
def test_completion_recovers_planted_low_rank(method, observed, iters):
    x, seen = _planted(observed=observed)
    c = complete_matrix(
        np.where(seen, x, np.nan), seen, rank=4, iters=iters, tol=1e-7, method=method, key=jax.random.key(0)
    )
    assert np.array_equal(c.values[seen], x[seen])  # observed entries untouched
    err = np.linalg.norm(c.values - x) / np.linalg.norm(x)
    assert err < 1e-3, (err, c.iterations)
    # the observed entries alone (row means elsewhere) are far off: completion is doing the work
    base = np.where(seen, x, (np.where(seen, x, 0).sum(1) / seen.sum(1))[:, None])
    assert np.linalg.norm(base - x) / np.linalg.norm(x) > 0.5


def test_randomized_svd_matches_exact_svd_on_low_rank():
    x, _ = _planted(rank=6)
    u, s, vt = randomized_svd(jnp.asarray(x), 6, key=jax.random.key(1))
    s_ref = np.linalg.svd(x.astype(np.float64), compute_uv=False)[:6]
    assert_tree_allclose(np.asarray(s), s_ref.astype(np.float32), scale=100)  # float32 SVD of an 80-wide matrix
    assert_tree_allclose(np.asarray((u * s) @ vt), x, atol=1e-3 * np.abs(x).max())


def test_completion_errors():
    x, seen = _planted()
    with pytest.raises(ShapeError):
        complete_matrix(x, seen[:, :10])
    with pytest.raises(ConfigError):
        complete_matrix(x, seen, method="als")
    empty = seen.copy()
    empty[3] = False
    with pytest.raises(InvalidValueError, match="no observed"):
        complete_matrix(x, empty)
    with pytest.raises(InvalidValueError, match="rank"):
        complete_matrix(x, seen, rank=0)


def test_collaborative_probe_completes_a_linear_hub():
    arch = MLP(in_features=36, hidden=(), out_features=3, image_shape=(6, 6, 1))
    zoo = Zoo.init(arch, 12, key=jax.random.key(0), name="lin")
    # probes on a 3-D affine subspace: linear models' responses form a rank-4 (logits x probes) matrix
    rng = np.random.default_rng(0)
    data = (rng.random((40, 3)) @ rng.random((3, 36)) / 3).reshape(40, 6, 6, 1).astype(np.float32)
    probes = ProbeSet(name="affine", data=data, provenance="test")
    res = collaborative_probe(zoo, probes, fraction=0.5, key=jax.random.key(1), groups=12, rank=4, iters=150)
    assert res.forward_passes == 12 * 20 and res.forward_passes_full == 12 * 40
    assert res.saved == pytest.approx(0.5)
    full = np.stack([np.asarray(arch.apply(zoo.model(i), jnp.asarray(data))) for i in range(12)])
    seen = res.observed[0]
    assert seen.sum(1).tolist() == [20] * 12 and seen.sum(0).min() >= 2
    got = res.responses[0].values
    mask = np.repeat(seen[:, :, None], 3, 2)
    assert_tree_allclose(got[mask], full[mask], scale=10)
    err = np.linalg.norm(got - full) / np.linalg.norm(full)
    assert err < 1e-2, err
    with pytest.raises(InvalidValueError):
        collaborative_probe(zoo, probes, fraction=0.0, key=jax.random.key(1))

"""ProbeLog math: descriptors, probe selection, discrepancy and the search kernels vs NumPy oracles."""

import jax
import numpy as np
import pytest

from weightspace import ConfigError, InvalidValueError, ShapeError
from weightspace.search import (
    SELECTIONS,
    discrepancy,
    logit_descriptors,
    model_descriptors,
    normalize_descriptors,
    search_blocks,
    select_probes,
    to_blocks,
)
from weightspace.search._kernels import _gather_topk
from weightspace.testing import assert_no_recompile, assert_tree_allclose


def _np_norm(v):
    v = np.asarray(v, np.float64)
    out = np.zeros_like(v)
    for i, row in enumerate(v.reshape(-1, v.shape[-1])):
        s = row.std()
        if s > 1e-6 * np.abs(row).max():
            out.reshape(-1, v.shape[-1])[i] = (row - row.mean()) / s
    return out


def _np_select(q, k, selection):
    out = []
    for row in q:
        if selection == "top":
            idx = sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]
        elif selection == "bottom":
            idx = sorted(range(len(row)), key=lambda i: (row[i], i))[:k]
        elif selection == "quantiles":
            order = sorted(range(len(row)), key=lambda i: (row[i], i))
            idx = [order[int(np.rint(r))] for r in np.linspace(0, len(row) - 1, k)]
        else:
            idx = list(range(len(row)))
        out.append(sorted(idx))
    return np.array(out)


def _np_discrepancy(q, g, idx, distance):
    d = np.zeros((len(q), len(g)))
    for a in range(len(q)):
        s = idx[a]
        for b in range(len(g)):
            x, y = q[a, s].astype(np.float64), g[b, s].astype(np.float64)
            if distance == "l2":
                d[a, b] = np.sqrt(((x - y) ** 2).sum())
            elif distance == "l1":
                d[a, b] = np.abs(x - y).sum()
            else:
                d[a, b] = 1 - x @ y / np.sqrt((x @ x) * (y @ y))
    return d


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_normalize_matches_numpy_and_guards_constant_rows(dtype):
    rng = np.random.default_rng(0)
    v = rng.normal(3.0, 2.0, size=(4, 5, 30)).astype(dtype)
    v[1, 2] = 7.0  # a constant logit: std = 0
    z = np.asarray(normalize_descriptors(v))
    assert np.isfinite(z).all()
    assert_tree_allclose(z, _np_norm(v).astype(np.float32), scale=10)  # float32 z-scores of ~30 terms
    assert (z[1, 2] == 0).all()


def test_normalize_rejects_empty():
    with pytest.raises(ShapeError):
        normalize_descriptors(np.zeros((3, 0)))


def test_logit_and_model_descriptors_match_loops():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(3, 20, 4)).astype(np.float32)
    d = np.asarray(logit_descriptors(r))
    for m in range(3):
        for j in range(4):
            assert_tree_allclose(d[m * 4 + j], _np_norm(r[m, :, j]).astype(np.float32), scale=10)
    raw = np.asarray(logit_descriptors(r, normalize=False))
    assert_tree_allclose(raw[5], r[1, :, 1])
    md = np.asarray(model_descriptors(r))
    for m in range(3):
        pooled = _np_norm(r[m].T).max(0)
        assert_tree_allclose(md[m], _np_norm(pooled).astype(np.float32), scale=10)
    with pytest.raises(ConfigError):
        model_descriptors(r, pool="median")


@pytest.mark.parametrize("selection", ["top", "bottom", "quantiles", "all"], ids=["top", "bottom", "quantiles", "all"])
def test_select_probes_matches_oracle(selection):
    rng = np.random.default_rng(2)
    q = rng.normal(size=(5, 40)).astype(np.float32)
    q[0, :10] = 1.0  # ties: lower index first
    got = select_probes(q, 7, selection=selection)
    assert got.tolist() == _np_select(q, 7 if selection != "all" else 40, selection).tolist()


def test_select_random_needs_key_and_is_deterministic():
    q = np.zeros((3, 50), np.float32)
    with pytest.raises(ConfigError):
        select_probes(q, 5, selection="random")
    a = select_probes(q, 5, selection="random", key=jax.random.key(0))
    b = select_probes(q, 5, selection="random", key=jax.random.key(0))
    assert (a == b).all() and a.shape == (3, 5)
    assert all(len(set(r)) == 5 for r in a.tolist()) and a.max() < 50
    with pytest.raises(InvalidValueError):
        select_probes(q, 0)
    with pytest.raises(ConfigError):
        select_probes(q, 3, selection="middle")  # type: ignore[arg-type]


@pytest.mark.parametrize("distance", ["l2", "l1", "cosine"], ids=["l2", "l1", "cosine"])
@pytest.mark.parametrize("selection", ["top", "bottom", "quantiles", "all"], ids=["top", "bottom", "quantiles", "all"])
def test_discrepancy_matches_numpy(distance, selection):
    rng = np.random.default_rng(3)
    q = np.asarray(normalize_descriptors(rng.normal(size=(4, 30))))
    g = np.asarray(normalize_descriptors(rng.normal(size=(9, 30))))
    got = discrepancy(q, g, k=6, selection=selection, distance=distance)
    want = _np_discrepancy(q, g, _np_select(q, 6 if selection != "all" else 30, selection), distance)
    assert_tree_allclose(got, want.astype(np.float32), scale=10)


def test_discrepancy_shape_errors():
    with pytest.raises(ShapeError):
        discrepancy(np.zeros((2, 5)), np.zeros((3, 6)))
    with pytest.raises(ConfigError):
        discrepancy(np.zeros((2, 5)), np.zeros((3, 5)), distance="l3")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "method,distance",
    [("gather", "l2"), ("gather", "l1"), ("gather", "cosine"), ("dense", "l2"), ("dense", "cosine")],
    ids=["gather-l2", "gather-l1", "gather-cosine", "dense-l2", "dense-cosine"],
)
@pytest.mark.parametrize("selection", SELECTIONS, ids=str)
def test_search_blocks_equals_dense_reference(method, distance, selection):
    rng = np.random.default_rng(4)
    g = np.asarray(normalize_descriptors(rng.normal(size=(203, 24))))  # 203 logits: ragged last block
    q = np.asarray(normalize_descriptors(rng.normal(size=(5, 24))))
    key = jax.random.key(7)
    ref = discrepancy(q, g, k=5, selection=selection, distance=distance, key=key)
    out = search_blocks(
        to_blocks(g.T, block=64),
        q,
        top=6,
        k=5,
        selection=selection,
        distance=distance,
        method=method,
        key=key,
        query_batch=2,
    )
    assert out.indices.shape == (5, 6)
    assert_tree_allclose(out.scores, np.sort(ref, 1)[:, :6], scale=10)
    assert_tree_allclose(np.take_along_axis(ref, out.indices, 1), out.scores, scale=10)


def test_search_blocks_float16_storage_and_shards():
    rng = np.random.default_rng(5)
    g = np.asarray(normalize_descriptors(rng.normal(size=(100, 32))))
    shards = [g[:37].T.astype(np.float16), g[37:].T.astype(np.float16)]
    m = to_blocks(shards, block=16)
    assert m.blocks.dtype == np.float16 and m.num_logits == 100
    out = search_blocks(m, g[[3, 77]], top=1, k=8)
    assert out.indices[:, 0].tolist() == [3, 77]
    assert_tree_allclose(out.scores[:, 0], np.zeros(2, np.float32), atol=0.05)  # float16 storage round-off


def test_planted_logit_ranks_first():
    rng = np.random.default_rng(6)
    g = np.asarray(normalize_descriptors(rng.normal(size=(5000, 200))))
    planted = [17, 2500, 4999]
    q = g[planted] + 0.3 * rng.normal(size=(3, 200))
    out = search_blocks(to_blocks(g.T.astype(np.float16), block=1024), np.asarray(normalize_descriptors(q)), top=3)
    assert out.indices[:, 0].tolist() == planted


def test_search_blocks_no_recompile_and_bad_queries():
    rng = np.random.default_rng(8)
    m = to_blocks(rng.normal(size=(16, 50)).astype(np.float32), block=32)
    search_blocks(m, rng.normal(size=(1, 16)), top=3, k=4, method="gather")
    with assert_no_recompile(_gather_topk):
        search_blocks(m, rng.normal(size=(1, 16)), top=3, k=4, method="gather")
    with pytest.raises(ShapeError, match="probes"):
        search_blocks(m, rng.normal(size=(1, 15)))
    with pytest.raises(ConfigError):
        search_blocks(m, rng.normal(size=(1, 16)), method="dense", distance="l1")

"""weightspace.learn evaluation harness and FLOPs, against per-example loops, SciPy and scikit-learn."""

import collections
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from sklearn.covariance import LedoitWolf
from sklearn.metrics import average_precision_score, roc_auc_score

from weightspace import InvalidValueError, ShapeError, WeightspaceError
from weightspace.learn import (
    ResultsTable,
    exact_set_accuracy,
    flops_per_model,
    kendall_tau,
    knn_classify,
    linear_probe,
    mean_average_precision,
    one_class_auc,
    one_class_scores,
    retrieval_recall,
    top_k_accuracy,
)
from weightspace.learn._flops import _flops_of


def _dist(a, b, metric):
    if metric == "cosine":
        return 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.sum((a - b) ** 2))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"], ids=["cos", "l2"])
@pytest.mark.parametrize("k", [1, 4, 7], ids=["k1", "k4", "k7"])
def test_knn_matches_loop(metric, k):
    rng = np.random.default_rng(k)
    tr = rng.standard_normal((40, 6))
    y = np.array(["cat", "dog", "eel"])[rng.integers(0, 3, 40)]
    q = rng.standard_normal((25, 6))
    got = knn_classify(tr, y, q, k=k, metric=metric)
    for i in range(25):
        d = [_dist(q[i], t, metric) for t in tr]
        nn = sorted(range(40), key=lambda j: (d[j], j))[:k]
        counts = collections.Counter(y[j] for j in nn)
        best = max(counts.values())
        want = next(y[j] for j in nn if counts[y[j]] == best)
        assert got[i] == want


@pytest.mark.parametrize("metric", ["cosine", "euclidean"], ids=["cos", "l2"])
def test_retrieval_recall_matches_loop(metric):
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((30, 5))
    sets = [frozenset({0, 1}), frozenset({2}), frozenset({1, 0}), frozenset({3, 4})]
    labels = [sets[i] for i in rng.integers(0, 4, 30)]
    queries, gallery = np.arange(0, 30, 2), np.arange(5, 30)
    got = retrieval_recall(emb, labels, ks=(1, 3, 8), queries=queries, gallery=gallery, metric=metric)
    for k in (1, 3, 8):
        hits = 0
        for q in queries:
            cand = [g for g in gallery if g != q]
            cand.sort(key=lambda g: (_dist(emb[q], emb[g], metric), list(gallery).index(g)))
            hits += any(labels[g] == labels[q] for g in cand[:k])
        assert got[k] == pytest.approx(hits / len(queries))
    full = retrieval_recall(emb, labels, ks=(29,))
    assert full[29] == pytest.approx(np.mean([sum(lab == labels[i] for lab in labels) > 1 for i in range(30)]))


def test_linear_probe_tasks():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8))
    w = rng.standard_normal((8, 3))
    y = np.argmax(x @ w + 0.3 * rng.standard_normal((300, 3)), axis=1)
    acc = linear_probe(x[:200], y[:200], x[200:], y[200:], l2=1e-2)
    mu, sd = x[:200].mean(0), x[:200].std(0)
    ref = LogisticRegression(C=1 / (1e-2 * 200), max_iter=2000).fit((x[:200] - mu) / sd, y[:200])
    assert acc == pytest.approx(np.mean(ref.predict((x[200:] - mu) / sd) == y[200:]))
    assert acc > 0.8
    r = x @ w[:, 0] + 0.1 * rng.standard_normal(300)
    assert linear_probe(x[:200], r[:200], x[200:], r[200:], task="regress") > 0.8
    ml = (x @ w > 0.5).astype(int)
    assert linear_probe(x[:200], ml[:200], x[200:], ml[200:], task="multilabel") > 0.9
    shuffled = rng.permutation(r)
    assert abs(linear_probe(x[:200], shuffled[:200], x[200:], shuffled[200:], task="regress")) < 0.2
    with pytest.raises(InvalidValueError, match="task"):
        linear_probe(x, y, x, y, task="cluster")


@pytest.mark.parametrize("n,p", [(200, 5), (20, 40)], ids=["n>p", "p>n"])
def test_one_class_scores_match_sklearn_ledoit_wolf(n, p):
    rng = np.random.default_rng(p)
    tr = rng.standard_normal((n, p)) @ rng.standard_normal((p, p))
    te = rng.standard_normal((15, p)) * 2
    ref = LedoitWolf().fit(tr).mahalanobis(te)
    np.testing.assert_allclose(one_class_scores(tr, te), ref, rtol=1e-6)


def test_one_class_auc_matches_sklearn():
    rng = np.random.default_rng(3)
    tr, inl, out = rng.standard_normal((100, 4)), rng.standard_normal((40, 4)), rng.standard_normal((30, 4)) + 0.7
    s_in, s_out = LedoitWolf().fit(tr).mahalanobis(inl), LedoitWolf().fit(tr).mahalanobis(out)
    ref = roc_auc_score(np.r_[np.zeros(40), np.ones(30)], np.r_[s_in, s_out])
    assert one_class_auc(tr, inl, out) == pytest.approx(ref)
    assert 0.6 < ref < 1.0


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["s0", "s1", "s2"])
def test_kendall_tau_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, 200).astype(float)
    b = a + rng.integers(0, 4, 200)
    assert kendall_tau(a, b) == pytest.approx(scipy.stats.kendalltau(a, b).statistic, abs=1e-12)
    c = rng.standard_normal(50)
    assert kendall_tau(c, -c) == pytest.approx(-1.0)
    assert np.isnan(kendall_tau(np.ones(5), np.arange(5)))


def test_mean_average_precision_matches_sklearn():
    rng = np.random.default_rng(0)
    t = (rng.random((60, 7)) < 0.3).astype(int)
    t[:, 6] = 0  # a class without positives is skipped
    s = np.round(t + rng.standard_normal((60, 7)), 1)  # rounding makes ties
    ref = np.mean([average_precision_score(t[:, c], s[:, c]) for c in range(6)])
    assert mean_average_precision(s, t) == pytest.approx(ref, abs=1e-12)


def test_exact_set_and_top_k_match_loops():
    rng = np.random.default_rng(0)
    s = np.round(rng.standard_normal((50, 6)), 1)
    t = (rng.random((50, 6)) < 0.4).astype(int)
    assert exact_set_accuracy(s, t, threshold=0.2) == pytest.approx(
        np.mean([all((s[i, c] > 0.2) == bool(t[i, c]) for c in range(6)) for i in range(50)])
    )
    y = rng.integers(0, 6, 50)
    got = top_k_accuracy(s, y, ks=(1, 3, 10))
    for k in (1, 3, 10):
        hits = [y[i] in sorted(range(6), key=lambda c: (-s[i, c], c))[:k] for i in range(50)]
        assert got[k] == pytest.approx(np.mean(hits))
    with pytest.raises(InvalidValueError, match="class indices"):
        top_k_accuracy(s, y + 6)


def test_results_table():
    t = ResultsTable()
    for seed in range(3):
        t.add("flat-mlp", "tau", 0.5 + 0.1 * seed, seed=seed, seconds=2.0 + seed, flops=1e6)
        t.add("flat-mlp", "acc", 0.9, seed=seed)
        t.add("statnn-gbt", "tau", 0.7, seed=seed)
    summ = t.summary()
    assert summ["flat-mlp"]["tau"] == pytest.approx((0.6, np.std([0.5, 0.6, 0.7])))
    assert summ["statnn-gbt"] == {"tau": (pytest.approx(0.7), pytest.approx(0.0))}
    md = t.to_markdown(digits=2).splitlines()
    assert md[0] == "| method | tau | acc | seconds | flops |"
    assert md[2] == "| flat-mlp | 0.60 ± 0.08 | 0.90 ± 0.00 | 3.00 | 1e+06 |"
    assert md[3] == "| statnn-gbt | 0.70 ± 0.00 | – | – | – |"
    back = ResultsTable.from_json(t.to_json())
    assert back.rows == t.rows and json.loads(t.to_json())["rows"][0]["seconds"] == 2.0
    with pytest.raises(InvalidValueError, match="already has"):
        t.add("flat-mlp", "acc", 0.1, seed=0)
    with pytest.raises(InvalidValueError, match="not a ResultsTable"):
        ResultsTable.from_json("{}")


def test_flops_per_model_counts_matmuls():
    m, d_out, d_in, b = 4, 32, 16, 8
    w = jax.ShapeDtypeStruct((m, d_out, d_in), jnp.float32)
    x = jax.ShapeDtypeStruct((m, b, d_in), jnp.float32)
    got = flops_per_model(lambda w, x: jnp.einsum("moi,mbi->mbo", w, x), w, x, models=m)
    assert got == 2 * b * d_out * d_in
    assert _flops_of([{"flops": 3.0}, {"flops": 4.0}]) == 7.0
    assert _flops_of({"flops": 5.0, "bytes accessed": 1.0}) == 5.0
    with pytest.raises(WeightspaceError, match="unavailable"):
        _flops_of(None)
    with pytest.raises(InvalidValueError, match="models"):
        flops_per_model(jnp.sin, x, models=0)


def test_bad_inputs_are_named():
    with pytest.raises(ShapeError, match=r"train_emb must be \[n, dim\]"):
        knn_classify(np.zeros(3), [0, 1, 2], np.zeros((1, 3)))
    with pytest.raises(InvalidValueError, match="query_emb holds 1 NaN"):
        knn_classify(np.zeros((3, 2)), [0, 1, 2], np.array([[np.nan, 0.0]]))
    with pytest.raises(ShapeError, match="labels has 2 labels for 3 items"):
        retrieval_recall(np.zeros((3, 2)), [0, 1])
    with pytest.raises(InvalidValueError, match="metric"):
        retrieval_recall(np.zeros((3, 2)), [0, 1, 1], metric="manhattan")

"""The one evaluation harness for weight encoders: k-NN, retrieval Recall@k, linear probes,
one-class detection, ranking and multi-label metrics, and a mean ± std results table.

Everything here runs on the host in NumPy (embeddings are small next to the weights they come
from); every metric is checked against SciPy / scikit-learn or a per-example loop in the tests.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

from weightspace._errors import ConfigError, InvalidValueError, ShapeError

_METRICS = ("cosine", "euclidean")
_CHUNK = 2048


# ---- input checks ------------------------------------------------------------------------------
def _emb(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, np.float64)
    if a.ndim != 2:
        raise ShapeError(f"{name} must be [n, dim] embeddings, got shape {a.shape}")
    if a.shape[0] == 0:
        raise ShapeError(f"{name} is empty")
    bad = int(np.sum(~np.isfinite(a)))
    if bad:
        raise InvalidValueError(f"{name} holds {bad} NaN/Inf value(s)")
    return a


def _vec(x: Any, name: str, n: int | None = None) -> np.ndarray:
    a = np.asarray(x, np.float64).reshape(-1)
    if n is not None and a.shape[0] != n:
        raise ShapeError(f"{name} has {a.shape[0]} entries, expected {n}")
    bad = int(np.sum(~np.isfinite(a)))
    if bad:
        raise InvalidValueError(f"{name} holds {bad} NaN/Inf value(s)")
    return a


def _codes(labels: Any, name: str, n: int) -> np.ndarray:
    """Integer codes of arbitrary hashable labels (ints, strings, frozensets...)."""
    if isinstance(labels, np.ndarray) and labels.dtype != object:
        if labels.ndim != 1:
            raise ShapeError(f"{name} must be one label per item ([n]), got shape {labels.shape}")
        vals: Any = labels
    else:
        vals = list(labels)
    if len(vals) != n:
        raise ShapeError(f"{name} has {len(vals)} labels for {n} items")
    if isinstance(vals, np.ndarray):
        return np.unique(vals, return_inverse=True)[1].reshape(-1)
    table: dict[Hashable, int] = {}
    try:
        return np.array([table.setdefault(v, len(table)) for v in vals], np.int64)
    except TypeError as e:
        raise InvalidValueError(f"{name} must be hashable (use frozenset/tuple for sets), got {e}") from None


def _check_metric(metric: str) -> None:
    if metric not in _METRICS:
        raise InvalidValueError(f"metric must be one of {_METRICS}, got {metric!r}")


def _distances(q: np.ndarray, g: np.ndarray, metric: str) -> np.ndarray:
    """``[len(q), len(g)]`` distances (cosine: 1 - cos; euclidean: squared L2)."""
    if q.shape[1] != g.shape[1]:
        raise ShapeError(f"query embeddings have dim {q.shape[1]}, the gallery has {g.shape[1]}")
    if metric == "cosine":
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        return 1.0 - qn @ gn.T
    return np.maximum((q**2).sum(1)[:, None] - 2 * q @ g.T + (g**2).sum(1)[None, :], 0.0)


# ---- neighbours --------------------------------------------------------------------------------
def knn_classify(
    train_emb: Float[Any, "n dim"],
    train_y: Any,
    query_emb: Float[Any, "q dim"],
    *,
    k: int = 5,
    metric: str = "cosine",
) -> np.ndarray:
    """k-nearest-neighbour majority vote.

    Each query takes the most frequent label among its ``k`` nearest training items; a tie goes
    to the tied label whose nearest member ranks first.

    Args:
        train_emb: ``[n, dim]`` labelled embeddings.
        train_y: ``[n]`` labels (any hashable values).
        query_emb: ``[q, dim]`` embeddings to classify.
        k: neighbours (clipped to ``n``).
        metric: ``"cosine"`` or ``"euclidean"``.

    Returns:
        ``[q]`` predicted labels (the values of ``train_y``).

    Example:
        >>> import numpy as np
        >>> from weightspace.learn import knn_classify
        >>> emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> knn_classify(emb, np.array(["a", "a", "b", "b"]), np.array([[1.0, 0.2], [0.2, 1.0]]), k=3).tolist()
        ['a', 'b']
    """
    _check_metric(metric)
    tr, qu = _emb(train_emb, "train_emb"), _emb(query_emb, "query_emb")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidValueError(f"k must be a positive int, got {k!r}")
    ys = train_y if isinstance(train_y, np.ndarray) else np.asarray(list(train_y), dtype=object)
    codes = _codes(ys, "train_y", tr.shape[0])
    uniq = np.empty(int(codes.max()) + 1, dtype=ys.dtype)
    uniq[codes] = ys
    k = min(int(k), tr.shape[0])
    out = np.empty(qu.shape[0], dtype=np.int64)
    for s in range(0, qu.shape[0], _CHUNK):
        d = _distances(qu[s : s + _CHUNK], tr, metric)
        nn = np.argsort(d, axis=1, kind="stable")[:, :k]
        lab = codes[nn]  # [q, k] in rank order
        counts = np.zeros((lab.shape[0], uniq.shape[0]), np.int64)
        np.add.at(counts, (np.arange(lab.shape[0])[:, None], lab), 1)
        best = counts.max(axis=1, keepdims=True)
        # First label (in rank order) whose count equals the maximum.
        winners = counts[np.arange(lab.shape[0])[:, None], lab] == best
        out[s : s + _CHUNK] = lab[np.arange(lab.shape[0]), np.argmax(winners, axis=1)]
    return uniq[out]


def retrieval_recall(
    emb: Float[Any, "n dim"],
    labels: Any,
    *,
    ks: Sequence[int] = (1, 5, 10),
    queries: np.ndarray | None = None,
    gallery: np.ndarray | None = None,
    metric: str = "cosine",
) -> dict[int, float]:
    """Recall@k: the fraction of queries with at least one same-label item among their k nearest.

    .. math:: \\mathrm{R@}k = \\frac{1}{|Q|}\\sum_{q\\in Q} \\mathbb{1}\\big[\\exists g \\in
        \\mathrm{NN}_k(q) \\setminus \\{q\\}: y_g = y_q\\big]

    Every query counts (one with no same-label item in the gallery scores 0); the query itself
    is never its own neighbour. Distance ties are broken by gallery order.

    Args:
        emb: ``[n, dim]`` embeddings.
        labels: ``[n]`` hashable labels (ints, strings, frozensets of classes...).
        ks: the cut-offs.
        queries: indices of the query items (default: all).
        gallery: indices of the gallery items (default: all).
        metric: ``"cosine"`` or ``"euclidean"``.

    Returns:
        ``{k: recall}``.

    Example:
        >>> import numpy as np
        >>> from weightspace.learn import retrieval_recall
        >>> emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
        >>> retrieval_recall(emb, [0, 0, 1, 1], ks=(1, 3))
        {1: 0.75, 3: 1.0}
    """
    _check_metric(metric)
    e = _emb(emb, "emb")
    n = e.shape[0]
    codes = _codes(labels, "labels", n)
    q = np.arange(n) if queries is None else np.asarray(queries, np.int64).reshape(-1)
    g = np.arange(n) if gallery is None else np.asarray(gallery, np.int64).reshape(-1)
    for name, idx in (("queries", q), ("gallery", g)):
        if idx.size == 0:
            raise ShapeError(f"retrieval_recall: {name} is empty")
        if idx.min() < 0 or idx.max() >= n:
            raise InvalidValueError(f"retrieval_recall: {name} indices out of range [0, {n})")
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise InvalidValueError(f"ks must be positive ints, got {ks}")
    kmax = max(ks)
    hits = {k: 0 for k in ks}
    for s in range(0, q.size, _CHUNK):
        qc = q[s : s + _CHUNK]
        d = _distances(e[qc], e[g], metric)
        d[qc[:, None] == g[None, :]] = np.inf  # never retrieve the query itself
        order = np.argsort(d, axis=1, kind="stable")[:, :kmax]
        valid = np.take_along_axis(d, order, axis=1) < np.inf
        same = (codes[g][order] == codes[qc][:, None]) & valid
        first = np.where(same.any(1), np.argmax(same, axis=1), kmax)
        for k in ks:
            hits[k] += int(np.sum(first < k))
    return {k: hits[k] / q.size for k in ks}


# ---- linear probe ------------------------------------------------------------------------------
def linear_probe(
    train_x: Float[Any, "n dim"],
    train_y: Any,
    test_x: Float[Any, "m dim"],
    test_y: Any,
    *,
    task: str = "classify",
    l2: float = 1e-3,
) -> float:
    """Fit a linear model on frozen embeddings and score it on the test set.

    Features are standardised with the training mean and std. The objective is the mean loss
    plus ``l2/2 * ||w||^2`` (scikit-learn's ``C = 1 / (l2 * n)``, ``alpha = l2 * n``).

    Args:
        train_x, test_x: ``[n, dim]`` / ``[m, dim]`` embeddings.
        train_y, test_y: labels ``[n]`` (classify), values ``[n]`` (regress) or a ``{0, 1}``
            matrix ``[n, classes]`` (multilabel).
        task: ``"classify"`` (multinomial logistic regression; returns accuracy),
            ``"regress"`` (ridge; returns Kendall tau) or ``"multilabel"`` (one logistic
            regression per class; returns mean average precision).
        l2: L2 penalty.

    Returns:
        The test score.

    Example:
        >>> import numpy as np
        >>> from weightspace.learn import linear_probe
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((200, 4)); y = (x[:, 0] > 0).astype(int)
        >>> linear_probe(x[:150], y[:150], x[150:], y[150:]) > 0.9
        True
    """
    tr, te = _emb(train_x, "train_x"), _emb(test_x, "test_x")
    with _sklearn_threads(tr.size):
        return _linear_probe(tr, train_y, te, test_y, task, l2)


def _linear_probe(tr: np.ndarray, train_y: Any, te: np.ndarray, test_y: Any, task: str, l2: float) -> float:
    from sklearn.linear_model import LogisticRegression, Ridge

    if tr.shape[1] != te.shape[1]:
        raise ShapeError(f"train_x has dim {tr.shape[1]}, test_x has {te.shape[1]}")
    if not (isinstance(l2, (int, float)) and l2 > 0 and math.isfinite(l2)):
        raise InvalidValueError(f"l2 must be a positive number, got {l2!r}")
    mu, sd = tr.mean(0), tr.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    tr, te = (tr - mu) / sd, (te - mu) / sd
    n = tr.shape[0]
    if task == "classify":
        ytr, yte = np.asarray(train_y).reshape(-1), np.asarray(test_y).reshape(-1)
        if ytr.shape[0] != n or yte.shape[0] != te.shape[0]:
            raise ShapeError(f"labels: {ytr.shape[0]}/{yte.shape[0]} for {n}/{te.shape[0]} embeddings")
        if np.unique(ytr).size < 2:
            return float(np.mean(yte == ytr[0]))
        clf = LogisticRegression(C=1.0 / (l2 * n), max_iter=2000)
        clf.fit(tr, ytr)
        return float(np.mean(clf.predict(te) == yte))
    if task == "regress":
        ytr, yte = _vec(train_y, "train_y", n), _vec(test_y, "test_y", te.shape[0])
        pred = Ridge(alpha=l2 * n).fit(tr, ytr).predict(te)
        return kendall_tau(pred, yte)
    if task == "multilabel":
        mtr, mte = np.asarray(train_y), np.asarray(test_y)
        if (
            mtr.ndim != 2
            or mte.ndim != 2
            or mtr.shape[0] != n
            or mte.shape[0] != te.shape[0]
            or mtr.shape[1] != mte.shape[1]
        ):
            raise ShapeError(f"multilabel targets must be [n, classes]; got {mtr.shape} and {mte.shape}")
        scores = np.zeros(mte.shape, np.float64)
        for c in range(mtr.shape[1]):
            col = mtr[:, c] > 0
            if col.all() or not col.any():
                scores[:, c] = 1.0 if col.all() else -1.0
                continue
            clf = LogisticRegression(C=1.0 / (l2 * n), max_iter=2000).fit(tr, col)
            scores[:, c] = clf.decision_function(te)
        return mean_average_precision(scores, mte)
    raise InvalidValueError(f"task must be 'classify', 'regress' or 'multilabel', got {task!r}")


def _sklearn_threads(size: int) -> Any:
    """Limit scikit-learn's OpenMP/BLAS threads to one for small problems (a context manager).

    Small fits are dominated by thread start-up and, on a loaded machine, by spinning threads
    (a 200-row gradient boosting fit: 0.1 s on one thread, 30 s on an oversubscribed pool).
    """
    try:
        import sklearn  # noqa: F401
        from threadpoolctl import threadpool_limits
    except ImportError as e:
        raise ConfigError(f"this needs scikit-learn: pip install 'weightspace[data]' ({e})") from e
    return contextlib.nullcontext() if size >= 5_000_000 else threadpool_limits(limits=1)


# ---- one-class -------------------------------------------------------------------------------------
def _ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of centred data ``x`` ``[n, p]`` and the shrinkage."""
    n, p = x.shape
    emp = x.T @ x / n
    mu = np.trace(emp) / p
    x2 = x**2
    beta_ = float(np.sum(x2.T @ x2)) / n
    delta_ = float(np.sum(emp**2))
    beta = (beta_ / n - delta_ / n) / p
    delta = (delta_ - 2.0 * mu * np.trace(emp) + p * mu**2) / p
    beta = min(beta, delta)
    shrink = 0.0 if beta == 0 else beta / delta
    return (1.0 - shrink) * emp + shrink * mu * np.eye(p), shrink


def one_class_scores(train_emb: Float[Any, "n dim"], test_emb: Float[Any, "m dim"]) -> np.ndarray:
    """Anomaly scores: squared Mahalanobis distance to the training embeddings (Ledoit-Wolf).

    .. math:: s(x) = (x - \\mu)^\\top \\hat\\Sigma_{LW}^{-1} (x - \\mu), \\quad
        \\hat\\Sigma_{LW} = (1-\\rho) S + \\rho \\tfrac{\\mathrm{tr} S}{p} I

    Args:
        train_emb: ``[n, dim]`` embeddings of normal (in-distribution) items.
        test_emb: ``[m, dim]`` embeddings to score.

    Returns:
        ``[m]`` scores; higher = more anomalous.

    Example:
        >>> import numpy as np
        >>> from weightspace.learn import one_class_scores
        >>> train = np.random.default_rng(0).standard_normal((100, 3))
        >>> s = one_class_scores(train, np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]]))
        >>> bool(s[1] > 10 * s[0])
        True

    References:
        Ledoit & Wolf, "A well-conditioned estimator for large-dimensional covariance
        matrices", J. Multivariate Analysis 2004.
    """
    tr, te = _emb(train_emb, "train_emb"), _emb(test_emb, "test_emb")
    if tr.shape[1] != te.shape[1]:
        raise ShapeError(f"train_emb has dim {tr.shape[1]}, test_emb has {te.shape[1]}")
    if tr.shape[0] < 2:
        raise ShapeError("one_class_scores needs at least 2 training embeddings")
    loc = tr.mean(0)
    cov, _ = _ledoit_wolf(tr - loc)
    d = te - loc
    sol = np.linalg.lstsq(cov, d.T, rcond=None)[0] if np.linalg.cond(cov) > 1e12 else np.linalg.solve(cov, d.T)
    return np.einsum("ij,ji->i", d, sol)


def _auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """ROC AUC of positives over negatives (Mann-Whitney U, ties count 1/2)."""
    from scipy.stats import rankdata

    r = rankdata(np.concatenate([neg, pos]))
    u = r[neg.size :].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def one_class_auc(train_emb: Any, inliers: Any, outliers: Any) -> float:
    """ROC AUC of telling ``outliers`` from ``inliers`` by :func:`one_class_scores`.

    Example:
        >>> import numpy as np
        >>> from weightspace.learn import one_class_auc
        >>> rng = np.random.default_rng(0)
        >>> one_class_auc(rng.standard_normal((200, 4)), rng.standard_normal((50, 4)),
        ...               rng.standard_normal((50, 4)) + 3.0) > 0.95
        True
    """
    s_in = one_class_scores(train_emb, inliers)
    s_out = one_class_scores(train_emb, outliers)
    return _auc(s_in, s_out)


# ---- ranking and multi-label metrics ---------------------------------------------------------
def kendall_tau(pred: Any, true: Any) -> float:
    """Kendall's tau-b rank correlation between predictions and true values.

    .. math:: \\tau_b = \\frac{n_c - n_d}{\\sqrt{(n_0 - n_1)(n_0 - n_2)}}

    with concordant/discordant pair counts ``n_c, n_d``, ``n_0 = n(n-1)/2`` and ``n_1, n_2``
    the pairs tied in ``pred`` / ``true``. NaN when either side is constant (as SciPy).

    Example:
        >>> from weightspace.learn import kendall_tau
        >>> kendall_tau([1, 2, 3, 4], [10, 20, 40, 30])
        0.666...
    """
    p = _vec(pred, "pred")
    t = _vec(true, "true", p.shape[0])
    n = p.shape[0]
    if n < 2:
        raise ShapeError("kendall_tau needs at least 2 items")
    conc = ties_p = ties_t = 0.0
    step = max(1, 4_000_000 // n)
    for s in range(0, n, step):
        dp = np.sign(p[s : s + step, None] - p[None, :])
        dt = np.sign(t[s : s + step, None] - t[None, :])
        conc += float(np.sum(dp * dt))
        ties_p += float(np.sum(dp == 0))
        ties_t += float(np.sum(dt == 0))
    # Each unordered pair counted twice; the diagonal adds n self-ties to each side.
    n0 = n * (n - 1) / 2
    n1, n2 = (ties_p - n) / 2, (ties_t - n) / 2
    denom = math.sqrt((n0 - n1) * (n0 - n2))
    return float("nan") if denom == 0 else float(conc / 2 / denom)


def _average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order].astype(np.float64)
    tp = np.cumsum(y)
    # Evaluate only at the last item of each group of tied scores (a threshold).
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp, k = tp[last], last + 1.0
    precision, recall = tp / k, tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores: Float[Any, "n classes"], targets: Any) -> float:
    """Multi-label mean average precision: AP of every class with a positive, averaged.

    AP is the step-wise area under the precision-recall curve (scikit-learn's
    ``average_precision_score``; tied scores form one threshold).

    Example:
        >>> import numpy as np
        >>> from weightspace.learn import mean_average_precision
        >>> mean_average_precision(np.array([[0.9, 0.1], [0.8, 0.7], [0.1, 0.2]]),
        ...                        np.array([[1, 0], [0, 1], [1, 0]]))
        0.9166...
    """
    s = np.asarray(scores, np.float64)
    t = np.asarray(targets)
    if s.ndim != 2 or s.shape != t.shape:
        raise ShapeError(f"scores {s.shape} and targets {t.shape} must both be [n, classes]")
    if not np.all(np.isfinite(s)):
        raise InvalidValueError(f"scores hold {int(np.sum(~np.isfinite(s)))} NaN/Inf value(s)")
    pos = t > 0
    cols = [c for c in range(s.shape[1]) if pos[:, c].any()]
    if not cols:
        raise InvalidValueError("mean_average_precision: no class has a positive example")
    return float(np.mean([_average_precision(s[:, c], pos[:, c]) for c in cols]))


def exact_set_accuracy(scores: Float[Any, "n classes"], targets: Any, *, threshold: float = 0.0) -> float:
    """Fraction of rows whose predicted set ``{c: scores[c] > threshold}`` equals the target set.

    Example:
        >>> import numpy as np
        >>> from weightspace.learn import exact_set_accuracy
        >>> exact_set_accuracy(np.array([[2.0, -1.0], [1.0, 1.0]]), np.array([[1, 0], [1, 0]]))
        0.5
    """
    s, t = np.asarray(scores, np.float64), np.asarray(targets)
    if s.ndim != 2 or s.shape != t.shape:
        raise ShapeError(f"scores {s.shape} and targets {t.shape} must both be [n, classes]")
    return float(np.mean(np.all((s > threshold) == (t > 0), axis=1)))


def top_k_accuracy(scores: Float[Any, "n classes"], targets: Any, *, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose true class (an int in ``targets [n]``) is among the k highest scores.

    Score ties are broken by class index (lower first); ``k`` larger than the class count counts
    every row as a hit.

    Example:
        >>> import numpy as np
        >>> from weightspace.learn import top_k_accuracy
        >>> top_k_accuracy(np.array([[0.1, 0.5, 0.4], [0.3, 0.2, 0.5]]), np.array([2, 1]), ks=(1, 2))
        {1: 0.0, 2: 0.5}
    """
    s = np.asarray(scores, np.float64)
    t = np.asarray(targets).reshape(-1)
    if s.ndim != 2 or t.shape[0] != s.shape[0]:
        raise ShapeError(f"scores must be [n, classes] and targets [n]; got {s.shape} and {t.shape}")
    if t.size and (t.min() < 0 or t.max() >= s.shape[1] or not np.issubdtype(t.dtype, np.integer)):
        raise InvalidValueError(f"targets must be int class indices in [0, {s.shape[1]})")
    # Rank of the true class: classes scoring higher, plus tied classes with a lower index.
    true = s[np.arange(s.shape[0]), t]
    rank = np.sum(s > true[:, None], axis=1) + np.sum(
        (s == true[:, None]) & (np.arange(s.shape[1]) < t[:, None]), axis=1
    )
    return {int(k): float(np.mean(rank < k)) for k in ks}


# ---- results ---------------------------------------------------------------------------------------
class ResultsTable:
    """Scores of several methods over seeds, summarised as mean ± std (population std, ddof=0).

    Example:
        >>> from weightspace.learn import ResultsTable
        >>> t = ResultsTable()
        >>> for seed, acc in enumerate([0.8, 0.9]):
        ...     t.add("statnn-gbt", "acc", acc, seed=seed, seconds=1.0)
        >>> t.summary()["statnn-gbt"]["acc"]
        (0.85, 0.05...)
        >>> print(t.to_markdown(digits=2))
        | method | acc | seconds |
        |---|---|---|
        | statnn-gbt | 0.85 ± 0.05 | 1.00 |
        >>> ResultsTable.from_json(t.to_json()).summary() == t.summary()
        True
    """

    def __init__(self, rows: Iterable[dict[str, Any]] = ()) -> None:
        self.rows: list[dict[str, Any]] = []
        for r in rows:
            r = dict(r)
            self.add(r.pop("method"), r.pop("metric"), r.pop("value"), seed=r.pop("seed"), **r)

    def add(self, method: str, metric: str, value: float, *, seed: int, **extra: Any) -> None:
        """Record one score; ``extra`` holds per-run numbers (``flops``, ``seconds``, ...)."""
        if not isinstance(method, str) or not isinstance(metric, str):
            raise InvalidValueError(f"method and metric must be strings, got {method!r}, {metric!r}")
        value = float(value)
        if any(r["method"] == method and r["metric"] == metric and r["seed"] == seed for r in self.rows):
            raise InvalidValueError(f"ResultsTable already has {method!r} / {metric!r} for seed {seed}")
        for k, v in extra.items():
            if not isinstance(v, (int, float)):
                raise InvalidValueError(f"extra {k!r} must be a number, got {v!r}")
        self.rows.append(
            {
                "method": method,
                "metric": metric,
                "value": value,
                "seed": seed,
                **{k: float(v) for k, v in extra.items()},
            }
        )

    def _order(self, key: str) -> list[str]:
        return list(dict.fromkeys(r[key] for r in self.rows))

    def summary(self) -> dict[str, dict[str, tuple[float, float]]]:
        """``method -> metric -> (mean, std over seeds)``."""
        out: dict[str, dict[str, tuple[float, float]]] = {}
        for m in self._order("method"):
            for metric in self._order("metric"):
                v = [r["value"] for r in self.rows if r["method"] == m and r["metric"] == metric]
                if v:
                    out.setdefault(m, {})[metric] = (float(np.mean(v)), float(np.std(v)))
        return out

    def to_markdown(self, *, digits: int = 3) -> str:
        """One row per method: ``mean ± std`` per metric, then the averaged extras."""
        metrics = self._order("metric")
        base = {"method", "metric", "value", "seed"}
        extras = list(dict.fromkeys(k for r in self.rows for k in r if k not in base))
        summ = self.summary()
        lines = ["| method | " + " | ".join(metrics + extras) + " |", "|---" * (1 + len(metrics) + len(extras)) + "|"]
        for m, per in summ.items():
            cells = [f"{per[x][0]:.{digits}f} ± {per[x][1]:.{digits}f}" if x in per else "–" for x in metrics]
            for e in extras:
                v = [r[e] for r in self.rows if r["method"] == m and e in r]
                cells.append(_fmt_extra(float(np.mean(v)), digits) if v else "–")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_json(self) -> str:
        """All rows as JSON (``from_json`` restores them)."""
        return json.dumps({"format": "weightspace.learn.results/1", "rows": self.rows}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> ResultsTable:
        """Rebuild a table written by :meth:`to_json`."""
        try:
            d = json.loads(text)
            rows = d["rows"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InvalidValueError(f"not a ResultsTable JSON document ({e})") from e
        return cls(rows)

    def __len__(self) -> int:
        return len(self.rows)


def _fmt_extra(v: float, digits: int) -> str:
    return f"{v:.{digits}g}" if abs(v) >= 1e5 or (v != 0 and abs(v) < 10 ** (-digits)) else f"{v:.{digits}f}"

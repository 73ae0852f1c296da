"""Ranking evaluation: weighted Kendall tau (Vigna), Kendall tau-b, Pearson, top-1 regret.

These run in NumPy float64: they compare a handful of models per task, where dispatch and
compilation would dwarf the O(n^2) arithmetic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import Float

from weightspace._errors import InvalidValueError, ShapeError

Vector = Float[np.ndarray, " models"] | Any


def _pair(accuracy: Any, score: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(accuracy, np.float64)
    y = np.asarray(score, np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ShapeError(f"{name}: accuracy and score must be 1-D [models], got {x.shape} and {y.shape}")
    if x.shape != y.shape:
        raise ShapeError(f"{name}: accuracy has {x.shape[0]} models but score has {y.shape[0]}")
    if x.shape[0] < 2:
        raise ShapeError(f"{name} needs at least 2 models, got {x.shape[0]}")
    for v, what in ((x, "accuracy"), (y, "score")):
        if not np.all(np.isfinite(v)):
            raise InvalidValueError(f"{name}: {what} holds {int(np.sum(~np.isfinite(v)))} NaN/Inf value(s)")
    return x, y


def _tau_core(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    sx = np.sign(x[:, None] - x[None, :])
    sy = np.sign(y[:, None] - y[None, :])
    wij = np.triu(w[:, None] + w[None, :], k=1)  # every unordered pair once
    num = np.sum(wij * sx * sy)
    tx = np.sum(wij * (sx != 0))
    ty = np.sum(wij * (sy != 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(num / np.sqrt(tx * ty))


def weighted_tau(accuracy: Vector, score: Vector) -> float:
    """Weighted Kendall tau between true accuracies and a transferability score (hyperbolic weights).

    Elements are ranked by decreasing ``(accuracy, score)`` (lexicographic, ``r = 0`` is the best
    model); a pair ``(i, j)`` weighs ``1/(r_i + 1) + 1/(r_j + 1)``, so swaps among the top models
    cost most:

    .. math::
        \\tau_w = \\frac{\\sum_{i<j} w_{ij}\\,\\operatorname{sgn}(x_i-x_j)\\operatorname{sgn}(y_i-y_j)}
        {\\sqrt{\\sum_{i<j} w_{ij}[x_i\\ne x_j]\\;\\sum_{i<j} w_{ij}[y_i\\ne y_j]}}.

    Equals ``scipy.stats.weightedtau(accuracy, score, rank=None)`` (Model Spider's evaluation),
    computed by an O(n^2) pairwise sum.

    Args:
        accuracy: ``[models]`` true (fine-tuning) accuracies.
        score: ``[models]`` predicted transferability.

    Returns:
        Scalar in ``[-1, 1]``.

    Example:
        >>> from weightspace.selection import weighted_tau
        >>> float(weighted_tau([0.9, 0.8, 0.7], [3.0, 2.0, 1.0])), float(weighted_tau([0.9, 0.8, 0.7], [1, 2, 3]))
        (1.0, -1.0)

    References:
        Vigna, "A Weighted Correlation Index for Rankings with Ties", WWW 2015.
    """
    x, y = _pair(accuracy, score, "weighted_tau")
    n = x.shape[0]
    order = np.lexsort((y, x))[::-1]  # decreasing by x, ties broken by decreasing y
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    return _tau_core(x, y, 1.0 / (rank + 1.0))


def kendall_tau(accuracy: Vector, score: Vector) -> float:
    """Kendall's tau-b (ties in either ranking leave the denominator), as ``scipy.stats.kendalltau``.

    Example:
        >>> from weightspace.selection import kendall_tau
        >>> round(float(kendall_tau([1, 2, 3, 4], [1, 3, 2, 4])), 4)
        0.6667
    """
    x, y = _pair(accuracy, score, "kendall_tau")
    return _tau_core(x, y, np.full(x.shape, 0.5))


def pearson(accuracy: Vector, score: Vector) -> float:
    """Pearson correlation between accuracies and scores.

    Example:
        >>> from weightspace.selection import pearson
        >>> round(float(pearson([1, 2, 3], [2, 4, 6])), 6)
        1.0
    """
    x, y = _pair(accuracy, score, "pearson")
    xc, yc = x - x.mean(), y - y.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(xc * yc) / np.sqrt(np.sum(xc * xc) * np.sum(yc * yc)))


def top1_regret(accuracy: Vector, score: Vector) -> float:
    """Accuracy lost by fine-tuning the top-scored model instead of the best one: ``max(acc) - acc[argmax(score)]``.

    Example:
        >>> from weightspace.selection import top1_regret
        >>> round(float(top1_regret([0.9, 0.8, 0.7], [1.0, 3.0, 2.0])), 6)
        0.1
    """
    x, y = _pair(accuracy, score, "top1_regret")
    return float(np.max(x) - x[np.argmax(y)])


def ranking_report(accuracy: Any, scores: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Every ranking measure of every score: ``{metric: {weighted_tau, kendall_tau, pearson, top1_regret}}``.

    Example:
        >>> from weightspace.selection import ranking_report
        >>> ranking_report([0.9, 0.8, 0.7], {"a": [3, 2, 1]})["a"]["weighted_tau"]
        1.0
    """
    out = {}
    for name, s in scores.items():
        out[name] = {f.__name__: f(accuracy, s) for f in (weighted_tau, kendall_tau, pearson, top1_regret)}
    return out

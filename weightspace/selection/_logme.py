"""LogME: the log marginal evidence of a Bayesian linear model on a candidate's features.

Higher = more transferable (the convention of :mod:`weightspace.selection._metrics`); a pure JAX
core for ONE candidate, vmapped over models by :func:`weightspace.selection.score_all`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from weightspace._errors import InvalidValueError, ShapeError
from weightspace.selection._validate import as_float_array, as_labels

# ---------------------------------------------------------------------------------------------
# LogME
# ---------------------------------------------------------------------------------------------


class LogMEFit(NamedTuple):
    """Per-target LogME fit: ``evidence`` (already divided by N), hyper-parameters and weights."""

    evidence: Float[Array, " targets"]
    alpha: Float[Array, " targets"]
    beta: Float[Array, " targets"]
    weights: Float[Array, "targets d"]


_LOGME_METHODS = {"fixed_point": (1e-3, False, 0.0), "icml": (1e-2, True, 1e-5)}
_LOGME_EPS = 1e-5  # thuml's guard in the alpha/beta updates
_LOGME_ITERS = 11  # thuml's cap; typically converges in 2-3 steps


@functools.partial(jax.jit, static_argnames=("method",))
def _logme_core(f: Array, y: Array, method: str = "fixed_point") -> LogMEFit:
    """LogME of ONE feature matrix ``f [N, D]`` against targets ``y [N, K]``."""
    n, d = f.shape
    tol, strict, ev_eps = _LOGME_METHODS[method]
    yy = jnp.sum(y * y, axis=0)
    if n >= d:
        sig, v = jnp.linalg.eigh(f.T @ f)
        sig = jnp.clip(sig, 0.0)
        z = v.T @ (f.T @ y)  # [D, K]: projections of F^T y on the eigenvectors
        x2 = None
    else:
        # N < D: work in sample space; the D - N zero eigenvalues of F^T F enter log|A| below.
        sig, u = jnp.linalg.eigh(f @ f.T)
        sig = jnp.clip(sig, 0.0)
        uy = u.T @ y  # [N, K]
        z = jnp.sqrt(sig)[:, None] * uy
        x2 = uy * uy
    r = sig.shape[0]
    z2 = z * z
    if x2 is not None:
        # y lies in the span of F when N < D: the subtraction form would cancel catastrophically.
        res_x2 = jnp.clip(yy - jnp.sum(x2, axis=0), 0.0)

    def stats(t: Array) -> tuple[Array, Array, Array]:
        den = t[None, :] + sig[:, None]
        gamma = jnp.sum(sig[:, None] / den, axis=0)
        m2 = jnp.sum(z2 / den**2, axis=0)
        if x2 is None:
            res2 = jnp.clip(yy - jnp.sum(z2 * (2.0 * t[None, :] + sig[:, None]) / den**2, axis=0), 0.0)
        else:
            res2 = jnp.sum(x2 * (t[None, :] / den) ** 2, axis=0) + res_x2
        return gamma, m2, res2

    k = y.shape[1]
    one = jnp.ones((k,), f.dtype)

    def body(_: int, st: tuple[Array, ...]) -> tuple[Array, ...]:
        a, b, t_used, m2, res2, done = st
        t = a / b
        gamma, m2n, res2n = stats(t)
        an = gamma / (m2n + _LOGME_EPS)
        bn = (n - gamma) / (res2n + _LOGME_EPS)
        change = jnp.abs(an / bn - t) / t
        conv = change < tol if strict else change <= tol
        keep = done
        a = jnp.where(keep, a, an)
        b = jnp.where(keep, b, bn)
        t_used = jnp.where(keep, t_used, t)
        m2 = jnp.where(keep, m2, m2n)
        res2 = jnp.where(keep, res2, res2n)
        return a, b, t_used, m2, res2, done | conv

    init = (one, one, one, 0.0 * one, 0.0 * one, jnp.zeros((k,), bool))
    a, b, t_used, m2, res2, _ = jax.lax.fori_loop(0, _LOGME_ITERS, body, init)
    logdet_a = jnp.sum(jnp.log(a[None, :] + b[None, :] * sig[:, None]), axis=0) + (d - r) * jnp.log(a)
    evidence = (
        d / 2.0 * jnp.log(a)
        + n / 2.0 * jnp.log(b)
        - 0.5 * logdet_a
        - b / 2.0 * (res2 + ev_eps)
        - a / 2.0 * (m2 + ev_eps)
        - n / 2.0 * math.log(2 * math.pi)
    )
    den = t_used[None, :] + sig[:, None]
    weights = (v @ (z / den)).T if x2 is None else (f.T @ (u @ (uy / den))).T
    return LogMEFit(evidence / n, a, b, weights)


def _logme_targets(labels: Any, n: int, regression: bool, num_classes: int | None, dtype: Any) -> Array:
    if regression:
        t = as_float_array(labels, "targets", ndim=(1, 2), what="[samples] or [samples, targets]")
        if t.shape[0] != n:
            raise ShapeError(f"targets have {t.shape[0]} rows but the features have {n} samples")
        return (t[:, None] if t.ndim == 1 else t).astype(dtype)
    y, c = as_labels(labels, n, num_classes=num_classes)
    return jax.nn.one_hot(y, c, dtype=dtype)


def logme_fit(
    features: Float[Array, "n d"],
    labels: Any,
    *,
    regression: bool = False,
    method: str = "fixed_point",
    num_classes: int | None = None,
) -> LogMEFit:
    """Fit LogME's Bayesian linear model per target and return evidences, ``alpha``, ``beta``, weights.

    See :func:`logme`. ``weights`` are the posterior means ``m`` entering the reported evidence.

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import logme_fit
        >>> rng = np.random.default_rng(0)
        >>> fit = logme_fit(rng.standard_normal((60, 5)), np.arange(60) % 3)
        >>> fit.evidence.shape, fit.weights.shape
        ((3,), (3, 5))
    """
    if method not in _LOGME_METHODS:
        raise InvalidValueError(f"logme method must be one of {sorted(_LOGME_METHODS)}, got {method!r}")
    f = as_float_array(features, "features")
    y = _logme_targets(labels, f.shape[0], regression, num_classes, f.dtype)
    return _logme_core(f, y, method=method)


def logme(
    features: Float[Array, "n d"],
    labels: Any,
    *,
    regression: bool = False,
    method: str = "fixed_point",
    num_classes: int | None = None,
) -> Float[Array, ""]:
    """LogME: mean log marginal evidence of Bayesian linear regression on the features.

    For each target column ``y`` (one-hot class indicator, or a regression target), with
    ``A = alpha I + beta F^T F`` and ``m = beta A^{-1} F^T y``,

    .. math::
        \\mathcal{L}(\\alpha,\\beta) = \\tfrac{D}{2}\\log\\alpha + \\tfrac{N}{2}\\log\\beta
        - \\tfrac12\\log|A| - \\tfrac{\\beta}{2}\\lVert y - Fm\\rVert^2 - \\tfrac{\\alpha}{2}\\lVert m\\rVert^2
        - \\tfrac{N}{2}\\log 2\\pi,

    maximised over ``(alpha, beta)`` by MacKay's fixed-point iteration; LogME is the mean over
    targets of ``L / N``. ``method="fixed_point"`` follows thuml/LogME's default (stop at 1e-3
    relative change of ``alpha/beta``, at most 11 steps, the evidence evaluated with the last step's
    ``m``); ``method="icml"`` follows thuml's ``_fit_icml`` (stop at 1e-2, ``+1e-5`` in the
    evidence). Unlike thuml's fixed-point code, ``log|A|`` counts all ``D`` eigenvalues of
    ``alpha I + beta F^T F`` (``D - N`` of them equal ``alpha`` when ``N < D``), so the value is the
    true evidence for ``N < D`` and rank-deficient features too.

    Args:
        features: ``[N, D]`` features of the target data under one candidate model.
        labels: ``[N]`` integer classes, or with ``regression=True`` float targets ``[N]``/``[N, K]``.
        regression: treat ``labels`` as real-valued targets.
        method: ``"fixed_point"`` (default) or ``"icml"``.
        num_classes: number of classes (default ``max(labels) + 1``; required under ``jit``).

    Returns:
        Scalar LogME (higher = more transferable).

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import logme
        >>> rng = np.random.default_rng(0)
        >>> y = np.arange(100) % 2
        >>> good = rng.standard_normal((100, 8)) + 3.0 * y[:, None]
        >>> bad = rng.standard_normal((100, 8))
        >>> bool(logme(good, y) > logme(bad, y))
        True

    References:
        You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021.
    """
    return jnp.mean(logme_fit(features, labels, regression=regression, method=method, num_classes=num_classes).evidence)

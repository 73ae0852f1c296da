"""Entropic optimal transport (log-domain Sinkhorn) in JAX.

Why not ott-jax: OTCE needs one small dense entropic plan per task, which is these 40 lines;
ott-jax 0.6 (its current release) would add three dependencies (ott-jax, the archived jaxopt, and
lineax) to every install for that. The routine is tested against a NumPy Sinkhorn and, at small
epsilon, against SciPy's exact assignment (``tests/test_selection_metrics.py``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp, xlogy
from jaxtyping import Array, Float, Int

from weightspace._errors import ShapeError
from weightspace.selection._validate import as_float_array, as_labels


@functools.partial(jax.jit, static_argnames=("max_iter",))
def sinkhorn(
    cost: Float[Array, "n m"],
    a: Float[Array, " n"],
    b: Float[Array, " m"],
    *,
    epsilon: float | Array,
    max_iter: int = 1000,
    tol: float = 1e-9,
) -> Float[Array, "n m"]:
    """Entropic OT plan ``argmin_P <P, C> - epsilon H(P)`` with marginals ``a``, ``b`` (log-domain Sinkhorn).

    .. math::
        f \\leftarrow \\epsilon\\log a - \\epsilon \\operatorname{LSE}_j\\big((g_j - C_{ij})/\\epsilon\\big),\\quad
        g \\leftarrow \\epsilon\\log b - \\epsilon \\operatorname{LSE}_i\\big((f_i - C_{ij})/\\epsilon\\big),\\quad
        P_{ij} = e^{(f_i + g_j - C_{ij})/\\epsilon}

    until the row marginals are within ``tol`` (L1) of ``a`` or after ``max_iter`` sweeps. The log
    domain keeps small ``epsilon`` stable.

    Args:
        cost: ``[n, m]`` transport cost.
        a, b: source and target marginals (each sums to 1).
        epsilon: entropic regularisation (in cost units).
        max_iter, tol: stopping rule.

    Returns:
        ``[n, m]`` transport plan.

    Example:
        >>> import jax.numpy as jnp
        >>> from weightspace.selection import sinkhorn
        >>> p = sinkhorn(jnp.array([[0.0, 1.0], [1.0, 0.0]]), jnp.full(2, 0.5), jnp.full(2, 0.5), epsilon=0.01)
        >>> [[round(float(v), 4) for v in row] for row in p]
        [[0.5, 0.0], [0.0, 0.5]]
    """
    loga, logb = jnp.log(a), jnp.log(b)
    eps = jnp.asarray(epsilon, cost.dtype)

    def sweep(f: Array, g: Array) -> tuple[Array, Array, Array]:
        f = eps * loga - eps * logsumexp((g[None, :] - cost) / eps, axis=1)
        g = eps * logb - eps * logsumexp((f[:, None] - cost) / eps, axis=0)
        rows = jnp.exp(f / eps + logsumexp((g[None, :] - cost) / eps, axis=1))
        return f, g, jnp.sum(jnp.abs(rows - a))

    def cond(st: tuple[Array, Array, Array, Array]) -> Array:
        _, _, err, i = st
        return (i < max_iter) & (err > tol)

    def body(st: tuple[Array, Array, Array, Array]) -> tuple[Array, Array, Array, Array]:
        f, g, _, i = st
        f, g, err = sweep(f, g)
        return f, g, err, i + 1

    zeros_a, zeros_b = jnp.zeros_like(a), jnp.zeros_like(b)
    f, g, _, _ = jax.lax.while_loop(cond, body, (zeros_a, zeros_b, jnp.asarray(jnp.inf, cost.dtype), jnp.asarray(0)))
    return jnp.exp((f[:, None] + g[None, :] - cost) / eps)


# ---------------------------------------------------------------------------------------------
# OTCE
# ---------------------------------------------------------------------------------------------


class OTCETerms(NamedTuple):
    """OTCE's two ingredients: the transport cost ``W`` and the conditional entropy ``CE``."""

    wasserstein: Float[Array, ""]
    conditional_entropy: Float[Array, ""]


@functools.partial(jax.jit, static_argnames=("source_classes", "num_classes", "max_iter"))
def _otce_core(
    fs: Array,
    ys: Array,
    ft: Array,
    yt: Array,
    epsilon: Array,
    source_classes: int,
    num_classes: int,
    max_iter: int = 1000,
) -> OTCETerms:
    cost = jnp.sum(fs * fs, 1)[:, None] + jnp.sum(ft * ft, 1)[None, :] - 2.0 * fs @ ft.T
    cost = jnp.clip(cost, 0.0)
    a = jnp.full((fs.shape[0],), 1.0 / fs.shape[0], fs.dtype)
    b = jnp.full((ft.shape[0],), 1.0 / ft.shape[0], fs.dtype)
    plan = sinkhorn(cost, a, b, epsilon=epsilon * jnp.mean(cost), max_iter=max_iter)
    w = jnp.sum(plan * cost)
    joint = (
        jax.nn.one_hot(ys, source_classes, dtype=fs.dtype).T @ plan @ jax.nn.one_hot(yt, num_classes, dtype=fs.dtype)
    )
    p_src = jnp.sum(joint, axis=1, keepdims=True)
    cond = jnp.where(joint > 0, joint / jnp.where(p_src > 0, p_src, 1.0), 1.0)
    ce = -jnp.sum(xlogy(joint, cond))
    return OTCETerms(w, ce)


def otce_terms(
    source_features: Float[Array, "ns d"],
    source_labels: Int[Array, " ns"],
    features: Float[Array, "nt d"],
    labels: Int[Array, " nt"],
    *,
    epsilon: float = 0.05,
    max_iter: int = 1000,
) -> OTCETerms:
    """Transport cost and conditional entropy of OTCE (see :func:`otce`).

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import otce_terms
        >>> f = np.random.default_rng(0).standard_normal((12, 3)); y = np.arange(12) % 3
        >>> t = otce_terms(f, y, f, y)
        >>> t.wasserstein.shape, bool(t.conditional_entropy >= 0)
        ((), True)
    """
    fs = as_float_array(source_features, "source_features")
    ft = as_float_array(features, "features")
    if fs.shape[1] != ft.shape[1]:
        raise ShapeError(
            f"source_features have {fs.shape[1]} dims but features have {ft.shape[1]}; "
            "OTCE needs both in the same feature space"
        )
    ys, cs = as_labels(source_labels, fs.shape[0], name="source_labels", min_classes=1)
    yt, ct = as_labels(labels, ft.shape[0])
    return _otce_core(
        fs, ys, ft, yt, jnp.asarray(epsilon, ft.dtype), source_classes=cs, num_classes=ct, max_iter=max_iter
    )


def otce(
    source_features: Float[Array, "ns d"],
    source_labels: Int[Array, " ns"],
    features: Float[Array, "nt d"],
    labels: Int[Array, " nt"],
    *,
    epsilon: float = 0.05,
    ce_weight: float = 1.0,
    wd_weight: float = 0.0,
    max_iter: int = 1000,
) -> Float[Array, ""]:
    """OTCE: conditional entropy of target given source labels under an optimal-transport coupling.

    The coupling ``P`` between the source samples (features ``F_s`` of the model's own training
    data, labels ``y_s``) and the target samples is entropic OT (:func:`sinkhorn`, regularisation
    ``epsilon * mean(cost)``) for the squared Euclidean cost; then

    .. math::
        W = \\langle P, C\\rangle,\\quad P(y_s, y_t) = \\sum_{ij} P_{ij}[y_{si}=y_s][y_{tj}=y_t],\\quad
        CE = -\\sum P(y_s, y_t)\\log\\frac{P(y_s, y_t)}{P(y_s)},

    and ``OTCE = -(ce_weight * CE + wd_weight * W)``. The paper fits both weights on auxiliary
    tasks; the default keeps the scale-free ``-CE`` and leaves ``W`` (which depends on the feature
    scale of each model) to ``wd_weight``.

    Args:
        source_features, source_labels: ``[Ns, D]`` / ``[Ns]`` source data under the model.
        features, labels: ``[Nt, D]`` / ``[Nt]`` target data under the same model.
        epsilon: entropic regularisation relative to the mean cost.
        ce_weight, wd_weight: weights of ``CE`` and ``W``.
        max_iter: Sinkhorn iteration cap.

    Returns:
        Scalar OTCE (higher = more transferable).

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import otce
        >>> rng = np.random.default_rng(0)
        >>> y = np.arange(30) % 3
        >>> f = rng.standard_normal((30, 3)) + 8.0 * np.eye(3)[y]
        >>> bool(otce(f, y, f, y) > otce(f, y, f, rng.permutation(y)))
        True

    References:
        Tan et al., "OTCE: A Transferability Metric for Cross-Domain Cross-Task Representations", CVPR 2021.
    """
    t = otce_terms(source_features, source_labels, features, labels, epsilon=epsilon, max_iter=max_iter)
    return -(ce_weight * t.conditional_entropy + wd_weight * t.wasserstein)

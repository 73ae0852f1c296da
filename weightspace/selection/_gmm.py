"""Gaussian mixtures with diagonal covariances, fitted by EM in JAX (for N-LEEP)."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from jaxtyping import Array, Float


class GMMParams(NamedTuple):
    """Mixture weights ``[K]``, means ``[K, d]`` and per-dimension variances ``[K, d]``."""

    weights: Float[Array, " k"]
    means: Float[Array, "k d"]
    variances: Float[Array, "k d"]


def _log_prob(x: Array, params: GMMParams) -> Array:
    """``log w_k + log N(x_i | mu_k, diag var_k)`` for every sample and component ``[n, K]``."""
    prec = 1.0 / params.variances
    quad = jnp.sum(params.means**2 * prec, axis=1)[None, :] - 2.0 * x @ (params.means * prec).T + (x * x) @ prec.T
    log_det = -0.5 * jnp.sum(jnp.log(params.variances), axis=1)
    return -0.5 * (x.shape[1] * math.log(2 * math.pi) + quad) + log_det[None, :] + jnp.log(params.weights)[None, :]


def _m_step(x: Array, resp: Array, reg_covar: float) -> GMMParams:
    nk = jnp.sum(resp, axis=0) + 10.0 * jnp.finfo(x.dtype).eps
    means = resp.T @ x / nk[:, None]
    avg_x2 = resp.T @ (x * x) / nk[:, None]
    variances = avg_x2 - 2.0 * means * (resp.T @ x) / nk[:, None] + means**2 + reg_covar
    return GMMParams(nk / jnp.sum(nk), means, variances)


def gmm_init(x: Float[Array, "n d"], components: int, *, key: Array, reg_covar: float = 1e-6) -> GMMParams:
    """Initial mixture: ``components`` distinct random samples as centres, hard nearest-centre responsibilities.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from weightspace.selection import gmm_init
        >>> p = gmm_init(jnp.arange(20.0).reshape(10, 2), 3, key=jax.random.key(0))
        >>> p.means.shape, float(p.weights.sum())
        ((3, 2), 1.0)
    """
    n = x.shape[0]
    idx = jax.random.choice(key, n, (components,), replace=False)
    centres = x[idx]
    d2 = jnp.sum(x * x, 1)[:, None] - 2.0 * x @ centres.T + jnp.sum(centres * centres, 1)[None, :]
    resp = jax.nn.one_hot(jnp.argmin(d2, axis=1), components, dtype=x.dtype)
    return _m_step(x, resp, reg_covar)


@functools.partial(jax.jit, static_argnames=("components", "max_iter"))
def fit_gmm(
    x: Float[Array, "n d"],
    components: int,
    *,
    key: Array,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    init: GMMParams | None = None,
) -> GMMParams:
    """Fit a diagonal-covariance Gaussian mixture by EM (scikit-learn's ``GaussianMixture`` updates).

    Each step computes responsibilities (E) then weights, means and variances (M, variances plus
    ``reg_covar``); it stops when the mean log-likelihood changes by less than ``tol`` or after
    ``max_iter`` steps. Deterministic for a ``key``; ``jit``/``vmap`` friendly.

    Args:
        x: ``[n, d]`` samples.
        components: number of mixture components ``K``.
        key: seeds :func:`gmm_init` (ignored when ``init`` is given).
        max_iter, tol: stopping rule.
        reg_covar: added to every variance.
        init: starting parameters (default :func:`gmm_init`).

    Returns:
        The fitted :class:`GMMParams`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from weightspace.selection import fit_gmm, gmm_posterior
        >>> x = jnp.concatenate([jnp.zeros((5, 1)), jnp.full((5, 1), 10.0)]) + jnp.linspace(0, 0.1, 10)[:, None]
        >>> post = gmm_posterior(x, fit_gmm(x, 2, key=jax.random.key(0)))
        >>> bool(jnp.all(post.max(axis=1) > 0.99))
        True
    """
    params = gmm_init(x, components, key=key, reg_covar=reg_covar) if init is None else init

    def cond(st: tuple[GMMParams, Array, Array, Array]) -> Array:
        _, _, i, converged = st
        return (i < max_iter) & ~converged

    def body(st: tuple[GMMParams, Array, Array, Array]) -> tuple[GMMParams, Array, Array, Array]:
        p, prev, i, _ = st
        wlp = _log_prob(x, p)
        norm = logsumexp(wlp, axis=1)
        p = _m_step(x, jnp.exp(wlp - norm[:, None]), reg_covar)
        lower = jnp.mean(norm)
        return p, lower, i + 1, jnp.abs(lower - prev) < tol

    st = (params, jnp.asarray(-jnp.inf, x.dtype), jnp.asarray(0), jnp.asarray(False))
    return jax.lax.while_loop(cond, body, st)[0]


def gmm_posterior(x: Float[Array, "n d"], params: GMMParams) -> Float[Array, "n k"]:
    """Component responsibilities ``p(k | x_i)`` under a fitted mixture (rows sum to 1)."""
    wlp = _log_prob(x, params)
    return jnp.exp(wlp - logsumexp(wlp, axis=1, keepdims=True))

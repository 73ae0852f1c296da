"""Entropic optimal transport (log-domain Sinkhorn) in JAX."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from jaxtyping import Array, Float


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

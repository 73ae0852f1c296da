"""Collaborative Probing: probe each model on a random fraction of the probes, complete the rest.

The (logits x probes) response matrix of a hub is close to low rank (logits of the same concept
respond alike), so iterative truncated-SVD imputation ("hard impute") fills in the probes a model
was never shown. Forward passes drop by ``1 - fraction``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from weightspace._errors import ConfigError, InvalidValueError, ShapeError
from weightspace.search._gallery import Responses, as_probe_set


def randomized_svd(
    x: Float[Array, "m n"], rank: int, *, key: jax.Array, oversample: int = 10, power_iters: int = 4
) -> tuple[Float[Array, "m rank"], Float[Array, " rank"], Float[Array, "rank n"]]:
    """Truncated SVD by random range finding (Halko, Martinsson & Tropp 2011, Alg. 4.4).

    .. math:: Y = (X X^\\top)^q X \\Omega,\\ Q = \\mathrm{qr}(Y),\\ Q^\\top X = \\tilde U S V^\\top,\\ U = Q \\tilde U

    Accuracy: exact (to float round-off) when ``rank(X) <= rank + oversample``; otherwise the
    trailing singular values are underestimated, e.g. by ~7% for the 64th of a 10,000 x 4,000
    imputation matrix with 4 power iterations (``shared/docs/assets.md``). Cost
    ``O(m n (rank + oversample) (2 q + 2))`` instead of ``O(m n min(m, n))``.

    Args:
        x: ``[m, n]``.
        rank: number of singular triplets returned.
        key: ``jax.random.key`` for the test matrix.
        oversample: extra random directions.
        power_iters: ``q``, subspace iterations (QR-stabilised).

    Returns:
        ``(u [m, rank], s [rank], vt [rank, n])``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> a = jax.random.normal(jax.random.key(0), (50, 4)) @ jax.random.normal(jax.random.key(1), (4, 30))
        >>> u, s, vt = randomized_svd(a, 4, key=jax.random.key(2))
        >>> bool(jnp.allclose(u * s @ vt, a, atol=1e-3))
        True
    """
    m, n = x.shape
    ell = min(rank + oversample, m, n)
    hp = jax.lax.Precision.HIGHEST
    omega = jax.random.normal(key, (n, ell), x.dtype)
    q, _ = jnp.linalg.qr(jnp.matmul(x, omega, precision=hp))
    for _ in range(power_iters):
        z, _ = jnp.linalg.qr(jnp.matmul(x.T, q, precision=hp))
        q, _ = jnp.linalg.qr(jnp.matmul(x, z, precision=hp))
    ub, s, vt = jnp.linalg.svd(jnp.matmul(q.T, x, precision=hp), full_matrices=False)
    return jnp.matmul(q, ub[:, :rank], precision=hp), s[:rank], vt[:rank]


class Completion(NamedTuple):
    """Output of :func:`complete_matrix`."""

    values: Float[np.ndarray, "rows cols"]
    iterations: int
    relative_change: float


def complete_matrix(
    values: Float[np.ndarray, "rows cols"],
    observed: Bool[np.ndarray, "rows cols"],
    *,
    rank: int = 16,
    iters: int = 100,
    tol: float = 1e-5,
    method: str = "randomized",
    key: jax.Array | None = None,
    oversample: int = 10,
    power_iters: int = 2,
) -> Completion:
    """Fill the unobserved entries of a low-rank matrix by iterative truncated-SVD imputation.

    Rows are first divided by their observed std (logits differ in scale; scaling rows keeps the
    rank, centring them would add one), missing entries start at the row's observed mean, then,
    until the relative change drops below ``tol``:

    .. math:: X \\leftarrow P_\\Omega(V) + P_\\Omega^\\perp(\\mathrm{SVD}_r(X))

    Observed entries are returned unchanged.

    Args:
        values: ``[rows, cols]`` (unobserved entries are ignored; NaN allowed there).
        observed: boolean mask, True where ``values`` was measured.
        rank: rank of the truncated SVD.
        iters: maximum iterations.
        tol: stop when ``||X_t - X_{t-1}||_F / ||X_t||_F < tol``.
        method: ``"randomized"`` (:func:`randomized_svd`, default; ~100x faster than the exact SVD
            under XLA on CPU and exact when the matrix has rank <= ``rank + oversample``) or ``"svd"``.
        key, oversample, power_iters: for ``"randomized"`` (default key: ``jax.random.key(0)``).

    Returns:
        :class:`Completion` (values float32 ``[rows, cols]``, iterations run, final relative change).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(60, 3)) @ rng.normal(size=(3, 40))
        >>> seen = rng.random(x.shape) < 0.5
        >>> c = complete_matrix(np.where(seen, x, np.nan), seen, rank=3, iters=500)
        >>> bool(np.abs(c.values - x).max() < 1e-2)
        True
    """
    v = np.asarray(values, np.float32)
    mask = np.asarray(observed, bool)
    if v.ndim != 2 or mask.shape != v.shape:
        raise ShapeError(f"values {v.shape} and observed {mask.shape} must be the same [rows, cols]")
    if method not in ("svd", "randomized"):
        raise ConfigError(f"method must be 'svd' or 'randomized', got {method!r}")
    if not 1 <= rank <= min(v.shape):
        raise InvalidValueError(f"rank must be in [1, {min(v.shape)}], got {rank}")
    counts = mask.sum(1)
    if (counts == 0).any():
        raise InvalidValueError(
            f"{int((counts == 0).sum())} rows have no observed entries; nothing to complete them from"
        )
    if not np.isfinite(v[mask]).all():
        raise InvalidValueError("observed entries hold NaN/Inf")
    vz = np.where(mask, v, 0.0)
    mean = vz.sum(1, keepdims=True) / counts[:, None]
    var = (np.where(mask, vz - mean, 0.0) ** 2).sum(1, keepdims=True) / counts[:, None]
    std = np.where(var > 0, np.sqrt(var), 1.0)
    z = (np.where(mask, vz, mean) / std).astype(np.float32)
    out, it, change = _hard_impute(
        jnp.asarray(z),
        jnp.asarray(mask),
        key if key is not None else jax.random.key(0),
        rank=rank,
        iters=iters,
        tol=tol,
        randomized=method == "randomized",
        oversample=oversample,
        power_iters=power_iters,
    )
    filled = np.asarray(out) * std
    return Completion(np.where(mask, v, filled).astype(np.float32), int(it), float(change))


@functools.partial(jax.jit, static_argnames=("rank", "iters", "randomized", "oversample", "power_iters"))
def _hard_impute(
    z: Array,
    mask: Array,
    key: Array,
    *,
    rank: int,
    iters: int,
    tol: float,
    randomized: bool,
    oversample: int,
    power_iters: int,
) -> tuple[Array, Array, Array]:
    hp = jax.lax.Precision.HIGHEST

    def low_rank(x: Array, k: Array) -> Array:
        if randomized:
            u, s, vt = randomized_svd(x, rank, key=k, oversample=oversample, power_iters=power_iters)
        else:
            u, s, vt = jnp.linalg.svd(x, full_matrices=False)
            u, s, vt = u[:, :rank], s[:rank], vt[:rank]
        return jnp.matmul(u * s, vt, precision=hp)

    def cond(state: tuple[Array, Array, Array]) -> Array:
        i, _, change = state
        return (i < iters) & (change > tol)

    def body(state: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        i, x, _ = state
        new = jnp.where(mask, z, low_rank(x, jax.random.fold_in(key, i)))
        change = jnp.linalg.norm(new - x) / jnp.maximum(jnp.linalg.norm(new), 1e-12)
        return i + 1, new, change

    i, x, change = jax.lax.while_loop(cond, body, (jnp.int32(0), z, jnp.float32(jnp.inf)))
    return x, i, change


@dataclasses.dataclass(frozen=True)
class CollaborativeProbing:
    """Result of :func:`collaborative_probe`.

    Attributes:
        responses: completed responses, one :class:`Responses` per zoo (index them with
            :func:`~weightspace.search.build_gallery`).
        observed: per zoo, ``[models, probes]`` True where the model was actually probed.
        forward_passes: model-probe forward passes run.
        forward_passes_full: what probing every model on every probe would have run.
        completion: the matrix-completion diagnostics.
    """

    responses: list[Responses]
    observed: list[np.ndarray]
    forward_passes: int
    forward_passes_full: int
    completion: Completion

    @property
    def saved(self) -> float:
        """Fraction of forward passes saved."""
        return 1.0 - self.forward_passes / self.forward_passes_full


def collaborative_probe(
    source: Any,
    probes: Any,
    *,
    fraction: float,
    key: jax.Array,
    groups: int = 32,
    rank: int = 16,
    iters: int = 100,
    method: str = "randomized",
) -> CollaborativeProbing:
    """Probe every model on a random ``fraction`` of the probes and complete the rest (ProbeLog §Collaborative Probing).

    Models of each zoo are split into up to ``groups`` groups; each group sees its own random
    subset of ``ceil(fraction * probes)`` probes through the one probe engine
    (:func:`weightspace.probing.probe`), so the engine runs batched and the observed pattern still
    varies across the hub. The logits of all zoos form one (logits x probes) matrix completed by
    :func:`complete_matrix`.

    Args:
        source: a Zoo, a Collection, or a sequence of zoos.
        probes: the gallery's :class:`~weightspace.data.ProbeSet`.
        fraction: probes per model, in ``(0, 1]``.
        key: ``jax.random.key`` choosing the subsets.
        groups: groups per zoo (``len(zoo)`` gives every model its own subset, as in the paper).
        rank, iters, method: for :func:`complete_matrix`.

    Returns:
        :class:`CollaborativeProbing`.
    """
    from weightspace.probing import probe
    from weightspace.zoo import Collection, Zoo

    if not 0.0 < fraction <= 1.0:
        raise InvalidValueError(f"fraction must be in (0, 1], got {fraction}")
    p = as_probe_set(probes)
    zoos: Sequence[Zoo] = (
        source.zoos if isinstance(source, Collection) else ([source] if isinstance(source, Zoo) else list(source))
    )
    n_p = len(p.data)
    n_sub = max(1, math.ceil(fraction * n_p))
    rows, masks, done = [], [], 0
    for zi, zoo in enumerate(zoos):
        n = len(zoo)
        g = max(1, min(groups, n))
        bounds = np.linspace(0, n, g + 1).astype(int)
        resp = np.full((n, n_p, zoo.arch.num_outputs), np.nan, np.float32)
        seen = np.zeros((n, n_p), bool)
        for gi in range(g):
            a, b = int(bounds[gi]), int(bounds[gi + 1])
            sub = np.sort(np.asarray(jax.random.permutation(jax.random.fold_in(key, zi * 1_000_003 + gi), n_p)[:n_sub]))
            resp[a:b][:, sub] = np.asarray(probe(zoo.select(slice(a, b)), p.data[sub]), np.float32)
            seen[a:b, sub] = True
            done += (b - a) * n_sub
        rows.append(resp)
        masks.append(seen)
    mat = np.concatenate([np.swapaxes(r, 1, 2).reshape(-1, n_p) for r in rows])
    obs = np.concatenate([np.repeat(s, r.shape[2], axis=0) for s, r in zip(masks, rows, strict=True)])
    comp = complete_matrix(
        mat, obs, rank=min(rank, *mat.shape), iters=iters, method=method, key=jax.random.fold_in(key, 0x7FFFFFFF)
    )
    out, start = [], 0
    for zoo, r in zip(zoos, rows, strict=True):
        n, lg = r.shape[0], r.shape[2]
        block = comp.values[start : start + n * lg].reshape(n, lg, n_p).swapaxes(1, 2)
        start += n * lg
        classes = zoo.meta.get("classes")
        out.append(Responses(zoo.name, np.ascontiguousarray(block), zoo.ids, classes))
    total = sum(len(z) for z in zoos) * n_p
    return CollaborativeProbing(out, masks, done, total, comp)

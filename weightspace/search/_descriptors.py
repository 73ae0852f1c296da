"""ProbeLog descriptors (normalised per-logit responses) and the asymmetric top-k discrepancy.

Axis vocabulary: ``models``, ``probes``, ``logits``; a *descriptor* is one row over ``probes``.
Everything here is a small pure function; the fast gallery kernels live in ``_kernels.py`` and are
tested against :func:`discrepancy`.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from weightspace._errors import ConfigError, InvalidValueError, ShapeError

DEFAULT_K = 64
"""Default number of query-selected probes (the paper does not publish its k). From the sweep in
``benchmarks/probelog.py`` (k in 8..512, 800 in-distribution probes, Fashion-MNIST hubs A/B, see
``benchmarks/results/probelog.md``): top-1 rises up to k = 64-128 and falls after; k = 64 is
best for text queries (90%) and within 3 points of the best k for logit queries (A->B 77.1 vs
79.7 at k = 128, B->A 70.3 vs 75.4 at k = 256)."""

DEFAULT_DISTANCE: Literal["l2", "l1", "cosine"] = "l2"
"""Default distance on the selected probes: L2, as in the later version of the paper; in the sweep
L2 >= L1 (within 1 point) and both beat cosine (by 2-43 points on in-distribution probes)."""

SELECTIONS = ("top", "bottom", "random", "quantiles", "all")
DISTANCES = ("l2", "l1", "cosine")
Selection = Literal["top", "bottom", "random", "quantiles", "all"]
Distance = Literal["l2", "l1", "cosine"]

# A logit whose responses vary less than this (relative to their magnitude) is "constant": its
# z-score is 0/0, and float32 round-off would otherwise turn it into amplified noise.
_CONSTANT_RTOL = 1e-6


def normalize_descriptors(values: Float[ArrayLike, "... probes"]) -> Float[Array, "... probes"]:
    """Z-score every descriptor over its probes (the ProbeLog normalisation).

    .. math:: z_i = (v_i - \\bar v) / \\sigma(v), \\quad \\sigma^2 = \\tfrac1n \\textstyle\\sum_i (v_i - \\bar v)^2

    A constant descriptor (``std <= 1e-6 * max|v|``) maps to all zeros instead of NaN.

    Args:
        values: responses ``[..., probes]`` (any leading axes).

    Returns:
        float32 array of the same shape; each row has mean 0 and std 1 (or is all zero).

    Example:
        >>> import numpy as np
        >>> z = normalize_descriptors(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
        >>> np.round(np.asarray(z), 4).tolist()
        [[-1.2247, 0.0, 1.2247], [0.0, 0.0, 0.0]]
    """
    v = jnp.asarray(values, jnp.float32)
    if v.ndim < 1 or v.shape[-1] < 1:
        raise ShapeError(f"descriptors must be [..., probes] with probes >= 1, got shape {tuple(v.shape)}")
    mean = v.mean(-1, keepdims=True)
    c = v - mean
    std = jnp.sqrt(jnp.mean(c * c, -1, keepdims=True))
    scale = jnp.max(jnp.abs(v), -1, keepdims=True)
    ok = std > _CONSTANT_RTOL * scale
    return jnp.where(ok, c / jnp.where(ok, std, 1.0), 0.0)


def logit_descriptors(
    responses: Float[ArrayLike, "models probes logits"], *, normalize: bool = True
) -> Float[Array, "models*logits probes"]:
    """One descriptor per (model, logit): its responses over the ordered probes, z-scored.

    Row ``m * logits + j`` describes logit ``j`` of model ``m``.

    Args:
        responses: ``[models, probes, logits]`` as returned by :func:`weightspace.probing.probe`.
        normalize: z-score each descriptor (``False`` is the paper's "no normalisation" ablation).

    Returns:
        float32 ``[models * logits, probes]``.

    Example:
        >>> import numpy as np
        >>> r = np.arange(12, dtype=np.float32).reshape(2, 3, 2)  # 2 models, 3 probes, 2 logits
        >>> logit_descriptors(r).shape
        (4, 3)
    """
    r = jnp.asarray(responses, jnp.float32)
    if r.ndim != 3:
        raise ShapeError(f"responses must be [models, probes, logits], got shape {tuple(r.shape)}")
    d = jnp.swapaxes(r, 1, 2).reshape(r.shape[0] * r.shape[2], r.shape[1])
    return normalize_descriptors(d) if normalize else d


def model_descriptors(
    responses: Float[ArrayLike, "models probes logits"], *, pool: Literal["max", "mean"] = "max"
) -> Float[Array, "models probes"]:
    """The "Model-level" baseline: one descriptor per model, independent of its logit order.

    Each logit is z-scored, then pooled over logits per probe (``max``: how strongly the model
    fires on any of its classes for that probe), then z-scored again, so a model descriptor can be
    searched with the same discrepancy as a logit or text descriptor.

    Args:
        responses: ``[models, probes, logits]``.
        pool: ``"max"`` or ``"mean"`` over logits.

    Returns:
        float32 ``[models, probes]``.

    Example:
        >>> import numpy as np
        >>> model_descriptors(np.random.default_rng(0).normal(size=(3, 5, 4))).shape
        (3, 5)
    """
    r = jnp.asarray(responses, jnp.float32)
    if r.ndim != 3:
        raise ShapeError(f"responses must be [models, probes, logits], got shape {tuple(r.shape)}")
    z = normalize_descriptors(jnp.swapaxes(r, 1, 2))  # [models, logits, probes]
    if pool == "max":
        pooled = z.max(1)
    elif pool == "mean":
        pooled = z.mean(1)
    else:
        raise ConfigError(f"model_descriptors: pool must be 'max' or 'mean', got {pool!r}")
    return normalize_descriptors(pooled)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")


def resolve_k(k: int | None, num_probes: int, selection: str) -> int:
    """The number of selected probes: ``num_probes`` for ``"all"``, else ``min(k, num_probes)``."""
    _check_choice("selection", selection, SELECTIONS)
    if selection == "all":
        return num_probes
    k = DEFAULT_K if k is None else k
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InvalidValueError(f"k must be a positive integer, got {k!r}")
    return int(min(k, num_probes))


def select_probes(
    queries: Float[ArrayLike, "queries probes"],
    k: int | None = None,
    *,
    selection: Selection = "top",
    key: jax.Array | None = None,
) -> Int[np.ndarray, "queries k"]:
    """Indices of the probes each query is compared on (the asymmetric part of ProbeLog).

    ``top``: the k probes where the QUERY is largest (ties: lower index first); ``bottom``: the k
    smallest; ``random``: k distinct probes drawn with ``key``; ``quantiles``: the probes at k
    evenly spaced ranks of the query's sorted values; ``all``: every probe.

    Args:
        queries: query descriptors ``[queries, probes]`` (a single ``[probes]`` row is accepted).
        k: number of probes (default :data:`DEFAULT_K`; capped at the number of probes).
        selection: one of :data:`SELECTIONS`.
        key: a ``jax.random.key``, required for ``random``.

    Returns:
        int32 ``[queries, k]`` (sorted ascending within each row, for sequential reads).

    Example:
        >>> import numpy as np
        >>> select_probes(np.array([[0.1, 0.9, 0.5, 0.7]]), 2).tolist()
        [[1, 3]]
    """
    q = np.asarray(queries, np.float32)
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2:
        raise ShapeError(f"queries must be [queries, probes], got shape {q.shape}")
    n, p = q.shape
    kk = resolve_k(k, p, selection)
    idx: np.ndarray
    if selection == "all":
        idx = np.broadcast_to(np.arange(p, dtype=np.int32), (n, p))
    elif selection == "top":
        idx = np.argsort(-q, axis=1, kind="stable")[:, :kk]
    elif selection == "bottom":
        idx = np.argsort(q, axis=1, kind="stable")[:, :kk]
    elif selection == "quantiles":
        order = np.argsort(q, axis=1, kind="stable")
        ranks = np.round(np.linspace(0, p - 1, kk)).astype(np.int64)
        idx = order[:, ranks]
    else:  # random
        if key is None:
            raise ConfigError("selection='random' needs key=jax.random.key(...)")
        keys = jax.random.split(key, n)
        idx = np.asarray(jax.vmap(lambda kq: jax.random.permutation(kq, p)[:kk])(keys))
    return np.sort(np.asarray(idx, np.int32), axis=1)


def discrepancy(
    queries: Float[ArrayLike, "queries probes"],
    gallery: Float[ArrayLike, "gallery probes"],
    *,
    k: int | None = None,
    selection: Selection = "top",
    distance: Distance = "l2",
    key: jax.Array | None = None,
) -> Float[np.ndarray, "queries gallery"]:
    """The asymmetric ProbeLog discrepancy between query and gallery descriptors.

    With :math:`S_q` the probes chosen by :func:`select_probes` from the query alone:

    .. math::
        d_{L2}(q, g) = \\lVert q_{S_q} - g_{S_q} \\rVert_2, \\quad
        d_{L1}(q, g) = \\lVert q_{S_q} - g_{S_q} \\rVert_1, \\quad
        d_{cos}(q, g) = 1 - \\frac{q_{S_q} \\cdot g_{S_q}}{\\lVert q_{S_q}\\rVert \\lVert g_{S_q}\\rVert}

    Descriptors are compared as given (normalise them first with :func:`normalize_descriptors`).
    This is the dense reference; :class:`~weightspace.search.Gallery` searches with fast kernels
    that give the same numbers.

    Args:
        queries: ``[queries, probes]``.
        gallery: ``[gallery, probes]`` (logit-major).
        k: probes per query (default :data:`DEFAULT_K`).
        selection: see :func:`select_probes`.
        distance: ``"l2"``, ``"l1"`` or ``"cosine"``.
        key: for ``selection="random"``.

    Returns:
        float32 ``[queries, gallery]``; lower is closer.

    References:
        Kahana et al., "Can this Model Also Recognize Dogs? Zero-Shot Model Search from Weights",
        arXiv 2502.09619 (2025).

    Example:
        >>> import numpy as np
        >>> q = np.array([[3.0, 0.0, 1.0]])
        >>> g = np.array([[3.0, 5.0, 1.0], [0.0, 0.0, 0.0]])
        >>> discrepancy(q, g, k=2).round(3).tolist()  # compares probes 0 and 2 only
        [[0.0, 3.162]]
    """
    _check_choice("distance", distance, DISTANCES)
    q = np.asarray(queries, np.float32)
    q = q[None] if q.ndim == 1 else q
    g = np.asarray(gallery, np.float32)
    if g.ndim != 2 or q.ndim != 2 or g.shape[1] != q.shape[1]:
        raise ShapeError(
            f"queries {q.shape} and gallery {g.shape} must be [*, probes] over the same probes "
            "(a different probe count means a different probe set)"
        )
    idx = select_probes(q, k, selection=selection, key=key)
    mask = np.zeros(q.shape, np.float32)
    np.put_along_axis(mask, idx, 1.0, axis=1)
    return np.asarray(_dense_discrepancy(jnp.asarray(q), jnp.asarray(mask), jnp.asarray(g), distance))


def _dense_discrepancy(q: Array, mask: Array, g: Array, distance: str) -> Array:
    hp = jax.lax.Precision.HIGHEST
    qm = q * mask
    if distance == "l1":
        return jnp.sum(mask[:, None, :] * jnp.abs(q[:, None, :] - g[None]), -1)
    gg = jnp.matmul(mask, (g * g).T, precision=hp)
    qg = jnp.matmul(qm, g.T, precision=hp)
    qq = jnp.sum(qm * qm, -1, keepdims=True)
    if distance == "l2":
        return jnp.sqrt(jnp.maximum(qq - 2.0 * qg + gg, 0.0))
    return 1.0 - qg / jnp.maximum(jnp.sqrt(qq * gg), 1e-12)

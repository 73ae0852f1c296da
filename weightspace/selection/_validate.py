"""Input checks shared by the transferability metrics (host-side; skipped for traced values)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from weightspace._errors import InvalidValueError, ShapeError


def is_traced(x: Any) -> bool:
    """True when ``x`` is a JAX tracer (inside ``jit``/``vmap``): value checks are impossible there."""
    return isinstance(x, jax.core.Tracer)


def as_float_array(x: Any, name: str, *, ndim: int | tuple[int, ...] = 2, what: str = "[samples, dims]") -> jax.Array:
    """``x`` as a floating JAX array of the given rank with no NaN/Inf (when concrete)."""
    arr = x if is_traced(x) else jnp.asarray(x)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in ndims:
        raise ShapeError(f"{name} must be {what}, got shape {tuple(arr.shape)}")
    if not is_traced(arr) and arr.size:
        bad = int(jnp.sum(~jnp.isfinite(arr)))
        if bad:
            raise InvalidValueError(
                f"{name} holds {bad} NaN/Inf value(s) out of {arr.size}; transferability metrics need finite inputs"
            )
    return arr


def as_labels(
    y: Any, n: int, *, num_classes: int | None = None, name: str = "labels", min_classes: int = 2
) -> tuple[jax.Array, int]:
    """Integer class labels ``[n]`` in ``[0, num_classes)`` and the number of classes.

    ``num_classes`` defaults to ``max(labels) + 1``; it is required when ``labels`` is traced.
    """
    if is_traced(y):
        if num_classes is None:
            raise InvalidValueError(f"{name} are traced (inside jit/vmap): pass num_classes explicitly")
        if y.ndim != 1 or y.shape[0] != n:
            raise ShapeError(f"{name} must have shape [{n}], got {tuple(y.shape)}")
        return y.astype(jnp.int32), int(num_classes)
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ShapeError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ShapeError(f"{name} has {arr.shape[0]} entries but the features/probabilities have {n} samples")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InvalidValueError(f"{name} must be integer class indices, got non-integer floats")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iub":
        raise InvalidValueError(f"{name} must be integer class indices, got dtype {arr.dtype}")
    if n == 0:
        raise ShapeError(f"{name} is empty")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise InvalidValueError(f"{name} must be >= 0, found {lo}")
    c = hi + 1 if num_classes is None else int(num_classes)
    if hi >= c:
        raise InvalidValueError(f"{name} must be < num_classes={c}, found {hi}")
    present = np.unique(arr).size
    if present < min_classes:
        raise InvalidValueError(
            f"{name} hold {present} distinct class(es) ({np.unique(arr).tolist()}); "
            f"transferability needs at least {min_classes}"
        )
    return jnp.asarray(arr, jnp.int32), c


def as_probs(p: Any, n: int | None = None, name: str = "probs") -> jax.Array:
    """Source-class probabilities ``[n, source_classes]``: finite, non-negative rows."""
    arr = as_float_array(p, name, what="[samples, source_classes]")
    if n is not None and arr.shape[0] != n:
        raise ShapeError(f"{name} has {arr.shape[0]} rows but the labels have {n} entries")
    if not is_traced(arr):
        neg = int(jnp.sum(arr < 0))
        if neg:
            raise InvalidValueError(f"{name} holds {neg} negative value(s); expected probabilities (softmax outputs)")
    return arr


def class_table(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class row indices padded to the largest class: ``(index [C, n_max], counts [C])``.

    Padding points at row ``n`` (one past the end), where callers append a zero row, so padded
    rows add nothing to Gram matrices.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    counts = np.bincount(labels, minlength=num_classes)
    n_max = max(int(counts.max()), 1)
    index = np.full((num_classes, n_max), n, dtype=np.int32)
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for c in range(num_classes):
        index[c, : counts[c]] = order[starts[c] : starts[c] + counts[c]]
    return index, counts.astype(np.int32)

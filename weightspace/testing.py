"""Public test helpers: tolerances in one place, pytree comparison, recompilation checks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

# One table of tolerances for the whole project; never relaxed ad hoc in a test.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-10, 1e-12),
    "float32": (1e-5, 1e-6),
    "float16": (1e-2, 1e-3),
    "bfloat16": (2e-2, 1e-2),
}
"""dtype name -> (rtol, atol)."""


def tolerance(dtype: Any) -> tuple[float, float]:
    """``(rtol, atol)`` for a dtype (the looser of two dtypes when comparing mixed arrays)."""
    return TOLERANCES.get(np.dtype(dtype).name, TOLERANCES["float32"])


def tree_allclose(a: Any, b: Any, *, rtol: float | None = None, atol: float | None = None,
                  scale: float = 1.0) -> bool:
    """True when two pytrees have the same structure and allclose leaves.

    Tolerances default to :data:`TOLERANCES` of the lower-precision dtype, times ``scale``
    (use ``scale`` for quantities accumulated over many terms, and say why in the test).

    Example:
        >>> import numpy as np
        >>> tree_allclose({"w": np.ones(3)}, {"w": np.ones(3) + 1e-13})
        True
    """
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        return False
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            return False
        lo = x.dtype if np.finfo(x.dtype).bits <= np.finfo(y.dtype).bits else y.dtype
        r, t = tolerance(lo)
        if not np.allclose(x, y, rtol=(rtol if rtol is not None else r) * scale,
                           atol=(atol if atol is not None else t) * scale):
            return False
    return True


def assert_tree_allclose(a: Any, b: Any, **kw: Any) -> None:
    """Assert :func:`tree_allclose`, reporting the largest difference per leaf on failure."""
    if tree_allclose(a, b, **kw):
        return
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    diffs = []
    for i, (x, y) in enumerate(zip(la, lb, strict=False)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            diffs.append(f"leaf {i}: shapes {x.shape} vs {y.shape}")
        else:
            diffs.append(f"leaf {i}: max|diff| {np.max(np.abs(x - y)) if x.size else 0:.3g}")
    raise AssertionError("pytrees differ: " + "; ".join(diffs))


@contextlib.contextmanager
def assert_no_recompile(fn: Any, *, allowed: int = 0) -> Iterator[None]:
    """Assert that calling the jitted ``fn`` inside the block compiles at most ``allowed`` times.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> f = jax.jit(lambda x: x * 2)
        >>> _ = f(jnp.ones(3))
        >>> with assert_no_recompile(f):
        ...     _ = f(jnp.zeros(3))
    """
    size = getattr(fn, "_cache_size", None)
    if size is None:
        raise TypeError("assert_no_recompile needs a jax.jit-wrapped function")
    before = size()
    yield
    after = size()
    if after - before > allowed:
        raise AssertionError(f"{getattr(fn, '__name__', fn)} recompiled {after - before} time(s) "
                             f"(allowed {allowed})")

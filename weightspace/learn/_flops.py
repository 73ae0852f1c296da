"""FLOPs of a computation from XLA's cost analysis (what the compiled program really does)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax

from weightspace._errors import InvalidValueError, WeightspaceError


def _flops_of(cost: Any) -> float:
    # jax has returned a dict, a list of per-computation dicts, or None across versions/backends.
    if cost is None:
        raise WeightspaceError("XLA cost analysis is unavailable on this backend; cannot count FLOPs")
    items = cost if isinstance(cost, (list, tuple)) else [cost]
    total, found = 0.0, False
    for c in items:
        if isinstance(c, Mapping) and "flops" in c:
            total += float(c["flops"])
            found = True
    if not found:
        raise WeightspaceError(f"XLA cost analysis reported no 'flops' entry (got {type(cost).__name__})")
    return total


def flops_per_model(fn: Callable[..., Any], *args: Any, models: int) -> float:
    """FLOPs per model of ``fn(*args)``, from XLA's cost analysis of the compiled program.

    .. math:: \\mathrm{FLOPs/model} = \\mathrm{cost\\_analysis}(\\mathrm{jit}(fn)(args))[\\text{flops}] / M

    Args:
        fn: the computation (e.g. an encoder's forward pass over a batch of ``models`` models);
            jitted here, so array arguments are abstract and anything else should be closed over.
        *args: example arguments (arrays or ``jax.ShapeDtypeStruct``s; nothing is run).
        models: how many models the call processes.

    Returns:
        Floating-point operations per model (a multiply-add counts 2).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from weightspace.learn import flops_per_model
        >>> w = jax.ShapeDtypeStruct((8, 32, 16), jnp.float32)  # 8 models: 32x16 weight each
        >>> x = jax.ShapeDtypeStruct((8, 16), jnp.float32)
        >>> flops_per_model(lambda w, x: jnp.einsum("mij,mj->mi", w, x), w, x, models=8)
        1024.0
    """
    if not isinstance(models, int) or isinstance(models, bool) or models < 1:
        raise InvalidValueError(f"flops_per_model: models must be a positive int, got {models!r}")
    # A function that lowers itself (a jax.jit, or weightspace.equivariant.encode_fn's result) keeps
    # its own compiler options; a jax.jit around it would be refused for them.
    lower = fn.lower if callable(getattr(fn, "lower", None)) else jax.jit(fn).lower  # type: ignore[attr-defined]
    compiled = lower(*args).compile()
    return _flops_of(compiled.cost_analysis()) / models

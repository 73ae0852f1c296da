"""XLA compile options that weightspace sets per program (never as process-wide flags)."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

_INDIVIDUAL_DOTS = (("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"),)


@functools.cache
def memory_bound_cpu_options() -> tuple[tuple[str, str], ...]:
    """``jax.jit`` ``compiler_options`` (as pairs) for memory-bound programs on CPU; ``()`` elsewhere.

    XLA's CPU backend hands chains of dots, elementwise ops and reductions to YNNPACK as one
    fusion. A YNNPACK fusion cannot broadcast its inputs, so every broadcast operand (a mask, a
    per-row mean, even a scalar constant) is first written out at the full size of the tensor.
    For the equivariant encoders, whose lifted weight tensors are ``[models, rows, cols, C]``, those
    copies took most of the time. With only individual dots given to YNNPACK, XLA's own loop
    fusions handle the rest, and the NP encoder encodes 64 MLP-784 models 2.9x faster (661 ->
    229 ms on 2 cores, 2026-12-06). Training steps are not compiled with it: their kernel-gradient
    reductions then leave YNNPACK for XLA's loop emitter, and the SIREN contrastive step is 6x
    slower (67 -> 400 ms).

    Returns ``()`` on other backends, and, with a warning, when this XLA does not know the option.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from weightspace._xla import memory_bound_cpu_options
        >>> f = jax.jit(lambda x: x * 2, compiler_options=dict(memory_bound_cpu_options()) or None)
        >>> f(jnp.ones(3)).tolist()
        [2.0, 2.0, 2.0]
    """
    if jax.default_backend() != "cpu":
        return ()
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(_INDIVIDUAL_DOTS)).lower(jnp.zeros(2)).compile()
    except Exception as e:  # an XLA that renamed or dropped the option: compile without it
        warnings.warn(
            f"weightspace: this XLA rejects {_INDIVIDUAL_DOTS[0][0]} ({type(e).__name__}); equivariant "
            "encoding compiles with XLA's default CPU fusions, which can be several times slower",
            RuntimeWarning,
            stacklevel=2,
        )
        return ()
    return _INDIVIDUAL_DOTS



_WIDE_VECTORS = (("xla_cpu_prefer_vector_width", 512),)


@functools.cache
def training_cpu_options() -> tuple[tuple[str, int], ...]:
    """``jax.jit`` ``compiler_options`` (as pairs) for the training step of :func:`weightspace.learn.fit`.

    On CPU: let XLA's own loop fusions use 512-bit vectors where the machine has them (XLA's
    default prefers 256 bits, a guard against the clock throttling of early AVX-512 chips).
    Measured on this project's 2-core Xeon (2026-12-06): the NP encoder's contrastive step on 64
    SIRENs 40 -> 38 ms, on 64 MLP-784s 1.61 -> 1.55 s; ProbeGen and ProbeX steps unchanged
    (within 3%). Machines without AVX-512 compile as before. ``()`` on other backends, and, with a
    warning, when this XLA does not know the option.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from weightspace._xla import training_cpu_options
        >>> f = jax.jit(lambda x: x * 2, compiler_options=dict(training_cpu_options()) or None)
        >>> f(jnp.ones(3)).tolist()
        [2.0, 2.0, 2.0]
    """
    if jax.default_backend() != "cpu":
        return ()
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(_WIDE_VECTORS)).lower(jnp.zeros(2)).compile()
    except Exception as e:  # an XLA that renamed or dropped the option: compile without it
        warnings.warn(f"weightspace: this XLA rejects {_WIDE_VECTORS[0][0]} ({type(e).__name__}); training "
                      "steps compile with XLA's default vector width", RuntimeWarning, stacklevel=2)
        return ()
    return _WIDE_VECTORS

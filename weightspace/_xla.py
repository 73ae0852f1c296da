"""XLA compile options that weightspace sets per program (never as process-wide flags)."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

_INDIVIDUAL_DOTS = (("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"),)
_WIDE_VECTORS = (("xla_cpu_prefer_vector_width", 512),)
_HEAP_BYTES = 16 << 20  # under glibc's largest dynamic mmap threshold (32 MiB), so freed heaps are reused
_SMALL_BUFFER_BYTES = 8 << 20
_SMALL_HEAPS = (("xla_multiheap_size_constraint_per_heap", _HEAP_BYTES),)


def memory_bound_cpu_options() -> tuple[tuple[str, str], ...]:
    """``jax.jit`` ``compiler_options`` (as pairs) for memory-bound programs on CPU; ``()`` elsewhere.

    XLA's CPU backend hands chains of dots, elementwise ops and reductions to YNNPACK as one
    fusion. A YNNPACK fusion cannot broadcast its inputs, so every broadcast operand (a mask, a
    per-row mean, even a scalar constant) is first written out at the full size of the tensor.
    For the equivariant encoders, whose lifted weight tensors are ``[models, rows, cols, C]``, those
    copies took most of the time. With only individual dots given to YNNPACK, XLA's own loop
    fusions handle the rest, and the NP encoder encodes 64 MLP-784 models 2.9x faster (661 ->
    229 ms on 2 cores, 2026-12-06). Training steps are not compiled with it: their reductions
    then leave YNNPACK for XLA's loop emitter, and the SIREN contrastive step is 1.5-1.7x slower
    (38 -> 59-67 ms).

    Returns ``()`` on other backends, and, with a warning, when this XLA does not know the option.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from weightspace._xla import memory_bound_cpu_options
        >>> f = jax.jit(lambda x: x * 2, compiler_options=dict(memory_bound_cpu_options()) or None)
        >>> f(jnp.ones(3)).tolist()
        [2.0, 2.0, 2.0]
    """
    return _INDIVIDUAL_DOTS if _accepts(_INDIVIDUAL_DOTS) else ()


def training_cpu_options() -> tuple[tuple[str, int], ...]:
    """``jax.jit`` ``compiler_options`` (as pairs) for the training step of :func:`weightspace.learn.fit`.

    On CPU: let XLA's own loop fusions use 512-bit vectors where the machine has them (XLA's
    default prefers 256 bits, a guard against the clock throttling of early AVX-512 chips).
    Measured on this project's 2-core Xeon (2026-12-06): the NP encoder's contrastive step on 64
    SIRENs 40 -> 38 ms, on 64 MLP-784s 1.61 -> 1.55 s; ProbeGen and ProbeX steps unchanged
    (within 3%). Machines without AVX-512 compile as before. ``()`` on other backends, and, with a
    warning, when this XLA does not know the option.

    Example:
        >>> from weightspace._xla import training_cpu_options
        >>> training_cpu_options()  # on CPU
        (('xla_cpu_prefer_vector_width', 512),)
    """
    return _WIDE_VECTORS if _accepts(_WIDE_VECTORS) else ()


def small_heaps_cpu_options(largest_buffer_bytes: int) -> tuple[tuple[str, int], ...]:
    """``compiler_options`` pairs for a CPU program whose buffers are all small but many.

    XLA's CPU runtime allocates one temporary block per execution for all intermediate buffers.
    Above 32 MiB glibc serves it with a fresh ``mmap`` every call, so every page of it faults
    in again: the NP encoder's contrastive step on 64 SIRENs (a 66 MiB block of 4 MiB buffers)
    spent 27 ms of kernel time per step on 16,900 page faults, a third of its CPU time. With
    the block split into heaps of at most 16 MiB, glibc keeps and mostly reuses them: 300-8,000
    faults per step, and the step went from 38 to 24-29 ms (2 cores, 2026-12-06). Buffers larger than a heap get one
    of their own, and heaps cannot share memory, so where single buffers are large this costs more
    than it saves (MLP-784: 200 MiB buffers, 1.56 -> 2.05 s): returns the option only when
    ``largest_buffer_bytes`` (the caller's estimate of its largest intermediate) is at most 8 MiB.
    ``()`` on other backends, and, with a warning, when this XLA does not know the option.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from weightspace._xla import small_heaps_cpu_options
        >>> small_heaps_cpu_options(4 << 20)
        (('xla_multiheap_size_constraint_per_heap', 16777216),)
        >>> small_heaps_cpu_options(200 << 20)
        ()
        >>> f = jax.jit(lambda x: x * 2, compiler_options=dict(small_heaps_cpu_options(1 << 20)) or None)
        >>> f(jnp.ones(3)).tolist()
        [2.0, 2.0, 2.0]
    """
    return _SMALL_HEAPS if largest_buffer_bytes <= _SMALL_BUFFER_BYTES and _accepts(_SMALL_HEAPS) else ()


@functools.cache
def _accepts(options: tuple[tuple[str, int], ...]) -> bool:
    """Whether this backend is the CPU and its XLA compiles with ``options`` (a warning if not)."""
    if jax.default_backend() != "cpu":
        return False
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.zeros(2)).compile()
    except Exception as e:  # an XLA that renamed or dropped the option: compile without it
        warnings.warn(
            f"weightspace: this XLA rejects {options[0][0]} ({type(e).__name__}); compiling without it",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True

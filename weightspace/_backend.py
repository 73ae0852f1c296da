"""Backend tuning, in one place: what each backend gets that generic code does not say.

Layers, kernels and drivers are written as plain math; where a backend runs a formulation,
compiler option or custom gradient of its own, they ask this module, and nothing else in
weightspace branches on the backend. Every choice here is used only on the backend where a
benchmark showed it faster; the measurements are in ``benchmarks/results/backend.md``.

- Formulations of the probe engine's many-model kernels: :func:`default_formulation`,
  :func:`use_fast_sin` (SIREN training and probing).
- Chunk sizes of population training: :func:`population_chunk`.
- XLA options per program (never process-wide flags): :func:`training_cpu_options`,
  :func:`memory_bound_cpu_options`, :func:`small_heaps_cpu_options`.
- Custom gradients for XLA-CPU's transposes: :func:`channel_mix`, :func:`lifted_mix`.
- Step syncing of the training driver: :func:`sync_each_step`.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

_INDIVIDUAL_DOTS = (("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"),)
_WIDE_VECTORS = (("xla_cpu_prefer_vector_width", 512),)
_HEAP_BYTES = 16 << 20  # under glibc's largest dynamic mmap threshold (32 MiB), so freed heaps are reused
_SMALL_BUFFER_BYTES = 8 << 20
_SMALL_HEAPS = (("xla_multiheap_size_constraint_per_heap", _HEAP_BYTES),)


def on_cpu() -> bool:
    """Whether JAX's default backend is the CPU (the only backend with tuning of its own so far)."""
    return jax.default_backend() == "cpu"


# ---- formulations ------------------------------------------------------------------------------
def default_formulation(kind: str) -> str:
    """The formulation ``apply_many(..., formulation="auto")`` runs for an architecture ``kind``.

    On CPU, ``lax.map`` over models with plain 2-D products (``"scan"``) for MLPs and SIRENs, and
    im2col matrix products (``"im2col"``) for CNNs; elsewhere one batched contraction per layer
    over the model axis (``"einsum"``) and XLA's grouped convolution (``"vmap"``).

    Example:
        >>> default_formulation("cnn")  # on CPU
        'im2col'
    """
    if kind == "cnn":
        return "im2col" if on_cpu() else "vmap"
    return "scan" if on_cpu() else "einsum"


def use_fast_sin() -> bool:
    """Whether SIRENs use :func:`weightspace.nets.fast_sin` (CPU: XLA's ``sin`` is a slow
    polynomial there, and a SIREN population trains ~4x faster with it; elsewhere ``jnp.sin``)."""
    return on_cpu()


# ---- population training ----------------------------------------------------------------------
def population_chunk(*, cpu: int, accelerator: int) -> int:
    """Models per compiled chunk of :func:`weightspace.train.fit_population` for a recipe: on CPU,
    small chunks (the products stay in cache, and a chunk that runs until its slowest model
    wastes less); elsewhere large ones, to fill the device.

    Example:
        >>> population_chunk(cpu=16, accelerator=1024) in (16, 1024)
        True
    """
    return cpu if on_cpu() else accelerator


# ---- training-driver behaviour -----------------------------------------------------------------
def sync_each_step(mesh: Any) -> bool:
    """Whether :func:`weightspace.train.fit` waits for each step before dispatching the next.

    On a CPU mesh (fake host devices sharing a few cores) several sharded steps in flight can
    starve the in-process all-reduce of threads and hang XLA's rendezvous, so they run one at a
    time there; elsewhere steps are queued asynchronously.
    """
    return mesh is not None and mesh.devices.flat[0].platform == "cpu"


# ---- XLA options -------------------------------------------------------------------------------
def memory_bound_cpu_options() -> tuple[tuple[str, str], ...]:
    """``jax.jit`` ``compiler_options`` (as pairs) for memory-bound programs on CPU; ``()`` elsewhere.

    XLA's CPU backend hands chains of dots, elementwise ops and reductions to YNNPACK as one
    fusion. A YNNPACK fusion cannot broadcast its inputs, so every broadcast operand (a mask, a
    per-row mean, even a scalar constant) is first written out at the full size of the tensor;
    for the equivariant encoders, whose lifted weight tensors are ``[models, rows, cols, C]``,
    those copies took most of the time. With only individual dots given to YNNPACK, XLA's own
    loop fusions handle the rest. Training steps are not compiled with it: their reductions then
    leave YNNPACK for XLA's loop emitter, which is slower there.

    Returns ``()`` on other backends, and, with a warning, when this XLA does not know the option.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from weightspace._backend import memory_bound_cpu_options
        >>> f = jax.jit(lambda x: x * 2, compiler_options=dict(memory_bound_cpu_options()) or None)
        >>> f(jnp.ones(3)).tolist()
        [2.0, 2.0, 2.0]
    """
    return _INDIVIDUAL_DOTS if _accepts(_INDIVIDUAL_DOTS) else ()


def training_cpu_options() -> tuple[tuple[str, int], ...]:
    """``jax.jit`` ``compiler_options`` (as pairs) for the training step of :func:`weightspace.train.fit`.

    On CPU: let XLA's own loop fusions use 512-bit vectors where the machine has them (XLA's
    default prefers 256 bits, a guard against the clock throttling of early AVX-512 chips).
    Machines without AVX-512 compile as before. ``()`` on other backends, and, with a warning,
    when this XLA does not know the option.

    Example:
        >>> from weightspace._backend import training_cpu_options
        >>> training_cpu_options()  # on CPU
        (('xla_cpu_prefer_vector_width', 512),)
    """
    return _WIDE_VECTORS if _accepts(_WIDE_VECTORS) else ()


def init_cpu_options() -> tuple[tuple[str, int], ...]:
    """``compiler_options`` pairs for population initialisers: LLVM ``-O1`` on CPU, ``()`` elsewhere.

    Initialisers are threefry bit-twiddling plus a scale, run once per population; at ``-O1`` they
    compile several times faster into the same bits (checked on every recipe and benchmark
    architecture at 1, 3 and 1000 models).

    Example:
        >>> init_cpu_options()  # on CPU
        (('xla_backend_optimization_level', 1),)
    """
    return (("xla_backend_optimization_level", 1),) if on_cpu() else ()


def small_heaps_cpu_options(largest_buffer_bytes: int) -> tuple[tuple[str, int], ...]:
    """``compiler_options`` pairs for a CPU program whose buffers are all small but many.

    XLA's CPU runtime allocates one temporary block per execution for all intermediate buffers.
    Above 32 MiB glibc serves it with a fresh ``mmap`` every call, so every page of it faults
    in again at every step. With the block split into heaps of at most 16 MiB, glibc keeps and
    mostly reuses them. Buffers larger than a heap get one of their own, and heaps cannot share
    memory, so where single buffers are large this costs more than it saves: returns the option
    only when ``largest_buffer_bytes`` (the caller's estimate of its largest intermediate) is at
    most 8 MiB. ``()`` on other backends, and, with a warning, when this XLA does not know it.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from weightspace._backend import small_heaps_cpu_options
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
    if not on_cpu():
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


# ---- custom gradients for XLA-CPU --------------------------------------------------------------
@jax.custom_vjp
def _channel_mix_cpu(x: Array, kernel: Array) -> Array:
    return x @ kernel


def _channel_mix_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return x @ kernel, (x, kernel)


def _channel_mix_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = res
    dk = jnp.einsum("nc,nd->cd", x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]))
    return g @ kernel.T, dk


_channel_mix_cpu.defvjp(_channel_mix_fwd, _channel_mix_bwd)


def channel_mix(x: Float[Array, "... c_in"], kernel: Float[Array, "c_in c_out"]) -> Float[Array, "... c_out"]:
    """``x @ kernel`` over the channel axis of a large per-entry tensor.

    On CPU its kernel gradient is one product of the entries flattened to ``[entries, C]``: as
    autodiff writes it (a contraction over every leading axis), XLA's CPU backend first transposes
    ``x`` and the incoming gradient to channel-major copies of the whole tensor. Elsewhere, plain
    autodiff.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x, k = jnp.ones((2, 3, 4)), jnp.ones((4, 5))
        >>> g = jax.grad(lambda k: channel_mix(x, k).sum())(k)
        >>> g.shape, float(g[0, 0])
        ((4, 5), 6.0)
    """
    return _channel_mix_cpu(x, kernel) if on_cpu() else x @ kernel


@jax.custom_vjp
def _outer_cpu(u: Array, kernel: Array) -> Array:
    return u * kernel[0]


def _outer_fwd(u: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return u * kernel[0], (u, kernel)


def _outer_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    u, kernel = res
    lead = tuple(range(u.ndim - 1))
    du = (g * kernel[0]).sum(-1, keepdims=True)
    return du, jnp.tensordot(u[..., 0], g, axes=(lead, lead))[None]


_outer_cpu.defvjp(_outer_fwd, _outer_bwd)


def lifted_mix(u: Float[Array, "... taps"], kernel: Float[Array, "taps c"]) -> Float[Array, "... c"]:
    """``u @ kernel`` over the last axis, where one input feature (``taps == 1``) is a broadcast product.

    On CPU the one-feature product's kernel gradient is a dot (autodiff multiplies the incoming
    gradient by ``u`` broadcast to every channel, which XLA-CPU writes out at full size), and
    several features go through :func:`channel_mix`. Elsewhere, plain autodiff.

    Example:
        >>> import jax.numpy as jnp
        >>> lifted_mix(jnp.ones((2, 3, 1)), jnp.arange(4.0)[None]).shape
        (2, 3, 4)
    """
    if kernel.shape[0] != 1:
        return channel_mix(u, kernel)
    return _outer_cpu(u, kernel) if on_cpu() else u * kernel[0]

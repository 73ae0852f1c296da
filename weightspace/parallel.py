"""Device meshes over a ``models`` axis, model-axis padding and sharding, multi-process start-up.

Sharding in weightspace is declared at the top (``jax.make_mesh`` + ``NamedSharding``); kernels
stay sharding-agnostic. A zoo is split across devices along axis 0 of every parameter leaf; the
model count is padded to a multiple of the device count by repeating the last model, so padded
models compute finite (and discarded) outputs whatever the architecture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from weightspace._errors import ConfigError, InvalidValueError, ShapeError

T = TypeVar("T")

__all__ = [
    "chunk_rows",
    "chunk_size",
    "initialize_distributed",
    "make_mesh",
    "map_chunks",
    "model_axis_size",
    "pad_models",
    "shard_models",
]


def make_mesh(axis: str = "models", *, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis device mesh over ``devices`` (default: every device of the default backend).

    Args:
        axis: the mesh axis name; the probe engine shards models over ``"models"``.
        devices: the devices to span (default ``jax.devices()``, across all processes).

    Returns:
        A :class:`jax.sharding.Mesh` of shape ``(len(devices),)``.

    Example:
        >>> from weightspace.parallel import make_mesh
        >>> mesh = make_mesh()
        >>> mesh.axis_names
        ('models',)
    """
    if not isinstance(axis, str) or not axis:
        raise ConfigError(f"make_mesh: axis must be a non-empty string, got {axis!r}")
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ConfigError("make_mesh: no devices given")
    return jax.make_mesh((len(devs),), (axis,), devices=devs)


def model_axis_size(mesh: Mesh, axis: str = "models") -> int:
    """Number of devices along ``axis`` of ``mesh`` (raises :class:`ConfigError` if absent)."""
    if axis not in mesh.axis_names:
        raise ConfigError(f"mesh axes {mesh.axis_names} have no {axis!r} axis to shard models over")
    return int(mesh.shape[axis])


def _num_models(tree: Any) -> int:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ShapeError("pytree of stacked models has no leaves")
    sizes = {int(np.shape(v)[0]) if np.ndim(v) else -1 for v in leaves}
    if len(sizes) != 1 or -1 in sizes:
        raise ShapeError(f"every leaf must have the same model axis 0; found leading sizes {sorted(sizes)}")
    return sizes.pop()


def pad_models(tree: T, multiple: int) -> T:
    """Pad axis 0 of every leaf to a multiple of ``multiple`` by repeating the last model.

    .. math:: n' = \\lceil n / k \\rceil k, \\qquad x'_i = x_{\\min(i, n-1)}

    Repeating a real model (rather than padding with zeros) keeps the padded rows finite for
    any architecture (zero weights can divide by zero in a normalisation layer).

    Args:
        tree: a pytree whose leaves are stacked on axis 0 (NumPy or JAX arrays).
        multiple: the padded model count is a multiple of this (>= 1).

    Returns:
        The padded tree (the input itself when no padding is needed).

    Example:
        >>> import numpy as np
        >>> from weightspace.parallel import pad_models
        >>> pad_models({"w": np.arange(3.0)}, 4)["w"]
        array([0., 1., 2., 2.])
    """
    if not isinstance(multiple, int) or multiple < 1:
        raise InvalidValueError(f"pad_models: multiple must be a positive int, got {multiple!r}")
    n = _num_models(tree)
    target = math.ceil(n / multiple) * multiple
    if target == n:
        return tree
    idx = np.minimum(np.arange(target), n - 1)

    def pad(v: Any) -> Any:
        return v[idx] if isinstance(v, np.ndarray) else jnp.asarray(v)[idx]

    return jax.tree_util.tree_map(pad, tree)


def chunk_rows(start: int, size: int, n: int) -> np.ndarray:
    """Row indices of the fixed-size chunk ``start .. start+size`` of ``n`` rows; past the end the last
    row repeats (as :func:`pad_models` pads), so every chunk has the same shape.

    Example:
        >>> from weightspace.parallel import chunk_rows
        >>> chunk_rows(4, 4, 6).tolist()
        [4, 5, 5, 5]
    """
    return np.minimum(np.arange(start, start + size), n - 1)


def chunk_size(n: int, chunk: int, *, multiple: int = 1) -> int:
    """The rows per call of :func:`map_chunks` over ``n`` rows: at most ``chunk``; a small ``n`` is
    padded only to the next power of two (few shapes, little wasted work); a multiple of ``multiple``.

    Example:
        >>> from weightspace.parallel import chunk_size
        >>> chunk_size(1000, 256), chunk_size(5, 256), chunk_size(5, 256, multiple=4)
        (256, 8, 8)
    """
    if not isinstance(chunk, int | np.integer) or chunk < 1:
        raise InvalidValueError(f"chunk must be a positive int, got {chunk!r}")
    size = max(1, min(int(chunk), 1 << max(0, (n - 1).bit_length())))
    return -(-size // multiple) * multiple


def map_chunks(
    fn: Callable[[Any], Any],
    tree: Any,
    *,
    chunk: int,
    multiple: int = 1,
    out_axis: int = 0,
    place: Callable[[Any], Any] | None = None,
) -> np.ndarray:
    """``fn`` over fixed-shape chunks of the rows (axis 0) of ``tree``, concatenated on the host.

    Every call has the same shape (:func:`chunk_size`; the last chunk is padded with
    :func:`chunk_rows`), so a jitted ``fn`` compiles once, and the padded rows are dropped from the
    result. The one pad-and-chunk loop of weightspace (embedding, ProbeX and ProbeGen inference).

    Args:
        fn: ``chunk of tree -> array`` whose axis ``out_axis`` follows the rows.
        tree: a pytree of arrays sharing axis 0 (NumPy or JAX).
        chunk: rows per call at most.
        multiple: round the chunk up to a multiple of this (a device count).
        out_axis: the rows' axis in ``fn``'s output (e.g. 1 for ``[members, rows, ...]``).
        place: applied to each chunk before ``fn`` (e.g. a sharding ``device_put``).

    Returns:
        The concatenated outputs as a NumPy array.

    Example:
        >>> import jax, numpy as np
        >>> from weightspace.parallel import map_chunks
        >>> f = jax.jit(lambda x: x * 2)
        >>> map_chunks(f, np.arange(5.0), chunk=2).tolist()
        [0.0, 2.0, 4.0, 6.0, 8.0]
    """
    n = _num_models(tree)
    size = chunk_size(n, chunk, multiple=multiple)
    out = []
    for lo in range(0, n, size):
        idx = None if lo + size <= n else chunk_rows(lo, size, n)

        def take(a: Any, lo: int = lo, idx: np.ndarray | None = idx) -> Any:
            if idx is None:
                return a[lo : lo + size]
            return a[idx] if isinstance(a, np.ndarray) else jnp.asarray(a)[idx]

        part = jax.tree_util.tree_map(take, tree)
        if place is not None:
            part = place(part)
        y = np.asarray(jax.device_get(fn(part)))
        out.append(np.take(y, np.arange(min(size, n - lo)), axis=out_axis))
    return np.concatenate(out, axis=out_axis)


def shard_models(tree: T, mesh: Mesh, *, axis: str = "models") -> T:
    """Pad the model axis to a multiple of the mesh's ``axis`` size and split it across devices.

    Args:
        tree: a pytree of arrays stacked on axis 0 (a zoo's ``params``).
        mesh: the device mesh; leaves are sharded along ``axis`` and replicated over other axes.
        axis: the mesh axis carrying models.

    Returns:
        The padded tree as global ``jax.Array``s with ``NamedSharding(mesh, P(axis))``.

    Example:
        >>> import numpy as np
        >>> from weightspace.parallel import make_mesh, shard_models
        >>> mesh = make_mesh()
        >>> w = shard_models({"w": np.ones((3, 2))}, mesh)["w"]
        >>> w.shape[0] % mesh.size, w.sharding.spec
        (0, P('models',))
    """
    n_dev = model_axis_size(mesh, axis)
    padded = pad_models(tree, n_dev)
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    return jax.tree_util.tree_map(lambda v: jax.device_put(v, sharding), padded)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs: Any,
) -> bool:
    """Start JAX's multi-process runtime (one process per host) before any device is used.

    A thin wrapper around :func:`jax.distributed.initialize`: on a cluster that JAX can detect
    (SLURM, Open MPI, Cloud TPU, Kubernetes) call it with no arguments; elsewhere give the
    coordinator ``"host:port"``, the process count and this process's id. Afterwards
    ``jax.devices()`` spans every host, so :func:`make_mesh` and the probe engine shard a zoo
    across the whole cluster. Calling it again once initialised is a no-op.

    Args:
        coordinator_address: ``"host:port"`` of process 0.
        num_processes: total number of processes.
        process_id: this process's rank in ``[0, num_processes)``.
        **kwargs: passed on to :func:`jax.distributed.initialize` (``local_device_ids``,
            ``initialization_timeout``...).

    Returns:
        ``True`` when this call initialised the runtime, ``False`` when it was already up.

    Example:
        >>> from weightspace.parallel import initialize_distributed
        >>> callable(initialize_distributed)  # on a cluster: initialize_distributed()
        True
    """
    if num_processes is not None and (not isinstance(num_processes, int) or num_processes < 1):
        raise InvalidValueError(f"num_processes must be a positive int, got {num_processes!r}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise InvalidValueError(f"process_id must be in [0, {num_processes}), got {process_id!r}")
    if jax.distributed.is_initialized():
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id, **kwargs
    )
    return True

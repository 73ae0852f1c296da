"""Device meshes over a ``models`` axis, model-axis padding and sharding, multi-process start-up.

Sharding in weightspace is declared at the top (``jax.make_mesh`` + ``NamedSharding``); kernels
stay sharding-agnostic. A zoo is split across devices along axis 0 of every parameter leaf; the
model count is padded to a multiple of the device count by repeating the last model, so padded
models compute finite (and discarded) outputs whatever the architecture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from weightspace._errors import ConfigError, InvalidValueError, ShapeError

T = TypeVar("T")

__all__ = ["initialize_distributed", "make_mesh", "model_axis_size", "pad_models", "shard_models"]


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

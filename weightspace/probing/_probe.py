"""The probe engine: responses of every model of a zoo to an ordered probe set.

One jitted kernel (``arch.apply_many`` on a chunk of models and a chunk of probes) runs over a
grid of fixed-shape chunks; the last chunks are padded so every call has the same shapes and the
kernel compiles once per (architecture, chunk shape, mesh). On several devices the model chunk is
split over the ``models`` mesh axis with ``shard_map`` so each device runs the per-backend
formulation on its own models. Results stream to a NumPy array or to a memory-mapped ``.npy``
file while the next chunk computes (JAX dispatch is asynchronous).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float

from weightspace._atomic import atomic_path
from weightspace._errors import ConfigError, InvalidValueError, ShapeError, WeightspaceError
from weightspace.nets import Architecture, Params
from weightspace.parallel import chunk_rows, make_mesh, model_axis_size
from weightspace.zoo import Collection, Zoo

MODELS_AXIS = "models"

#: Default working-memory budget of one probe call on CPU, shared by all host devices (bytes).
CPU_MEMORY_BUDGET = 512 * 2**20
#: Fraction of an accelerator's memory one probe call may use for activations, per device.
ACCELERATOR_MEMORY_FRACTION = 0.25
#: Work (FLOPs) above which the progress bar turns itself on.
PROGRESS_FLOPS = 2e11


# ---- inputs --------------------------------------------------------------------------------
def _probe_array(probes: Any) -> tuple[np.ndarray | jax.Array, str]:
    """The probe array of a ``ProbeSet`` (anything with ``.data``) or an array, and a name."""
    is_array = isinstance(probes, np.ndarray | jax.Array)  # ndarray.data is a raw buffer, not probes
    data = probes if is_array else getattr(probes, "data", probes)
    name = "probes" if is_array else str(getattr(probes, "name", "probes"))
    if not isinstance(data, np.ndarray | jax.Array):
        try:
            data = np.asarray(data, np.float32)
        except (TypeError, ValueError) as e:
            raise ShapeError(f"probes must be an array or a ProbeSet, got {type(probes).__name__}") from e
    if data.ndim < 2 or data.shape[0] == 0:
        raise ShapeError(
            f"probe set {name!r} must be [probes, ...] with at least one probe, got shape {tuple(data.shape)}"
        )
    if not jnp.issubdtype(data.dtype, jnp.floating):
        raise ShapeError(f"probe set {name!r} must hold floats, got dtype {data.dtype}")
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(np.asarray(data))))
    if bad:
        raise InvalidValueError(f"probe set {name!r} holds {bad} NaN/Inf values")
    return data, name


# ---- sizes ---------------------------------------------------------------------------------
def _outvar_sizes(jaxpr: Any) -> list[int]:
    sizes: list[int] = []
    for eqn in jaxpr.eqns:
        sizes += [math.prod(getattr(v.aval, "shape", ())) for v in eqn.outvars]
        for p in eqn.params.values():
            inner = getattr(p, "jaxpr", p)
            if hasattr(inner, "eqns"):
                sizes += _outvar_sizes(inner)
    return sizes


@functools.lru_cache(maxsize=256)
def activation_bytes(arch: Architecture) -> int:
    """Estimated peak working memory of one model on one probe, in bytes.

    The forward pass is traced (not compiled) on batches of one and two probes; the per-probe
    size of each intermediate is the difference. A sequential network keeps about two
    activations alive plus a fused temporary, hence ``3 x`` the largest intermediate, plus the
    input itself.

    Args:
        arch: the architecture.

    Returns:
        Bytes per (model, probe) pair.

    Example:
        >>> from weightspace.nets import MLP
        >>> from weightspace.probing import activation_bytes
        >>> activation_bytes(MLP(in_features=64, hidden=(128, 128), out_features=10))
        1792
    """
    shapes = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in arch.param_shapes().items()}

    def sizes(batch: int) -> list[int]:
        x = jax.ShapeDtypeStruct((batch, *arch.input_shape), jnp.float32)
        return _outvar_sizes(jax.make_jaxpr(lambda p, x: arch.apply(p, x))(shapes, x).jaxpr)

    one, two = sizes(1), sizes(2)
    per_probe = [b - a for a, b in zip(one, two, strict=False)] or [arch.num_outputs]
    return 4 * (3 * max(max(per_probe), arch.num_outputs) + math.prod(arch.input_shape))


def _budget(mesh: Mesh | None, n_dev: int) -> int:
    """Working-memory bytes per device."""
    dev = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
    if dev.platform == "cpu":
        return CPU_MEMORY_BUDGET // n_dev
    stats = dev.memory_stats() or {}
    limit = stats.get("bytes_limit")
    return int(limit * ACCELERATOR_MEMORY_FRACTION) if limit else CPU_MEMORY_BUDGET


def _balanced(total: int, cap: int, multiple: int) -> int:
    """The smallest multiple-of-``multiple`` chunk that covers ``total`` in ceil(total/cap) steps."""
    cap = max(multiple, cap // multiple * multiple)
    steps = math.ceil(total / cap)
    return math.ceil(math.ceil(total / steps) / multiple) * multiple


def chunk_sizes(
    arch: Architecture,
    n_models: int,
    n_probes: int,
    *,
    devices: int = 1,
    memory_budget: int | None = None,
) -> tuple[int, int]:
    """Default ``(model_chunk, probe_chunk)`` for a zoo, from a per-device memory budget.

    Each device holds ``model_chunk / devices`` models' parameters and their activations on
    ``probe_chunk`` probes; both must fit ``memory_budget`` bytes (default: 512 MiB shared by
    the host's CPU devices, or a quarter of an accelerator's memory). All probes go in one chunk
    when a single model's activations fit; chunks are balanced so the padding is small.

    Args:
        arch: the architecture.
        n_models: number of models.
        n_probes: number of probes.
        devices: devices along the ``models`` mesh axis (``model_chunk`` is a multiple of it).
        memory_budget: bytes per device.

    Returns:
        ``(model_chunk, probe_chunk)``.

    Example:
        >>> from weightspace.nets import MLP
        >>> from weightspace.probing import chunk_sizes
        >>> chunk_sizes(MLP(in_features=64, hidden=(128, 128), out_features=10), 1000, 1000,
        ...             memory_budget=2**27)
        (67, 1000)
    """
    budget = _budget(None, devices) if memory_budget is None else int(memory_budget)
    if budget <= 0:
        raise InvalidValueError(f"memory_budget must be positive, got {memory_budget!r}")
    act = activation_bytes(arch)
    pbytes = 4 * arch.num_params()
    probe_cap = max(1, (budget - pbytes) // act)
    probe_chunk = _balanced(n_probes, probe_cap, 1)
    per_model = pbytes + act * probe_chunk
    local_models = max(1, budget // per_model)
    model_chunk = _balanced(n_models, local_models * devices, devices)
    return model_chunk, probe_chunk


# ---- the kernel ----------------------------------------------------------------------------
def _apply_chunk(arch: Architecture, params: Params, x: Array, formulation: str | None = None) -> Array:
    if formulation is None:
        return arch.apply_many(params, x).astype(jnp.float32)
    if formulation == "vmap":  # plain vmap of arch.apply, for every architecture
        return Architecture.apply_many(arch, params, x).astype(jnp.float32)
    return arch.apply_many(params, x, formulation=formulation).astype(jnp.float32)  # type: ignore[call-arg]


def _probe_kernel(
    params: Params,
    x: Float[Array, "probes ..."],
    *,
    arch: Architecture,
    mesh: Mesh | None = None,
    formulation: str | None = None,
) -> Float[Array, "models probes logits"]:
    """``arch.apply_many`` on one fixed-shape chunk, split over ``mesh``'s ``models`` axis.

    Args:
        params: a chunk of stacked parameters (model count a multiple of the mesh size), placed
            with ``NamedSharding(mesh, P("models"))`` when ``mesh`` is given.
        x: the adapted probe chunk, shared by every model (replicated on ``mesh``).
        arch: the architecture (static).
        mesh: a mesh with a ``models`` axis, or ``None`` for one device.
        formulation: an ``apply_many`` formulation (``None``: the architecture's default).

    Returns:
        ``[models, probes, logits]`` float32 responses (sharded over ``models`` on a mesh).

    :data:`probe_kernel` is this function jitted with default XLA options; :func:`probe` uses
    :func:`kernel_for`, which adds the architecture's ``compiler_options``.

    Example:
        >>> import jax
        >>> from weightspace.nets import MLP
        >>> from weightspace.probing import probe_kernel
        >>> arch = MLP(in_features=3, hidden=(4,), out_features=2)
        >>> p = jax.vmap(arch.init)(jax.random.split(jax.random.key(0), 5))
        >>> probe_kernel(p, jax.numpy.ones((7, 3)), arch=arch).shape
        (5, 7, 2)
    """
    fn = functools.partial(_apply_chunk, arch, formulation=formulation)
    if mesh is None:
        return fn(params, x)
    spec = PartitionSpec(MODELS_AXIS)
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec, PartitionSpec()), out_specs=spec)(params, x)


@functools.cache
def _jitted_kernel(options: tuple[tuple[str, Any], ...]) -> Any:
    return jax.jit(
        _probe_kernel, static_argnames=("arch", "mesh", "formulation"), compiler_options=dict(options) or None
    )


probe_kernel = _jitted_kernel(())
"""The probe kernel, jitted (``arch`` and ``mesh`` static); see :func:`kernel_for`."""


def kernel_for(arch: Architecture) -> Any:
    """The jitted probe kernel for ``arch``: :data:`probe_kernel` compiled with ``arch.compiler_options``.

    Example:
        >>> from weightspace.nets import MLP, SIREN
        >>> kernel_for(MLP(in_features=3, hidden=(4,))) is probe_kernel
        True
        >>> kernel_for(SIREN()) is probe_kernel  # SIREN asks XLA for cuBLAS GEMMs on GPU
        False
    """
    return _jitted_kernel(tuple(arch.compiler_options))


def apply_models(
    arch: Architecture,
    params: Params,
    probes: Float[Array, "probes ..."],
    *,
    mesh: Mesh | None = None,
    adapt: bool = True,
    formulation: str | None = None,
) -> Float[Array, "models probes logits"]:
    """Responses of a batch of models to probes, differentiable with respect to the probes.

    This is the probe engine's kernel (:func:`_probe_kernel`, i.e. ``arch.apply_many`` with its
    per-backend fast formulations) behind :func:`probe`, as a pure function to call inside a
    jitted loss: ``jax.grad`` flows through the frozen models into the probes (and into
    whatever made them, e.g. a ProbeGen generator). It is not jitted itself; :func:`probe`
    adds chunking, padding and streaming around the same kernel.

    .. math:: R[m, i, j] = f_m(\\mathrm{adapt}(x)_i)_j

    Args:
        arch: the architecture.
        params: stacked parameters ``[models, ...]`` of ``arch`` (frozen: not differentiated
            unless the caller asks for it).
        probes: ``[probes, ...]`` raw probes; ``arch.adapt`` maps them onto the input
            (image architectures resize and convert channels; others require the exact shape).
        mesh: a mesh with a ``models`` axis: the models are resharded over it (padded to a
            multiple of its size by repeating the last model) and the probes replicated.
        adapt: apply ``arch.adapt`` to ``probes`` (``False``: they are already adapted).
        formulation: ``None`` (``arch.grad_formulation``, the formulation that differentiates
            fastest, else the engine's per-backend choice) or an ``apply_many`` formulation;
            ``"vmap"`` (plain ``vmap`` of ``arch.apply``, no loops) is what FLOP counts use,
            since XLA's cost analysis counts a loop body (``lax.map``) once.

    Returns:
        ``[models, probes, logits]`` float32.

    Raises:
        ShapeError: probes that do not fit the architecture's input.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from weightspace.nets import SIREN
        >>> from weightspace.zoo import Zoo
        >>> from weightspace.probing import apply_models
        >>> zoo = Zoo.init(SIREN(), 4, key=jax.random.key(0))
        >>> loss = lambda x: jnp.sum(apply_models(zoo.arch, zoo.params, x) ** 2)
        >>> jax.grad(loss)(jnp.zeros((16, 2))).shape
        (16, 2)
    """
    x = arch.adapt(probes) if adapt else probes
    if x.shape[1:] != arch.input_shape:
        raise ShapeError(
            f"apply_models: probes of shape {tuple(x.shape)} do not fit {type(arch).__name__} input {arch.input_shape}"
        )
    x = x.astype(jnp.float32)
    if formulation is not None and mesh is not None:
        raise ConfigError("apply_models: give either mesh= or formulation=, not both")
    form = formulation if formulation is not None else arch.grad_formulation
    if mesh is None:
        return _probe_kernel(params, x, arch=arch, formulation=form)
    n_dev = model_axis_size(mesh, MODELS_AXIS)
    n = _param_count(params)
    pad = -n % n_dev
    if pad:
        idx = jnp.minimum(jnp.arange(n + pad), n - 1)
        params = {k: jnp.asarray(v)[idx] for k, v in params.items()}
    params = _place(params, NamedSharding(mesh, PartitionSpec(MODELS_AXIS)))
    x = _place(x, NamedSharding(mesh, PartitionSpec()))
    out = _probe_kernel(params, x, arch=arch, mesh=mesh, formulation=form)
    if pad:  # an uneven model count cannot stay split over the mesh
        out = _place(out, NamedSharding(mesh, PartitionSpec()))[:n]
    return out


def _place(tree: Any, sharding: NamedSharding) -> Any:
    """Lay ``tree`` out as ``sharding`` says, inside or outside ``jit``, on Explicit or Auto meshes."""
    from jax.sharding import AxisType

    if all(t == AxisType.Explicit for t in sharding.mesh.axis_types):
        return jax.reshard(tree, sharding)
    return jax.lax.with_sharding_constraint(tree, sharding)


def _param_count(params: Params) -> int:
    sizes = {int(v.shape[0]) for v in params.values()}
    if len(sizes) != 1:
        raise ShapeError(f"apply_models: parameters must share the model axis 0, found sizes {sorted(sizes)}")
    return sizes.pop()


def _chunk_of(params: Params, start: int, size: int, n: int) -> Params:
    """Models ``start .. start+size`` (the last model repeated past ``n``: :func:`~weightspace.parallel.chunk_rows`)."""
    if start + size <= n:
        return {k: v[start : start + size] for k, v in params.items()}
    idx = chunk_rows(start, size, n)
    return {k: v[idx] if isinstance(v, np.ndarray) else jnp.asarray(v)[idx] for k, v in params.items()}


def _resolve_mesh(mesh: Mesh | bool | None) -> Mesh | None:
    if mesh is False:
        return None
    if mesh is None or mesh is True:
        return make_mesh(MODELS_AXIS) if jax.device_count() > 1 else None
    if not isinstance(mesh, Mesh):
        raise ConfigError(f"mesh must be a jax.sharding.Mesh, None (auto) or False, got {type(mesh).__name__}")
    model_axis_size(mesh, MODELS_AXIS)
    return mesh


def _check_chunk(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise InvalidValueError(f"{name} must be a positive int or None, got {value!r}")


def _progress_bar(total: int, show: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not show, desc=desc, unit="chunk", leave=False)


def probe(
    zoo: Zoo,
    probes: Any,
    *,
    model_chunk: int | None = None,
    probe_chunk: int | None = None,
    mesh: Mesh | bool | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    memory_budget: int | None = None,
    finite: bool = False,
) -> Float[np.ndarray, "models probes logits"]:
    """Responses of every model of ``zoo`` to every probe: ``R[m, i, j] = f_m(x_i)_j``.

    Probes are mapped onto the architecture's input by ``zoo.arch.adapt`` (one probe chunk at a
    time). Models and probes are processed in fixed-shape chunks (the last ones padded), so the
    kernel compiles once per shape and a second call recompiles nothing.

    Args:
        zoo: the models.
        probes: a ``ProbeSet`` (its ``.data``) or an array ``[probes, ...]``.
        model_chunk: models per kernel call (default: from ``memory_budget``; rounded up to a
            multiple of the number of devices).
        probe_chunk: probes per kernel call (default: all that fit the budget).
        mesh: a mesh with a ``models`` axis to shard over; ``None`` shards over all devices when
            there are several; ``False`` runs on one device.
        out: write the responses to this ``.npy`` file (memory-mapped, written to a temporary
            name then renamed) and return it opened read-only; for results larger than RAM.
        progress: show a progress bar; ``None`` turns it on for long jobs.
        memory_budget: working-memory bytes per device (see :func:`chunk_sizes`).
        finite: refuse NaN/Inf responses (an :class:`~weightspace.InvalidValueError` naming the
            models; nothing is written to ``out``), as every command that stores responses does.

    Returns:
        ``[models, probes, logits]`` float32 (a read-only ``np.memmap`` when ``out`` is given).

    Example:
        >>> import jax, numpy as np
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Zoo
        >>> from weightspace.probing import probe
        >>> zoo = Zoo.init(MLP(in_features=3, hidden=(8,), out_features=2), 5, key=jax.random.key(0))
        >>> r = probe(zoo, np.random.default_rng(0).random((7, 3), np.float32))
        >>> r.shape, r.dtype
        ((5, 7, 2), dtype('float32'))
    """
    if not isinstance(zoo, Zoo):
        raise WeightspaceError(f"probe expects a Zoo, got {type(zoo).__name__}")
    _check_chunk("model_chunk", model_chunk)
    _check_chunk("probe_chunk", probe_chunk)
    data, _ = _probe_array(probes)
    arch = zoo.arch
    try:  # before any work: one probe tells whether they fit the input
        arch.adapt(jnp.asarray(data[:1], jnp.float32))
    except ShapeError as e:
        raise ShapeError(
            f"zoo {zoo.name!r}: probes of shape {tuple(data.shape[1:])} do not fit its {type(arch).__name__}'s "
            f"input of shape {arch.input_shape} (on the command line, --shape sets the probes' shape)"
        ) from e
    mesh_ = _resolve_mesh(mesh)
    n_dev = model_axis_size(mesh_, MODELS_AXIS) if mesh_ is not None else 1
    n_models, n_probes, n_out = len(zoo), int(data.shape[0]), arch.num_outputs

    budget = memory_budget if memory_budget is not None else _budget(mesh_, n_dev)
    mc, pc = chunk_sizes(arch, n_models, n_probes, devices=n_dev, memory_budget=budget)
    if model_chunk is not None:
        mc = math.ceil(min(model_chunk, math.ceil(n_models / n_dev) * n_dev) / n_dev) * n_dev
    if probe_chunk is not None:
        pc = min(probe_chunk, n_probes)
    m_starts, p_starts = range(0, n_models, mc), range(0, n_probes, pc)
    n_chunks = len(m_starts) * len(p_starts)
    if progress is None:
        progress = n_chunks > 1 and arch.flops_per_example() * n_models * n_probes > PROGRESS_FLOPS

    # Inputs are always placed explicitly, so NumPy and device-resident zoos hit the same
    # compiled kernel (a committed and an uncommitted argument would compile twice).
    if mesh_ is not None:
        params_sharding: jax.sharding.Sharding = NamedSharding(mesh_, PartitionSpec(MODELS_AXIS))
        x_sharding: jax.sharding.Sharding = NamedSharding(mesh_, PartitionSpec())
    else:
        params_sharding = x_sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    kernel = functools.partial(kernel_for(arch), arch=arch, mesh=mesh_)

    def adapted(p0: int) -> Array:
        chunk = data[p0 : p0 + pc]
        if chunk.shape[0] < pc:  # pad with the last probe: fixed kernel shapes
            chunk = np.concatenate([np.asarray(chunk), np.repeat(np.asarray(chunk[-1:]), pc - chunk.shape[0], 0)])
        return jax.device_put(arch.adapt(jnp.asarray(chunk, jnp.float32)), x_sharding)

    def tiles() -> Iterator[tuple[int, int, Array]]:
        for p0 in p_starts:
            x = adapted(p0)
            for m0 in m_starts:
                chunk = _chunk_of(zoo.params, m0, mc, n_models)
                yield m0, p0, kernel(jax.device_put(chunk, params_sharding), x)

    def fill(result: np.ndarray) -> None:
        pending: tuple[int, int, Array] | None = None
        with _progress_bar(n_chunks, bool(progress), f"probing {zoo.name}") as bar:
            for tile in tiles():
                if pending is not None:  # copy the previous tile while this one computes
                    _store(result, pending, n_models, n_probes)
                    bar.update(1)
                pending = tile
            if pending is not None:
                _store(result, pending, n_models, n_probes)
                bar.update(1)

    if out is None:
        result = np.empty((n_models, n_probes, n_out), np.float32)
        fill(result)
        if finite:
            check_finite_responses(result, zoo.ids, zoo.name)
        return result
    path = Path(out)
    if path.suffix != ".npy":
        raise ConfigError(f"probe out= must be a .npy path, got {str(path)!r}")
    with atomic_path(path) as tmp:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n_models, n_probes, n_out))
        fill(mm)
        if finite:
            check_finite_responses(mm, zoo.ids, zoo.name)
        mm.flush()
        del mm
    return np.load(path, mmap_mode="r")


def check_finite_responses(
    responses: Float[np.ndarray, "models probes logits"], ids: Sequence[str], name: str, *, chunk: int = 256
) -> None:
    """Raise :class:`~weightspace.InvalidValueError` naming the models whose responses hold NaN/Inf
    (read ``chunk`` models at a time, so a memory map is never loaded whole).

    Example:
        >>> r = np.zeros((3, 2, 1), np.float32); r[1, 0, 0] = np.inf
        >>> check_finite_responses(r, ["a", "b", "c"], "toy")
        Traceback (most recent call last):
        ...
        weightspace._errors.InvalidValueError: zoo 'toy': NaN/Inf responses from 1 of 3 models (['b']): ...
    """
    bad: list[str] = []
    for a in range(0, len(responses), chunk):
        rows = ~np.isfinite(np.asarray(responses[a : a + chunk])).all(axis=tuple(range(1, responses.ndim)))
        bad.extend(str(ids[a + int(i)]) for i in np.flatnonzero(rows))
    if bad:
        raise InvalidValueError(
            f"zoo {name!r}: NaN/Inf responses from {len(bad)} of {len(responses)} models ({bad[:5]}"
            f"{' ...' if len(bad) > 5 else ''}): their weights overflow on these probes; they cannot be stored"
        )


def _store(result: np.ndarray, tile: tuple[int, int, Array], n_models: int, n_probes: int) -> None:
    m0, p0, r = tile
    m1, p1 = min(m0 + r.shape[0], n_models), min(p0 + r.shape[1], n_probes)
    result[m0:m1, p0:p1] = np.asarray(r)[: m1 - m0, : p1 - p0]


def probe_collection(
    collection: Collection | Sequence[Zoo],
    probes: Any,
    *,
    out: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> list[Float[np.ndarray, "models probes logits"]]:
    """:func:`probe` every zoo of a collection with the same ordered probes.

    Args:
        collection: a :class:`~weightspace.zoo.Collection` (or a list of zoos).
        probes: a ``ProbeSet`` or an array; each architecture adapts it to its own input.
        out: a directory; zoo ``i`` is written to ``out/{i:03d}-{zoo.name}.npy``.
        **kwargs: the other keyword arguments of :func:`probe`.

    Returns:
        One ``[models, probes, logits]`` array per zoo, in collection order.

    Example:
        >>> import jax, numpy as np
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Collection, Zoo
        >>> from weightspace.probing import probe_collection
        >>> a = Zoo.init(MLP(in_features=3, hidden=(8,), out_features=2), 2, key=jax.random.key(0), name="a")
        >>> b = Zoo.init(MLP(in_features=3, hidden=(4,), out_features=5), 3, key=jax.random.key(1), name="b")
        >>> [r.shape for r in probe_collection(Collection([a, b]), np.ones((4, 3), np.float32))]
        [(2, 4, 2), (3, 4, 5)]
    """
    zoos = list(collection)
    if not zoos:
        raise ShapeError("probe_collection: the collection is empty")
    results = []
    for i, zoo in enumerate(zoos):
        target = None if out is None else Path(out) / f"{i:03d}-{zoo.name}.npy"
        results.append(probe(zoo, probes, out=target, **kwargs))
    return results

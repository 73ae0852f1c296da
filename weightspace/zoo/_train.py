"""Population training: many models in one compiled ``jit(vmap(scan(step)))`` program.

:func:`fit_population` is the ONE training loop helper of weightspace: any per-model loss on any
stacked parameter pytree, with per-model data subsets, hyper-parameters, optimizers, step counts
and seeds, chunked over models, checkpointed with orbax and resumable bit-identically.
:func:`train_population` builds image classifiers on top of it and returns a :class:`Zoo`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jaxtyping import Array, Float, Int

from weightspace._errors import ConfigError, ShapeError

PyTree = Any

# ---------------------------------------------------------------------------------------------
# Optimizers: each maps a model's hyper-parameters (traced scalars) to an optax transformation.
# ---------------------------------------------------------------------------------------------


def _sgd(h: Mapping[str, Array]) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(h["weight_decay"]), optax.sgd(h["learning_rate"]))


def _momentum(h: Mapping[str, Array]) -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(h["weight_decay"]), optax.sgd(h["learning_rate"], momentum=h["momentum"])
    )


def _adam(h: Mapping[str, Array]) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(h["weight_decay"]), optax.adam(h["learning_rate"]))


def _adamw(h: Mapping[str, Array]) -> optax.GradientTransformation:
    return optax.adamw(h["learning_rate"], weight_decay=h["weight_decay"])


OPTIMIZERS: dict[str, Callable[[Mapping[str, Array]], optax.GradientTransformation]] = {
    "sgd": _sgd,
    "momentum": _momentum,
    "adam": _adam,
    "adamw": _adamw,
}
"""Optimizer name -> ``hparams -> optax.GradientTransformation``.

``hparams`` holds one model's ``learning_rate``, ``weight_decay`` and ``momentum`` (scalars, traced
inside the vmapped program). ``sgd``, ``momentum`` and ``adam`` use coupled L2 decay
(``optax.add_decayed_weights`` before the optimizer); ``adamw`` uses decoupled decay. Add an
entry here to make a new optimizer selectable per model.
"""

HPARAM_DEFAULTS: dict[str, float] = {"learning_rate": 1e-3, "weight_decay": 0.0, "momentum": 0.9}
"""Per-model float hyper-parameters understood by :data:`OPTIMIZERS` and their defaults."""


class FitResult(NamedTuple):
    """What :func:`fit_population` returns (host NumPy arrays, model axis first)."""

    params: PyTree
    """Trained parameters, same structure as the input, every leaf ``[models, ...]``."""
    losses: np.ndarray
    """``[models, max_steps]`` float32 training loss at each step (before the update; NaN past a
    model's own ``steps``)."""
    snapshots: dict[int, PyTree]
    """``step -> params`` after ``step`` steps, for each step in ``snapshot_steps``."""
    updates: np.ndarray
    """``[models]`` int32 number of updates applied (less than ``steps`` when ``target_loss`` stopped it)."""


@dataclasses.dataclass(frozen=True)
class FitProgress:
    """Passed to the ``callback`` of :func:`fit_population` after every segment."""

    chunk: int
    num_chunks: int
    step: int
    """Steps completed in this chunk."""
    max_steps: int
    checkpointed: bool


def _as_table(name: str, value: Any, n: int, dtype: Any) -> np.ndarray:
    """A per-model column: a scalar broadcast to ``n`` models or a sequence of length ``n``."""
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = np.full((n,), arr)
    if arr.shape != (n,):
        raise ConfigError(
            f"hyper-parameter {name!r} must be a scalar or have one entry per model ({n}), got shape {arr.shape}"
        )
    try:
        out = arr.astype(dtype)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"hyper-parameter {name!r} must be {np.dtype(dtype).name}: {e}") from None
    if np.issubdtype(out.dtype, np.floating) and not np.all(np.isfinite(out)):
        bad = np.nonzero(~np.isfinite(out))[0][:5].tolist()
        raise ConfigError(f"hyper-parameter {name!r} is not finite for models {bad}")
    return out


def validate_hparams(
    hparams: Mapping[str, Any] | None, n: int, *, optimizers: Sequence[str] | None = None
) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Check a per-model hyper-parameter table; return float columns and the optimizer names used.

    The table maps ``optimizer`` (names from :data:`OPTIMIZERS`) and the float columns of
    :data:`HPARAM_DEFAULTS` to a scalar (shared) or one value per model. The returned dict has
    every float column plus ``optimizer`` as an ``int32`` index into the returned names: the
    optimizers in use, or ``optimizers`` when given (a superset, so that populations drawing from
    the same menu share one compiled program).

    Raises:
        ConfigError: unknown column or optimizer, wrong length, non-finite, or out-of-range value.

    Example:
        >>> cols, names = validate_hparams({"optimizer": ["adam", "sgd", "adam"], "learning_rate": 0.1}, 3)
        >>> names, cols["optimizer"].tolist(), cols["learning_rate"].tolist()
        (('sgd', 'adam'), [1, 0, 1], [0.1, 0.1, 0.1])
    """
    hparams = dict(hparams or {})
    unknown = sorted(set(hparams) - set(HPARAM_DEFAULTS) - {"optimizer"})
    if unknown:
        raise ConfigError(
            f"unknown hyper-parameter columns {unknown}; known: {sorted([*HPARAM_DEFAULTS, 'optimizer'])}"
        )
    opt = hparams.pop("optimizer", "adam")
    opt_col = [opt] * n if isinstance(opt, str) else list(opt)
    if len(opt_col) != n:
        raise ConfigError(
            f"hyper-parameter 'optimizer' must be a name or have one entry per model ({n}), got {len(opt_col)} entries"
        )
    bad = sorted({str(o) for o in opt_col if o not in OPTIMIZERS})
    if bad:
        raise ConfigError(f"unknown optimizer(s) {bad}; known: {sorted(OPTIMIZERS)}")
    # Canonical order, so populations using the same optimizers share one compiled program.
    used = set(map(str, opt_col))
    if optimizers is not None:
        menu = set(optimizers)
        if not used <= menu or not menu <= set(OPTIMIZERS):
            raise ConfigError(
                f"optimizers={sorted(menu)} must be known ({sorted(OPTIMIZERS)}) and include every "
                f"optimizer of the table ({sorted(used)})"
            )
        used = menu
    names = tuple(k for k in OPTIMIZERS if k in used)
    cols = {k: _as_table(k, hparams.get(k, d), n, np.float32) for k, d in HPARAM_DEFAULTS.items()}
    if np.any(cols["learning_rate"] <= 0):
        raise ConfigError(
            f"learning_rate must be > 0; models {np.nonzero(cols['learning_rate'] <= 0)[0][:5].tolist()} "
            f"have {cols['learning_rate'][cols['learning_rate'] <= 0][:5].tolist()}"
        )
    if np.any(cols["weight_decay"] < 0):
        raise ConfigError(f"weight_decay must be >= 0; models {np.nonzero(cols['weight_decay'] < 0)[0][:5].tolist()}")
    m = cols["momentum"]
    if np.any((m < 0) | (m >= 1)):
        raise ConfigError(f"momentum must be in [0, 1); models {np.nonzero((m < 0) | (m >= 1))[0][:5].tolist()}")
    cols["optimizer"] = np.array([names.index(str(o)) for o in opt_col], np.int32)
    return cols, names


def _index_table(
    index: Any, n_models: int, n_data: int, *, compact: bool = False
) -> tuple[np.ndarray | None, np.ndarray]:
    """Pad a per-model list of row indices into ``[models, k]`` plus a ``count`` column.

    The width is the whole data (up to 64k rows; training draws rows at random, so the width only
    costs memory) or, with ``compact`` (evaluation, which walks every column), the longest row
    rounded up to a power of two.
    """
    if index is None:
        return None, np.full((n_models,), n_data, np.int32)
    rows = list(index) if isinstance(index, np.ndarray) and index.ndim == 2 else [np.asarray(r) for r in index]
    if len(rows) != n_models:
        raise ShapeError(f"index table has {len(rows)} rows, expected one per model ({n_models})")
    count = np.array([r.size for r in rows], np.int32)
    if np.any(count == 0):
        raise ConfigError(f"models {np.nonzero(count == 0)[0][:5].tolist()} have an empty data index")
    # A width that depends on the data, not on the rows drawn (the whole data up to 64k rows, else a
    # power of two): populations on the same data then share a shape, hence one compiled program.
    # Evaluation scans every column, so there the width is a power of two of the rows actually used
    # (a 2000-row evaluation on 70k images scans 2048 rows, not 70k).
    pow2 = 1 << int(np.ceil(np.log2(int(count.max()))))
    width = min(n_data, pow2) if compact or n_data > 1 << 16 else n_data
    table = np.zeros((n_models, width), np.int32)
    for i, r in enumerate(rows):
        r = r.ravel()
        if not np.issubdtype(r.dtype, np.integer):
            raise ShapeError(f"index row {i} must hold integers, got {r.dtype}")
        if r.min() < 0 or r.max() >= n_data:
            raise ConfigError(
                f"index row {i} points outside the data (0..{n_data - 1}): min {int(r.min())}, max {int(r.max())}"
            )
        table[i, : r.size] = r
    return table, count


def batch_rows(
    model_key: Array, step: Int[Array, ""] | int, count: Int[Array, ""] | int, batch_size: int
) -> Int[Array, " batch"]:
    """Positions (into a model's index row) of the batch that model draws at ``step``.

    .. math:: \\mathrm{pos} \\sim \\mathcal{U}\\{0, \\dots, \\mathrm{count}-1\\}^{B},\\quad
        \\text{key} = \\mathrm{split}(\\mathrm{fold\\_in}(k_m, t))[0]

    Batches are drawn with replacement, independently per step, so a model's batch at step ``t``
    depends only on its key and ``t`` (the basis of bit-identical resume). The loss key of the
    same step is ``split(fold_in(k_m, t))[1]``.

    Args:
        model_key: the model's key ``fold_in(key, seed_m)``.
        step: the step ``t`` (0-based).
        count: the number of rows the model may draw from.
        batch_size: ``B``.

    Returns:
        ``[B]`` int32 positions.

    Example:
        >>> import jax
        >>> batch_rows(jax.random.key(0), 3, 10, 4).shape
        (4,)
    """
    kb, _ = jax.random.split(jax.random.fold_in(model_key, step))
    return jax.random.randint(kb, (batch_size,), 0, count)


def _where_tree(c: Array, a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(lambda x, y: jnp.where(c, x, y), a, b)


@functools.partial(
    jax.jit,
    static_argnames=("loss_fn", "names", "seg_len", "batch_size", "has_index", "extra_keys"),
    donate_argnames=("state",),
)
def _segment(
    state: tuple[PyTree, tuple[PyTree, ...], Array, Array],
    t0: Array,
    data: PyTree,
    index: Array | None,
    count: Array,
    hp: dict[str, Array],
    keys: Array,
    steps: Array,
    target: Array,
    extra: dict[str, PyTree],
    *,
    loss_fn: Callable[..., Array],
    names: tuple[str, ...],
    seg_len: int,
    batch_size: int,
    has_index: bool,
    extra_keys: tuple[str, ...],
) -> tuple[tuple[PyTree, tuple[PyTree, ...], Array, Array], Array]:
    """Run ``seg_len`` steps of every model of a chunk (models on axis 0 of everything)."""
    shared = extra.get("shared")

    def one_model(st, index_m, count_m, hp_m, key_m, steps_m, target_m, model_data_m):
        txs = [OPTIMIZERS[n](hp_m) for n in names]
        kwargs = {}
        if "model_data" in extra_keys:
            kwargs["model_data"] = model_data_m
        if "shared" in extra_keys:
            kwargs["shared"] = shared

        def step(carry, t):
            params, opt_states, done, n_updates = carry
            kb, kl = jax.random.split(jax.random.fold_in(key_m, t))
            pos = jax.random.randint(kb, (batch_size,), 0, count_m)
            rows = index_m[pos] if has_index else pos
            batch = jax.tree.map(lambda a: a[rows], data)
            loss, grads = jax.value_and_grad(loss_fn)(params, batch, kl, **kwargs)
            updates, new_states = None, []
            for i, (tx, s) in enumerate(zip(txs, opt_states, strict=True)):
                u, s2 = tx.update(grads, s, params)
                new_states.append(s2)
                # Exact selection (no arithmetic blending) so each slot equals a plain optax run.
                updates = u if updates is None else _where_tree(hp_m["optimizer"] == i, u, updates)
            new_params = optax.apply_updates(params, updates)
            running = (t < steps_m) & ~done
            reached = loss <= target_m  # the model stops before updating once its loss meets the target
            active = running & ~reached
            carry = (
                _where_tree(active, new_params, params),
                _where_tree(active, tuple(new_states), opt_states),
                done | (running & reached),
                n_updates + active.astype(jnp.int32),
            )
            return carry, jnp.where(running, loss, jnp.nan).astype(jnp.float32)

        return lax.scan(step, st, t0 + jnp.arange(seg_len))

    md = extra.get("model_data")
    in_axes = (0, 0 if has_index else None, 0, 0, 0, 0, 0, 0 if md is not None else None)
    return jax.vmap(one_model, in_axes=in_axes)(state, index, count, hp, keys, steps, target, md)


@functools.partial(jax.jit, static_argnames=("names",))
def _init_opt(params: PyTree, hp: dict[str, Array], *, names: tuple[str, ...]) -> tuple[PyTree, ...]:
    return jax.vmap(lambda p, h: tuple(OPTIMIZERS[n](h).init(p) for n in names))(params, hp)


def _slice(tree: PyTree, pos: np.ndarray) -> PyTree:
    return jax.tree.map(lambda a: np.asarray(a)[pos], tree)


def _fingerprint(**parts: Any) -> str:
    h = hashlib.sha256()
    for k in sorted(parts):
        v = parts[k]
        h.update(k.encode())
        if isinstance(v, np.ndarray):
            h.update(str(v.dtype).encode() + str(v.shape).encode() + np.ascontiguousarray(v).tobytes())
        else:
            h.update(json.dumps(v, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


class _ChunkCheckpoints:
    """Orbax checkpoints of one chunk: ``<dir>/chunk-00003/<segments done>/``."""

    def __init__(self, directory: Path, chunk: int, fingerprint: str) -> None:
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.fingerprint = fingerprint
        self.manager = ocp.CheckpointManager(
            (directory / f"chunk-{chunk:05d}").absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False),
            item_names=("state", "meta"),
        )

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, done: int, state: PyTree) -> None:
        ocp = self._ocp
        self.manager.save(
            done,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({"fingerprint": self.fingerprint})
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def restore(self, done: int, like: PyTree) -> PyTree:
        ocp = self._ocp
        meta = self.manager.restore(done, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta.get("fingerprint") != self.fingerprint:
            raise ConfigError(
                f"checkpoint {self.manager.directory} belongs to a different training run (fingerprint "
                f"{meta.get('fingerprint')} != {self.fingerprint}); use a fresh checkpoint_dir"
            )
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), like)
        out = self.manager.restore(done, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        return out["state"]

    def close(self) -> None:
        self.manager.close()


def fit_population(
    loss_fn: Callable[..., Float[Array, ""]],
    params: PyTree,
    data: PyTree,
    *,
    key: Array,
    steps: int | Sequence[int] | np.ndarray,
    batch_size: int = 128,
    index: Sequence[np.ndarray] | np.ndarray | None = None,
    hparams: Mapping[str, Any] | None = None,
    optimizers: Sequence[str] | None = None,
    seeds: Sequence[int] | np.ndarray | None = None,
    target_loss: float | Sequence[float] | np.ndarray | None = None,
    model_data: PyTree | None = None,
    shared: PyTree | None = None,
    model_chunk: int | None = None,
    segment_steps: int | None = None,
    snapshot_steps: Sequence[int] = (),
    checkpoint_dir: str | Path | None = None,
    progress: bool | None = None,
    callback: Callable[[FitProgress], None] | None = None,
) -> FitResult:
    """Train a population of models at once, each with its own data, hyper-parameters and seed.

    Model ``m`` minimises ``loss_fn(params_m, batch, key)`` for ``steps[m]`` steps with optimizer
    ``hparams["optimizer"][m]`` (see :data:`OPTIMIZERS`). At step ``t`` its batch is
    ``data[index[m][batch_rows(k_m, t, len(index[m]), batch_size)]]`` (rows drawn with replacement)
    and its loss key is ``split(fold_in(k_m, t))[1]`` with ``k_m = fold_in(key, seeds[m])``:

    .. math:: \\theta_m^{t+1} = \\theta_m^{t} + \\mathrm{opt}_m\\big(\\nabla_\\theta \\ell(\\theta_m^t,
        B_m^t, k_m^t)\\big) \\quad (t < T_m)

    All models of a chunk run in one compiled ``jit(vmap(scan(step)))`` program; every optimizer
    in use is evaluated and the model's own update is selected exactly, and models past their
    own step count are frozen by masking. The program runs in segments of ``segment_steps``; after
    each, an orbax checkpoint may be written, and a rerun with the same arguments resumes from it
    and ends bit-identical to an uninterrupted run.

    Args:
        loss_fn: ``loss_fn(params, batch, key) -> scalar`` for ONE model (``batch`` has the
            structure of ``data`` with ``batch_size`` rows). It also receives ``model_data=`` /
            ``shared=`` keywords when those are given. Must be hashable (a module-level
            function or a ``functools.partial`` of one recompiles nothing on reuse).
        params: the initial parameters, any pytree whose leaves are ``[models, ...]``.
        data: shared training data, a pytree of arrays ``[n, ...]`` indexed by row.
        key: a typed key (``jax.random.key``).
        steps: number of updates, one int for all or one per model.
        batch_size: rows per step.
        index: per-model row indices into ``data`` (a list of 1-D int arrays of any lengths, or
            ``[models, k]``); ``None``: every model draws from all rows.
        hparams: per-model hyper-parameter table (see :func:`validate_hparams`): ``optimizer``,
            ``learning_rate``, ``weight_decay``, ``momentum``; scalars broadcast.
        optimizers: the optimizers compiled into the program (default: those in the table); a
            fixed menu lets populations with different tables reuse one compiled program.
        seeds: per-model ints for ``k_m``; default ``0..models-1``.
        target_loss: per-model (or shared) early-stopping threshold: the first time a model's
            step loss is ``<= target_loss`` it stops (that step's update is skipped and later
            losses are NaN); ``None``: train all ``steps``.
        model_data: per-model constants (pytree of ``[models, ...]``) passed as ``model_data=``,
            e.g. a label permutation or a frozen base for LoRA factors.
        shared: constants shared by all models (pytree of arrays) passed as ``shared=``; pass
            large frozen arrays here rather than closing over them (closures become compile-time
            constants).
        model_chunk: train at most this many models at once (memory); the last chunk is padded.
        segment_steps: steps per compiled call (checkpoint/progress granularity); default
            ``min(max_steps, 100)``, rounded so that every ``snapshot_steps`` entry is a boundary.
        snapshot_steps: steps after which to keep a copy of all parameters (e.g. epochs).
        checkpoint_dir: write an orbax checkpoint of the current chunk after every segment and
            resume from it; ``None`` disables checkpoints.
        progress: show a tqdm bar (``None``: only when stderr is a terminal).
        callback: called with a :class:`FitProgress` after every segment (e.g. to log, or to
            stop early by raising).

    Returns:
        A :class:`FitResult` of host arrays: trained ``params``, ``losses [models, max_steps]``,
        ``snapshots`` and ``updates``.

    Raises:
        ConfigError: bad hyper-parameter table, steps, batch size, index rows or a checkpoint of
            another run. ShapeError: leaves disagreeing on the number of models.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
        >>> data = {"x": x, "y": 3 * x[:, 0] - 1}
        >>> def loss(p, batch, key):
        ...     return jnp.mean((batch["x"] @ p["w"] + p["b"] - batch["y"]) ** 2)
        >>> params = {"w": jnp.zeros((3, 1)), "b": jnp.zeros((3,))}
        >>> res = fit_population(loss, params, data, key=jax.random.key(0), steps=[200, 200, 0],
        ...                      batch_size=16, hparams={"optimizer": ["adam", "sgd", "sgd"],
        ...                                              "learning_rate": [0.1, 0.2, 0.1]})
        >>> np.round(res.params["w"][:, 0], 1).tolist(), res.losses.shape
        ([3.0, 3.0, 0.0], (3, 200))
    """
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ShapeError("fit_population: params has no arrays")
    sizes = {np.shape(a)[0] if np.ndim(a) else None for a in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ShapeError(f"fit_population: every params leaf needs the same leading models axis, got {sizes}")
    n = int(sizes.pop())
    data_leaves = jax.tree.leaves(data)
    if not data_leaves:
        raise ShapeError("fit_population: data has no arrays")
    n_data = {np.shape(a)[0] for a in data_leaves}
    if len(n_data) != 1:
        raise ShapeError(f"fit_population: data leaves disagree on the number of rows: {n_data}")
    n_rows = int(n_data.pop())
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    steps_col = _as_table("steps", steps, n, np.float64)
    if np.any(steps_col < 0) or np.any(steps_col != np.round(steps_col)):
        raise ConfigError(f"steps must be non-negative ints, got {np.unique(steps_col)[:5].tolist()}")
    steps_col = steps_col.astype(np.int32)
    max_steps = int(steps_col.max())
    hp, names = validate_hparams(hparams, n, optimizers=optimizers)
    seeds_col = np.arange(n, dtype=np.int64) if seeds is None else _as_table("seeds", seeds, n, np.int64)
    table, count = _index_table(index, n, n_rows)
    target_col = (
        np.full((n,), -np.inf, np.float32)
        if target_loss is None
        else _as_table("target_loss", target_loss, n, np.float32)
    )
    if model_data is not None:
        md_sizes = {np.shape(a)[0] for a in jax.tree.leaves(model_data)}
        if md_sizes != {n}:
            raise ShapeError(f"fit_population: model_data leaves need a leading axis of {n} models, got {md_sizes}")
    snaps = sorted({int(s) for s in snapshot_steps})
    if any(s < 1 or s > max_steps for s in snaps):
        raise ConfigError(f"snapshot_steps must lie in 1..{max_steps}, got {snaps}")
    if segment_steps is None:
        segment_steps = math.gcd(min(max(max_steps, 1), 100), *snaps) if snaps else min(max(max_steps, 1), 100)
    if segment_steps < 1 or any(s % segment_steps for s in snaps):
        raise ConfigError(f"segment_steps={segment_steps} must be >= 1 and divide every snapshot step {snaps}")
    chunk = n if model_chunk is None else int(model_chunk)
    if chunk < 1:
        raise ConfigError(f"model_chunk must be >= 1, got {model_chunk}")
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)
    n_segs = -(-max_steps // segment_steps)

    extra_keys = tuple(k for k, v in (("model_data", model_data), ("shared", shared)) if v is not None)
    data_dev = jax.tree.map(jnp.asarray, data)
    shared_dev = None if shared is None else jax.tree.map(jnp.asarray, shared)
    fp = _fingerprint(
        n=n,
        chunk=chunk,
        seg=segment_steps,
        batch=batch_size,
        names=list(names),
        steps=steps_col,
        seeds=seeds_col,
        count=count,
        table=table if table is not None else np.zeros(0),
        snaps=snaps,
        target=target_col,
        key=np.asarray(jax.random.key_data(key)),
        hp={k: v.tolist() for k, v in hp.items()},
        shapes=[(np.shape(a), str(np.asarray(a).dtype)) for a in leaves],
        data=[(np.shape(a), str(np.asarray(a).dtype)) for a in data_leaves],
    )
    if progress is None:
        progress = sys.stderr.isatty()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_chunks * max_steps, desc=f"fit_population ({n} models)", unit="step")

    out_params: list[PyTree] = []
    out_losses: list[np.ndarray] = []
    out_updates: list[np.ndarray] = []
    out_snaps: dict[int, list[PyTree]] = {s: [] for s in snaps}
    try:
        for c in range(n_chunks):
            lo, hi = c * chunk, min((c + 1) * chunk, n)
            # Pad the last chunk with copies of its first model (0 steps) so every chunk reuses one program.
            pos = np.concatenate([np.arange(lo, hi), np.full(chunk - (hi - lo), lo)]).astype(np.int64)
            live = hi - lo
            steps_c = steps_col[pos].copy()
            steps_c[live:] = 0
            hp_c = {k: jnp.asarray(v[pos]) for k, v in hp.items()}
            keys_c = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.asarray(seeds_col[pos]))
            extra = {}
            if model_data is not None:
                extra["model_data"] = _slice(model_data, pos)
            if shared_dev is not None:
                extra["shared"] = shared_dev
            p0 = _slice(params, pos)
            state = (
                jax.tree.map(jnp.asarray, p0),
                _init_opt(p0, hp_c, names=names),
                jnp.zeros((chunk,), bool),
                jnp.zeros((chunk,), jnp.int32),
            )
            losses = np.full((chunk, max_steps), np.nan, np.float32)
            snap_c: dict[int, PyTree] = {}
            start = 0
            ckpt = _ChunkCheckpoints(Path(checkpoint_dir), c, fp) if checkpoint_dir is not None else None
            if ckpt is not None and ckpt.latest() is not None:
                start = int(ckpt.latest())
                kept = {str(s): p0 for s in snaps if s <= start * segment_steps}
                like = {"state": state, "losses": losses, "snaps": kept}
                got = ckpt.restore(start, like)
                state = jax.tree.map(jnp.asarray, got["state"])
                losses = np.asarray(got["losses"])
                snap_c = {int(s): v for s, v in got["snaps"].items()}
                if bar is not None:
                    bar.update(min(start * segment_steps, max_steps))
            args = (
                jnp.asarray(table[pos]) if table is not None else None,
                jnp.asarray(count[pos]),
                hp_c,
                keys_c,
                jnp.asarray(steps_c),
                jnp.asarray(target_col[pos]),
                extra,
            )
            seg = start
            while seg < n_segs:
                t0 = seg * segment_steps
                state, seg_loss = _segment(
                    state,
                    jnp.int32(t0),
                    data_dev,
                    *args,
                    loss_fn=loss_fn,
                    names=names,
                    seg_len=segment_steps,
                    batch_size=int(batch_size),
                    has_index=table is not None,
                    extra_keys=extra_keys,
                )
                done = min(t0 + segment_steps, max_steps)
                losses[:, t0:done] = np.asarray(seg_loss)[:, : done - t0]
                seg += 1
                if np.all(np.asarray(state[2]) | (steps_c <= done)):
                    # Every model has stopped: the remaining segments would change nothing.
                    seg, done = n_segs, max_steps
                for s in snaps:
                    if t0 < s <= done:
                        snap_c[s] = jax.tree.map(np.asarray, state[0])
                if ckpt is not None:
                    kept = {str(s): v for s, v in snap_c.items()}
                    ckpt.save(seg, {"state": state, "losses": losses, "snaps": kept})
                if bar is not None:
                    bar.update(done - t0)
                if callback is not None:
                    callback(FitProgress(c, n_chunks, done, max_steps, ckpt is not None))
            if ckpt is not None:
                ckpt.close()
            out_params.append(_slice(state[0], np.arange(live)))
            out_losses.append(losses[:live])
            out_updates.append(np.asarray(state[3])[:live])
            for s in snaps:
                out_snaps[s].append(_slice(snap_c[s], np.arange(live)))
    finally:
        if bar is not None:
            bar.close()

    def cat(parts: list[PyTree]) -> PyTree:
        return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)

    return FitResult(
        cat(out_params),
        np.concatenate(out_losses),
        {s: cat(v) for s, v in out_snaps.items()},
        np.concatenate(out_updates),
    )


def _init_population_fn(key: Array, seeds: Array, scale: Array, *, arch: Any) -> PyTree:
    return jax.vmap(lambda s, sc: arch.init(jax.random.fold_in(key, s), scale=sc))(seeds, scale)


# Initialisers are threefry bit-twiddling plus a scale, run once per population: on CPU, LLVM -O1
# compiles them 2.5-5x faster than the default level (e.g. 1000 MLPs 64-16-16-10: 1.2 s instead of
# 3.7 s) into the same bits (checked on every recipe and benchmark architecture at 1, 3 and 1000
# models). Other backends keep their default compilation.
_INIT_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}
_init_population = jax.jit(_init_population_fn, static_argnames=("arch",))
_init_population_cpu = jax.jit(
    _init_population_fn, static_argnames=("arch",), compiler_options=_INIT_CPU_COMPILER_OPTIONS
)


def init_population(
    arch: Any,
    seeds: Int[Array, " models"] | Sequence[int],
    *,
    key: Array,
    scale: Float[Array, " models"] | float = 1.0,
) -> PyTree:
    """Initial parameters of many models: model ``m`` is ``arch.init(fold_in(key, seeds[m]), scale=scale[m])``.

    One cached compiled program per architecture (initialisers draw many random tensors, and
    XLA compiles threefry slowly on CPU, so this is worth reusing); on CPU compiled at LLVM
    ``-O1``, which gives the same bits as the default compilation in a fraction of the time.

    Example:
        >>> import jax
        >>> from weightspace.nets import MLP
        >>> p = init_population(MLP(in_features=4, hidden=(8,), out_features=2), [0, 5], key=jax.random.key(0))
        >>> p["layers.0.weight"].shape
        (2, 8, 4)
    """
    seeds = jnp.asarray(seeds)
    init = _init_population_cpu if jax.default_backend() == "cpu" else _init_population
    return init(key, seeds, jnp.broadcast_to(jnp.asarray(scale, jnp.float32), seeds.shape), arch=arch)


# ---------------------------------------------------------------------------------------------
# Classifier populations
# ---------------------------------------------------------------------------------------------

PLAN_COLUMNS = ("classes", "train_fraction", "init_scale", "seed", "steps", "dropout", *HPARAM_DEFAULTS, "optimizer")
"""Columns a :func:`train_population` plan may hold (scalars broadcast to every model)."""


def cnn_forward_im2col(
    arch: Any,
    params: PyTree,
    x: Float[Array, "batch h w c"],
    *,
    key: Array | None = None,
    dropout: Float[Array, ""] | float = 0.0,
) -> Float[Array, "batch logits"]:
    """A :class:`~weightspace.nets.CNN` forward pass with convolutions as patch matrix products.

    .. math:: y_{b,h,w,:} = \\mathrm{vec}(x_{b,\\,sh:sh+k,\\,sw:sw+k,:})^\\top W + b,\\quad
        W = \\mathrm{reshape}(\\mathrm{transpose}(W_{OIHW}, (2, 3, 1, 0)), (k^2 C, O))

    Gives the numbers of ``arch.apply`` (to float rounding) but vectorises far better under
    ``vmap`` over models on CPU, where XLA's batched (grouped) convolutions are slow. With a
    ``key``, dropout at rate ``dropout`` (may be traced, per model) follows every conv activation:
    the keep masks of all layers are cut, in layer order, from ONE draw
    ``uniform(key, [total]) < 1 - dropout`` (one threefry program instead of two per layer: the
    Small CNN Zoo's training step compiles about twice as fast on CPU), so they are not the masks
    ``arch.apply`` draws.

    Example:
        >>> import jax, numpy as np
        >>> from weightspace.nets import CNN
        >>> arch = CNN(image_shape=(8, 8, 1), channels=(4, 4))
        >>> p = arch.init(jax.random.key(0))
        >>> x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))
        >>> bool(np.allclose(cnn_forward_im2col(arch, p, x), arch.apply(p, x), atol=1e-5))
        True
    """
    from weightspace.nets import ACTIVATIONS

    act = ACTIVATIONS[arch.activation]
    k, st, pad = arch.kernel_size, arch.strides, arch.padding
    x = arch.normalize_input(x)
    keep_all, off = None, 0
    if key is not None:
        total, (h, w) = 0, x.shape[1:3]
        for ch in arch.channels:
            h, w = (h + 2 * pad - k) // st + 1, (w + 2 * pad - k) // st + 1
            total += x.shape[0] * h * w * ch
        keep_all = jax.random.uniform(key, (total,)) < 1.0 - dropout
    for i in range(len(arch.channels)):
        _, h, w, c = x.shape
        ho, wo = (h + 2 * pad - k) // st + 1, (w + 2 * pad - k) // st + 1
        xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        cols = [
            xp[:, di : di + st * (ho - 1) + 1 : st, dj : dj + st * (wo - 1) + 1 : st, :]
            for di in range(k)
            for dj in range(k)
        ]
        patches = jnp.concatenate(cols, axis=-1)  # [b, ho, wo, k*k*c], ordered (di, dj, channel)
        wmat = jnp.transpose(params[f"convs.{i}.weight"], (2, 3, 1, 0)).reshape(k * k * c, -1)
        x = act(patches @ wmat + params[f"convs.{i}.bias"])
        if keep_all is not None:
            keep = keep_all[off : off + x.size].reshape(x.shape)
            off += x.size
            x = jnp.where(keep, x / (1.0 - dropout), 0.0)
    return arch.head(params, x.mean(axis=(1, 2)))


@dataclasses.dataclass(frozen=True)
class ClassifierLoss:
    """Cross-entropy of one classifier on a batch, with the model's own label order.

    ``model_data["label_map"][y]`` is the output index of dataset label ``y``. Options (static):
    ``shift``/``flip`` translate each image by up to ``shift`` pixels (zero padding) and flip it
    left-right with probability ``flip``; ``mask_outputs`` ignores outputs ``>= model_data["n_out"]``
    (so models with fewer classes share one program and have their heads sliced afterwards);
    ``per_model_dropout`` (CNNs) applies dropout at rate ``model_data["dropout"]`` after every
    conv activation. A frozen dataclass, so equal losses hash equal and reuse compiled programs.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from weightspace.nets import MLP
        >>> loss = ClassifierLoss(MLP(in_features=4, hidden=(), out_features=2))
        >>> p = {"layers.0.weight": jnp.zeros((2, 4)), "layers.0.bias": jnp.zeros(2)}
        >>> batch = {"x": jnp.ones((3, 4)), "y": jnp.array([0, 1, 0])}
        >>> round(float(loss(p, batch, jax.random.key(0), model_data={"label_map": jnp.array([1, 0])})), 4)
        0.6931
    """

    arch: Any
    shift: int = 0
    flip: float = 0.0
    mask_outputs: bool = False
    per_model_dropout: bool = False

    def augment(self, x: Float[Array, "batch h w c"], key: Array) -> Float[Array, "batch h w c"]:
        """Random translation (zero padding) and left-right flip of each image."""
        b, h, w, c = x.shape
        ks, kf = jax.random.split(key)
        s = self.shift
        if s > 0:
            padded = jnp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)))
            off = jax.random.randint(ks, (b, 2), 0, 2 * s + 1)
            x = jax.vmap(lambda im, o: lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(padded, off)
        if self.flip > 0:
            x = jnp.where(jax.random.bernoulli(kf, self.flip, (b, 1, 1, 1)), x[:, :, ::-1], x)
        return x

    def logits(self, params: PyTree, x: Array, key: Array, model_data: Mapping[str, Array]) -> Array:
        """Training-mode outputs (dropout on) of one model on a batch (CNNs via im2col)."""
        from weightspace.nets import CNN

        if type(self.arch) is CNN:
            rate = model_data["dropout"] if self.per_model_dropout else self.arch.dropout
            return cnn_forward_im2col(
                self.arch, params, x, key=key if self.per_model_dropout or rate > 0 else None, dropout=rate
            )
        return self.arch.apply(params, x, key=key)

    def __call__(
        self, params: PyTree, batch: Mapping[str, Array], key: Array, *, model_data: Mapping[str, Array]
    ) -> Float[Array, ""]:
        ka, kd = jax.random.split(key)
        x = batch["x"]
        if self.shift > 0 or self.flip > 0:
            x = self.augment(x, ka)
        logits = self.logits(params, x, kd, model_data)
        if self.mask_outputs:
            logits = jnp.where(jnp.arange(logits.shape[-1]) < model_data["n_out"], logits, -1e9)
        labels = model_data["label_map"][batch["y"]]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.partial(jax.jit, static_argnames=("arch", "batch"))
def _evaluate_chunk(
    params: PyTree,
    images: Array,
    labels: Array,
    rows: Array,
    count: Array,
    label_map: Array,
    n_out: Array,
    *,
    arch: Any,
    batch: int,
) -> tuple[Array, Array]:
    """Accuracy and mean cross-entropy of every model on its own rows (``rows[m, :count[m]]``)."""

    def one(p, rows_m, count_m, map_m, n_out_m):
        def body(acc, start):
            r = lax.dynamic_slice(rows_m, (start,), (batch,))
            valid = (start + jnp.arange(batch)) < count_m
            logits = arch.apply(p, images[r])
            logits = jnp.where(jnp.arange(logits.shape[-1]) < n_out_m, logits, -1e9)
            y = map_m[labels[r]]
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            hit = jnp.argmax(logits, -1) == y
            return (acc[0] + jnp.sum(hit & valid), acc[1] + jnp.sum(jnp.where(valid, ce, 0.0))), None

        starts = jnp.arange(0, rows_m.shape[0], batch)
        (hits, ce), _ = lax.scan(body, (jnp.int32(0), jnp.float32(0.0)), starts)
        n = jnp.maximum(count_m, 1)
        return hits / n, ce / n

    return jax.vmap(one)(params, rows, count, label_map, n_out)


def evaluate_population(
    arch: Any,
    params: PyTree,
    images: np.ndarray | Array,
    labels: np.ndarray | Array,
    rows: Sequence[np.ndarray],
    label_map: np.ndarray,
    *,
    n_out: np.ndarray | None = None,
    batch: int = 256,
    model_chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and cross-entropy of each classifier on its own examples, in one vmapped program.

    .. math:: \\mathrm{acc}_m = \\frac{1}{|R_m|} \\sum_{r \\in R_m}
        [\\arg\\max_j f_m(x_r)_j = \\pi_m(y_r)]

    Args:
        arch: the shared architecture.
        params: stacked parameters ``[models, ...]``.
        images: ``[n, *input_shape]`` shared examples (a JAX array saves a host-to-device copy
            per call when the same images score several populations).
        labels: ``[n]`` dataset labels.
        rows: model ``m`` is scored on ``images[rows[m]]``.
        label_map: ``[models, n_labels]`` output index of each dataset label (``pi_m``).
        n_out: ``[models]`` only the first ``n_out[m]`` outputs count (default: all).
        batch: examples per inner step; model_chunk: models per compiled call.

    Returns:
        ``(accuracy [models], cross_entropy [models])`` as float32 NumPy arrays.

    Example:
        >>> import jax, numpy as np
        >>> from weightspace.nets import MLP
        >>> arch = MLP(in_features=2, hidden=(), out_features=2)
        >>> p = {"layers.0.weight": np.eye(2, dtype=np.float32)[None], "layers.0.bias": np.zeros((1, 2), np.float32)}
        >>> x = np.array([[1., 0.], [0., 1.], [1., 0.]], np.float32)
        >>> acc, _ = evaluate_population(arch, p, x, np.array([0, 1, 1]), [np.arange(3)], np.array([[0, 1]]))
        >>> acc.round(3).tolist()
        [0.667]
    """
    n = len(rows)
    table, count = _index_table(list(rows), n, len(images), compact=True)
    assert table is not None
    width = -(-table.shape[1] // batch) * batch
    table = np.pad(table, ((0, 0), (0, width - table.shape[1])))
    chunk = min(model_chunk, n)
    images_d, labels_d = jnp.asarray(images), jnp.asarray(labels)
    if n_out is None:
        n_out = np.full((n,), arch.num_outputs, np.int32)
    accs, ces = [], []
    for lo in range(0, n, chunk):
        pos = np.arange(lo, lo + chunk)
        pos = np.minimum(pos, n - 1)  # pad the last chunk: one program for every chunk
        a, c = _evaluate_chunk(
            _slice(params, pos),
            images_d,
            labels_d,
            jnp.asarray(table[pos]),
            jnp.asarray(count[pos]),
            jnp.asarray(label_map[pos]),
            jnp.asarray(n_out[pos]),
            arch=arch,
            batch=batch,
        )
        live = min(chunk, n - lo)
        accs.append(np.asarray(a)[:live])
        ces.append(np.asarray(c)[:live])
    return np.concatenate(accs).astype(np.float32), np.concatenate(ces).astype(np.float32)


def _plan_table(plan: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    plan = dict(plan)
    unknown = sorted(set(plan) - set(PLAN_COLUMNS))
    if unknown:
        raise ConfigError(f"unknown plan columns {unknown}; known: {sorted(PLAN_COLUMNS)}")
    lengths = {
        k: len(v)
        for k, v in plan.items()
        if not isinstance(v, str | int | float | np.generic) and not (k == "classes" and _is_class_list(v))
    }
    if "classes" in plan and not _is_class_list(plan["classes"]):
        lengths["classes"] = len(plan["classes"])
    if not lengths:
        raise ConfigError(
            "a plan needs at least one per-model column (a list) to fix the number of models; "
            f"columns: {sorted(PLAN_COLUMNS)}"
        )
    if len(set(lengths.values())) != 1:
        raise ConfigError(f"plan columns disagree on the number of models: {lengths}")
    return next(iter(lengths.values())), plan


def _is_class_list(v: Any) -> bool:
    """True for ONE class list shared by all models (a flat list of ints)."""
    return isinstance(v, Sequence | np.ndarray) and len(v) > 0 and all(isinstance(c, int | np.integer) for c in v)


def train_population(
    arch: Any,
    dataset: Any,
    plan: Mapping[str, Any],
    *,
    key: Array,
    test: Any | None = None,
    batch_size: int = 128,
    augment: tuple[int, float] = (0, 0.0),
    snapshot_steps: Sequence[int] = (),
    eval_size: int | None = 2000,
    pad_outputs: bool = False,
    optimizers: Sequence[str] | None = None,
    model_chunk: int | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool | None = None,
    name: str = "zoo",
    id_prefix: str | None = None,
    extra_meta: Mapping[str, Sequence[Any]] | None = None,
) -> Any:
    """Train a population of image classifiers (one architecture) and return them as a :class:`Zoo`.

    Model ``m`` learns the classes ``plan["classes"][m]`` of ``dataset`` in that order (output
    ``j`` is class ``classes[m][j]``), from a random ``train_fraction`` of those classes' training
    examples, with its own optimizer hyper-parameters, init scale and seed; all models train at
    once through :func:`fit_population` on the cross-entropy

    .. math:: \\ell_m = -\\frac{1}{B}\\sum_{b} \\log \\mathrm{softmax}(f_{\\theta_m}(x_b))_{\\pi_m(y_b)}.

    Args:
        arch: an image :class:`~weightspace.nets.Architecture` with ``num_outputs`` equal to the
            length of every class list.
        dataset: a :class:`weightspace.data.Dataset` (training split).
        plan: per-model columns (:data:`PLAN_COLUMNS`; a scalar applies to all models):
            ``classes`` (list of class-index lists; default all classes in dataset order),
            ``train_fraction`` in (0, 1] (default 1), ``init_scale`` > 0 (default 1), ``seed``
            (default ``0..n-1``), ``steps`` (default 500), ``dropout`` in [0, 1) (CNNs only:
            per-model dropout after every conv activation; default 0) and the optimizer columns
            of :func:`validate_hparams`.
        key: a typed key; model ``m``'s init uses ``fold_in(k_init, seed_m)``, its training
            ``fold_in(k_train, seed_m)`` with ``k_init, k_train = split(key)``.
        test: a held-out :class:`~weightspace.data.Dataset` for ``test_acc``/``test_loss``.
        batch_size: examples per step.
        augment: ``(max_shift_pixels, flip_probability)`` train-time augmentation.
        snapshot_steps: also keep the models after these steps (rows with ``final=False``).
        pad_outputs: allow class lists shorter than ``num_outputs``: the extra outputs are
            masked out of training and evaluation (meta ``n_outputs``); :func:`split_outputs`
            then slices every model's head to its own classes. Lets models with 2..10 classes
            share one compiled program.
        optimizers: the optimizer menu compiled in (see :func:`fit_population`).
        eval_size: at most this many (random, per-model) examples when measuring train/test
            accuracy; ``None``: all.
        model_chunk, checkpoint_dir, progress: as in :func:`fit_population`.
        name: zoo name; id_prefix: model ids are ``{id_prefix}-{m:06d}`` (default ``name``).
        extra_meta: additional per-model metadata columns.

    Returns:
        A :class:`Zoo` with meta columns ``id, classes, class_indices, dataset, train_acc,
        test_acc, generalization_gap, train_loss, test_loss, final_loss, n_train, step, final,
        run`` and every hyper-parameter (``optimizer, learning_rate, weight_decay, momentum,
        init_scale, train_fraction, steps, batch_size, seed, augment_shift, augment_flip``).
        With ``snapshot_steps`` the snapshots come first, then the final models.

    Raises:
        ConfigError: malformed plan (unknown column, lengths, class lists that do not match the
            architecture's outputs or the dataset, fractions or scales out of range).

    Example:
        >>> import jax
        >>> from weightspace.data import load_dataset
        >>> from weightspace.nets import MLP
        >>> ds = load_dataset("digits", "train")
        >>> arch = MLP(in_features=64, hidden=(16,), out_features=3, image_shape=(8, 8, 1))
        >>> zoo = train_population(arch, ds, {"classes": [[0, 1, 2], [9, 4, 7]], "steps": 100,
        ...                        "learning_rate": 0.01}, key=jax.random.key(0), test=load_dataset("digits", "test"))
        >>> zoo.classes(1), all(a > 0.8 for a in zoo.meta["test_acc"])
        (['9', '4', '7'], True)
    """
    from weightspace.zoo._zoo import Zoo

    n, plan = _plan_table(plan)
    n_classes = len(dataset.class_names)
    k_out = arch.num_outputs
    classes = plan.pop("classes", list(range(n_classes)))
    if _is_class_list(classes):
        classes = [list(classes)] * n
    classes = [[int(c) for c in cl] for cl in classes]
    for m, cl in enumerate(classes):
        if len(cl) != k_out and not (pad_outputs and 1 <= len(cl) < k_out):
            raise ConfigError(
                f"plan row {m}: {len(cl)} classes {cl} but the architecture has {k_out} outputs"
                + ("" if pad_outputs else " (pad_outputs=True allows fewer)")
            )
        if len(set(cl)) != len(cl) or min(cl) < 0 or max(cl) >= n_classes:
            raise ConfigError(
                f"plan row {m}: classes {cl} must be distinct indices in 0..{n_classes - 1} of {dataset.name}"
            )
    frac = _as_table("train_fraction", plan.pop("train_fraction", 1.0), n, np.float64)
    if np.any((frac <= 0) | (frac > 1)):
        raise ConfigError(f"train_fraction must be in (0, 1]; models {np.nonzero((frac <= 0) | (frac > 1))[0][:5]}")
    scale = _as_table("init_scale", plan.pop("init_scale", 1.0), n, np.float32)
    if np.any(scale <= 0):
        raise ConfigError(f"init_scale must be > 0; models {np.nonzero(scale <= 0)[0][:5].tolist()}")
    seeds = _as_table("seed", plan.pop("seed", np.arange(n)), n, np.int64)
    dropout = _as_table("dropout", plan.pop("dropout", 0.0), n, np.float32)
    if np.any((dropout < 0) | (dropout >= 1)):
        raise ConfigError(f"dropout must be in [0, 1); models {np.nonzero((dropout < 0) | (dropout >= 1))[0][:5]}")
    per_model_dropout = bool(np.any(dropout > 0))
    if per_model_dropout and type(arch).__name__ != "CNN":
        raise ConfigError(f"per-model dropout needs a CNN architecture, got {type(arch).__name__}")
    n_out = np.array([len(cl) for cl in classes], np.int32)
    steps = _as_table("steps", plan.pop("steps", 500), n, np.int64)
    hp, names = validate_hparams(plan, n, optimizers=optimizers)
    if tuple(dataset.images.shape[1:]) != tuple(arch.input_shape):
        raise ConfigError(
            f"dataset {dataset.name} images {dataset.images.shape[1:]} do not fit the architecture "
            f"input {arch.input_shape}"
        )

    label_map = np.full((n, n_classes), 0, np.int32)
    for m, cl in enumerate(classes):
        label_map[m, cl] = np.arange(len(cl))
    by_class = [np.flatnonzero(dataset.labels == c) for c in range(n_classes)]
    rows = []
    for m, cl in enumerate(classes):
        rng = np.random.default_rng([int(seeds[m]), 1])
        r = np.sort(np.concatenate([by_class[c] for c in cl]))
        take = max(1, round(frac[m] * len(r)))
        rows.append(np.sort(rng.choice(r, size=take, replace=False)) if take < len(r) else r)

    k_init, k_train = jax.random.split(key)
    params0 = init_population(arch, jnp.asarray(seeds), key=k_init, scale=jnp.asarray(scale))
    loss = ClassifierLoss(arch, int(augment[0]), float(augment[1]), pad_outputs, per_model_dropout)
    model_data = {"label_map": label_map, "n_out": n_out, "dropout": dropout}
    res = fit_population(
        loss,
        params0,
        {"x": dataset.images, "y": dataset.labels},
        key=k_train,
        steps=steps,
        batch_size=batch_size,
        index=rows,
        hparams={**{k: v for k, v in hp.items() if k != "optimizer"}, "optimizer": [names[i] for i in hp["optimizer"]]},
        seeds=seeds,
        optimizers=optimizers,
        model_data=model_data,
        model_chunk=model_chunk,
        snapshot_steps=snapshot_steps,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
    )

    def eval_rows(ds: Any, base_rows: list[np.ndarray], salt: int) -> list[np.ndarray]:
        if eval_size is None:
            return base_rows
        out = []
        for m, r in enumerate(base_rows):
            rng = np.random.default_rng([int(seeds[m]), salt])
            out.append(np.sort(rng.choice(r, size=eval_size, replace=False)) if len(r) > eval_size else r)
        return out

    # Train and test examples are scored in ONE call on the concatenated images (one compiled program).
    eval_rows_all = eval_rows(dataset, rows, 2)
    eval_images, eval_labels = dataset.images, dataset.labels
    if test is not None:
        test_by_class = [np.flatnonzero(test.labels == c) for c in range(n_classes)]
        test_rows = eval_rows(test, [np.sort(np.concatenate([test_by_class[c] for c in cl])) for cl in classes], 3)
        eval_rows_all += [r + len(dataset) for r in test_rows]
        eval_images = np.concatenate([dataset.images, test.images])
        eval_labels = np.concatenate([dataset.labels, test.labels])
    # One host-to-device copy for every scored version (snapshots and final), not one per call.
    eval_images, eval_labels = jnp.asarray(eval_images), jnp.asarray(eval_labels)
    twice = np.tile(np.arange(n), len(eval_rows_all) // n)

    tail = max(1, int(steps.max()) // 10)
    final_loss = np.array(
        [
            np.nanmean(res.losses[m, max(0, s - tail) : s]) if s and res.updates[m] else np.nan
            for m, s in enumerate(steps)
        ],
        np.float32,
    )
    versions = [(s, res.snapshots[s]) for s in sorted(res.snapshots)] + [(None, res.params)]
    zoos_params, meta_rows = [], []
    for snap, p in versions:
        acc, ce = evaluate_population(
            arch, _slice(p, twice), eval_images, eval_labels, eval_rows_all, label_map[twice], n_out=n_out[twice]
        )
        tr_acc, tr_loss, te_acc, te_loss = acc[:n], ce[:n], acc[n:], ce[n:]
        prefix = id_prefix or name
        for m in range(n):
            run_id = f"{prefix}-{m:06d}"
            row = {
                "id": run_id if snap is None else f"{run_id}-step{snap}",
                "run": run_id,
                "classes": [dataset.class_names[c] for c in classes[m]] + [None] * (k_out - len(classes[m])),
                "n_outputs": len(classes[m]),
                "class_indices": classes[m],
                "dataset": dataset.name,
                "train_acc": float(tr_acc[m]),
                "train_loss": float(tr_loss[m]),
                "test_acc": float(te_acc[m]) if test is not None else None,
                "test_loss": float(te_loss[m]) if test is not None else None,
                "generalization_gap": float(tr_acc[m] - te_acc[m]) if test is not None else None,
                "final_loss": float(final_loss[m]),
                "n_train": len(rows[m]),
                "step": int(steps[m]) if snap is None else min(int(snap), int(steps[m])),
                "final": snap is None,
                "optimizer": names[int(hp["optimizer"][m])],
                "learning_rate": float(hp["learning_rate"][m]),
                "weight_decay": float(hp["weight_decay"][m]),
                "momentum": float(hp["momentum"][m]),
                "init_scale": float(scale[m]),
                "dropout": float(dropout[m]),
                "train_fraction": float(frac[m]),
                "steps": int(steps[m]),
                "batch_size": int(batch_size),
                "seed": int(seeds[m]),
                "augment_shift": int(augment[0]),
                "augment_flip": float(augment[1]),
            }
            for k, v in (extra_meta or {}).items():
                row[k] = v[m]
            meta_rows.append(row)
        zoos_params.append(p)
    params = jax.tree.map(lambda *xs: np.concatenate(xs), *zoos_params)
    meta = {k: [r[k] for r in meta_rows] for k in meta_rows[0]}
    return Zoo(arch, params, meta, name)


def split_outputs(zoo: Any) -> list[Any]:
    """Split a ``pad_outputs`` zoo into zoos of exact architectures, one per output count.

    Every model keeps only its first ``n_outputs`` outputs: the rows of every tensor whose shape
    depends on ``out_features`` are sliced, so the result computes exactly the unmasked logits
    of the padded model.

    Args:
        zoo: a :class:`Zoo` whose meta has ``n_outputs`` and whose architecture has an
            ``out_features`` field (MLP, CNN).

    Returns:
        Zoos ordered by output count, with ``classes`` trimmed to the real outputs.

    Example:
        >>> import jax, numpy as np
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Zoo
        >>> z = Zoo.init(MLP(in_features=4, hidden=(8,), out_features=3), 3, key=jax.random.key(0))
        >>> z = z.with_meta(n_outputs=[2, 3, 2], classes=[["a", "b", None], ["a", "b", "c"], ["c", "a", None]])
        >>> [(part.arch.out_features, len(part), part.classes(0)) for part in split_outputs(z)]
        [(2, 2, ['a', 'b']), (3, 1, ['a', 'b', 'c'])]
    """
    from weightspace.zoo._zoo import Zoo

    if "n_outputs" not in zoo.meta:
        raise ConfigError(f"zoo {zoo.name!r} has no 'n_outputs' column (train it with pad_outputs=True)")
    counts = np.asarray(zoo.meta["n_outputs"], np.int64)
    out = []
    for k in sorted(set(counts.tolist())):
        sel = zoo.select(np.flatnonzero(counts == k))
        arch_k = dataclasses.replace(sel.arch, out_features=int(k))
        full, small = sel.arch.param_shapes(), arch_k.param_shapes()
        params = {
            n: (np.asarray(v)[:, : small[n][0]] if small[n] != full[n] else np.asarray(v))
            for n, v in sel.params.items()
        }
        meta = dict(sel.meta)
        if "classes" in meta:
            meta["classes"] = [list(c)[:k] for c in meta["classes"]]
        out.append(Zoo(arch_k, params, meta, sel.name))
    return out

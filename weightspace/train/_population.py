"""The driver for populations: :func:`fit_population` runs many models in one compiled
``jit(vmap(scan(step)))`` program of the public step (:func:`~weightspace.train.make_train_step`).

Any per-model loss on any stacked parameter pytree, with per-model data subsets, hyper-parameters
(``optax.inject_hyperparams`` state), optimizers, step counts and seeds, chunked over models,
checkpointed per segment with the one :class:`~weightspace.train.Checkpointer` and resumable
bit-identically. It knows no architecture and no zoo: ``weightspace.zoo`` builds classifier
populations on it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import sys
import time
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
from weightspace.parallel import chunk_rows
from weightspace.train._checkpoint import Checkpointer, check_resume, from_host, to_host
from weightspace.train._resume import _RESUME, _DoneChunks
from weightspace.train._step import TrainState, make_train_step

PyTree = Any

# ---------------------------------------------------------------------------------------------
# Optimizers: optax factories of the per-model hyper-parameters, which optax.inject_hyperparams
# keeps in each model's optimizer state (so one static optimizer serves every model of a vmap).
# ---------------------------------------------------------------------------------------------

HPARAM_DEFAULTS: dict[str, float] = {"learning_rate": 1e-3, "weight_decay": 0.0, "momentum": 0.9}
"""Per-model float hyper-parameters understood by :data:`OPTIMIZERS` and their defaults."""


def _sgd(learning_rate: Any, weight_decay: Any, momentum: Any) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate))


def _momentum(learning_rate: Any, weight_decay: Any, momentum: Any) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum))


def _adam(learning_rate: Any, weight_decay: Any, momentum: Any) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))


def _adamw(learning_rate: Any, weight_decay: Any, momentum: Any) -> optax.GradientTransformation:
    return optax.adamw(learning_rate, weight_decay=weight_decay)


_FACTORIES = {"sgd": _sgd, "momentum": _momentum, "adam": _adam, "adamw": _adamw}


def _injected(name: str, hparams: Mapping[str, Any]) -> optax.GradientTransformation:
    values = {k: hparams.get(k, d) for k, d in HPARAM_DEFAULTS.items()}
    return optax.inject_hyperparams(_FACTORIES[name])(**values)


OPTIMIZERS: dict[str, Callable[[Mapping[str, Any]], optax.GradientTransformation]] = {
    name: functools.partial(_injected, name) for name in _FACTORIES
}
"""Optimizer name -> ``hparams -> optax.GradientTransformation``.

``hparams`` holds one model's ``learning_rate``, ``weight_decay`` and ``momentum`` (missing ones take
:data:`HPARAM_DEFAULTS`). The transformation is ``optax.inject_hyperparams`` of the optimizer: the
values live in its state, so the states of many models stack and ``vmap`` with one static
optimizer. ``sgd``, ``momentum`` and ``adam`` use coupled L2 decay (``optax.add_decayed_weights``
before the optimizer); ``adamw`` uses decoupled decay.
"""


class MenuState(NamedTuple):
    """The optimizer state of one model of a population (see :func:`population_optimizer`)."""

    choice: Array
    """``[]`` int32: which optimizer of the menu this model runs."""
    slots: tuple[PyTree, ...]
    """The injected state of every optimizer of the menu (hyper-parameters included)."""


def population_optimizer(names: tuple[str, ...]) -> optax.GradientTransformation:
    """One optax transformation for a whole population: each model runs the optimizer of the menu
    ``names`` that its state chooses, with the hyper-parameters its state holds.

    Every optimizer of the menu is evaluated and the chosen update is selected exactly (no
    arithmetic blending), so each model equals a plain optax run of its own optimizer.
    ``init`` gives the defaults with choice 0; :func:`population_opt_state` gives a model's own.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = population_optimizer(("sgd", "adam"))
        >>> s = population_opt_state(("sgd", "adam"), {"w": jnp.ones(2)}, {"optimizer": 0, "learning_rate": 0.5})
        >>> u, _ = tx.update({"w": jnp.ones(2)}, s, {"w": jnp.ones(2)})
        >>> u["w"].tolist()
        [-0.5, -0.5]
    """
    slots = tuple(OPTIMIZERS[n](HPARAM_DEFAULTS) for n in names)

    def init(params: PyTree) -> MenuState:
        return MenuState(jnp.zeros((), jnp.int32), tuple(tx.init(params) for tx in slots))

    def update(updates: PyTree, state: MenuState, params: PyTree = None) -> tuple[PyTree, MenuState]:
        outs = [tx.update(updates, s, params) for tx, s in zip(slots, state.slots, strict=True)]
        chosen = outs[0][0]
        for i, (u, _) in enumerate(outs[1:], 1):
            chosen = _where_tree(state.choice == i, u, chosen)
        return chosen, MenuState(state.choice, tuple(s for _, s in outs))

    return optax.GradientTransformation(init, update)  # type: ignore[arg-type]


def population_opt_state(names: tuple[str, ...], params: PyTree, hparams: Mapping[str, Any]) -> MenuState:
    """One model's :class:`MenuState`: ``hparams["optimizer"]`` indexes ``names``; the float columns
    of :data:`HPARAM_DEFAULTS` are injected into every slot."""
    choice = jnp.asarray(hparams.get("optimizer", 0), jnp.int32)
    return MenuState(choice, tuple(OPTIMIZERS[n](hparams).init(params) for n in names))


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
    state: tuple[TrainState, Array, Array],
    t0: Array,
    data: PyTree,
    index: Array | None,
    count: Array,
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
) -> tuple[tuple[TrainState, Array, Array], Array]:
    """Run ``seg_len`` steps of every model of a chunk: ``vmap(scan(step))`` of the public
    :func:`~weightspace.train.make_train_step` (models on axis 0 of everything)."""
    shared = extra.get("shared")
    tx = population_optimizer(names)

    def one_model(st, index_m, count_m, key_m, steps_m, target_m, model_data_m):
        kwargs = {}
        if "model_data" in extra_keys:
            kwargs["model_data"] = model_data_m
        if "shared" in extra_keys:
            kwargs["shared"] = shared
        step = make_train_step(functools.partial(loss_fn, **kwargs) if kwargs else loss_fn, tx)

        def body(carry, t):
            train_state, done, n_updates = carry
            kb, kl = jax.random.split(jax.random.fold_in(key_m, t))
            pos = jax.random.randint(kb, (batch_size,), 0, count_m)
            rows = index_m[pos] if has_index else pos
            batch = jax.tree.map(lambda a: a[rows], data)
            new_state, metrics = step(train_state, batch, kl)
            loss = metrics["loss"]
            running = (t < steps_m) & ~done
            reached = loss <= target_m  # the model stops before updating once its loss meets the target
            active = running & ~reached
            carry = (
                _where_tree(active, new_state, train_state),
                done | (running & reached),
                n_updates + active.astype(jnp.int32),
            )
            return carry, jnp.where(running, loss, jnp.nan).astype(jnp.float32)

        return lax.scan(body, st, t0 + jnp.arange(seg_len))

    md = extra.get("model_data")
    in_axes = (0, 0 if has_index else None, 0, 0, 0, 0, 0 if md is not None else None)
    return jax.vmap(one_model, in_axes=in_axes)(state, index, count, keys, steps, target, md)


@functools.partial(jax.jit, static_argnames=("names",))
def _init_opt(params: PyTree, hp: dict[str, Array], *, names: tuple[str, ...]) -> MenuState:
    return jax.vmap(lambda p, h: population_opt_state(names, p, h))(params, hp)


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
    checkpoint_seconds: float = 0.0,
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
            resume from it; ``None`` disables checkpoints, unless the call runs inside
            :func:`resumable`, which names one.
        checkpoint_seconds: at least this many seconds between two mid-chunk checkpoints of the
            chunk in flight (0: after every segment). Every finished chunk's results are written
            (a small safetensors file), so a resumed run never trains a finished chunk again.
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
    n = int(sizes.pop() or 0)
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
    if checkpoint_dir is None and (scope := _RESUME.get()) is not None:
        checkpoint_dir = scope.next_dir()
        checkpoint_seconds = max(checkpoint_seconds, scope.seconds)
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
    store = _DoneChunks(Path(checkpoint_dir), fp) if checkpoint_dir is not None else None
    finished = store.load(params, snaps) if store is not None else {}
    try:
        for c in range(n_chunks):
            if c in finished:  # trained before a kill: read back, not trained again
                p_c, l_c, u_c, s_c = finished.pop(c)
                out_params.append(p_c)
                out_losses.append(l_c)
                out_updates.append(u_c)
                for s in snaps:
                    out_snaps[s].append(s_c[s])
                if bar is not None:
                    bar.update(max_steps)
                continue
            lo, hi = c * chunk, min((c + 1) * chunk, n)
            # The last chunk is padded (copies of the last model, 0 steps): every chunk reuses one program.
            pos = chunk_rows(lo, chunk, n).astype(np.int64)
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
            p0_dev = jax.tree.map(jnp.asarray, p0)
            state: tuple[TrainState, Array, Array] = (
                TrainState(p0_dev, _init_opt(p0_dev, hp_c, names=names)),
                jnp.zeros((chunk,), bool),
                jnp.zeros((chunk,), jnp.int32),
            )
            losses = np.full((chunk, max_steps), np.nan, np.float32)
            snap_c: dict[int, PyTree] = {}
            start = 0
            chunk_dir = Path(checkpoint_dir) / f"chunk-{c:05d}" if checkpoint_dir is not None else None
            # The in-flight chunk's own checkpoint: only once it has run checkpoint_seconds (short
            # chunks end in the finished-chunk store instead, without an orbax save each).
            ckpt = Checkpointer(chunk_dir, keep=1) if chunk_dir is not None and chunk_dir.exists() else None
            saved_at = time.monotonic()
            last = ckpt.latest() if ckpt is not None else None
            if ckpt is not None and last is not None:
                where = f"{ckpt.dir} (segment {last})"
                check_resume(ckpt.meta(last), {"fingerprint": fp}, where)
                start = last
                kept = {str(s): p0 for s in snaps if s <= start * segment_steps}
                like, treedef = jax.tree_util.tree_flatten((state, losses, kept))
                paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path((state, losses, kept))]
                got = from_host(ckpt.arrays(last, to_host(like)), like, paths, where)
                state, losses, kept_back = jax.tree_util.tree_unflatten(treedef, got)
                losses = np.array(losses)  # writable: later segments fill it in
                snap_c = {int(s): jax.tree.map(np.asarray, v) for s, v in kept_back.items()}
                if bar is not None:
                    bar.update(min(start * segment_steps, max_steps))
            args = (
                jnp.asarray(table[pos]) if table is not None else None,
                jnp.asarray(count[pos]),
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
                if np.all(np.asarray(state[1]) | (steps_c <= done)):
                    # Every model has stopped: the remaining segments would change nothing.
                    seg, done = n_segs, max_steps
                for s in snaps:
                    if t0 < s <= done:
                        snap_c[s] = jax.tree.map(np.asarray, state[0].params)
                if chunk_dir is not None and seg < n_segs and time.monotonic() - saved_at >= checkpoint_seconds:
                    if ckpt is None:
                        ckpt = Checkpointer(chunk_dir, keep=1)
                    kept = {str(s): v for s, v in snap_c.items()}
                    ckpt.save(seg, to_host(jax.tree_util.tree_leaves((state, losses, kept))), {"fingerprint": fp})
                    saved_at = time.monotonic()
                if bar is not None:
                    bar.update(done - t0)
                if callback is not None:
                    callback(FitProgress(c, n_chunks, done, max_steps, ckpt is not None))
            if ckpt is not None:
                ckpt.close()
            out_params.append(_slice(state[0].params, np.arange(live)))
            out_losses.append(losses[:live])
            out_updates.append(np.asarray(state[2])[:live])
            for s in snaps:
                out_snaps[s].append(_slice(snap_c[s], np.arange(live)))
            if store is not None:
                store.add(
                    c,
                    out_params[-1],
                    out_losses[-1],
                    out_updates[-1],
                    {s: out_snaps[s][-1] for s in snaps},
                )
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

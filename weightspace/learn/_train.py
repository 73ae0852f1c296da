"""The one training loop for learned weight encoders (Flax NNX modules): jit, optax, orbax, resume.

Every encoder in weightspace (ProbeX, ProbeGen, the equivariant encoder, Model Spider) trains
through :func:`fit`. The module is split once with ``nnx.split`` into parameters and other state;
one ``jax.jit``-compiled step (cached across calls with the same module structure, loss function
and optimizer) gathers a batch on device, differentiates the loss and applies the optax update,
donating the old state buffers. Batches are shuffled epochs, and every random choice is a
function of ``(seed, step)``, so a run resumed from a checkpoint continues exactly where it
stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from weightspace._atomic import atomic_path
from weightspace._errors import ConfigError, LoadError, ShapeError, WeightspaceError
from weightspace._xla import training_cpu_options

PathLike = str | os.PathLike[str]
# (model, batch, key) -> (loss, metrics) or loss; Any-typed so losses of Module subclasses fit.
LossFn = Callable[[Any, Any, jax.Array], Any]

_SCHEDULES = ("constant", "cosine")
_CKPT_FORMAT = "weightspace.learn.fit/1"
_MODULE_FORMAT = "weightspace.learn.module/1"
# Config fields that may change between a run and its resumption without changing its meaning.
_RESUMABLE_FIELDS = ("steps", "eval_every", "patience", "checkpoint_every")


class TrainingDivergedError(WeightspaceError, FloatingPointError):
    """The training loss became NaN/Inf. ``step`` is the (1-based) step whose loss was not finite;
    ``checkpoint_step`` the last good checkpoint (``None`` when there is none)."""

    def __init__(self, message: str, *, step: int, checkpoint_step: int | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint_step = checkpoint_step


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of :func:`fit` (saved with every checkpoint).

    Attributes:
        steps: optimizer steps.
        batch_size: examples per step (clipped to the training-set size).
        learning_rate: peak learning rate.
        weight_decay: decoupled weight decay; AdamW when > 0, else Adam.
        schedule: ``"constant"`` or ``"cosine"`` (decay to 0 over ``steps`` after ``warmup``).
        warmup: linear warm-up steps from 0.
        grad_clip: clip gradients to this global norm (``None``: no clipping).
        eval_every: steps between evaluations of ``val_fn`` and history entries.
        patience: stop after this many evaluations without a better ``val_fn`` score.
        checkpoint_every: steps between checkpoints (default ``eval_every`` with a checkpoint dir).
        seed: seeds batch order and the loss's random key.

    Example:
        >>> from weightspace.learn import TrainConfig
        >>> cfg = TrainConfig(steps=100, weight_decay=1e-4, schedule="cosine", grad_clip=1.0)
        >>> cfg.to_dict()["schedule"], type(cfg.optimizer()).__name__
        ('cosine', 'GradientTransformationExtraArgs')
    """

    steps: int = 2000
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup: int = 0
    grad_clip: float | None = None
    eval_every: int = 100
    patience: int | None = None
    checkpoint_every: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        def pos_int(name: str, v: Any, *, zero: bool = False) -> None:
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < (0 if zero else 1):
                raise ConfigError(
                    f"TrainConfig.{name} must be a {'non-negative' if zero else 'positive'} int, got {v!r}"
                )

        pos_int("steps", self.steps, zero=True)
        pos_int("batch_size", self.batch_size)
        pos_int("eval_every", self.eval_every)
        pos_int("warmup", self.warmup, zero=True)
        pos_int("seed", self.seed, zero=True)
        if self.patience is not None:
            pos_int("patience", self.patience)
        if self.checkpoint_every is not None:
            pos_int("checkpoint_every", self.checkpoint_every)
        for name in ("learning_rate", "weight_decay"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"TrainConfig.{name} must be a finite non-negative number, got {v!r}")
        if self.grad_clip is not None and (not isinstance(self.grad_clip, (int, float)) or not self.grad_clip > 0):
            raise ConfigError(f"TrainConfig.grad_clip must be a positive number or None, got {self.grad_clip!r}")
        if self.schedule not in _SCHEDULES:
            raise ConfigError(f"TrainConfig.schedule must be one of {_SCHEDULES}, got {self.schedule!r}")

    def optimizer(self) -> optax.GradientTransformation:
        """The optax transformation these settings describe (the same object for equal settings,
        so the jitted step of :func:`fit` is compiled once)."""
        return _make_optimizer(
            float(self.learning_rate),
            float(self.weight_decay),
            self.schedule,
            int(self.warmup),
            None if self.grad_clip is None else float(self.grad_clip),
            int(self.steps) if self.schedule == "cosine" else 0,
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict."""
        return dataclasses.asdict(self)


@functools.lru_cache(maxsize=128)
def _make_optimizer(
    lr: float, wd: float, schedule: str, warmup: int, grad_clip: float | None, steps: int
) -> optax.GradientTransformation:
    sched: float | optax.Schedule
    if schedule == "cosine":
        total = max(steps, warmup + 1)
        if warmup:
            sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup, decay_steps=total, end_value=0.0)
        else:
            sched = optax.cosine_decay_schedule(lr, decay_steps=max(steps, 1), alpha=0.0)
    elif warmup:
        sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
    else:
        sched = lr
    opt = optax.adamw(sched, weight_decay=wd) if wd > 0 else optax.adam(sched)
    return optax.chain(optax.clip_by_global_norm(grad_clip), opt) if grad_clip is not None else opt


class FitReport(NamedTuple):
    """What :func:`fit` did.

    Attributes:
        steps_done: optimizer steps taken in total (including those before a resume).
        best_step: step of the best ``val_fn`` score (``None`` without ``val_fn``).
        best_score: the best ``val_fn`` score.
        history: one dict per evaluation: ``step``, mean training ``loss`` since the previous
            entry, mean auxiliary metrics, and ``val`` when ``val_fn`` is given.
        seconds: wall time of the training steps after the first (compiling) one.
        compile_seconds: wall time of the first step of this call (tracing + compiling + running).
        resumed_from: the checkpoint step this call resumed from, or ``None``.
        losses: training loss of every step run in THIS call (``[steps_done - resumed_from]``).
    """

    steps_done: int
    best_step: int | None
    best_score: float | None
    history: list[dict[str, Any]]
    seconds: float
    compile_seconds: float
    resumed_from: int | None
    losses: np.ndarray = np.zeros(0, np.float32)


@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything the jitted step treats as compile-time constant (hashable)."""

    graphdef: Any
    tx: optax.GradientTransformation
    loss_fn: Any
    batch_sharding: NamedSharding | None
    compiler_options: tuple[tuple[str, Any], ...] = ()


def _call_loss(static: _Static, params: Any, rest: Any, batch: Any, key: jax.Array) -> tuple[jax.Array, Any]:
    # copy=True: Variables made at the jit level cannot be mutated (RNG counters) inside grad's trace.
    model = nnx.merge(static.graphdef, params, rest, copy=True)
    out = static.loss_fn(model, batch, key)
    loss, aux = out if isinstance(out, tuple) else (out, {})
    if jnp.ndim(loss) != 0:
        raise ShapeError(f"fit: loss_fn must return a scalar loss, got shape {jnp.shape(loss)}")
    if not isinstance(aux, Mapping):
        raise ConfigError(f"fit: loss_fn must return (loss, dict of metrics), got aux of type {type(aux).__name__}")
    _, _, new_rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
    return loss, (dict(aux), new_rest)


def _shard_batch(batch: Any, sharding: NamedSharding) -> Any:
    # jax.make_mesh gives Explicit axes (reshard); meshes built by hand may be Auto (constraint).
    types = dict(zip(sharding.mesh.axis_names, getattr(sharding.mesh, "axis_types", ()), strict=False))
    if types.get("models") == jax.sharding.AxisType.Explicit:
        return jax.sharding.reshard(batch, sharding)
    return jax.lax.with_sharding_constraint(batch, sharding)


class _Epochs:
    """Batch indices of the shuffled epochs (host side): epoch e visits a permutation seeded by
    ``(data_key, e)`` in consecutive batches (drop-remainder).

    They enter the jitted step as an argument: computing them inside it (a permutation, then a
    dynamic slice at a step-dependent offset) let XLA fuse that index arithmetic into every
    consumer of the gathered batch and redo it per element (ProbeGen on SIRENs: 2.4 -> 1.6 ms).
    """

    def __init__(self, data_key: jax.Array, n: int, batch_size: int) -> None:
        self.seed = [int(v) for v in np.asarray(jax.random.key_data(data_key)).ravel()]
        self.n, self.batch_size = n, batch_size
        self.epoch, self.perm = -1, np.zeros(0, np.int32)

    def __call__(self, step: int) -> np.ndarray:
        epoch, j = divmod(int(step), self.n // self.batch_size)
        if epoch != self.epoch:
            self.epoch = epoch
            self.perm = np.random.default_rng([*self.seed, epoch]).permutation(self.n).astype(np.int32)
        return self.perm[j * self.batch_size : (j + 1) * self.batch_size]


@functools.lru_cache(maxsize=32)
def _compiled_step(static: _Static, treedef: Any) -> Callable[..., Any]:
    """The jitted step for one ``fit`` configuration, on the FLAT leaves of ``(state, opt_state)``.

    Closing over ``static`` (rather than passing it as a static argument) and passing a flat
    list of arrays (rather than NNX ``State`` pytrees) keeps the per-step dispatch on JAX's C++
    fast path: no hashing of the graph definition, no Variable flattening in Python. For small
    models that overhead was half the step (ProbeGen on SIRENs: 1.3 of 2.5 ms). On CPU it is
    compiled with :func:`weightspace._xla.training_cpu_options`, plus ``fit``'s ``compiler_options``.
    """

    def step_fn(leaves: list[Any], data: Any, idx: Any, step: jax.Array, loss_key: jax.Array) -> Any:
        state, opt_state = jax.tree_util.tree_unflatten(treedef, leaves)
        batch = data if idx is None else jax.tree.map(lambda x: jnp.take(x, idx, axis=0), data)
        state, opt_state, loss, aux = _train_step(static, state, opt_state, batch, step, loss_key)
        return jax.tree_util.tree_leaves((state, opt_state)), loss, aux

    options = {**dict(training_cpu_options()), **dict(static.compiler_options)}
    return jax.jit(step_fn, donate_argnums=0, compiler_options=options or None)


def _train_step(
    static: _Static,
    state: tuple[Any, Any],
    opt_state: Any,
    batch: Any,
    step: jax.Array,
    loss_key: jax.Array,
) -> tuple[tuple[Any, Any], Any, jax.Array, dict[str, Any]]:
    params, rest = state
    if static.batch_sharding is not None:
        batch = _shard_batch(batch, static.batch_sharding)
    key = jax.random.fold_in(loss_key, step)
    grad_fn = jax.value_and_grad(lambda p: _call_loss(static, p, rest, batch, key), has_aux=True)
    (loss, (aux, new_rest)), grads = grad_fn(params)
    updates, opt_state = static.tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), new_rest), opt_state, loss, aux


def _num_examples(train: Any) -> int:
    leaves = jax.tree_util.tree_leaves(train)
    if not leaves:
        raise ShapeError("fit: the training data has no arrays")
    sizes = {int(np.shape(x)[0]) if np.ndim(x) else -1 for x in leaves}
    if len(sizes) != 1 or -1 in sizes:
        paths = [(jax.tree_util.keystr(p), np.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(train)]
        raise ShapeError(
            f"fit: every array of the training data needs the same leading (examples) axis; found {paths[:6]}"
        )
    n = sizes.pop()
    if n < 1:
        raise ShapeError("fit: the training data has 0 examples")
    return n


def _copy_tree(tree: Any) -> Any:
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


# ---- checkpoints -------------------------------------------------------------------------------
def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_host(leaves: list[Any]) -> dict[str, np.ndarray]:
    out = {}
    for i, x in enumerate(leaves):
        # A copy: on CPU device_get may alias the device buffer, which the next (donating) step
        # overwrites while orbax is still writing it in the background.
        out[f"a{i:05d}"] = np.array(jax.device_get(jax.random.key_data(x) if _is_key(x) else x), copy=True)
    return out


def _from_host(saved: Mapping[str, Any], like: list[Any], paths: list[str], where: str) -> list[Any]:
    if len(saved) != len(like):
        raise ConfigError(
            f"{where}: the checkpoint holds {len(saved)} arrays, this model and optimizer have "
            f"{len(like)}; it was written for a different model or optimizer"
        )
    out = []
    for i, (x, p) in enumerate(zip(like, paths, strict=True)):
        v = np.asarray(saved[f"a{i:05d}"])
        want = jax.random.key_data(x).shape if _is_key(x) else np.shape(x)
        if v.shape != tuple(want):
            raise ConfigError(
                f"{where}: array {p} is {list(v.shape)} in the checkpoint but {list(want)} in the model being trained"
            )
        out.append(
            jax.random.wrap_key_data(jnp.asarray(v), impl=jax.random.key_impl(x))
            if _is_key(x)
            else jnp.asarray(v, dtype=x.dtype)
        )
    return out


class _Checkpoints:
    """A thin orbax CheckpointManager over flat leaf dicts + JSON metadata (writes are atomic)."""

    def __init__(self, directory: PathLike, keep: int = 2) -> None:
        import orbax.checkpoint as ocp

        self.ocp = ocp
        self.dir = Path(directory).absolute()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mngr = ocp.CheckpointManager(
            self.dir,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True),
        )

    def latest(self) -> int | None:
        return self.mngr.latest_step()

    def save(self, step: int, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        a = self.ocp.args
        self.mngr.save(step, args=a.Composite(arrays=a.StandardSave(arrays), meta=a.JsonSave(meta)), force=True)
        self.mngr.wait_until_finished()

    def meta(self, step: int) -> dict[str, Any]:
        a = self.ocp.args
        return self.mngr.restore(step, args=a.Composite(meta=a.JsonRestore()))["meta"]

    def arrays(self, step: int, like: dict[str, np.ndarray]) -> dict[str, Any]:
        a = self.ocp.args
        target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in like.items()}
        try:
            return self.mngr.restore(step, args=a.Composite(arrays=a.StandardRestore(target)))["arrays"]
        except (ValueError, KeyError) as e:
            raise ConfigError(f"{self.dir}: checkpoint {step} does not match the model being trained ({e})") from e

    def close(self) -> None:
        self.mngr.close()


def _check_resume_config(saved: Mapping[str, Any], config: TrainConfig, where: str) -> None:
    now = config.to_dict()
    diff = [k for k in now if k not in _RESUMABLE_FIELDS and saved.get(k) != now[k]]
    if diff:
        raise ConfigError(
            f"{where}: cannot resume: the checkpoint was trained with "
            f"{ {k: saved.get(k) for k in diff} }, this call asks for { {k: now[k] for k in diff} }; "
            f"use a fresh checkpoint_dir or the same settings"
        )


# ---- fit ---------------------------------------------------------------------------------------
def fit(
    model: nnx.Module,
    loss_fn: LossFn,
    train: Any,
    *,
    config: TrainConfig = TrainConfig(),
    val_fn: Callable[[nnx.Module], float] | None = None,
    checkpoint_dir: PathLike | None = None,
    optimizer: optax.GradientTransformation | None = None,
    sample: Callable[[jax.Array, int], Any] | None = None,
    progress: bool | None = None,
    mesh: Mesh | None = None,
    compiler_options: Mapping[str, Any] | None = None,
) -> FitReport:
    """Train an NNX module in place: the one training loop of weightspace.

    Each step draws a batch, evaluates ``loss_fn(model, batch, key)`` and applies the optimizer:

    .. math:: \\theta_{t+1} = \\theta_t + \\mathrm{opt}\\big(\\nabla_\\theta L(\\theta_t; B_t, k_t)\\big),
        \\quad B_t = \\mathrm{train}[\\pi_{e}[jb:(j+1)b]],\\ k_t = \\mathrm{fold\\_in}(k, t)

    where ``t = e * (n // b) + j`` and ``pi_e`` is the shuffle of epoch ``e`` (drop-remainder).
    Only ``nnx.Param`` variables are optimised; other state (batch statistics, RNG counters) is
    carried through the step as ``loss_fn`` leaves it.

    Args:
        model: the NNX module; it ends at its final state, or at its best validation state
            when ``val_fn`` is given.
        loss_fn: ``(model, batch, key) -> (scalar loss, {name: scalar metric})`` (or just the
            loss); traced once. Use a module-level function (not a fresh lambda per call) so
            later ``fit`` calls reuse the compiled step.
        train: a pytree of arrays whose leading axis is the example (model) axis; put on the
            device once. May be ``None`` when ``sample`` is given.
        config: :class:`TrainConfig`.
        val_fn: ``model -> score`` (higher is better), run on the host every ``eval_every``
            steps and at the end; drives early stopping (``config.patience``) and the best state.
        checkpoint_dir: orbax checkpoints (model state, optimizer state, step, RNG keys, best
            state and score, history, config) every ``checkpoint_every`` steps and at the end;
            an existing checkpoint there is resumed from its latest step.
        optimizer: overrides ``config.optimizer()``.
        sample: custom sampler ``(key, step) -> batch`` (host side, fixed batch shapes) used
            instead of shuffled epochs over ``train``.
        progress: show a tqdm bar (``None``: when stderr is a terminal).
        mesh: shard each batch's leading axis over the mesh's ``"models"`` axis
            (:func:`weightspace.parallel.make_mesh`); state and ``train`` are replicated. The
            batch size is rounded down to a multiple of the device count.
        compiler_options: extra XLA options for the step's ``jax.jit`` (e.g.
            :func:`weightspace._xla.small_heaps_cpu_options`); they change speed, not results.

    Returns:
        A :class:`FitReport`.

    Raises:
        TrainingDivergedError: the loss became NaN/Inf; the message names the step and the last
            good checkpoint, which is kept; the model is left as it was before the call.
        ConfigError: a checkpoint in ``checkpoint_dir`` belongs to another model or settings.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from flax import nnx
        >>> from weightspace.learn import TrainConfig, fit
        >>> x = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)
        >>> data = {"x": x, "y": x @ np.array([1.0, -2.0, 0.5], np.float32)}
        >>> def mse(model, batch, key):
        ...     err = model(batch["x"])[:, 0] - batch["y"]
        ...     return jnp.mean(err**2), {}
        >>> model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
        >>> report = fit(model, mse, data, config=TrainConfig(steps=300, batch_size=16, learning_rate=0.05))
        >>> bool(report.history[-1]["loss"] < 1e-3), np.round(model.kernel[...][:, 0], 2).tolist()
        (True, [1.0, -2.0, 0.5])
    """
    if not isinstance(model, nnx.Module):
        raise ConfigError(f"fit: model must be a flax.nnx.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise ConfigError("fit: loss_fn must be callable (model, batch, key) -> (loss, metrics)")
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"fit: config must be a TrainConfig, got {type(config).__name__}")
    gather = sample is None
    n = _num_examples(train) if gather else 0
    batch_size = min(config.batch_size, n) if gather else config.batch_size
    batch_sharding = repl = None
    if mesh is not None:
        from weightspace.parallel import model_axis_size

        ndev = model_axis_size(mesh)
        if gather:
            batch_size = batch_size // ndev * ndev
            if batch_size == 0:
                raise ConfigError(f"fit: {n} training examples cannot fill one batch across {ndev} devices")
        batch_sharding = NamedSharding(mesh, PartitionSpec("models"))
        repl = NamedSharding(mesh, PartitionSpec())
    tx = optimizer if optimizer is not None else config.optimizer()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
    state = _copy_tree((params, rest))  # donated below: never hand the user's own buffers to XLA
    opt_state = tx.init(state[0])
    root = jax.random.key(config.seed)
    data_key, loss_key = jax.random.split(root)
    if repl is not None:
        state, opt_state = jax.device_put((state, opt_state), repl)
    data = jax.device_put(train, repl) if gather else None
    static = _Static(graphdef, tx, loss_fn, batch_sharding, tuple(sorted((compiler_options or {}).items())))

    # What a checkpoint holds, flattened: state, optimizer state, best state, keys.
    def pack(best_state: Any) -> tuple[list[Any], Any]:
        keys = (data_key, loss_key)
        return jax.tree_util.tree_flatten((state, opt_state, best_state, keys))

    leaf_paths = [
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_leaves_with_path((state, opt_state, state, (data_key, loss_key)))
    ]

    start = 0
    best_state: Any = None
    best_step: int | None = None
    best_score: float | None = None
    bad_evals = 0
    history: list[dict[str, Any]] = []
    resumed_from: int | None = None
    ckpt = _Checkpoints(checkpoint_dir) if checkpoint_dir is not None else None
    ckpt_every = config.checkpoint_every or config.eval_every
    try:
        if ckpt is not None and (last := ckpt.latest()) is not None:
            meta = ckpt.meta(last)
            where = f"{ckpt.dir} (step {last})"
            if meta.get("format") != _CKPT_FORMAT:
                raise LoadError(f"{where}: not a weightspace.learn.fit checkpoint (format {meta.get('format')!r})")
            _check_resume_config(meta["config"], config, where)
            like, treedef = pack(state)
            host_like = _to_host(like)
            saved = ckpt.arrays(last, host_like)
            leaves = _from_host(saved, like, leaf_paths, where)
            state, opt_state, best_state, (data_key, loss_key) = jax.tree_util.tree_unflatten(treedef, leaves)
            if repl is not None:
                state, opt_state, best_state = jax.device_put((state, opt_state, best_state), repl)
            start = resumed_from = int(meta["step"])
            best_step, best_score = meta["best_step"], meta["best_score"]
            bad_evals = int(meta["bad_evals"])
            history = list(meta["history"])
            if best_step is None:
                best_state = None

        def save(step: int) -> None:
            assert ckpt is not None
            leaves, _ = pack(best_state if best_state is not None else state)
            ckpt.save(
                step,
                _to_host(leaves),
                {
                    "format": _CKPT_FORMAT,
                    "step": step,
                    "best_step": best_step,
                    "best_score": best_score,
                    "bad_evals": bad_evals,
                    "history": history,
                    "config": config.to_dict(),
                },
            )

        show = sys.stderr.isatty() if progress is None else bool(progress)
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start, disable=not show, desc="fit", leave=False)
        leaves, treedef = jax.tree_util.tree_flatten((state, opt_state))
        step_fn = _compiled_step(static, treedef)
        epochs = _Epochs(data_key, n, batch_size) if gather else None
        # Several sharded steps in flight on a CPU mesh (fake host devices sharing a few cores) can
        # starve the in-process all-reduce of threads and hang XLA's rendezvous: one at a time there.
        sync_each_step = mesh is not None and mesh.devices.flat[0].platform == "cpu"
        pending: list[jax.Array] = []
        pending_aux: list[dict[str, jax.Array]] = []
        all_losses: list[np.ndarray] = []
        since_entry: list[float] = []
        aux_since: list[dict[str, float]] = []
        compile_s = 0.0
        t_steps = 0.0
        stop = False
        step = start
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
            t0 = time.perf_counter()
            while step < config.steps and not stop:
                if gather:
                    assert epochs is not None
                    batch, idx = data, epochs(step)
                else:
                    assert sample is not None
                    batch, idx = sample(jax.random.fold_in(data_key, step), step), None
                    if batch_sharding is not None:
                        batch = jax.device_put(batch, batch_sharding)
                leaves, loss, aux = step_fn(leaves, batch, idx, np.int32(step), loss_key)
                pending.append(loss)
                pending_aux.append(aux)
                step += 1
                if sync_each_step:
                    jax.block_until_ready(loss)
                if step == start + 1:
                    jax.block_until_ready(loss)
                    compile_s = time.perf_counter() - t0
                    t0 = time.perf_counter()
                is_eval = step % config.eval_every == 0 or step == config.steps
                is_ckpt = ckpt is not None and (step % ckpt_every == 0 or step == config.steps)
                bar.update(1)
                if not (is_eval or is_ckpt):
                    continue
                state, opt_state = jax.tree_util.tree_unflatten(treedef, leaves)  # valid until the next step
                # Host sync only at boundaries: check every pending loss, then record.
                host = np.asarray(jax.device_get(pending), np.float32)
                host_aux = jax.device_get(pending_aux)
                bad = np.flatnonzero(~np.isfinite(host))
                if bad.size:
                    s = step - len(host) + int(bad[0]) + 1
                    last_good = ckpt.latest() if ckpt is not None else None
                    raise TrainingDivergedError(
                        f"fit: training diverged: the loss of step {s} (of {config.steps}) is {host[bad[0]]}"
                        + (
                            f"; the last good checkpoint is step {last_good} in {ckpt.dir}"
                            if ckpt is not None and last_good is not None
                            else "; no checkpoint was written"
                        )
                        + ". Lower the learning rate, clip gradients (grad_clip) or check the inputs for NaN/Inf.",
                        step=s,
                        checkpoint_step=last_good,
                    )
                all_losses.append(host)
                since_entry.extend(host.tolist())
                aux_since.extend({k: float(v) for k, v in a.items()} for a in host_aux)
                pending, pending_aux = [], []
                if is_eval:
                    entry: dict[str, Any] = {"step": step, "loss": float(np.mean(since_entry))}
                    for k in aux_since[0] if aux_since else ():
                        entry[k] = float(np.mean([a[k] for a in aux_since]))
                    since_entry, aux_since = [], []
                    if val_fn is not None:
                        t_val = time.perf_counter()
                        score = float(val_fn(nnx.merge(graphdef, state[0], state[1])))
                        t0 += time.perf_counter() - t_val  # validation is not training time
                        entry["val"] = score
                        if math.isfinite(score) and (best_score is None or score > best_score):
                            best_score, best_step, bad_evals = score, step, 0
                            best_state = _copy_tree(state)
                        else:
                            bad_evals += 1
                            if config.patience is not None and bad_evals >= config.patience:
                                stop = True
                    history.append(entry)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in entry.items() if k != "step"}, refresh=False)
                if ckpt is not None and (is_ckpt or stop):
                    save(step)
                # val_fn may have advanced RNG counters in state (Variables shared with its model).
                leaves = jax.tree_util.tree_leaves((state, opt_state))
            state, opt_state = jax.tree_util.tree_unflatten(treedef, leaves)
            jax.block_until_ready(state)
            t_steps = time.perf_counter() - t0
        bar.close()
        if ckpt is not None and start < config.steps and ckpt.latest() != step:
            save(step)
        final = best_state if (val_fn is not None and best_state is not None) else state
        nnx.update(model, final[0], final[1])
        losses = np.concatenate(all_losses) if all_losses else np.zeros(0, np.float32)
        return FitReport(step, best_step, best_score, history, t_steps, compile_s, resumed_from, losses)
    finally:
        if ckpt is not None:
            ckpt.close()


# ---- modules on disk ---------------------------------------------------------------------------
def _flat_state(module: nnx.Module) -> tuple[dict[str, Any], nnx.GraphDef[Any], Any]:
    graphdef, state = nnx.split(module)
    flat = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(state)}
    return flat, graphdef, state


def save_module(module: nnx.Module, path: PathLike, *, config: Mapping[str, Any]) -> Path:
    """Save an NNX module's state (orbax) with the config that rebuilds it (``config.json``).

    Args:
        module: the module.
        path: a directory (created); an existing save there is replaced.
        config: JSON-serialisable settings that :func:`load_module`'s ``build`` turns back into
            an identical (untrained) module.

    Returns:
        The directory.

    Example:
        >>> import tempfile, pathlib
        >>> from flax import nnx
        >>> from weightspace.learn import load_module, save_module
        >>> lin = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        >>> p = save_module(lin, pathlib.Path(tempfile.mkdtemp()) / "lin", config={"d_in": 3, "d_out": 2})
        >>> back = load_module(p, lambda c: nnx.Linear(c["d_in"], c["d_out"], rngs=nnx.Rngs(1)))
        >>> bool((back.kernel[...] == lin.kernel[...]).all())
        True
    """
    import orbax.checkpoint as ocp

    if not isinstance(module, nnx.Module):
        raise ConfigError(f"save_module: expected a flax.nnx.Module, got {type(module).__name__}")
    try:
        cfg_text = json.dumps({"format": _MODULE_FORMAT, "config": dict(config)}, indent=1, sort_keys=True)
    except TypeError as e:
        raise ConfigError(f"save_module: config must be JSON-serialisable ({e})") from e
    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    flat, _, _ = _flat_state(module)
    arrays = _to_host(list(flat.values()))
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path / "state", arrays, force=True)
    with atomic_path(path / "config.json") as tmp:
        tmp.write_text(cfg_text)
    with atomic_path(path / "names.json") as tmp:
        tmp.write_text(json.dumps(list(flat)))
    return path


def load_module(path: PathLike, build: Callable[[dict[str, Any]], nnx.Module]) -> nnx.Module:
    """Rebuild a module saved by :func:`save_module`: ``build(config)``, then its saved state.

    Raises:
        LoadError: ``path`` is not a saved module.
        ConfigError: the saved state's arrays or shapes differ from what ``build`` makes.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    cfg_file, names_file = path / "config.json", path / "names.json"
    if not cfg_file.is_file() or not names_file.is_file() or not (path / "state").exists():
        raise LoadError(f"{path} is not a saved weightspace module (needs config.json, names.json, state/)")
    try:
        cfg = json.loads(cfg_file.read_text())
        names = json.loads(names_file.read_text())
    except json.JSONDecodeError as e:
        raise LoadError(f"{path}: malformed config.json/names.json ({e})") from e
    if not isinstance(cfg, dict) or cfg.get("format") != _MODULE_FORMAT:
        raise LoadError(f"{cfg_file}: not a weightspace module config (format {cfg.get('format')!r})")
    module = build(cfg["config"])
    if not isinstance(module, nnx.Module):
        raise ConfigError(f"load_module: build returned {type(module).__name__}, not an nnx.Module")
    flat, graphdef, state = _flat_state(module)
    if list(flat) != names:
        missing, extra = sorted(set(flat) - set(names)), sorted(set(names) - set(flat))
        raise ConfigError(
            f"{path}: the saved module does not match what build(config) makes: arrays missing from "
            f"the checkpoint {missing[:6]}, unexpected arrays {extra[:6]}"
        )
    with ocp.StandardCheckpointer() as ckpt:
        saved = ckpt.restore(path / "state")
    leaves = _from_host(saved, list(flat.values()), names, str(path))
    _, treedef = jax.tree_util.tree_flatten(state)
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves))

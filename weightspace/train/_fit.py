"""The driver for one model: :func:`fit` runs :func:`~weightspace.train.make_train_step` on an NNX
module; validation, early stopping, checkpoints, progress and logging are its hooks
(:mod:`weightspace.train._hooks`).

Every encoder in weightspace (ProbeX, ProbeGen, the equivariant encoders, Model Spider, the MLP
baseline) trains through :func:`fit`. The module is split once with ``nnx.split`` into parameters
and other state; the step is compiled once per configuration (:func:`~weightspace.train.compile_step`)
and gathers each batch on the device. Batches are shuffled epochs, and every random choice is a
function of ``(seed, step)``, so a run resumed from a checkpoint continues exactly where it stopped.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from weightspace._backend import sync_each_step
from weightspace._errors import ConfigError, ShapeError, WeightspaceError
from weightspace.train._config import TrainConfig
from weightspace.train._hooks import (
    Checkpointing,
    FitEvent,
    FitRun,
    Hook,
    Progress,
    Validation,
    _copy_tree,
    _FunctionHook,
)
from weightspace.train._step import TrainState, compile_step, make_train_step, nnx_loss

PathLike = str | os.PathLike[str]
# (model, batch, key) -> (loss, metrics) or loss; Any-typed so losses of Module subclasses fit.
LossFn = Callable[[Any, Any, jax.Array], Any]


class TrainingDivergedError(WeightspaceError, FloatingPointError):
    """The training loss became NaN/Inf. ``step`` is the (1-based) step whose loss was not finite;
    ``checkpoint_step`` the last good checkpoint (``None`` when there is none)."""

    def __init__(self, message: str, *, step: int, checkpoint_step: int | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint_step = checkpoint_step


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


FitHook = Hook | Callable[[FitEvent], Any]
"""A hook of :func:`fit`: a :class:`~weightspace.train.Hook`, or a function ``(FitEvent) -> stop?``
called at every evaluation (returning ``True`` stops training there)."""


class _Epochs:
    """Batch indices of the shuffled epochs (host side): epoch e visits a permutation seeded by
    ``(data_key, e)`` in consecutive batches (drop-remainder).

    They enter the jitted step as an argument: computing them inside it (a permutation, then a
    dynamic slice at a step-dependent offset) let XLA fuse that index arithmetic into every
    consumer of the gathered batch and redo it per element.
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


def _assemble_hooks(
    hooks: Sequence[FitHook],
    *,
    val_fn: Callable[[Any], float] | None,
    patience: int | None,
    checkpoint_dir: PathLike | None,
    progress: bool | None,
) -> list[Hook]:
    """fit's hooks in call order: the checkpoint (it resumes at start) first, then validation
    (so the others see ``val``), the progress bar, and the user's hooks in their order."""
    if any(not callable(h) and not isinstance(h, Hook) for h in hooks):
        raise ConfigError("fit: every hook must be a weightspace.train.Hook or a function (FitEvent) -> stop?")
    user = [h if isinstance(h, Hook) else _FunctionHook(h) for h in hooks]
    ckpts = [h for h in user if isinstance(h, Checkpointing)]
    vals = [h for h in user if isinstance(h, Validation)]
    if checkpoint_dir is not None:
        ckpts.append(Checkpointing(checkpoint_dir))
    if val_fn is not None:
        vals.append(Validation(val_fn, patience=patience))
    if len(ckpts) > 1:
        raise ConfigError("fit: more than one checkpoint (checkpoint_dir= and a Checkpointing hook): give one")
    if len(vals) > 1:
        raise ConfigError("fit: more than one validation (val_fn= and a Validation hook): give one")
    if not any(isinstance(h, Progress) for h in user):
        user.insert(0, Progress(progress))
    rest = [h for h in user if not isinstance(h, Checkpointing | Validation | Progress)]
    bars = [h for h in user if isinstance(h, Progress)]
    return [*ckpts, *vals, *bars, *rest]


def fit(
    model: nnx.Module,
    loss_fn: LossFn,
    train: Any,
    *,
    config: TrainConfig = TrainConfig(),
    val_fn: Callable[[Any], float] | None = None,
    checkpoint_dir: PathLike | None = None,
    optimizer: optax.GradientTransformation | None = None,
    sample: Callable[[jax.Array, int], Any] | None = None,
    progress: bool | None = None,
    mesh: Mesh | None = None,
    compiler_options: Mapping[str, Any] | None = None,
    hooks: Sequence[FitHook] = (),
    shared: Mapping[str, Any] | None = None,
) -> FitReport:
    """Train an NNX module in place with the training step of :func:`~weightspace.train.make_train_step`.

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
            later ``fit`` calls reuse the compiled step; data the loss needs (text embeddings,
            shared tensors) belongs in ``train`` or the batch, not in the function.
        train: a pytree of arrays whose leading axis is the example (model) axis; put on the
            device once. May be ``None`` when ``sample`` is given.
        config: :class:`~weightspace.train.TrainConfig`.
        val_fn: ``model -> score`` (higher is better), run on the host every ``eval_every``
            steps and at the end; drives early stopping (``config.patience``) and the best state.
            Shorthand for the hook ``Validation(val_fn, patience=config.patience)``.
        checkpoint_dir: orbax checkpoints (model state, optimizer state, step, RNG keys, history,
            config and every hook's resumable state, such as the best state and score) every
            ``checkpoint_every`` steps and at the end; an existing checkpoint there is resumed
            from its latest step. Shorthand for the hook ``Checkpointing(checkpoint_dir)``.
        optimizer: overrides ``config.optimizer()``.
        sample: custom sampler ``(key, step) -> batch`` (host side, fixed batch shapes) used
            instead of shuffled epochs over ``train``.
        progress: show a tqdm bar (``None``: when stderr is a terminal); the hook ``Progress(progress)``.
        mesh: shard each batch's leading axis over the mesh's ``"models"`` axis
            (:func:`weightspace.parallel.make_mesh`); state and ``train`` are replicated. The
            batch size is rounded down to a multiple of the device count.
        compiler_options: extra XLA options for the step's ``jax.jit`` (e.g.
            :func:`weightspace._backend.small_heaps_cpu_options`); they change speed, not results.
        hooks: :class:`~weightspace.train.Hook` objects (``Validation``, ``Checkpointing``,
            ``Progress`` or your own: logging, custom stopping rules, schedules of evaluation),
            or functions called with a :class:`~weightspace.train.FitEvent` at every evaluation;
            an evaluation returning ``True`` stops training at that step. Called in order, after
            the built-in checkpoint, validation and progress hooks.
        shared: arrays every batch carries whole (text embeddings, a frozen base, ...): added to
            each batch dict under their own keys. They are arguments of the compiled step, so
            new values reuse it; the batches (``train`` or ``sample``'s) must then be dicts.

    Returns:
        A :class:`FitReport`.

    Raises:
        TrainingDivergedError: the loss became NaN/Inf; the message names the step and the last
            good checkpoint, which is kept; the model is left as it was before the call.
        ConfigError: a checkpoint in ``checkpoint_dir`` belongs to another model or settings.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from flax import nnx
        >>> from weightspace.train import TrainConfig, fit
        >>> x = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)
        >>> data = {"x": x, "y": x @ np.array([1.0, -2.0, 0.5], np.float32)}
        >>> def mse(model, batch, key):
        ...     err = model(batch["x"])[:, 0] - batch["y"]
        ...     return jnp.mean(err**2), {}
        >>> model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
        >>> seen = []
        >>> report = fit(model, mse, data, config=TrainConfig(steps=300, batch_size=16, learning_rate=0.05),
        ...              hooks=[lambda ev: seen.append(ev.step)])
        >>> bool(report.history[-1]["loss"] < 1e-3), np.round(model.kernel[...][:, 0], 2).tolist(), seen
        (True, [1.0, -2.0, 0.5], [100, 200, 300])
    """
    if not isinstance(model, nnx.Module):
        raise ConfigError(f"fit: model must be a flax.nnx.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise ConfigError("fit: loss_fn must be callable (model, batch, key) -> (loss, metrics)")
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"fit: config must be a TrainConfig, got {type(config).__name__}")
    hook_list = _assemble_hooks(
        hooks, val_fn=val_fn, patience=config.patience, checkpoint_dir=checkpoint_dir, progress=progress
    )
    if shared is not None:
        if not isinstance(shared, Mapping) or (train is not None and not isinstance(train, Mapping)):
            raise ConfigError("fit: shared= needs a dict of arrays and dict batches (it is merged into each batch)")
        clash = sorted(set(shared) & set(train or {}))
        if clash:
            raise ConfigError(f"fit: shared= and the training data both name {clash}")
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
    params, rest = _copy_tree((params, rest))  # donated below: never hand the user's own buffers to XLA
    state = TrainState(params, tx.init(params), rest)
    if repl is not None:
        state = jax.device_put(state, repl)
    data = jax.device_put(train, repl) if gather else None
    shared_dev = None if shared is None else jax.device_put(dict(shared), repl)
    step_obj = make_train_step(nnx_loss(graphdef, loss_fn), tx, stateful=True)
    data_key, loss_key = jax.random.split(jax.random.key(config.seed))
    run = FitRun(config, graphdef, state, (data_key, loss_key), hooks=hook_list)
    try:
        for hook in hook_list:
            hook.start(run)  # the checkpoint hook comes first and may resume the run
        data_key, loss_key = run.keys
        every = {config.eval_every, *(h.every for h in hook_list if h.every)}
        leaves, treedef = jax.tree_util.tree_flatten(run.state)
        step_fn = compile_step(
            step_obj,
            treedef,
            batch_sharding=batch_sharding,
            compiler_options=tuple(sorted((compiler_options or {}).items())),
        )
        epochs = _Epochs(data_key, n, batch_size) if gather else None
        sync_steps = sync_each_step(mesh)
        pending: list[dict[str, jax.Array]] = []
        all_losses: list[np.ndarray] = []
        since_entry: list[float] = []
        aux_since: list[dict[str, float]] = []
        compile_s = 0.0
        t_steps = 0.0
        stop = False
        start = step = run.step
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
                leaves, metrics = step_fn(leaves, batch, idx, np.int32(step), loss_key, shared_dev)
                pending.append(metrics)
                step += 1
                run.step = step
                if sync_steps:
                    jax.block_until_ready(metrics)
                if step == start + 1:
                    jax.block_until_ready(metrics)
                    compile_s = time.perf_counter() - t0
                    t0 = time.perf_counter()
                for hook in hook_list:
                    hook.after_step(run)
                is_eval = step % config.eval_every == 0 or step == config.steps
                if not (is_eval or any(step % e == 0 for e in every)):
                    continue
                run.state = jax.tree_util.tree_unflatten(treedef, leaves)  # valid until the next step
                # Host sync only at boundaries: check every pending loss, then record.
                host_metrics = jax.device_get(pending)
                host = np.asarray([m["loss"] for m in host_metrics], np.float32)
                bad = np.flatnonzero(~np.isfinite(host))
                if bad.size:
                    s = step - len(host) + int(bad[0]) + 1
                    raise TrainingDivergedError(
                        f"fit: training diverged: the loss of step {s} (of {config.steps}) is {host[bad[0]]}"
                        + (
                            f"; the last good checkpoint is step {run.last_checkpoint} in {run.checkpoint_dir}"
                            if run.last_checkpoint is not None
                            else "; no checkpoint was written"
                        )
                        + ". Lower the learning rate, clip gradients (grad_clip) or check the inputs for NaN/Inf.",
                        step=s,
                        checkpoint_step=run.last_checkpoint,
                    )
                all_losses.append(host)
                since_entry.extend(host.tolist())
                aux_since.extend({k: float(v) for k, v in m.items() if k != "loss"} for m in host_metrics)
                pending = []
                t_host = time.perf_counter()
                if is_eval:
                    entry: dict[str, Any] = {"step": step, "loss": float(np.mean(since_entry))}
                    for k in aux_since[0] if aux_since else ():
                        entry[k] = float(np.mean([a[k] for a in aux_since]))
                    since_entry, aux_since = [], []
                    event = FitEvent(step, config.steps, entry, run)
                    for hook in hook_list:
                        if hook.evaluate(event) is True:
                            stop = True
                    run.history.append(entry)
                for hook in hook_list:
                    hook.boundary(run, stop=stop)
                t0 += time.perf_counter() - t_host  # evaluations and checkpoints are not training time
                # val_fn may have advanced RNG counters in state (Variables shared with its model).
                leaves = jax.tree_util.tree_leaves(run.state)
            run.state = jax.tree_util.tree_unflatten(treedef, leaves)
            jax.block_until_ready(run.state)
            t_steps = time.perf_counter() - t0
        nnx.update(model, *run.weights)
        for hook in hook_list:
            hook.end(run, model)  # a Validation hook puts the best weights back
        val = next((h for h in hook_list if isinstance(h, Validation)), None)
        losses = np.concatenate(all_losses) if all_losses else np.zeros(0, np.float32)
        return FitReport(
            step,
            val.best_step if val else None,
            val.best_score if val else None,
            run.history,
            t_steps,
            compile_s,
            start if start > 0 else None,
            losses,
        )
    finally:
        for hook in hook_list:
            hook.close()

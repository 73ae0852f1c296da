"""The hooks of :func:`~weightspace.train.fit`: validation and early stopping, checkpointing,
progress and user logging are all :class:`Hook` objects on one driver loop.

A hook sees the live run (:class:`FitRun`) and may keep state; what a resumed run needs of it
(best score, best weights, ...) it hands to the checkpoint through :meth:`Hook.state_dict` and
:meth:`Hook.arrays`, so a resumed run continues every hook where it stopped.

The driver calls, per run::

    start(run)                      once, in hook order (Checkpointing first: it resumes)
    after_step(run)                 after every step (host only: never read device arrays here)
    evaluate(event) -> stop?        at evaluation steps (every ``config.eval_every`` and the last)
    boundary(run, stop=...)         at evaluation steps and each hook's own ``every`` steps
    end(run, model)                 once, after the last step (``model`` is already at its final state)
    close()                         always, also after an error
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx

from weightspace._errors import ConfigError, LoadError
from weightspace.train._checkpoint import Checkpointer, check_resume, from_host, to_host
from weightspace.train._step import TrainState

if TYPE_CHECKING:
    import os

    from weightspace.train._config import TrainConfig

_CKPT_FORMAT = "weightspace.train.fit/3"
# Config fields that may change between a run and its resumption without changing its meaning.
_RESUMABLE_FIELDS = ("steps", "eval_every", "patience", "checkpoint_every")


def _copy_tree(tree: Any) -> Any:
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


@dataclasses.dataclass
class FitRun:
    """The live state of one :func:`~weightspace.train.fit` call, as hooks see it.

    Attributes:
        config: the run's :class:`~weightspace.train.TrainConfig`.
        graphdef: the module's graph definition (``nnx.merge(graphdef, params, model_state)``).
        state: the :class:`~weightspace.train.TrainState` after ``step`` steps; valid until the
            next step (its buffers are donated to it): copy what you keep.
        keys: ``(data_key, loss_key)`` of the run.
        step: optimizer steps done (including those before a resume).
        start_step: the step this call started from (> 0 after a resume).
        history: the evaluation entries so far.
        hooks: every hook of the run, in call order.
        last_checkpoint: the latest checkpoint step written or resumed from (``None``: none).
        checkpoint_dir: where checkpoints go (``None``: nowhere).
    """

    config: TrainConfig
    graphdef: Any
    state: TrainState
    keys: tuple[jax.Array, jax.Array]
    step: int = 0
    start_step: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    hooks: list[Hook] = dataclasses.field(default_factory=list)
    last_checkpoint: int | None = None
    checkpoint_dir: str | None = None

    @property
    def weights(self) -> tuple[Any, Any]:
        """``(params, model_state)`` of the current state."""
        return self.state.params, self.state.model_state

    def model(self) -> nnx.Module:
        """The module at this step (a fresh merge: costs host time, do not call it every step)."""
        return nnx.merge(self.graphdef, self.state.params, self.state.model_state)


@dataclasses.dataclass(frozen=True)
class FitEvent:
    """What a hook's :meth:`Hook.evaluate` sees at an evaluation step.

    Attributes:
        step: optimizer steps done.
        total: ``config.steps``.
        entry: the history entry being written (``step``, ``loss``, metrics, ``val`` once a
            :class:`Validation` hook ran); a hook may add its own keys.
        run: the live :class:`FitRun`.
    """

    step: int
    total: int
    entry: dict[str, Any]
    run: FitRun

    @functools.cached_property
    def model(self) -> nnx.Module:
        """The module at this step, merged once per evaluation and shared by every hook (read it;
        do not keep it: its buffers are reused)."""
        return self.run.model()


class Hook:
    """Base class of :func:`~weightspace.train.fit` hooks: every method is a no-op; override what
    you need. A plain function ``(FitEvent) -> stop?`` passed as a hook is its :meth:`evaluate`.

    Attributes:
        every: extra steps at which :meth:`boundary` runs (``None``: evaluation steps only).

    Example:
        >>> from weightspace.train import Hook
        >>> class LossLog(Hook):
        ...     def __init__(self):
        ...         self.losses = []
        ...     def evaluate(self, event):
        ...         self.losses.append(event.entry["loss"])
        >>> LossLog().losses
        []
    """

    every: int | None = None

    def start(self, run: FitRun) -> None:
        """Once before the first step (after a resume has restored the run)."""

    def after_step(self, run: FitRun) -> None:
        """After every step. Host only: reading ``run.state`` here syncs with the device."""

    def evaluate(self, event: FitEvent) -> bool | None:
        """At every evaluation step; returning ``True`` stops training after it."""
        return None

    def boundary(self, run: FitRun, *, stop: bool) -> None:
        """At every evaluation step and every ``every`` steps, after the evaluations; ``stop``
        says training ends here."""

    def end(self, run: FitRun, model: nnx.Module) -> None:
        """Once after the last step; ``model`` already holds the final weights."""

    def close(self) -> None:
        """Always, after the run or an error: release files, bars, ..."""

    # ---- resumable state (written into fit's checkpoints) ----
    def state_dict(self) -> dict[str, Any]:
        """JSON state a resumed run needs."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def arrays(self, run: FitRun) -> Any:
        """A pytree of arrays a resumed run needs, of fixed structure and shapes (``None``: none)."""
        return None

    def load_arrays(self, tree: Any) -> None:
        """Restore :meth:`arrays`."""


class _FunctionHook(Hook):
    def __init__(self, fn: Callable[[FitEvent], Any]) -> None:
        self.fn = fn

    def evaluate(self, event: FitEvent) -> bool | None:
        return self.fn(event) is True


class Validation(Hook):
    """Validation, best state and early stopping: ``val_fn(model) -> score`` (higher is better) at
    every evaluation, written to the history as ``val``; the run ends at its best-scoring weights;
    after ``patience`` evaluations without a better score, training stops.

    Args:
        val_fn: ``model -> score``, run on the host.
        patience: evaluations without improvement before stopping (``None``: never stop early).

    Attributes:
        best_step: the step of the best score (``None`` before one).
        best_score: the best score.
    """

    def __init__(self, val_fn: Callable[[Any], float], *, patience: int | None = None) -> None:
        if not callable(val_fn):
            raise ConfigError("Validation: val_fn must be callable (model) -> score")
        if patience is not None and patience < 1:
            raise ConfigError(f"Validation: patience must be >= 1 or None, got {patience}")
        self.val_fn, self.patience = val_fn, patience
        self.best_step: int | None = None
        self.best_score: float | None = None
        self.bad_evals = 0
        self.best: Any = None

    def evaluate(self, event: FitEvent) -> bool | None:
        score = float(self.val_fn(event.model))
        event.entry["val"] = score
        if math.isfinite(score) and (self.best_score is None or score > self.best_score):
            self.best_score, self.best_step, self.bad_evals = score, event.step, 0
            self.best = _copy_tree(event.run.weights)
            return None
        self.bad_evals += 1
        return self.patience is not None and self.bad_evals >= self.patience

    def end(self, run: FitRun, model: nnx.Module) -> None:
        if self.best is not None:
            nnx.update(model, *self.best)

    def state_dict(self) -> dict[str, Any]:
        return {"best_step": self.best_step, "best_score": self.best_score, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_step, self.best_score = state["best_step"], state["best_score"]
        self.bad_evals = int(state["bad_evals"])

    def arrays(self, run: FitRun) -> Any:
        # Fixed structure for the checkpoint: the current weights stand in until there is a best.
        return self.best if self.best is not None else run.weights

    def load_arrays(self, tree: Any) -> None:
        self.best = tree if self.best_step is not None else None


class Progress(Hook):
    """A tqdm bar over the steps, with the latest history entry as its postfix.

    Args:
        show: draw it (``None``: when stderr is a terminal).
        desc: the bar's label.
    """

    def __init__(self, show: bool | None = None, *, desc: str = "fit") -> None:
        self.show = sys.stderr.isatty() if show is None else bool(show)
        self.desc = desc
        self.bar: Any = None

    def start(self, run: FitRun) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=run.config.steps, initial=run.step, disable=not self.show, desc=self.desc, leave=False)

    def after_step(self, run: FitRun) -> None:
        self.bar.update(1)

    def evaluate(self, event: FitEvent) -> bool | None:
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in event.entry.items() if k != "step"}, refresh=False)
        return None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Checkpointing(Hook):
    """Orbax checkpoints of the whole run: train state, RNG keys, history, config and every hook's
    resumable state, every ``every`` steps, when training stops and at the end. An existing
    checkpoint in ``directory`` is resumed from its latest step at :meth:`start`, after checking
    it belongs to the same run (:func:`~weightspace.train.check_resume`).

    Args:
        directory: the checkpoint directory (created).
        every: steps between checkpoints (``None``: the run's ``eval_every``).
    """

    def __init__(self, directory: str | os.PathLike[str], *, every: int | None = None) -> None:
        if every is not None and every < 1:
            raise ConfigError(f"Checkpointing: every must be >= 1, got {every}")
        self.directory, self.every = directory, every
        self.ckpt: Checkpointer | None = None

    @staticmethod
    def _stateful(run: FitRun) -> list[Hook]:
        """The hooks with resumable state (logging hooks may come and go between resumptions)."""
        return [h for h in run.hooks if h.arrays(run) is not None or h.state_dict()]

    def _snapshot(self, run: FitRun) -> tuple[Any, list[str]]:
        tree = (run.state, run.keys, [h.arrays(run) for h in self._stateful(run)])
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
        return tree, paths

    def start(self, run: FitRun) -> None:
        self.ckpt = ckpt = Checkpointer(self.directory)
        run.checkpoint_dir = str(ckpt.dir)
        if self.every is None:
            self.every = run.config.checkpoint_every or run.config.eval_every
        last = ckpt.latest()
        if last is None:
            return
        meta = ckpt.meta(last)
        where = f"{ckpt.dir} (step {last})"
        if meta.get("format") != _CKPT_FORMAT:
            raise LoadError(
                f"{where}: not a checkpoint of this weightspace.train.fit (format {meta.get('format')!r}, "
                f"expected {_CKPT_FORMAT!r}); use a fresh checkpoint directory"
            )
        check_resume(meta["config"], run.config.to_dict(), where, may_differ=_RESUMABLE_FIELDS)
        stateful = self._stateful(run)
        names = [type(h).__name__ for h in stateful]
        if meta["hooks"]["names"] != names:
            raise ConfigError(
                f"{where}: cannot resume: the checkpoint was written by a run with the stateful hooks "
                f"{meta['hooks']['names']} (val_fn= is a Validation hook), this run has {names}; "
                "resume with the same hooks or use a fresh checkpoint directory"
            )
        like, paths = self._snapshot(run)
        leaves, treedef = jax.tree_util.tree_flatten(like)
        saved = ckpt.arrays(last, to_host(leaves))
        state, keys, hook_arrays = jax.tree_util.tree_unflatten(treedef, from_host(saved, leaves, paths, where))
        sharding = jax.tree_util.tree_leaves(run.state)[0].sharding
        state, hook_arrays = jax.device_put((state, hook_arrays), sharding)
        run.state, run.keys = state, keys
        for h, s, a in zip(stateful, meta["hooks"]["states"], hook_arrays, strict=True):
            h.load_state_dict(s)
            h.load_arrays(a)
        run.step = run.start_step = run.last_checkpoint = int(meta["step"])
        run.history = list(meta["history"])

    def save(self, run: FitRun) -> None:
        """Write the run as it stands."""
        assert self.ckpt is not None
        tree, _ = self._snapshot(run)
        stateful = self._stateful(run)
        self.ckpt.save(
            run.step,
            to_host(jax.tree_util.tree_leaves(tree)),
            {
                "format": _CKPT_FORMAT,
                "step": run.step,
                "history": run.history,
                "config": run.config.to_dict(),
                "hooks": {"names": [type(h).__name__ for h in stateful], "states": [h.state_dict() for h in stateful]},
            },
        )
        run.last_checkpoint = run.step

    def boundary(self, run: FitRun, *, stop: bool) -> None:
        assert self.every is not None
        if stop or run.step % self.every == 0 or run.step == run.config.steps:
            self.save(run)

    def end(self, run: FitRun, model: nnx.Module) -> None:
        if run.step > run.start_step and run.last_checkpoint != run.step:
            self.save(run)

    def close(self) -> None:
        if self.ckpt is not None:
            self.ckpt.close()
            self.ckpt = None

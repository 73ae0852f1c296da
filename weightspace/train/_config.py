"""Optimisation settings of :func:`~weightspace.train.fit`: one frozen config shared by every trainer."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
import optax

from weightspace._errors import ConfigError

_SCHEDULES = ("constant", "cosine")


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
        >>> from weightspace.train import TrainConfig
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

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` (checked like the constructor's arguments).

        Example:
            >>> from weightspace.train import TrainConfig
            >>> TrainConfig(steps=100).replace(steps=20, seed=3).steps
            20
        """
        return dataclasses.replace(self, **changes)


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

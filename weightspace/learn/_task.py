"""What a learned weight encoder predicts about each model: ONE task vocabulary for every method.

A :class:`Task` owns everything that depends on the kind of target: checking and converting the
targets, their scaling (regression targets are standardised on the training split), the output
width, the training loss, decoding outputs into predictions, and the score. ProbeGen, ProbeX, the
equivariant encoders and the shared baselines all take one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from weightspace._errors import ConfigError, InvalidValueError, ShapeError

TASK_KINDS = ("classify", "multilabel", "regress", "rank")
"""The kinds of :class:`Task`: int classes, multi-hot class sets, real values, real values whose order counts."""

_METRICS = {"classify": "accuracy", "multilabel": "mAP", "regress": "r2", "rank": "kendall_tau"}


class TargetScale(NamedTuple):
    """``y_model = (y - mean) / std``: how a task's targets are scaled for training (identity for classes)."""

    mean: float = 0.0
    std: float = 1.0


@dataclasses.dataclass(frozen=True)
class Task:
    """A prediction task on models: loss, target scaling, decoding and score in one place.

    ========== ============================== ===================== ===================== ===============
    kind       targets ``y``                  loss (outputs ``o``)  prediction            score
    ========== ============================== ===================== ===================== ===============
    classify   int classes ``[n]``            softmax cross-entropy ``argmax o``          accuracy
    multilabel ``{0, 1}`` ``[n, classes]``    sigmoid BCE per class ``sigmoid(o)``        mean AP
    regress    real ``[n]``                   MSE on standardised y ``o * std + mean``    R^2
    rank       real ``[n]`` (order matters)   MSE on standardised y ``o * std + mean``    Kendall tau
    ========== ============================== ===================== ===================== ===============

    ``rank`` is the Small CNN Zoo protocol (regress a model's accuracy, report how well the
    predictions order the models); ``regress`` reports the fraction of variance explained.

    Attributes:
        kind: one of :data:`TASK_KINDS`.

    Example:
        >>> import numpy as np
        >>> from weightspace.learn import Task
        >>> task = Task("rank")
        >>> y = np.array([0.2, 0.9, 0.5], np.float32)
        >>> scale = task.scale(y)
        >>> pred = task.decode(task.standardise(y, scale)[:, None], scale)
        >>> task.metric, np.allclose(pred, y), task.score(pred, y)
        ('kendall_tau', True, 1.0)
    """

    kind: str

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"unknown task {self.kind!r}; tasks: {list(TASK_KINDS)}")

    @property
    def metric(self) -> str:
        """The name of :meth:`score`: ``accuracy``, ``mAP``, ``r2`` or ``kendall_tau``."""
        return _METRICS[self.kind]

    @property
    def scaled(self) -> bool:
        """Whether targets are standardised for training (``regress``, ``rank``)."""
        return self.kind in ("regress", "rank")

    # ---- targets (host side) ---------------------------------------------------------------
    def targets(self, y: Any, n: int | None = None, who: str = "targets") -> np.ndarray:
        """Check targets and convert them to the dtype training uses.

        Raises:
            ShapeError: not one row per model (``n``), or the wrong rank for the kind.
            InvalidValueError: negative or non-int classes, a non-binary multilabel matrix, NaN/Inf.
        """
        a = np.asarray(y)
        if n is not None and a.shape[:1] != (n,):
            raise ShapeError(f"{who} has shape {a.shape}; expected [{n}, ...] (one row per model)")
        if self.kind == "classify":
            if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer) or (a.size and a.min() < 0):
                raise InvalidValueError(f"{who}: classify needs non-negative int labels [n], got {a.dtype}{a.shape}")
            return a.astype(np.int32)
        if self.kind == "multilabel":
            if a.ndim != 2 or not np.isin(a, (0, 1)).all():
                raise InvalidValueError(f"{who}: multilabel needs a {{0, 1}} matrix [n, classes], got {a.shape}")
            return a.astype(np.float32)
        if a.ndim != 1:
            raise ShapeError(f"{who}: {self.kind} needs one value per model [n], got {a.shape}")
        a = a.astype(np.float32)
        if not np.all(np.isfinite(a)):
            raise InvalidValueError(f"{who} holds {int(np.sum(~np.isfinite(a)))} NaN/Inf value(s)")
        return a

    def n_out(self, y_train: np.ndarray) -> int:
        """Output width for these (training) targets: classes, labels, or 1."""
        if self.kind == "classify":
            return int(np.max(y_train)) + 1
        if self.kind == "multilabel":
            return int(np.shape(y_train)[1])
        return 1

    def scale(self, y_train: np.ndarray) -> TargetScale:
        """The standardisation of the training targets (identity unless :attr:`scaled`)."""
        if not self.scaled:
            return TargetScale()
        y = np.asarray(y_train, np.float64)
        return TargetScale(float(y.mean()), float(y.std()) or 1.0)

    def standardise(self, y: np.ndarray, scale: TargetScale) -> np.ndarray:
        """Targets as the model is trained on them."""
        if not self.scaled:
            return np.asarray(y)
        return ((np.asarray(y, np.float32) - scale.mean) / scale.std).astype(np.float32)

    # ---- training (traced) -------------------------------------------------------------------
    def loss(self, out: jax.Array, y: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``(mean loss, metrics)`` of outputs ``[b, n_out]`` against (standardised) targets."""
        if self.kind == "classify":
            loss = optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
            return loss, {"acc": jnp.mean(jnp.argmax(out, -1) == y)}
        if self.kind == "multilabel":
            return optax.sigmoid_binary_cross_entropy(out, y).mean(), {}
        return jnp.mean((out[..., 0] - y) ** 2), {}

    # ---- predictions (host side) -----------------------------------------------------------
    def decode(self, out: Any, scale: TargetScale | None = None) -> np.ndarray:
        """Predictions from outputs ``[n, n_out]``: classes, probabilities, or values in target units."""
        o = np.asarray(out, np.float32)
        scale = scale or TargetScale()
        if self.kind == "classify":
            return o.argmax(-1)
        if self.kind == "multilabel":
            return 1.0 / (1.0 + np.exp(-o))
        return o[:, 0] * scale.std + scale.mean

    def score(self, pred: np.ndarray, y: np.ndarray) -> float:
        """:attr:`metric` of predictions against targets (higher is better)."""
        from weightspace.learn._eval import kendall_tau, mean_average_precision

        p, t = np.asarray(pred), np.asarray(y)
        if self.kind == "classify":
            return float(np.mean(p == t))
        if self.kind == "multilabel":
            return float(mean_average_precision(p, t))
        if self.kind == "rank":
            return float(kendall_tau(p, t))
        t64 = t.astype(np.float64)
        resid = float(np.sum((t64 - p.astype(np.float64)) ** 2))
        total = float(np.sum((t64 - t64.mean()) ** 2))
        return 1.0 - resid / total if total > 0 else 0.0


def as_task(task: Task | str) -> Task:
    """A :class:`Task` from a task or its kind."""
    return task if isinstance(task, Task) else Task(str(task))

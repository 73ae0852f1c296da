"""Supervised end-to-end training of an equivariant encoder: encoder + linear head on a per-model target.

This is how the NFN / neuron-graph papers use their encoders (classify an INR, predict a CNN's
accuracy), and the row the ProbeGen comparison needs: the same :func:`weightspace.learn.fit` loop,
the same splits, a task loss instead of the contrastive one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

from weightspace._errors import InvalidValueError, ShapeError
from weightspace.equivariant._contrastive import step_compiler_options
from weightspace.equivariant._layout import Bucket, WeightFeatures
from weightspace.learn._task import TASK_KINDS, TargetScale, Task, as_task
from weightspace.train import TrainConfig

SUPERVISED_TASKS = TASK_KINDS
"""Targets :func:`train_supervised` fits: every :class:`~weightspace.learn.Task` kind."""


class SupervisedModel(nnx.Module):
    """An encoder (NP or neuron graph) followed by one linear head: ``features -> [n_out]`` for ONE model.

    Example:
        >>> import jax
        >>> from flax import nnx
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Zoo
        >>> from weightspace.equivariant import NPEncoder, SupervisedModel, features_of
        >>> enc = NPEncoder(taps=(1,), width=4, depth=1, embed_dim=8, max_inputs=3, rngs=nnx.Rngs(0))
        >>> f = features_of(Zoo.init(MLP(in_features=3, hidden=(5,), out_features=2), 4, key=jax.random.key(0)))
        >>> jax.vmap(SupervisedModel(enc, 3, rngs=nnx.Rngs(1)))(f).shape
        (4, 3)
    """

    def __init__(self, encoder: nnx.Module, n_out: int, *, task: Task | str = "classify", rngs: nnx.Rngs) -> None:
        self.encoder = encoder
        self.head = nnx.Linear(int(encoder.config.embed_dim), int(n_out), rngs=rngs)  # type: ignore[attr-defined]
        self.task = as_task(task)  # static: the loss reads it, equal tasks share one compiled step

    def __call__(self, x: WeightFeatures) -> Float[Array, " n_out"]:
        return self.head(self.encoder(x))


def _supervised_loss(model: SupervisedModel, batch: Any, key: Array) -> tuple[Array, dict[str, Array]]:
    return model.task.loss(jax.vmap(model)(batch["x"]), batch["y"])


@dataclasses.dataclass
class SupervisedRun:
    """A trained :class:`SupervisedModel` and how to read its outputs.

    Attributes:
        model: the encoder + head (``model.encoder`` is the trained encoder).
        task: the :class:`~weightspace.learn.Task`.
        scale: the standardisation of a ``regress``/``rank`` target (predictions are mapped back).
        report: the :class:`weightspace.learn.FitReport`.
    """

    model: SupervisedModel
    task: Task
    scale: TargetScale
    report: Any

    def predict(self, bucket: Bucket, *, chunk: int = 256) -> np.ndarray:
        """Predictions (:meth:`~weightspace.learn.Task.decode`): class ids, class probabilities or values."""
        from weightspace.equivariant._embed import embed_bucket

        return self.task.decode(embed_bucket(self.model, bucket, chunk=chunk), self.scale)


def train_supervised(
    encoder: nnx.Module,
    bucket: Bucket,
    y: np.ndarray,
    *,
    task: Task | str,
    train: np.ndarray,
    val: np.ndarray | None = None,
    val_score: Callable[[np.ndarray, np.ndarray], float] | None = None,
    train_config: TrainConfig | None = None,
    checkpoint_dir: Any = None,
    progress: bool | None = None,
) -> SupervisedRun:
    """Train ``encoder`` and a linear head end to end on one target with :func:`weightspace.learn.fit`.

    Args:
        encoder: an :class:`NPEncoder` or :class:`GraphEncoder` (trained in place).
        bucket: the models (one :class:`Bucket` from :func:`bucketize`).
        y: per model of ``bucket``: int classes ``[n]`` (``classify``), values ``[n]``
            (``regress``, ``rank``; standardised on the training split) or a multi-hot
            ``[n, classes]`` (``multilabel``).
        task: a :class:`~weightspace.learn.Task` or its kind.
        train, val: model indices into ``bucket``; validation (when given) picks the best state.
        val_score: ``(predictions, targets) -> score`` (higher is better) on ``val``; default
            the task's own :meth:`~weightspace.learn.Task.score`.
        train_config: a :class:`weightspace.learn.TrainConfig` (default 300 steps, batch 32, Adam 1e-3).
        checkpoint_dir, progress: passed to :func:`weightspace.learn.fit`.

    Returns:
        A :class:`SupervisedRun`.

    Example:
        >>> import jax, numpy as np
        >>> from flax import nnx
        >>> from weightspace.learn import TrainConfig
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Zoo
        >>> from weightspace.equivariant import NPEncoder, bucketize, train_supervised
        >>> zoo = Zoo.init(MLP(in_features=3, hidden=(5,), out_features=2), 8, key=jax.random.key(0))
        >>> enc = NPEncoder(taps=(1,), width=4, depth=1, embed_dim=8, max_inputs=3, rngs=nnx.Rngs(0))
        >>> run = train_supervised(enc, bucketize(zoo)[0], np.arange(8) % 2, task="classify",
        ...                        train=np.arange(6), train_config=TrainConfig(steps=3, batch_size=4), progress=False)
        >>> run.predict(bucketize(zoo)[0]).shape
        (8,)
    """
    from weightspace.learn import fit

    task = as_task(task)
    n = len(bucket)
    y = np.asarray(y)
    if y.shape[0] != n or (task.kind == "multilabel") != (y.ndim == 2):
        want = "[models, classes] multi-hot" if task.kind == "multilabel" else "[models]"
        raise ShapeError(f"targets for task {task.kind!r} must be {want} with {n} models, got {y.shape}")
    y = task.targets(y, n, "targets")
    train = np.asarray(train, np.int64)
    if len(train) < 2:
        raise InvalidValueError(f"only {len(train)} training models (need >= 2)")
    scale = task.scale(y[train])
    yt = task.standardise(y, scale)
    n_out = task.n_out(y)
    config = train_config or TrainConfig(steps=300, batch_size=32, learning_rate=1e-3)
    model = SupervisedModel(encoder, n_out, task=task, rngs=nnx.Rngs(config.seed + 1))

    val_fn = None
    if val is not None and len(val):
        val = np.asarray(val, np.int64)
        vb = bucket.select(val)
        scorer = val_score or task.score

        def val_fn(m: nnx.Module) -> float:
            from weightspace.equivariant._embed import embed_bucket

            out = embed_bucket(m, vb, chunk=256)
            return float(scorer(task.decode(out, scale), y[val]))

    data = {"x": jax.tree_util.tree_map(lambda a: np.asarray(a)[train], bucket.features), "y": yt[train]}
    report = fit(
        model,
        _supervised_loss,
        data,
        config=config,
        val_fn=val_fn,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        compiler_options=step_compiler_options(encoder, [(bucket.layout, config.batch_size)]),
    )
    return SupervisedRun(model, task, scale, report)

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
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float

from weightspace._errors import ConfigError, InvalidValueError, ShapeError
from weightspace.equivariant._contrastive import step_compiler_options
from weightspace.equivariant._layout import Bucket, WeightFeatures

SUPERVISED_TASKS = ("classify", "regress", "multilabel")
"""Targets :func:`train_supervised` fits: int classes, real values, multi-hot class sets."""


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

    def __init__(self, encoder: nnx.Module, n_out: int, *, rngs: nnx.Rngs) -> None:
        self.encoder = encoder
        self.head = nnx.Linear(int(dict(encoder.spec)["embed_dim"]), int(n_out), rngs=rngs)  # type: ignore[attr-defined]

    def __call__(self, x: WeightFeatures) -> Float[Array, " n_out"]:
        return self.head(self.encoder(x))


@dataclasses.dataclass(frozen=True)
class _Loss:
    task: str

    def __call__(self, model: SupervisedModel, batch: Any, key: Array) -> tuple[Array, dict[str, Array]]:
        out = jax.vmap(model)(batch["x"])
        y = batch["y"]
        if self.task == "classify":
            loss = optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
        elif self.task == "regress":
            loss = jnp.mean((out[:, 0] - y) ** 2)
        else:
            loss = optax.sigmoid_binary_cross_entropy(out, y).mean()
        return loss, {}


@dataclasses.dataclass
class SupervisedRun:
    """A trained :class:`SupervisedModel` and how to read its outputs.

    Attributes:
        model: the encoder + head (``model.encoder`` is the trained encoder).
        task: one of :data:`SUPERVISED_TASKS`.
        y_mean, y_std: the standardisation of a ``regress`` target (predictions are mapped back).
        report: the :class:`weightspace.learn.FitReport`.
    """

    model: SupervisedModel
    task: str
    y_mean: float
    y_std: float
    report: Any

    def predict(self, bucket: Bucket, *, chunk: int = 256) -> np.ndarray:
        """Predicted class ids (``classify``), values (``regress``) or class probabilities (``multilabel``)."""
        from weightspace.equivariant._embed import embed_bucket

        out = embed_bucket(self.model, bucket, chunk=chunk)
        return _decode(self.task, out, self.y_mean, self.y_std)


def _decode(task: str, out: np.ndarray, mean: float, std: float) -> np.ndarray:
    if task == "classify":
        return out.argmax(-1)
    if task == "regress":
        return out[:, 0] * std + mean
    return 1.0 / (1.0 + np.exp(-out))


def train_supervised(
    encoder: nnx.Module,
    bucket: Bucket,
    y: np.ndarray,
    *,
    task: str,
    train: np.ndarray,
    val: np.ndarray | None = None,
    val_score: Callable[[np.ndarray, np.ndarray], float] | None = None,
    config: Any = None,
    checkpoint_dir: Any = None,
    progress: bool | None = None,
) -> SupervisedRun:
    """Train ``encoder`` and a linear head end to end on one target with :func:`weightspace.learn.fit`.

    Args:
        encoder: an :class:`NPEncoder` or :class:`GraphEncoder` (trained in place).
        bucket: the models (one :class:`Bucket` from :func:`bucketize`).
        y: per model of ``bucket``: int classes ``[n]`` (``classify``), values ``[n]``
            (``regress``; standardised on the training split) or a multi-hot ``[n, classes]``.
        task: one of :data:`SUPERVISED_TASKS`.
        train, val: model indices into ``bucket``; validation (when given) picks the best state.
        val_score: ``(predictions, targets) -> score`` (higher is better) on ``val``; default
            accuracy (classify), Kendall tau (regress), mAP (multilabel).
        config: a :class:`weightspace.learn.TrainConfig` (default 300 steps, batch 32, Adam 1e-3).
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
        ...                        train=np.arange(6), config=TrainConfig(steps=3, batch_size=4), progress=False)
        >>> run.predict(bucketize(zoo)[0]).shape
        (8,)
    """
    from weightspace.learn import TrainConfig, fit, kendall_tau, mean_average_precision

    if task not in SUPERVISED_TASKS:
        raise ConfigError(f"unknown supervised task {task!r}; tasks: {list(SUPERVISED_TASKS)}")
    n = len(bucket)
    y = np.asarray(y)
    if y.shape[0] != n or (task == "multilabel") != (y.ndim == 2):
        want = "[models, classes] multi-hot" if task == "multilabel" else "[models]"
        raise ShapeError(f"targets for task {task!r} must be {want} with {n} models, got {y.shape}")
    train = np.asarray(train, np.int64)
    if len(train) < 2:
        raise InvalidValueError(f"only {len(train)} training models (need >= 2)")
    if task == "classify":
        yt: np.ndarray = y.astype(np.int32)
        n_out, mean, std = int(yt.max()) + 1, 0.0, 1.0
    elif task == "regress":
        yf = y.astype(np.float32)
        if not np.isfinite(yf).all():
            raise InvalidValueError("regression targets contain NaN/Inf")
        mean, std = float(yf[train].mean()), float(yf[train].std()) or 1.0
        yt, n_out = (yf - mean) / std, 1
    else:
        yt, n_out, mean, std = y.astype(np.float32), int(y.shape[1]), 0.0, 1.0
    config = config or TrainConfig(steps=300, batch_size=32, learning_rate=1e-3)
    model = SupervisedModel(encoder, n_out, rngs=nnx.Rngs(config.seed + 1))

    val_fn = None
    if val is not None and len(val):
        val = np.asarray(val, np.int64)
        vb = bucket.select(val)
        default: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
            "classify": lambda p, t: float(np.mean(p == t)),
            "regress": kendall_tau,
            "multilabel": mean_average_precision,
        }
        scorer = val_score or default[task]

        def val_fn(m: nnx.Module) -> float:
            from weightspace.equivariant._embed import embed_bucket

            out = embed_bucket(m, vb, chunk=256)
            return float(scorer(_decode(task, out, mean, std), y[val]))

    data = {"x": jax.tree_util.tree_map(lambda a: np.asarray(a)[train], bucket.features), "y": yt[train]}
    report = fit(
        model,
        _Loss(task),
        data,
        config=config,
        val_fn=val_fn,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        compiler_options=step_compiler_options(encoder, [(bucket.layout, config.batch_size)]),
    )
    return SupervisedRun(model, task, mean, std, report)

"""Model Spider: a learned ranker of pre-trained models from model tokens and task tokens (Flax NNX)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float

from weightspace._atomic import atomic_path
from weightspace._errors import ConfigError, InvalidValueError, LoadError, ShapeError
from weightspace.learn import TrainConfig, TrainingDivergedError, fit
from weightspace.selection._ranking import weighted_tau
from weightspace.selection._validate import as_float_array, as_labels


class SpiderTasks(NamedTuple):
    """A stack of tasks for Model Spider (classes padded to the largest task).

    Attributes:
        features: ``[tasks, classes, task_dim]`` class-mean features of each task (from one fixed,
            model-independent extractor).
        mask: ``[tasks, classes]`` True for real (non-padding) classes.
        accuracy: ``[tasks, models]`` true fine-tuning accuracy of every candidate on every task
            (only read for training and evaluation).
        specific: optional ``[tasks, models, classes, specific_dim]`` class means of each task under
            each candidate model itself (for re-ranking the top-k).
    """

    features: Float[Array, "tasks classes task_dim"]
    mask: Bool[Array, "tasks classes"]
    accuracy: Float[Array, "tasks models"] | None = None
    specific: Float[Array, "tasks models classes specific_dim"] | None = None

    def select(self, idx: Sequence[int] | np.ndarray) -> SpiderTasks:
        """The sub-stack of tasks ``idx``."""
        idx = np.asarray(idx)
        f, m, acc, spec = (None if v is None else v[idx] for v in self)
        assert f is not None and m is not None  # features and mask are always present
        return SpiderTasks(f, m, acc, spec)


def class_means(features: Float[Array, "n d"], labels: Any, *, num_classes: int | None = None) -> Float[Array, "c d"]:
    """Class-mean features ``[C, D]`` of a labelled dataset (a task token's raw material).

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import class_means
        >>> class_means(np.array([[0.0], [2.0], [10.0]]), np.array([0, 0, 1])).tolist()
        [[1.0], [10.0]]
    """
    f = as_float_array(features, "features")
    y, c = as_labels(labels, f.shape[0], num_classes=num_classes, min_classes=1)
    onehot = jax.nn.one_hot(y, c, dtype=f.dtype)
    return (onehot.T @ f) / jnp.maximum(onehot.sum(0), 1.0)[:, None]


def stack_tasks(
    task_class_means: Sequence[Any],
    accuracy: Any = None,
    *,
    specific: Sequence[Sequence[Any]] | None = None,
) -> SpiderTasks:
    """Pad per-task class means ``[C_t, D]`` (and per-model ones) into a :class:`SpiderTasks` stack.

    Args:
        task_class_means: one ``[C_t, task_dim]`` array per task.
        accuracy: ``[tasks, models]`` fine-tuning accuracies (optional at inference).
        specific: per task, one ``[C_t, specific_dim]`` array per candidate model.

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import stack_tasks
        >>> t = stack_tasks([np.ones((2, 3)), np.ones((4, 3))], np.zeros((2, 5)))
        >>> t.features.shape, t.mask.sum(axis=1).tolist()
        ((2, 4, 3), [2, 4])
    """
    if not task_class_means:
        raise ShapeError("stack_tasks needs at least one task")
    means = [np.asarray(m, np.float32) for m in task_class_means]
    dims = {m.shape[1] for m in means if m.ndim == 2}
    if any(m.ndim != 2 for m in means) or len(dims) != 1:
        raise ShapeError(
            f"task class means must all be [classes, task_dim] with one task_dim, got {[m.shape for m in means]}"
        )
    cmax = max(m.shape[0] for m in means)
    feats = np.zeros((len(means), cmax, dims.pop()), np.float32)
    mask = np.zeros((len(means), cmax), bool)
    for t, m in enumerate(means):
        feats[t, : m.shape[0]] = m
        mask[t, : m.shape[0]] = True
    acc = None
    if accuracy is not None:
        acc = np.asarray(accuracy, np.float32)
        if acc.ndim != 2 or acc.shape[0] != len(means):
            raise ShapeError(f"accuracy must be [tasks={len(means)}, models], got {acc.shape}")
        if not np.all(np.isfinite(acc)):
            raise InvalidValueError(f"accuracy holds {int(np.sum(~np.isfinite(acc)))} NaN/Inf value(s)")
    spec = None
    if specific is not None:
        if len(specific) != len(means):
            raise ShapeError(f"specific has {len(specific)} tasks, class means have {len(means)}")
        nm = len(specific[0])
        ds = np.asarray(specific[0][0]).shape[-1]
        spec = np.zeros((len(means), nm, cmax, ds), np.float32)
        for t, per_model in enumerate(specific):
            if len(per_model) != nm:
                raise ShapeError(f"specific[{t}] has {len(per_model)} models, expected {nm}")
            for mi, a_in in enumerate(per_model):
                a = np.asarray(a_in, np.float32)
                if a.shape != (means[t].shape[0], ds):
                    raise ShapeError(f"specific[{t}][{mi}] must be [{means[t].shape[0]}, {ds}], got {a.shape}")
                spec[t, mi, : a.shape[0]] = a
    return SpiderTasks(
        jnp.asarray(feats),
        jnp.asarray(mask),
        None if acc is None else jnp.asarray(acc),
        None if spec is None else jnp.asarray(spec),
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpiderConfig:
    """Hyper-parameters of :class:`ModelSpider` (saved next to its checkpoints)."""

    num_models: int
    task_dim: int
    dim: int = 64
    heads: int = 4
    specific_dim: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_models", "task_dim", "dim", "heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"SpiderConfig.{name} must be a positive int, got {v!r}")
        if self.dim % self.heads:
            raise ConfigError(f"SpiderConfig.dim={self.dim} must be divisible by heads={self.heads}")
        if self.specific_dim is not None and self.specific_dim < 1:
            raise ConfigError(f"SpiderConfig.specific_dim must be positive or None, got {self.specific_dim}")


class ModelSpider(nnx.Module):
    """Model Spider: scores every (candidate model, task) pair with one attention layer.

    Each candidate ``m`` owns a learnable token ``e_m``; a task is a set of tokens, one per
    class, ``W_t mu_c`` from its class-mean features (optionally plus tokens ``W_s mu_c^{(m)}`` of
    the class means under model ``m`` itself, for re-ranking). The sequence ``[e_m, task tokens]``
    goes through one pre-norm multi-head self-attention block and an MLP; the score is a linear
    read-out of the model position:

    .. math::
        s(m, t) = w^\\top \\mathrm{Block}([e_m; W_t\\mu_1; \\dots; W_t\\mu_C])_0.

    Trained with the ListMLE (Plackett-Luce) loss on the true ranking of the models over
    training tasks (:func:`train_model_spider`).

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from weightspace.selection import ModelSpider, SpiderConfig
        >>> spider = ModelSpider(SpiderConfig(num_models=5, task_dim=8, dim=16, heads=2), rngs=nnx.Rngs(0))
        >>> spider(jnp.ones((3, 8)), jnp.ones(3, bool)).shape
        (5,)

    References:
        Zhang et al., "Model Spider: Learning to Rank Pre-Trained Models Efficiently", NeurIPS 2023.
    """

    def __init__(self, config: SpiderConfig, *, rngs: nnx.Rngs) -> None:
        self.config = config
        d = config.dim
        self.model_tokens = nnx.Param(0.02 * jax.random.normal(rngs.params(), (config.num_models, d)))
        self.task_proj = nnx.Linear(config.task_dim, d, rngs=rngs)
        self.specific_proj = nnx.Linear(config.specific_dim, d, rngs=rngs) if config.specific_dim is not None else None
        self.norm1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(config.heads, d, qkv_features=d, decode=False, rngs=rngs, keep_rngs=False)
        self.norm2 = nnx.LayerNorm(d, rngs=rngs)
        self.mlp_in = nnx.Linear(d, 2 * d, rngs=rngs)
        self.mlp_out = nnx.Linear(2 * d, d, rngs=rngs)
        self.head = nnx.Linear(d, 1, rngs=rngs)

    def __call__(
        self,
        task: Float[Array, "classes task_dim"],
        mask: Bool[Array, " classes"],
        specific: Float[Array, "models classes specific_dim"] | None = None,
    ) -> Float[Array, " models"]:
        """Scores ``[models]`` of every candidate for ONE task (higher = better)."""
        tokens = self.model_tokens[...]
        m = tokens.shape[0]
        task_tok = self.task_proj(task)  # [C, d]
        seq = jnp.concatenate([tokens[:, None, :], jnp.broadcast_to(task_tok, (m, *task_tok.shape))], axis=1)
        valid = jnp.concatenate([jnp.ones((1,), bool), mask])
        if specific is not None:
            if self.specific_proj is None:
                raise ConfigError("this ModelSpider was built without specific_dim: it cannot read specific features")
            seq = jnp.concatenate([seq, self.specific_proj(specific)], axis=1)
            valid = jnp.concatenate([valid, mask])
        attn_mask = jnp.broadcast_to(valid[None, None, :], (m, 1, valid.shape[0], valid.shape[0]))
        h = seq + self.attn(self.norm1(seq), mask=attn_mask)
        h = h + self.mlp_out(jax.nn.gelu(self.mlp_in(self.norm2(h))))
        return self.head(h[:, 0, :])[:, 0]


def listmle_loss(scores: Float[Array, " models"], accuracy: Float[Array, " models"]) -> Float[Array, ""]:
    """ListMLE: negative Plackett-Luce log-likelihood of the true ranking (by decreasing accuracy).

    .. math::
        \\mathcal{L} = -\\sum_{i=1}^{M} \\Big(s_{\\pi_i} - \\log\\sum_{j \\ge i} e^{s_{\\pi_j}}\\Big)

    Example:
        >>> import jax.numpy as jnp
        >>> from weightspace.selection import listmle_loss
        >>> acc = jnp.array([0.9, 0.5, 0.1])
        >>> bool(listmle_loss(jnp.array([3.0, 2.0, 1.0]), acc) < listmle_loss(jnp.array([1.0, 2.0, 3.0]), acc))
        True
    """
    order = jnp.argsort(-accuracy)
    s = scores[order]
    tail = jax.lax.cumlogsumexp(s[::-1])[::-1]
    return jnp.sum(tail - s)


def _batch_scores(spider: ModelSpider, tasks: SpiderTasks, use_specific: bool) -> Array:
    spec = tasks.specific if use_specific else None
    if spec is None:
        return jax.vmap(lambda f, m: spider(f, m))(tasks.features, tasks.mask)
    return jax.vmap(lambda f, m, s: spider(f, m, s))(tasks.features, tasks.mask, spec)


def _loss(spider: ModelSpider, tasks: SpiderTasks) -> Array:
    if tasks.accuracy is None:
        raise ConfigError("Model Spider training needs tasks with accuracy (the ranking target)")
    loss = jnp.mean(jax.vmap(listmle_loss)(_batch_scores(spider, tasks, False), tasks.accuracy))
    if tasks.specific is not None and spider.specific_proj is not None:
        # The re-ranking head shares the block; it learns from the same ranking target.
        loss = loss + jnp.mean(jax.vmap(listmle_loss)(_batch_scores(spider, tasks, True), tasks.accuracy))
    return loss


def _fit_loss(spider: ModelSpider, tasks: SpiderTasks, key: Array) -> tuple[Array, dict[str, Array]]:
    # The loss of weightspace.learn.fit; module-level, so every run reuses the compiled step.
    return _loss(spider, tasks), {}


SPIDER_TRAIN = TrainConfig(steps=500, batch_size=4096, learning_rate=3e-3, weight_decay=1e-4, eval_every=500)
"""Model Spider's optimisation (AdamW on ListMLE): every task in one batch (up to 4096 tasks; ``fit``
takes all of them when there are fewer), one host sync per 500 steps."""


def train_model_spider(
    tasks: SpiderTasks,
    config: SpiderConfig | None = None,
    train_config: TrainConfig = SPIDER_TRAIN,
    *,
    spider: ModelSpider | None = None,
) -> tuple[ModelSpider, np.ndarray]:
    """Train a :class:`ModelSpider` on tasks with known accuracies (AdamW on the ListMLE loss).

    Training runs through the library's one training loop, :func:`weightspace.learn.fit` (one
    jitted step, reused by every run with the same task-stack shapes and settings); all tasks
    form one (full) batch per step.

    Args:
        tasks: training tasks; ``tasks.accuracy`` is required.
        config: architecture (default: ``dim=64, heads=4`` sized from ``tasks``).
        train_config: the optimisation (:data:`SPIDER_TRAIN` by default); its seed also seeds
            the initialisation.
        spider: continue training this module instead of building one.

    Returns:
        ``(spider, losses)`` with the per-step training losses.

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import SPIDER_TRAIN, stack_tasks, train_model_spider
        >>> rng = np.random.default_rng(0)
        >>> tasks = stack_tasks([rng.standard_normal((3, 4)) for _ in range(4)], rng.random((4, 5)))
        >>> spider, losses = train_model_spider(tasks, train_config=SPIDER_TRAIN.replace(steps=20))
        >>> bool(losses[-1] < losses[0])
        True
    """
    if tasks.accuracy is None:
        raise InvalidValueError("train_model_spider needs tasks.accuracy (the true fine-tuning accuracies)")
    if not isinstance(train_config, TrainConfig):
        raise ConfigError(f"train_model_spider: train_config must be a TrainConfig, got {type(train_config).__name__}")
    if spider is None:
        config = config or SpiderConfig(
            num_models=int(tasks.accuracy.shape[1]),
            task_dim=int(tasks.features.shape[2]),
            specific_dim=None if tasks.specific is None else int(tasks.specific.shape[-1]),
        )
        spider = ModelSpider(config, rngs=nnx.Rngs(train_config.seed))
    if tasks.accuracy.shape[1] != spider.config.num_models:
        raise ShapeError(f"tasks rank {tasks.accuracy.shape[1]} models, the spider has {spider.config.num_models}")
    if tasks.features.shape[2] != spider.config.task_dim:
        raise ShapeError(
            f"task features have dim {tasks.features.shape[2]}, the spider expects {spider.config.task_dim}"
        )
    try:
        report = fit(spider, _fit_loss, tasks, config=train_config, progress=False)
    except TrainingDivergedError as e:
        raise InvalidValueError(
            f"Model Spider training diverged: non-finite loss at step {e.step - 1}; lower the learning rate"
        ) from e
    return spider, report.losses


def rank_models(spider: ModelSpider, tasks: SpiderTasks, *, top_k: int | None = None) -> Float[Array, "tasks models"]:
    """Ranking scores ``[tasks, models]`` (higher = better) of every candidate on every task.

    With ``top_k`` and ``tasks.specific``, the ``top_k`` best-scored candidates of each task are
    re-scored with their model-specific class means and re-ordered among themselves; they stay
    above the other candidates (their returned scores are shifted to keep that order).

    Example:
        >>> import numpy as np
        >>> from flax import nnx
        >>> from weightspace.selection import ModelSpider, SpiderConfig, rank_models, stack_tasks
        >>> spider = ModelSpider(SpiderConfig(num_models=4, task_dim=3, dim=8, heads=2), rngs=nnx.Rngs(0))
        >>> rank_models(spider, stack_tasks([np.ones((2, 3))])).shape
        (1, 4)
    """
    graphdef, state = nnx.split(spider)
    base = _jit_scores(graphdef, state, tasks.features, tasks.mask, None)
    if top_k is None or tasks.specific is None:
        return base
    if not 1 <= top_k <= base.shape[1]:
        raise InvalidValueError(f"top_k must be in [1, {base.shape[1]}], got {top_k}")
    enriched = _jit_scores(graphdef, state, tasks.features, tasks.mask, tasks.specific)
    order = jnp.argsort(-base, axis=1)
    top = jnp.zeros_like(base, bool).at[jnp.arange(base.shape[0])[:, None], order[:, :top_k]].set(True)
    rest_max = jnp.max(jnp.where(top, -jnp.inf, base), axis=1, keepdims=True)
    rest_max = jnp.where(jnp.isfinite(rest_max), rest_max, 0.0)
    top_min = jnp.min(jnp.where(top, enriched, jnp.inf), axis=1, keepdims=True)
    return jnp.where(top, enriched - top_min + rest_max + 1.0, base)


@jax.jit
def _jit_scores(graphdef: Any, state: Any, features: Array, mask: Array, specific: Array | None) -> Array:
    spider = nnx.merge(graphdef, state)
    return _batch_scores(spider, SpiderTasks(features, mask, None, specific), specific is not None)


def evaluate_rankings(scores: Any, accuracy: Any) -> dict[str, Any]:
    """Weighted tau of every task's ranking and their mean: ``{"per_task": [...], "mean": float}``.

    Example:
        >>> from weightspace.selection import evaluate_rankings
        >>> evaluate_rankings([[3, 2, 1]], [[0.9, 0.5, 0.1]])["mean"]
        1.0
    """
    scores, accuracy = np.asarray(scores), np.asarray(accuracy)
    taus = [weighted_tau(a, s) for a, s in zip(accuracy, scores, strict=True)]
    return {"per_task": taus, "mean": float(np.mean(taus))}


def leave_one_task_out(
    tasks: SpiderTasks,
    config: SpiderConfig | None = None,
    train_config: TrainConfig = SPIDER_TRAIN,
    *,
    grid: Sequence[Mapping[str, Any]] | None = None,
    top_k: int | None = None,
) -> dict[str, Any]:
    """Leave-one-task-out evaluation: train on all tasks but one, rank the held-out one, repeat.

    The held-out task is never used to choose anything: with a ``grid`` of
    ``train_config`` overrides (e.g. ``[{"steps": 200}, {"steps": 800}]``), each fold picks
    the setting with the best mean weighted tau in an inner leave-one-out over its training tasks.

    Args:
        tasks: every task with accuracies.
        config: architecture (default sized from ``tasks``).
        train_config: base optimisation settings (a :class:`~weightspace.train.TrainConfig`).
        grid: optional candidate overrides of ``train_config``.
        top_k: re-rank the top-k with model-specific features (needs ``tasks.specific``).

    Returns:
        ``{"scores": [tasks, models], "per_task": [tau...], "mean": float, "chosen": [overrides per fold]}``.
    """
    if tasks.accuracy is None:
        raise InvalidValueError("leave_one_task_out needs tasks.accuracy")
    n = int(tasks.features.shape[0])
    if n < 2 or (grid and n < 3):
        raise ShapeError(f"leave_one_task_out needs at least {3 if grid else 2} tasks, got {n}")
    base = train_config
    scores, chosen = [], []
    for t in range(n):
        train_idx = np.array([i for i in range(n) if i != t])
        best: dict[str, Any] = {}
        if grid:
            inner = []
            for g in grid:
                sub = tasks.select(train_idx)
                inner.append(_loto_mean(sub, config, base.replace(**g), top_k))
            best = dict(grid[int(np.argmax(inner))])
        chosen.append(best)
        spider, _ = train_model_spider(tasks.select(train_idx), config, base.replace(**best))
        scores.append(np.asarray(rank_models(spider, tasks.select([t]), top_k=top_k))[0])
    scores_arr = np.stack(scores)
    ev = evaluate_rankings(scores_arr, np.asarray(tasks.accuracy))
    return {"scores": scores_arr, **ev, "chosen": chosen}


def _loto_mean(tasks: SpiderTasks, config: SpiderConfig | None, training: TrainConfig, top_k: int | None) -> float:
    n = int(tasks.features.shape[0])
    taus = []
    for t in range(n):
        idx = np.array([i for i in range(n) if i != t])
        spider, _ = train_model_spider(tasks.select(idx), config, training)
        s = np.asarray(rank_models(spider, tasks.select([t]), top_k=top_k))[0]
        taus.append(weighted_tau(np.asarray(tasks.accuracy)[t], s))
    return float(np.mean(taus))


_CONFIG_FILE = "spider_config.json"


def save_model_spider(spider: ModelSpider, path: str | os.PathLike[str]) -> Path:
    """Save a :class:`ModelSpider` as an orbax checkpoint directory plus its config (JSON).

    Example:
        >>> import tempfile, pathlib
        >>> from flax import nnx
        >>> from weightspace.selection import ModelSpider, SpiderConfig, load_model_spider, save_model_spider
        >>> s = ModelSpider(SpiderConfig(num_models=3, task_dim=2, dim=8, heads=2), rngs=nnx.Rngs(0))
        >>> p = save_model_spider(s, pathlib.Path(tempfile.mkdtemp()) / "spider")
        >>> load_model_spider(p).config == s.config
        True
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / _CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(dataclasses.asdict(spider.config)))
    state = nnx.state(spider)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path / "state", state, force=True)
    return path


def load_model_spider(path: str | os.PathLike[str]) -> ModelSpider:
    """Restore a :class:`ModelSpider` saved by :func:`save_model_spider`."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    cfg_file = path / _CONFIG_FILE
    if not cfg_file.is_file() or not (path / "state").exists():
        raise LoadError(f"{path} is not a Model Spider checkpoint (missing {_CONFIG_FILE} or state/)")
    try:
        config = SpiderConfig(**json.loads(cfg_file.read_text()))
    except (TypeError, json.JSONDecodeError) as e:
        raise LoadError(f"{cfg_file}: malformed Model Spider config: {e}") from e
    abstract = nnx.eval_shape(lambda: ModelSpider(config, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    with ocp.StandardCheckpointer() as ckpt:
        state = ckpt.restore(path / "state", abstract_state)
    return nnx.merge(graphdef, state)

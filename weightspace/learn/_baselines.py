"""The shared baselines every learned weight encoder is compared with.

* **StatNN** (Unterthiner et al. 2020): 7 statistics of every weight tensor -> gradient boosting.
* **MLP / linear on flattened weights**: the naive encoders, trained with :func:`weightspace.learn.fit`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import ArrayLike

from weightspace._errors import ConfigError, InvalidValueError, ShapeError
from weightspace.learn._data import WeightDataset
from weightspace.learn._eval import _sklearn_threads
from weightspace.learn._mlp import MLP
from weightspace.learn._task import Task, as_task
from weightspace.train import TrainConfig, fit

BASELINES = ("statnn-gbt", "statnn-mlp", "flat-mlp", "flat-linear")
"""The baselines :func:`run_baseline` knows: ``<features>-<model>``."""

_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)

DEFAULT_CONFIG = TrainConfig(
    steps=1500, batch_size=64, learning_rate=1e-3, weight_decay=1e-4, eval_every=50, patience=8
)
"""Training settings of the ``mlp``/``linear`` baselines when none are given."""


# ---- features -----------------------------------------------------------------------------------
def _stacked(params: Mapping[str, ArrayLike], who: str) -> list[tuple[str, np.ndarray]]:
    if not params:
        raise ShapeError(f"{who}: no tensors given")
    out, n = [], None
    for k in sorted(params):
        v = np.asarray(params[k], np.float32)
        if v.ndim == 0:
            raise ShapeError(f"{who}: tensor {k!r} is a scalar; expected [models, ...]")
        if n is not None and v.shape[0] != n:
            raise ShapeError(f"{who}: tensor {k!r} has {v.shape[0]} models, others have {n}")
        n = v.shape[0]
        out.append((k, v.reshape(n, -1)))
    return out


def statnn_features(params: Mapping[str, ArrayLike]) -> np.ndarray:
    """StatNN features ``[models, 7 * tensors]``: per tensor, mean, variance and the
    0/25/50/75/100 % quantiles of its entries (tensors in sorted-name order).

    Args:
        params: tensor name -> ``[models, *shape]`` (a zoo's ``params`` or a dataset's ``inputs``).

    Returns:
        float32 features; tensor ``i`` fills columns ``7i .. 7i+6``.

    Example:
        >>> import numpy as np
        >>> from weightspace.learn import statnn_features
        >>> statnn_features({"w": np.array([[0.0, 1.0, 2.0, 3.0, 4.0]])}).tolist()
        [[2.0, 2.0, 0.0, 1.0, 2.0, 3.0, 4.0]]

    References:
        Unterthiner et al., "Predicting Neural Network Accuracy from Weights", 2020.
    """
    cols = []
    for _, v in _stacked(params, "statnn_features"):
        v64 = v.astype(np.float64)
        cols += [v64.mean(1, keepdims=True), v64.var(1, keepdims=True), np.quantile(v64, _QUANTILES, axis=1).T]
    return np.concatenate(cols, axis=1).astype(np.float32)


def flat_features(params: Mapping[str, ArrayLike]) -> np.ndarray:
    """All weights of every model flattened into one row ``[models, D]`` (tensors in sorted-name order).

    Example:
        >>> import numpy as np
        >>> from weightspace.learn import flat_features
        >>> flat_features({"b": np.ones((2, 3)), "a": np.zeros((2, 2, 2))}).shape
        (2, 7)
    """
    return np.concatenate([v for _, v in _stacked(params, "flat_features")], axis=1)


# ---- models -------------------------------------------------------------------------------------
class _Predictor(nnx.Module):
    """A :class:`~weightspace.learn.MLP` on feature rows that knows its :class:`~weightspace.learn.Task`."""

    def __init__(self, d_in: int, hidden: tuple[int, ...], d_out: int, task: Task, *, rngs: nnx.Rngs) -> None:
        self.mlp = MLP(d_in, hidden, d_out, rngs=rngs)
        self.task = task  # static: part of the graph definition, so equal tasks share one compiled step

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.mlp(x)


def _predictor_loss(model: _Predictor, batch: dict[str, jax.Array], key: jax.Array) -> tuple[jax.Array, dict]:
    return model.task.loss(model(batch["x"]), batch["y"])


@functools.partial(jax.jit, static_argnums=0)
def _eval_loss(graphdef: Any, state: Any, batch: dict[str, jax.Array]) -> jax.Array:
    return _predictor_loss(nnx.merge(graphdef, state), batch, jax.random.key(0))[0]


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef: Any, state: Any, x: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(x)


def _x(x: Any, who: str, dim: int | None = None) -> np.ndarray:
    a = np.asarray(x, np.float32)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ShapeError(f"{who} must be a non-empty feature matrix [n, features], got shape {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise ShapeError(f"{who} has {a.shape[1]} features, the baseline was fit on {dim}")
    bad = int(np.sum(~np.isfinite(a)))
    if bad:
        raise InvalidValueError(f"{who} holds {bad} NaN/Inf value(s)")
    return a


def _model_kind(name: str) -> str:
    kind = name.rsplit("-", 1)[-1]
    if kind not in ("gbt", "mlp", "linear"):
        raise ConfigError(f"unknown baseline {name!r}; use 'statnn-gbt', 'mlp', 'linear' or one of {BASELINES}")
    return kind


def fit_baseline(
    name: str,
    train_x: Any,
    train_y: Any,
    *,
    task: Task | str,
    val_x: Any = None,
    val_y: Any = None,
    seed: int = 0,
    config: TrainConfig | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """Fit a baseline predictor on feature rows (e.g. :func:`statnn_features`).

    Args:
        name: ``"statnn-gbt"`` (or ``"gbt"``: scikit-learn histogram gradient boosting),
            ``"mlp"`` (an NNX MLP with two hidden layers of 256 trained with :func:`fit`) or
            ``"linear"`` (one dense layer trained with :func:`fit`). A feature prefix
            (``"flat-mlp"``) is accepted and ignored: the features are what you pass.
        train_x: ``[n, features]``.
        train_y: int labels ``[n]`` (classify), a ``{0, 1}`` matrix ``[n, classes]``
            (multilabel) or values ``[n]`` (regress, rank).
        task: a :class:`~weightspace.learn.Task` or its kind.
        val_x, val_y: a validation set: early stopping of ``mlp``/``linear`` on its loss.
        seed: seeds the initialisation, batch order and boosting (``config.seed`` must be left
            at 0 or equal it).
        config: training settings of ``mlp``/``linear`` (default :data:`DEFAULT_CONFIG`).

    Returns:
        ``predict(x) -> array``: logits ``[m, classes]`` (classify, multilabel) or predictions
        ``[m]`` (regress, rank). Features are standardised with the training mean and std (and
        regression targets too, undone on prediction).

    Example:
        >>> import numpy as np
        >>> from weightspace.learn import fit_baseline, kendall_tau
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((300, 5)).astype(np.float32); y = x[:, 0] - x[:, 1] ** 2
        >>> predict = fit_baseline("statnn-gbt", x[:200], y[:200], task="regress")
        >>> kendall_tau(predict(x[200:]), y[200:]) > 0.7
        True
    """
    kind = _model_kind(name)
    task = as_task(task)
    xtr = _x(train_x, "train_x")
    ytr = task.targets(train_y, xtr.shape[0], "train_y")
    mu, sd = xtr.mean(0), xtr.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0).astype(np.float32)
    dim = xtr.shape[1]

    def norm(x: Any, who: str) -> np.ndarray:
        return ((_x(x, who, dim) - mu) / sd).astype(np.float32)

    xtr = norm(xtr, "train_x")
    n_cls = task.n_out(ytr)
    if kind == "gbt":
        return _fit_gbt(xtr, ytr, task, n_cls, seed, norm)
    has_val = val_x is not None and val_y is not None
    xva = norm(val_x, "val_x") if has_val else None
    yva = task.targets(val_y, xva.shape[0], "val_y") if has_val and xva is not None else None
    scale = task.scale(ytr)
    ytr = task.standardise(ytr, scale)
    yva = None if yva is None else task.standardise(yva, scale)
    if config is not None and config.seed not in (0, seed):
        raise ConfigError(
            f"fit_baseline: seed={seed} and config.seed={config.seed}: give the seed once (seed= seeds every "
            "baseline, including the boosted trees, which take no TrainConfig)"
        )
    cfg = config or DEFAULT_CONFIG
    if not has_val:
        cfg = dataclasses.replace(cfg, patience=None)
    cfg = dataclasses.replace(cfg, seed=int(seed))
    hidden = (256, 256) if kind == "mlp" else ()
    model = _Predictor(dim, hidden, n_cls, task, rngs=nnx.Rngs(int(seed)))
    val_fn = None
    if has_val:
        vb = {"x": jnp.asarray(xva), "y": jnp.asarray(yva)}

        def val_fn(m: nnx.Module) -> float:
            g, s = nnx.split(m)
            return -float(_eval_loss(g, s, vb))

    fit(model, _predictor_loss, {"x": xtr, "y": ytr}, config=cfg, val_fn=val_fn, progress=False)
    graphdef, state = nnx.split(model)

    def predict(x: np.ndarray) -> np.ndarray:
        out = np.asarray(_forward(graphdef, state, jnp.asarray(norm(x, "x"))))
        return task.decode(out, scale) if task.scaled else out

    return predict


def _fit_gbt(
    x: np.ndarray, y: np.ndarray, task: Task, n_cls: int, seed: int, norm: Callable[[Any, str], np.ndarray]
) -> Callable[[np.ndarray], np.ndarray]:
    sklearn_threads = functools.partial(_sklearn_threads, x.size)
    # scikit-learn's default of 20 examples per leaf allows almost no splits on a zoo of ~100 models.
    leaf = int(np.clip(x.shape[0] // 10, 2, 20))
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    if task.scaled:
        with sklearn_threads():
            reg = HistGradientBoostingRegressor(random_state=seed, min_samples_leaf=leaf).fit(x, y)

        def predict_regress(q: np.ndarray) -> np.ndarray:
            with sklearn_threads():
                return reg.predict(norm(q, "x")).astype(np.float32)

        return predict_regress

    def logit_model(col: np.ndarray, k: int) -> Callable[[np.ndarray], np.ndarray]:
        """Log-probabilities [m, k] over ``range(k)`` (classes unseen in training: log(1e-9))."""
        present = np.unique(col)
        if present.size == 1:
            return lambda q: np.where(np.arange(k) == present[0], 0.0, np.log(1e-9))[None].repeat(len(q), 0)
        with sklearn_threads():
            clf = HistGradientBoostingClassifier(random_state=seed, min_samples_leaf=leaf).fit(x, col)

        def pred(q: np.ndarray) -> np.ndarray:
            out = np.full((q.shape[0], k), np.log(1e-9))
            with sklearn_threads():
                out[:, clf.classes_.astype(int)] = np.log(np.maximum(clf.predict_proba(q), 1e-9))
            return out

        return pred

    if task.kind == "classify":
        model = logit_model(y, n_cls)
        return lambda q: model(norm(q, "x")).astype(np.float32)
    per_class = [logit_model(y[:, c].astype(int), 2) for c in range(n_cls)]

    def predict(q: np.ndarray) -> np.ndarray:
        qn = norm(q, "x")
        # logit = log p(1) - log p(0)
        return np.stack([m(qn)[:, 1] - m(qn)[:, 0] for m in per_class], axis=1).astype(np.float32)

    return predict


def run_baseline(
    name: str,
    dataset: WeightDataset,
    *,
    target: str,
    task: Task | str,
    seed: int = 0,
    config: TrainConfig | None = None,
) -> np.ndarray:
    """Fit a named baseline on a dataset's train split (val split for early stopping) and predict its test split.

    Args:
        name: one of :data:`BASELINES` (``statnn-*``: :func:`statnn_features`; ``flat-*``:
            :func:`flat_features` of ``dataset.inputs``).
        dataset: the :class:`WeightDataset`.
        target: a key of ``dataset.targets``.
        task: a :class:`~weightspace.learn.Task` or its kind.
        seed: model seed.
        config: training settings of MLP/linear baselines.

    Returns:
        Predictions for ``dataset.splits.test`` (as :func:`fit_baseline`'s ``predict``).

    Example:
        >>> import numpy as np
        >>> from weightspace.learn import WeightDataset, kendall_tau, run_baseline, split_models
        >>> scale = np.linspace(0.1, 2.0, 60, dtype=np.float32)
        >>> w = np.random.default_rng(0).standard_normal((60, 8, 4)).astype(np.float32) * scale[:, None, None]
        >>> ds = WeightDataset({"w": w}, {"scale": scale}, [str(i) for i in range(60)], split_models(60), {})
        >>> pred = run_baseline("statnn-gbt", ds, target="scale", task="regress")
        >>> pred.shape, kendall_tau(pred, scale[ds.splits.test]) > 0.6
        ((9,), True)
    """
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; run_baseline knows {BASELINES}")
    if target not in dataset.targets:
        raise ConfigError(f"dataset has no target {target!r}; it has {sorted(dataset.targets)}")
    feats = statnn_features(dataset.inputs) if name.startswith("statnn") else flat_features(dataset.inputs)
    y = dataset.targets[target]
    tr, va, te = dataset.splits
    if len(tr) == 0 or len(te) == 0:
        raise ShapeError(f"run_baseline needs non-empty train and test splits, got sizes {dataset.splits.sizes()}")
    has_val = len(va) > 0
    predict = fit_baseline(
        name,
        feats[tr],
        y[tr],
        task=task,
        val_x=feats[va] if has_val else None,
        val_y=y[va] if has_val else None,
        seed=seed,
        config=config,
    )
    return predict(feats[te])

"""DSiRe: recover the number of fine-tuning images of a LoRA from its spectra.

Features are the top singular values of every LoRA tensor (each A, each B and each B@A). One
1-nearest-neighbour classifier per tensor votes for a dataset size; the majority wins. The
arrays are small (tens of tensors, hundreds of reference models), so this runs in NumPy with
exact, deterministic tie-breaking.

References:
    Salama, Kahana, Horwitz, Hoshen. Dataset Size Recovery from LoRA Weights. 2024
    (arXiv 2406.19395).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jaxtyping import Float, Int

from weightspace._errors import ConfigError, InvalidValueError, ShapeError
from weightspace.lora._lora import KINDS, LoRA, lora_spectra

METHODS = ("dsire", "norm", "best-tensor", "linear")


@dataclasses.dataclass(frozen=True)
class SpectralFeatures:
    """Per-model spectra of every LoRA tensor.

    Attributes:
        names: ``"{weight name}:{A|B|BA}"`` for each tensor.
        values: ``[models, tensors, k]`` top singular values (descending, zero-padded).
    """

    names: tuple[str, ...]
    values: Float[np.ndarray, "models tensors k"]

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def select(self, idx: Any) -> SpectralFeatures:
        """The features of a subset of models."""
        return SpectralFeatures(self.names, self.values[idx])

    def norms(self) -> SpectralFeatures:
        """Frobenius norms (``sqrt(sum sigma^2)``) of every tensor: the norm-only baseline's features."""
        return SpectralFeatures(self.names, np.sqrt((self.values.astype(np.float64) ** 2).sum(-1, keepdims=True)))


def lora_features(
    adapter: Mapping[str, LoRA], *, top_k: int | None = None, kinds: Sequence[str] = KINDS
) -> SpectralFeatures:
    """DSiRe features of a stacked adapter (leading model axis): :func:`lora_spectra` as one array.

    Example:
        >>> import numpy as np
        >>> from weightspace.lora import LoRA, lora_features
        >>> rng = np.random.default_rng(0)
        >>> ad = {"q.weight": LoRA.of(rng.normal(size=(7, 4, 16)), rng.normal(size=(7, 12, 4)))}
        >>> f = lora_features(ad)
        >>> f.names, f.values.shape
        (('q.weight:A', 'q.weight:B', 'q.weight:BA'), (7, 3, 4))
    """
    for k, lo in adapter.items():
        if len(lo.batch_shape) != 1:
            raise ShapeError(
                f"lora_features needs adapters stacked on one model axis; {k!r} has batch axes {list(lo.batch_shape)}"
            )
    spectra = lora_spectra(adapter, top_k=top_k, kinds=kinds)
    names = tuple(spectra)
    return SpectralFeatures(names, np.stack([np.asarray(spectra[n], np.float32) for n in names], axis=1))


@dataclasses.dataclass(frozen=True)
class DSiRe:
    """A fitted DSiRe classifier (the reference set, normalised, and its labels).

    Attributes:
        features: ``[n_ref, tensors, k]`` min-max normalised reference features.
        labels: ``[n_ref]`` dataset sizes.
        lo, hi: the global min and max of the raw reference features (the normalisation).
        names: tensor names.
        tensors: indices of the tensors that vote.
    """

    features: np.ndarray
    labels: np.ndarray
    lo: float
    hi: float
    names: tuple[str, ...]
    tensors: tuple[int, ...]


def _check(features: SpectralFeatures) -> None:
    v = features.values
    if v.ndim != 3 or v.shape[0] == 0:
        raise ShapeError(f"features must be [models>0, tensors, k], got {list(v.shape)}")
    bad = int(v.size - np.isfinite(v).sum())
    if bad:
        raise InvalidValueError(f"features hold {bad} NaN/Inf values")


def _labels(features: SpectralFeatures, labels: Any) -> np.ndarray:
    _check(features)
    y = np.asarray(labels)
    if y.shape != (features.values.shape[0],):
        raise ShapeError(f"labels have shape {list(y.shape)}, expected [{features.values.shape[0]}] (one per model)")
    return y


def fit_dsire(
    features: SpectralFeatures, labels: Int[np.ndarray, " models"], *, tensors: Sequence[int] | None = None
) -> DSiRe:
    """Fit DSiRe on reference LoRAs with known dataset sizes.

    Features are min-max normalised with the global min and max over the reference set (as the
    reference code does); each tensor gets a 1-NN classifier over the reference models.

    Args:
        features: reference features (:func:`lora_features`).
        labels: dataset size of every reference model.
        tensors: indices of the tensors allowed to vote (default: all).

    Returns:
        A :class:`DSiRe`; predict with :func:`predict_dsire`.
    """
    y = _labels(features, labels)
    v = features.values.astype(np.float64)
    lo, hi = float(v.min()), float(v.max())
    scale = hi - lo if hi > lo else 1.0
    idx = tuple(range(v.shape[1])) if tensors is None else tuple(int(t) for t in tensors)
    if not idx or min(idx) < 0 or max(idx) >= v.shape[1]:
        raise InvalidValueError(f"tensors must index the {v.shape[1]} feature tensors, got {list(idx)}")
    return DSiRe((v - lo) / scale, np.asarray(y), lo, hi, features.names, idx)


def _nearest(query: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Index of the nearest reference per tensor: ``[n_query, tensors]`` (first index on ties)."""
    d = ((query[:, None] - ref[None]) ** 2).sum(-1)  # [q, r, tensors]
    return d.argmin(axis=1)


def vote(votes: np.ndarray) -> np.ndarray:
    """Majority vote per row of ``votes [n, tensors]``; ties go to the label voted first.

    ``collections.Counter(row).most_common(1)`` (the reference code) breaks ties the same way.

    Example:
        >>> import numpy as np
        >>> from weightspace.lora import vote
        >>> vote(np.array([[5, 1, 1, 5], [2, 3, 3, 3]])).tolist()
        [5, 3]
    """
    out = np.empty(votes.shape[0], votes.dtype)
    for i, row in enumerate(votes):
        vals, first, counts = np.unique(row, return_index=True, return_counts=True)
        best = counts == counts.max()
        out[i] = vals[best][np.argmin(first[best])]
    return out


def dsire_votes(model: DSiRe, features: SpectralFeatures) -> np.ndarray:
    """Each voting tensor's 1-NN label for every model: ``[n, tensors]``."""
    _check(features)
    if features.names != model.names or features.values.shape[1:] != model.features.shape[1:]:
        raise ShapeError(
            f"features describe tensors {features.names[:4]}... of shape "
            f"{list(features.values.shape[1:])}; the model was fitted on {model.names[:4]}... of "
            f"shape {list(model.features.shape[1:])}"
        )
    scale = model.hi - model.lo if model.hi > model.lo else 1.0
    q = (features.values.astype(np.float64) - model.lo) / scale
    t = list(model.tensors)
    return model.labels[_nearest(q[:, t], model.features[:, t])]


def predict_dsire(model: DSiRe, features: SpectralFeatures) -> np.ndarray:
    """Predict dataset sizes: each tensor's 1-NN label (:func:`dsire_votes`), then :func:`vote`.

    Example:
        >>> import numpy as np
        >>> from weightspace.lora import SpectralFeatures, fit_dsire, predict_dsire
        >>> ref = SpectralFeatures(("t",), np.array([[[1.0]], [[2.0]], [[10.0]]]))
        >>> m = fit_dsire(ref, np.array([1, 2, 10]))
        >>> predict_dsire(m, SpectralFeatures(("t",), np.array([[[9.0]], [[1.2]]]))).tolist()
        [10, 1]
    """
    return vote(dsire_votes(model, features))


def size_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Accuracy (%), MAE (images) and MAPE (%) of predicted dataset sizes.

    Example:
        >>> from weightspace.lora import size_metrics
        >>> {k: round(v, 2) for k, v in size_metrics([1, 2, 4], [1, 2, 2]).items()}
        {'accuracy': 66.67, 'mae': 0.67, 'mape': 16.67}
    """
    y, p = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    return {
        "accuracy": float((y == p).mean() * 100),
        "mae": float(np.abs(y - p).mean()),
        "mape": float((np.abs(y - p) / np.abs(y)).mean() * 100),
    }


def best_tensor(features: SpectralFeatures, labels: Any, concepts: Sequence[Any]) -> int:
    """The tensor whose 1-NN classifier is most accurate leave-one-concept-out (first on ties)."""
    y = _labels(features, labels)
    c = np.asarray([str(x) for x in concepts])
    v = features.values.astype(np.float64)
    d = ((v[:, None] - v[None]) ** 2).sum(-1)  # [n, n, tensors]
    d[c[:, None] == c[None]] = np.inf  # never match a model of the same concept
    acc = (y[d.argmin(axis=1)] == y[:, None]).mean(0)
    return int(np.argmax(acc))


@dataclasses.dataclass(frozen=True)
class LinearSize:
    """Ridge regression from all (standardised) spectra to the dataset size, snapped to the grid."""

    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray
    grid: np.ndarray


def fit_linear(features: SpectralFeatures, labels: Any, *, ridge: float = 1.0) -> LinearSize:
    """Fit the linear-regression baseline (``ridge`` on standardised, flattened spectra)."""
    y = _labels(features, labels).astype(np.float64)
    x = features.values.reshape(len(features), -1).astype(np.float64)
    mu, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    xs = np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], axis=1)
    reg = ridge * np.eye(xs.shape[1])
    reg[-1, -1] = 0.0  # no penalty on the intercept
    coef = np.linalg.solve(xs.T @ xs + reg, xs.T @ y)
    return LinearSize(mu, sd, coef, np.unique(y))


def predict_linear(model: LinearSize, features: SpectralFeatures) -> np.ndarray:
    """Regressed sizes snapped to the nearest size seen in training."""
    x = features.values.reshape(len(features), -1).astype(np.float64)
    raw = np.concatenate([(x - model.mean) / model.std, np.ones((len(x), 1))], axis=1) @ model.coef
    return model.grid[np.abs(raw[:, None] - model.grid[None]).argmin(1)]


def evaluate_size_recovery(
    features: SpectralFeatures,
    labels: Any,
    concepts: Sequence[Any],
    *,
    method: str = "dsire",
    n_splits: int = 10,
    n_train_concepts: int = 15,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy / MAE / MAPE over random concept splits (train on some concepts, test on the rest).

    As in the paper's code: each split draws ``n_train_concepts`` concepts (all their sizes) as
    the reference set and tests on every model of the other concepts.

    Args:
        features, labels, concepts: one entry per model.
        method: ``"dsire"`` (spectra, 1-NN per tensor, vote), ``"norm"`` (Frobenius norms instead
            of spectra), ``"best-tensor"`` (1-NN on the single tensor best leave-one-concept-out
            on the training concepts) or ``"linear"`` (ridge on all spectra, snapped to a size).
        n_splits: number of random splits (paper: 10).
        n_train_concepts: concepts in each reference set (paper: 15; at most all but one).
        seed: split seed.

    Returns:
        ``{"splits": [{"accuracy", "mae", "mape"}, ...], "mean": {...}, "std": {...}}``.

    Example:
        >>> import numpy as np
        >>> from weightspace.lora import SpectralFeatures, evaluate_size_recovery
        >>> sizes = np.tile([1, 2, 3], 6); concepts = np.repeat(np.arange(6), 3)
        >>> f = SpectralFeatures(("t",), sizes[:, None, None] + 0.01 * concepts[:, None, None])
        >>> evaluate_size_recovery(f, sizes, concepts, n_train_concepts=3)["mean"]["accuracy"]
        100.0
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    y = _labels(features, labels)
    c = np.asarray([str(x) for x in concepts])
    if c.shape != y.shape:
        raise ShapeError(f"{len(c)} concepts for {len(y)} models")
    uniq = np.unique(c)
    if not 1 <= n_train_concepts < len(uniq):
        raise ConfigError(
            f"n_train_concepts must be in [1, {len(uniq) - 1}] for {len(uniq)} concepts, got {n_train_concepts}"
        )
    rng = np.random.default_rng(seed)
    feats = features.norms() if method == "norm" else features
    splits = []
    for _ in range(n_splits):
        train_c = set(rng.choice(uniq, n_train_concepts, replace=False).tolist())
        tr = np.array([x in train_c for x in c])
        ftr, fte = feats.select(tr), feats.select(~tr)
        if method == "linear":
            pred = predict_linear(fit_linear(ftr, y[tr]), fte)
        else:
            tensors = [best_tensor(ftr, y[tr], c[tr])] if method == "best-tensor" else None
            pred = predict_dsire(fit_dsire(ftr, y[tr], tensors=tensors), fte)
        splits.append(size_metrics(y[~tr], pred))
    keys = ("accuracy", "mae", "mape")
    return {
        "splits": splits,
        "mean": {k: float(np.mean([s[k] for s in splits])) for k in keys},
        "std": {k: float(np.std([s[k] for s in splits])) for k in keys},
    }

"""Score many candidate models with many metrics in one call (jit(vmap) per architecture bucket)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from weightspace._backend import on_cpu
from weightspace._errors import InvalidValueError, ShapeError
from weightspace.selection import _metrics as M
from weightspace.selection._logme import _logme_core
from weightspace.selection._ot import _otce_core
from weightspace.selection._validate import as_labels, class_table

FEATURE_METRICS = ("logme", "h_score", "regularized_h_score", "nleep", "gbc", "lfc", "transrate")
"""Metrics computed from target features ``[N, D]``."""
PROB_METRICS = ("leep", "nce", "pactran")
"""Metrics computed from source-class probabilities ``[N, Cs]``."""
SOURCE_METRICS = ("otce",)
"""Metrics that also need the model's features of its own source data."""
ALL_METRICS = FEATURE_METRICS + PROB_METRICS + SOURCE_METRICS
# The shared (non-batched) arrays each metric reads; passing only these keeps jit cache keys stable.
_TABLES = {"nleep": ("key",), "transrate": ("index", "counts")}


def _group(arrays: Any, name: str, n: int) -> tuple[list[jax.Array], list[list[int]]]:
    """Per-model arrays and the model indices of each same-shape bucket."""
    if isinstance(arrays, Sequence) and not isinstance(arrays, np.ndarray):
        items = [jnp.asarray(a) for a in arrays]
    else:
        arr = jnp.asarray(arrays)
        if arr.ndim != 3:
            raise ShapeError(
                f"{name} must be [models, samples, dims] or a list of [samples, dims], got shape {tuple(arr.shape)}"
            )
        items = list(arr)
    buckets: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(items):
        if a.ndim != 2 or a.shape[0] != n:
            raise ShapeError(f"{name}[{i}] must be [{n}, dims] (one row per label), got {tuple(a.shape)}")
        bad = int(jnp.sum(~jnp.isfinite(a)))
        if bad:
            raise InvalidValueError(f"{name}[{i}] (model {i}) holds {bad} NaN/Inf value(s)")
        buckets.setdefault(tuple(a.shape), []).append(i)
    return items, list(buckets.values())


def _stack(items: list[Any], idx: list[int]) -> jax.Array:
    x = jnp.stack([items[i] for i in idx])
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


@functools.cache
def _batched(metric: str, frozen: tuple[tuple[str, Any], ...], model_batch: int | None = None) -> Any:
    """One jitted program scoring a models axis: ``lax.map`` over chunks of ``model_batch`` vmapped models.

    ``model_batch=None`` vmaps every model at once (best on accelerators); on CPU, where XLA's
    batched linear algebra is slower than a sequence of single-model kernels and a vmapped
    ``while_loop`` runs every model until the slowest converges, small chunks win.
    """
    o = dict(frozen)
    c = o.pop("num_classes")
    if metric == "logme":
        fn = lambda f, y, t: _logme_core(
            f, jax.nn.one_hot(y, c, dtype=f.dtype), method=o.get("method", "fixed_point")
        ).evidence.mean()
    elif metric == "h_score":
        fn = lambda f, y, t: M._h_score_core(
            f,
            y,
            jnp.asarray(o.get("rcond") or M._default_rcond(f.shape[0], f.shape[1], f.dtype), f.dtype),
            num_classes=c,
        )
    elif metric == "regularized_h_score":
        fn = lambda f, y, t: M._reg_h_score_core(f, y, num_classes=c)
    elif metric == "nleep":
        fn = lambda f, y, t: M._nleep_core(
            f,
            y,
            t["key"],
            num_classes=c,
            components=o.get("components") or c,
            variance=o.get("variance", 0.8),
            max_dim=o.get("max_dim"),
            max_iter=o.get("max_iter", 100),
            tol=o.get("tol", 1e-3),
        )
    elif metric == "gbc":
        fn = lambda f, y, t: M._gbc_core(
            f, y, num_classes=c, gaussian=o.get("gaussian", "diagonal"), pca_dim=o.get("pca_dim", 64)
        )
    elif metric == "lfc":
        fn = lambda f, y, t: M._lfc_core(f, y, num_classes=c)
    elif metric == "transrate":
        fn = lambda f, y, t: M._transrate_core(f, t["index"], t["counts"], jnp.asarray(o.get("eps", 1e-4), f.dtype))
    elif metric == "leep":
        fn = lambda p, y, t: M._leep_core(p, y, num_classes=c)
    elif metric == "nce":
        fn = lambda p, y, t: M._nce_core(p, y, num_classes=c)
    elif metric == "pactran":
        fn = lambda p, y, t: M._pactran_core(
            p, y, jnp.asarray(o.get("alpha", 1.0), p.dtype), num_classes=c, n_iter=o.get("n_iter", 10)
        )
    else:  # otce: f is a (source features, target features) pair
        cw, ww = o.get("ce_weight", 1.0), o.get("wd_weight", 0.0)

        def fn(f: Any, y: Any, t: Any) -> Any:
            terms = _otce_core(
                f[0],
                f[1],
                f[2],
                y,
                jnp.asarray(o.get("epsilon", 0.05), f[2].dtype),
                source_classes=o["source_classes"],
                num_classes=c,
                max_iter=o.get("max_iter", 1000),
            )
            return -(cw * terms.conditional_entropy + ww * terms.wasserstein)

    return jax.jit(lambda xs, y, t: jax.lax.map(lambda x: fn(x, y, t), xs, batch_size=model_batch))


def score_all(
    features: Any = None,
    labels: Any = None,
    *,
    probs: Any = None,
    metrics: Sequence[str] | None = None,
    num_classes: int | None = None,
    source_features: Any = None,
    source_labels: Any = None,
    key: jax.Array | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    model_batch: int | str | None = "auto",
) -> dict[str, np.ndarray]:
    """Every requested transferability metric for every candidate model, batched over models.

    Models whose features share a shape are stacked and scored by one ``jit(vmap(metric))``; a
    list of differently-sized feature matrices (a heterogeneous hub) is bucketed by shape.

    Args:
        features: ``[models, N, D]`` or a list of ``[N, D_m]`` target features (penultimate layer).
        labels: ``[N]`` target classes, shared by all models.
        probs: ``[models, N, Cs]`` or a list of ``[N, Cs_m]`` source-class probabilities (for LEEP,
            NCE, PACTran).
        metrics: names from :data:`ALL_METRICS` (default: every metric the inputs allow).
        num_classes: number of target classes (default ``max(labels) + 1``).
        source_features, source_labels: for OTCE, each model's features of its source data
            (``[models, Ns, D]`` or list, same dims as ``features``) and the source labels
            (``[Ns]`` shared by all models, or ``[models, Ns]`` when their sources differ).
        key: seeds N-LEEP's mixture (default ``key(0)``; every model uses the same key).
        options: per-metric keyword options, e.g. ``{"logme": {"method": "icml"}, "gbc": {"pca_dim": None}}``.
        model_batch: models vmapped together inside the single jitted ``lax.map`` over models
            (``None``: all at once; ``"auto"``: 1 on CPU, all on GPU/TPU).

    Returns:
        ``{metric: np.ndarray [models]}`` (higher = more transferable).

    Example:
        >>> import numpy as np
        >>> from weightspace.selection import score_all
        >>> rng = np.random.default_rng(0)
        >>> y = np.arange(60) % 3
        >>> feats = rng.standard_normal((4, 60, 5)) + np.arange(4)[:, None, None] * np.eye(5)[y][None]
        >>> out = score_all(feats, y, metrics=["logme", "h_score"])
        >>> out["logme"].shape, bool(np.all(np.diff(out["h_score"]) > 0))
        ((4,), True)
    """
    if labels is None:
        raise InvalidValueError("score_all needs the target labels")
    n = int(np.asarray(labels).shape[0]) if np.ndim(labels) else 0
    y, c = as_labels(labels, n, num_classes=num_classes)
    options = dict(options or {})
    if model_batch == "auto":
        model_batch = 1 if on_cpu() else None
    if model_batch is not None and (not isinstance(model_batch, int) or model_batch < 1):
        raise InvalidValueError(f"model_batch must be a positive int, None or 'auto', got {model_batch!r}")
    if metrics is None:
        metrics = [
            m
            for m in ALL_METRICS
            if (m in FEATURE_METRICS and features is not None)
            or (m in PROB_METRICS and probs is not None)
            or (m in SOURCE_METRICS and features is not None and source_features is not None)
        ]
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        raise InvalidValueError(f"unknown metrics {unknown}; known: {list(ALL_METRICS)}")
    unknown_opts = [m for m in options if m not in ALL_METRICS]
    if unknown_opts:
        raise InvalidValueError(f"options for unknown metrics {unknown_opts}")
    need_f = [m for m in metrics if m in FEATURE_METRICS + SOURCE_METRICS]
    need_p = [m for m in metrics if m in PROB_METRICS]
    if need_f and features is None:
        raise InvalidValueError(f"metrics {need_f} need features")
    if need_p and probs is None:
        raise InvalidValueError(f"metrics {need_p} need probs")
    feats, fgroups = _group(features, "features", n) if features is not None else ([], [])
    prbs, pgroups = _group(probs, "probs", n) if probs is not None else ([], [])
    if features is not None and probs is not None and len(feats) != len(prbs):
        raise ShapeError(f"features are given for {len(feats)} models but probs for {len(prbs)}")
    num_models = len(feats) if features is not None else len(prbs)
    tables: dict[str, Any] = {"key": jax.random.key(0) if key is None else key}
    if "transrate" in metrics:
        index, counts = class_table(np.asarray(y), c)
        tables["index"], tables["counts"] = jnp.asarray(index), jnp.asarray(counts)
    src_items: list[Any] = []
    src_labels: list[Any] = []
    source_classes = 0
    if "otce" in metrics:
        if source_features is None or source_labels is None:
            raise InvalidValueError("otce needs source_features and source_labels")
        if isinstance(source_features, Sequence) and not isinstance(source_features, np.ndarray):
            src_items = [jnp.asarray(s) for s in source_features]
        else:
            src_items = list(jnp.asarray(source_features))
        if len(src_items) != num_models:
            raise ShapeError(f"source_features are given for {len(src_items)} models, features for {num_models}")
        ns = int(src_items[0].shape[0])
        sl = np.asarray(source_labels)
        sl = np.broadcast_to(sl, (num_models, ns)) if sl.ndim == 1 else sl
        if sl.shape != (num_models, ns):
            raise ShapeError(f"source_labels must be [{ns}] or [{num_models}, {ns}], got {sl.shape}")
        src_labels = [as_labels(sl[i], ns, name=f"source_labels[{i}]", min_classes=1)[0] for i in range(num_models)]
        source_classes = int(sl.max()) + 1
        for i, s in enumerate(src_items):
            if s.ndim != 2 or s.shape[0] != ns or s.shape[1] != feats[i].shape[1]:
                raise ShapeError(f"source_features[{i}] must be [{ns}, {feats[i].shape[1]}], got {tuple(s.shape)}")
    out: dict[str, np.ndarray] = {}
    for m in metrics:
        opts = dict(options.get(m, {}))
        if m == "otce":
            opts["source_classes"] = source_classes
        fn = _batched(m, tuple(sorted({**opts, "num_classes": c}.items())), model_batch)
        res = np.zeros((num_models,), np.float64)
        groups, items = (pgroups, prbs) if m in PROB_METRICS else (fgroups, feats)
        for idx in groups:
            x: Any = _stack(items, idx)
            if m == "otce":
                x = (_stack(src_items, idx).astype(x.dtype), jnp.stack([src_labels[i] for i in idx]), x)
            res[np.asarray(idx)] = np.asarray(fn(x, y, {k: tables[k] for k in _TABLES.get(m, ())}))
        out[m] = res
    return out

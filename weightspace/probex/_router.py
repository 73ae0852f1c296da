"""Routing a model to its tree's expert from its weights: k-means centres of a cheap, permutation-robust summary."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

from weightspace._errors import ConfigError, InvalidValueError, ShapeError

N_SINGULAR = 8
"""Singular values per weight matrix in :func:`weight_summary`."""


def weight_summary(params: Mapping[str, Any], *, n_singular: int = N_SINGULAR) -> Float[np.ndarray, "models features"]:
    """A permutation-robust summary of every model: per tensor (sorted names) mean, std, the 5/50/95 %
    quantiles, and for matrices the ``n_singular`` largest singular values (zero-padded).

    Every feature is invariant to permuting hidden neurons (and to reordering a conv's output
    channels), so fine-tunes of one base stay close whatever they learned, while bases differ.

    Args:
        params: tensor name -> ``[models, ...]``.
        n_singular: singular values per matrix.

    Returns:
        ``[models, features]`` float64.

    Example:
        >>> import numpy as np
        >>> w = np.random.default_rng(0).normal(size=(3, 4, 5))
        >>> f = weight_summary({"w": w})
        >>> f.shape, bool(np.allclose(f, weight_summary({"w": w[:, ::-1]})))
        ((3, 13), True)
    """
    if not params:
        raise ShapeError("weight_summary: no tensors")
    feats = []
    n = None
    for name in sorted(params):
        w = np.asarray(params[name], np.float64)
        if n is None:
            n = w.shape[0]
        if w.shape[0] != n:
            raise ShapeError(f"weight_summary: tensor {name!r} has {w.shape[0]} models, others {n}")
        flat = w.reshape(n, -1)
        feats += [
            flat.mean(1, keepdims=True),
            flat.std(1, keepdims=True),
            np.quantile(flat, [0.05, 0.5, 0.95], axis=1).T,
        ]
        if w.ndim >= 3:
            s = np.linalg.svd(w.reshape(n, w.shape[1], -1), compute_uv=False)[:, :n_singular]
            feats.append(np.pad(s, ((0, 0), (0, n_singular - s.shape[1]))))
    out = np.concatenate(feats, axis=1)
    if not np.isfinite(out).all():
        raise InvalidValueError(
            f"weight_summary: NaN/Inf in the weights of models {np.flatnonzero(~np.isfinite(out).all(1))[:8].tolist()}"
        )
    return out


def weight_sketch(params: Mapping[str, Any], *, dim: int = 32, seed: int = 0) -> Float[np.ndarray, "models features"]:
    """A random projection (Johnson-Lindenstrauss sketch) of every tensor's raw weights, ``dim`` features per
    tensor (sorted names), the projection fixed by ``seed`` and the tensor name.

    Fine-tunes of one base inherit its neuron order, so within a model tree raw weights need no
    permutation alignment: the distance between two fine-tunes of one base is far smaller than
    between two bases, and a sketch keeps those distances (up to a small distortion).

    Example:
        >>> import numpy as np
        >>> w = np.random.default_rng(0).normal(size=(3, 4, 5))
        >>> weight_sketch({"w": w}, dim=8).shape
        (3, 8)
    """
    import zlib

    if not params:
        raise ShapeError("weight_sketch: no tensors")
    feats = []
    for name in sorted(params):
        w = np.asarray(params[name], np.float32)
        flat = w.reshape(w.shape[0], -1)
        rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
        proj = rng.standard_normal((flat.shape[1], dim), dtype=np.float32) / np.float32(np.sqrt(dim))
        feats.append(flat @ proj)
    out = np.concatenate(feats, axis=1).astype(np.float64)
    if not np.isfinite(out).all():
        raise InvalidValueError(
            f"weight_sketch: NaN/Inf in the weights of models {np.flatnonzero(~np.isfinite(out).all(1))[:8].tolist()}"
        )
    return out


FEATURES = ("sketch", "summary")
"""Router features: ``sketch`` (:func:`weight_sketch` of the raw weights; the default: trees share
their base's neuron order) or ``summary`` (:func:`weight_summary`, permutation-invariant)."""


def _features(params: Mapping[str, Any], kind: str) -> np.ndarray:
    if kind == "sketch":
        return weight_sketch(params)
    if kind == "summary":
        return weight_summary(params)
    raise ConfigError(f"unknown router features {kind!r}; known: {FEATURES}")


def _signature(params: Mapping[str, Any]) -> str:
    return json.dumps(sorted((k, list(np.shape(v)[1:])) for k, v in params.items()))


def _kmeans(x: np.ndarray, k: int, *, seed: int, iters: int = 100, restarts: int = 10) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; the best of ``restarts`` by inertia. Returns centres."""
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(restarts):
        c = [x[rng.integers(len(x))]]
        for _ in range(1, k):
            d = np.min(((x[:, None] - np.asarray(c)[None]) ** 2).sum(-1), axis=1)
            p = d / d.sum() if d.sum() > 0 else np.full(len(x), 1 / len(x))
            c.append(x[rng.choice(len(x), p=p)])
        centres = np.asarray(c)
        for _ in range(iters):
            lab = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)
            new = np.array([x[lab == j].mean(0) if np.any(lab == j) else centres[j] for j in range(k)])
            if np.allclose(new, centres):
                break
            centres = new
        inertia = float(np.min(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1).sum())
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    assert best is not None
    return best


@dataclasses.dataclass(frozen=True)
class Router:
    """Nearest-centre routing of models to trees, one k-means per architecture signature.

    Models are first bucketed by their tensor shapes (a model can only go to a tree of its own
    shape); within a bucket the standardised features (:data:`FEATURES`) are clustered with k-means
    (``k`` = the number of trees of that shape) and each centre is named by the majority tree of
    the models it holds. Unsupervised clustering with a majority vote, not a classifier: the
    paper's observation is that trees are far apart in weight space.

    Attributes:
        buckets: signature -> ``{"mean", "std", "centres", "trees"}`` (lists, JSON-ready).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> a = {"w": 1.0 + 0.01 * rng.normal(size=(6, 4, 3))}; b = {"w": -1.0 + 0.01 * rng.normal(size=(6, 4, 3))}
        >>> r = Router.fit({"a": a, "b": b})
        >>> r.route({"w": np.concatenate([a["w"][:2], b["w"][:1]])})
        ['a', 'a', 'b']
    """

    buckets: dict[str, dict[str, list[Any]]]
    features: str = "sketch"

    @classmethod
    def fit(cls, trees: Mapping[str, Mapping[str, Any]], *, seed: int = 0, features: str = "sketch") -> Router:
        """Fit on ``tree -> params`` (each ``name -> [models, ...]``) of models whose tree is known.

        Args:
            trees: tree name -> parameters of (some of) its models.
            seed: k-means seed.
            features: :data:`FEATURES`.
        """
        if not trees:
            raise ConfigError("Router.fit: no trees")
        by_sig: dict[str, list[tuple[str, np.ndarray]]] = {}
        for t, p in trees.items():
            by_sig.setdefault(_signature(p), []).append((t, _features(p, features)))
        buckets = {}
        for sig, items in by_sig.items():
            x = np.concatenate([f for _, f in items])
            lab = np.concatenate([[i] * len(f) for i, (_, f) in enumerate(items)])
            mean, std = x.mean(0), x.std(0) + 1e-8
            z = (x - mean) / std
            k = len(items)
            centres = _kmeans(z, k, seed=seed) if k > 1 else z.mean(0, keepdims=True)
            assign = np.argmin(((z[:, None] - centres[None]) ** 2).sum(-1), axis=1)
            names = []
            for j in range(k):
                held = lab[assign == j]
                names.append(items[int(np.bincount(held, minlength=k).argmax())][0] if held.size else items[j][0])
            buckets[sig] = {"mean": mean.tolist(), "std": std.tolist(), "centres": centres.tolist(), "trees": names}
        return cls(buckets, features)

    @property
    def trees(self) -> list[str]:
        return sorted({t for b in self.buckets.values() for t in b["trees"]})

    def route(self, params: Mapping[str, Any], *, ids: Sequence[str] | None = None) -> list[str]:
        """The tree of every model of ``params`` (``name -> [models, ...]``, one architecture).

        Raises:
            ShapeError: no tree has this architecture (the message lists the models' shapes).
        """
        sig = _signature(params)
        if sig not in self.buckets:
            shapes = {k: list(np.shape(v)[1:]) for k, v in sorted(params.items())}
            who = f" (models {list(ids)[:4]})" if ids is not None else ""
            raise ShapeError(f"no expert tree has the tensor shapes {shapes}{who}; the router knows trees {self.trees}")
        b = self.buckets[sig]
        z = (_features(params, self.features) - np.asarray(b["mean"])) / np.asarray(b["std"])
        d = ((z[:, None] - np.asarray(b["centres"])[None]) ** 2).sum(-1)
        return [b["trees"][j] for j in np.argmin(d, axis=1)]

    def to_json(self) -> str:
        return json.dumps({"weightspace": "probex-router/1", "features": self.features, "buckets": self.buckets})

    @classmethod
    def from_json(cls, text: str) -> Router:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"router JSON is not valid ({e})") from e
        if d.get("weightspace") != "probex-router/1":
            raise ConfigError(f"not a ProbeX router (format {d.get('weightspace')!r})")
        return cls(d["buckets"], d.get("features", "sketch"))


def routing_accuracy(router: Router, trees: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Fraction of each tree's models routed to it, and ``"all"`` over every model.

    Example:
        >>> import numpy as np
        >>> a = {"w": np.ones((3, 2, 2))}; b = {"w": -np.ones((2, 2, 2))}
        >>> routing_accuracy(Router.fit({"a": a, "b": b}), {"a": a, "b": b})["all"]
        1.0
    """
    hits, total, out = 0, 0, {}
    for t, p in trees.items():
        got = router.route(p)
        h = sum(g == t for g in got)
        out[t] = h / len(got)
        hits, total = hits + h, total + len(got)
    out["all"] = hits / max(total, 1)
    return out

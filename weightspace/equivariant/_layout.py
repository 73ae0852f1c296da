"""Weight space as data: the neuron layout of MLP/CNN/SIREN models and their padded, masked features.

A network of ``L`` weight layers has ``L + 1`` neuron layers: the inputs (pixels, coordinates or
image channels), the hidden neurons (dense units or conv channels) and the outputs. Weight layer
``l`` connects neuron layer ``l`` (its columns) to neuron layer ``l + 1`` (its rows); a conv
kernel ``[out, in, kh, kw]`` is an edge between two channels carrying ``kh * kw`` features. Only
the hidden neuron layers ``1 .. L - 1`` are symmetric (permutable).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from weightspace._errors import ConfigError, InvalidValueError, ShapeError
from weightspace.nets import ACTIVATIONS, CNN, MLP, SIREN, Architecture

ACTIVATION_IDS: dict[str, int] = {name: i for i, name in enumerate(sorted(ACTIVATIONS))}
"""Activation name -> integer id (the encoders embed the activation of each model)."""

COVERED = ("MLP", "CNN", "SIREN")
"""Architectures the equivariant encoders cover."""


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One weight layer: its tensor names, ``[out, in, *kernel]`` shape and kind (``dense``/``conv``)."""

    weight: str
    bias: str
    out: int
    inp: int
    kernel: tuple[int, ...]

    @property
    def taps(self) -> int:
        """Features per edge (``kh * kw`` for a conv, 1 for a dense layer)."""
        return int(np.prod(self.kernel)) if self.kernel else 1


def activation_of(arch: Architecture) -> str:
    """The hidden activation of a covered architecture (``"sin"`` for a SIREN)."""
    if isinstance(arch, SIREN):
        return "sin"
    return str(arch.activation)  # type: ignore[attr-defined]


def layer_specs(arch: Architecture) -> tuple[LayerSpec, ...]:
    """The weight layers of an MLP, CNN or SIREN in forward order.

    Raises:
        ConfigError: the architecture is not covered (the message names it).

    Example:
        >>> from weightspace.nets import CNN
        >>> [(s.weight, s.out, s.inp, s.taps) for s in layer_specs(CNN(channels=(8, 16)))]
        [('convs.0.weight', 8, 1, 9), ('convs.1.weight', 16, 8, 9), ('head.weight', 10, 16, 1)]
    """
    shapes = arch.param_shapes()
    if isinstance(arch, MLP | SIREN):
        n = len(arch.widths) - 1
        names = [f"layers.{i}" for i in range(n)]
    elif isinstance(arch, CNN):
        names = [f"convs.{i}" for i in range(len(arch.channels))]
        names += [f"dense.{j}" for j in range(len(arch.dense))] + ["head"]
    else:
        raise ConfigError(
            f"the equivariant encoders do not cover architecture {type(arch).__name__} "
            f"({arch.to_config() if hasattr(arch, 'to_config') else arch}); covered: {', '.join(COVERED)}"
        )
    out = []
    for nm in names:
        w = shapes[f"{nm}.weight"]
        out.append(LayerSpec(f"{nm}.weight", f"{nm}.bias", int(w[0]), int(w[1]), tuple(int(k) for k in w[2:])))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The static shape of a padded weight space: widths of every neuron layer and taps per layer.

    Hashable, so it can key compiled functions and buckets. ``widths[0]`` is the input width,
    ``widths[-1]`` the output width, ``taps[l]`` the features per edge of weight layer ``l``.
    """

    widths: tuple[int, ...]
    taps: tuple[int, ...]

    @property
    def depth(self) -> int:
        return len(self.taps)

    @classmethod
    def of(cls, arch: Architecture) -> Layout:
        specs = layer_specs(arch)
        return cls((specs[0].inp, *(s.out for s in specs)), tuple(s.taps for s in specs))

    def signature(self) -> tuple[int, ...]:
        """What must agree for two layouts to share a bucket: depth and taps (widths are padded)."""
        return (self.depth, *self.taps)


class WeightFeatures(NamedTuple):
    """One model's weight space (or a stack of them, models on axis 0 of every leaf).

    Attributes:
        weights: per weight layer ``[rows=n_{l+1}, cols=n_l, channels]`` (conv taps are channels).
        biases: per weight layer ``[n_{l+1}, channels]``.
        masks: per neuron layer ``[n_l]``: 1 for real neurons, 0 for padding.
        activation: ``[]`` int32 id of the hidden activation (:data:`ACTIVATION_IDS`).
    """

    weights: tuple[Float[Array, "rows cols channels"], ...]
    biases: tuple[Float[Array, "rows channels"], ...]
    masks: tuple[Float[Array, " neurons"], ...]
    activation: Array


class NeuronGraph(NamedTuple):
    """Hidden state of the neuron-graph encoder: node states per neuron layer, edge states per weight layer."""

    nodes: tuple[Float[Array, "neurons channels"], ...]
    edges: tuple[Float[Array, "rows cols channels"], ...]
    masks: tuple[Float[Array, " neurons"], ...]


def layout_of(x: WeightFeatures | NeuronGraph) -> Layout:
    """The layout of (unbatched) features, checking that consecutive layers agree."""
    ws = x.weights if isinstance(x, WeightFeatures) else x.edges
    widths = tuple(int(m.shape[-1]) for m in x.masks)
    if len(widths) != len(ws) + 1:
        raise ShapeError(f"{len(ws)} weight layers need {len(ws) + 1} neuron masks, got {len(widths)}")
    for i, w in enumerate(ws):
        if w.ndim != 3 or (int(w.shape[0]), int(w.shape[1])) != (widths[i + 1], widths[i]):
            raise ShapeError(
                f"weight layer {i} has shape {tuple(w.shape)}, but its neuron masks give "
                f"[{widths[i + 1]}, {widths[i]}, channels]: widths must match the masks (pad with masks)"
            )
    return Layout(widths, tuple(int(w.shape[-1]) for w in ws))


# ---- zoo -> features -------------------------------------------------------------------------
def _one_zoo_features(zoo: Any, widths: Sequence[int]) -> WeightFeatures:
    """Padded features ``[models, ...]`` of one zoo (NumPy)."""
    specs = layer_specs(zoo.arch)
    n = len(zoo)
    real = (specs[0].inp, *(s.out for s in specs))
    # Host arrays in the device-array slots: jit converts them when they enter a program.
    weights: list[Any] = []
    biases: list[Any] = []
    masks: list[Any] = []
    for i, s in enumerate(specs):
        w = np.asarray(zoo.params[s.weight], np.float32).reshape(n, s.out, s.inp, s.taps)
        b = np.asarray(zoo.params[s.bias], np.float32)
        wp = np.zeros((n, widths[i + 1], widths[i], s.taps), np.float32)
        wp[:, : s.out, : s.inp] = w
        bp = np.zeros((n, widths[i + 1], 1), np.float32)
        bp[:, : s.out, 0] = b
        weights.append(wp)
        biases.append(bp)
    for i, r in enumerate(real):
        m = np.zeros((n, widths[i]), np.float32)
        m[:, :r] = 1.0
        masks.append(m)
    act: Any = np.full((n,), ACTIVATION_IDS[activation_of(zoo.arch)], np.int32)
    return WeightFeatures(tuple(weights), tuple(biases), tuple(masks), act)


@dataclasses.dataclass
class Bucket:
    """Models whose weight spaces share depth and taps, padded to common widths.

    Attributes:
        layout: the padded :class:`Layout`.
        features: :class:`WeightFeatures` with the models axis first (NumPy arrays).
        ids: model ids.
        rows: per model ``(zoo index, row in that zoo)`` in the input order of :func:`bucketize`.
    """

    layout: Layout
    features: WeightFeatures
    ids: list[str]
    rows: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, idx: np.ndarray | Sequence[int]) -> Bucket:
        idx = np.asarray(idx, np.int64)
        f = jax.tree_util.tree_map(lambda a: a[idx], self.features)
        return Bucket(self.layout, f, [self.ids[i] for i in idx], [self.rows[i] for i in idx])


def _zoos_of(source: Any) -> list[Any]:
    from weightspace.zoo import Collection, Zoo

    if isinstance(source, Zoo):
        return [source]
    if isinstance(source, Collection):
        return list(source.zoos)
    if isinstance(source, Iterable) and not isinstance(source, str | bytes):
        out: list[Any] = []
        for s in source:
            out.extend(_zoos_of(s))
        return out
    raise ConfigError(f"expected a Zoo, a Collection or a sequence of them, got {type(source).__name__}")


def check_finite_zoo(zoo: Any) -> None:
    """InvalidValueError naming the models and tensors with NaN/Inf weights."""
    bad: list[str] = []
    for k, v in zoo.params.items():
        a = np.asarray(v)
        rows = np.flatnonzero(~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1))
        if rows.size:
            ids = [zoo.ids[i] for i in rows[:5]]
            bad.append(f"{k} of {rows.size} model(s) (e.g. {ids})")
    if bad:
        raise InvalidValueError(f"zoo {zoo.name!r} has NaN/Inf weights in " + "; ".join(bad))


def bucketize(
    source: Any, *, widths: dict[tuple[int, ...], tuple[int, ...]] | None = None, pad: bool = True
) -> list[Bucket]:
    """Turn zoos into buckets of padded, masked weight features (one bucket per depth/taps signature).

    Args:
        source: a Zoo, a Collection, or a sequence of them.
        widths: per layout signature, the widths to pad to (default: the largest in the source);
            an encoder that must see the same shapes at training and inference passes them.
        pad: pad zoos of different widths into one bucket with masks; ``False`` raises instead.

    Returns:
        Buckets in order of first appearance.

    Raises:
        ConfigError: an architecture the encoders do not cover (named).
        ShapeError: different widths in one signature with ``pad=False``, or wider than ``widths``.
        InvalidValueError: NaN/Inf weights (the models and tensors are named).

    Example:
        >>> import jax
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Zoo
        >>> a = Zoo.init(MLP(in_features=4, hidden=(8,), out_features=3), 2, key=jax.random.key(0))
        >>> b = Zoo.init(MLP(in_features=4, hidden=(6,), out_features=2), 3, key=jax.random.key(1))
        >>> [(bk.layout.widths, len(bk)) for bk in bucketize([a, b])]
        [((4, 8, 3), 5)]
    """
    zoos = _zoos_of(source)
    groups: dict[tuple[int, ...], list[int]] = {}
    layouts = []
    for zi, z in enumerate(zoos):
        lay = Layout.of(z.arch)
        check_finite_zoo(z)
        layouts.append(lay)
        groups.setdefault(lay.signature(), []).append(zi)
    out = []
    for sig, members in groups.items():
        ws = [layouts[i].widths for i in members]
        biggest = tuple(max(w[j] for w in ws) for j in range(len(ws[0])))
        if not pad and len(set(ws)) > 1:
            names = ", ".join(f"{zoos[i].name!r} {layouts[i].widths}" for i in members[:4])
            raise ShapeError(
                f"zoos of one layout have different widths ({names}); pass pad=True to pad them with neuron masks"
            )
        target = tuple(widths[sig]) if widths is not None and sig in widths else biggest
        if any(b > t for b, t in zip(biggest, target, strict=True)):
            raise ShapeError(f"models of widths {biggest} do not fit the encoder's padded widths {target}")
        feats = [_one_zoo_features(zoos[i], target) for i in members]
        f = jax.tree_util.tree_map(lambda *a: np.concatenate(a), *feats)
        ids = [mid for i in members for mid in zoos[i].ids]
        rows = [(i, r) for i in members for r in range(len(zoos[i]))]
        out.append(Bucket(Layout(target, layouts[members[0]].taps), f, ids, rows))
    return out


def features_of(zoo: Any) -> WeightFeatures:
    """Unpadded features ``[models, ...]`` of ONE zoo (masks all ones).

    Example:
        >>> import jax
        >>> from weightspace.nets import SIREN
        >>> from weightspace.zoo import Zoo
        >>> f = features_of(Zoo.init(SIREN(hidden=(8, 8)), 2, key=jax.random.key(0)))
        >>> [w.shape for w in f.weights]
        [(2, 8, 2, 1), (2, 8, 8, 1), (2, 1, 8, 1)]
    """
    check_finite_zoo(zoo)
    return jax.tree_util.tree_map(jnp.asarray, _one_zoo_features(zoo, Layout.of(zoo.arch).widths))


# ---- the permutation action ------------------------------------------------------------------
def permute(x: Any, perms: Sequence[Array | None]) -> Any:
    """Apply one permutation per neuron layer to (unbatched) features or graph states.

    ``perms[l]`` reorders neuron layer ``l`` (``None``: unchanged). Weight/edge layer ``l`` has its
    rows permuted by ``perms[l + 1]`` and its columns by ``perms[l]``; biases and node states
    follow their neuron layer; masks move with their neurons.
    """

    def rows(a: Array, p: Array | None) -> Array:
        return a if p is None else a[p]

    def cols(a: Array, p: Array | None) -> Array:
        return a if p is None else a[:, p]

    masks = tuple(rows(m, p) for m, p in zip(x.masks, perms, strict=True))
    if isinstance(x, WeightFeatures):
        ws = tuple(cols(rows(w, perms[i + 1]), perms[i]) for i, w in enumerate(x.weights))
        bs = tuple(rows(b, perms[i + 1]) for i, b in enumerate(x.biases))
        return WeightFeatures(ws, bs, masks, x.activation)
    if isinstance(x, NeuronGraph):
        es = tuple(cols(rows(e, perms[i + 1]), perms[i]) for i, e in enumerate(x.edges))
        ns = tuple(rows(n, p) for n, p in zip(x.nodes, perms, strict=True))
        return NeuronGraph(ns, es, masks)
    raise ConfigError(f"cannot permute a {type(x).__name__}; expected WeightFeatures or NeuronGraph")


def random_hidden_perms(layout: Layout, key: Array, *, masks: Sequence[Array] | None = None) -> list[Array | None]:
    """A random permutation of every hidden neuron layer (inputs and outputs stay put).

    With ``masks``, real neurons are permuted among themselves and padding stays at the end, as
    padding of a real model always is.
    """
    perms: list[Array | None] = [None]
    keys = jax.random.split(key, max(1, layout.depth))
    for i in range(1, layout.depth):
        n = layout.widths[i]
        if masks is None:
            perms.append(jax.random.permutation(keys[i], n))
        else:
            # sort real neurons by a random key, padding (mask 0) last
            r = jax.random.uniform(keys[i], (n,)) + 2.0 * (1.0 - jnp.asarray(masks[i]))
            perms.append(jnp.argsort(r))
    perms.append(None)
    return perms

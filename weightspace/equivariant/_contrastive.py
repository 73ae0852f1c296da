"""Contrastive training of the equivariant encoders on :func:`weightspace.learn.fit`.

A batch holds a fixed number of models of every bucket (layout); each model is embedded in two
augmented views. With task labels (a class set, an INR's class), the loss is the supervised
NT-Xent (InfoNCE) of Khosla et al. 2020 at temperature ``tau``: the positives of a view are its
other view and every view of another model of the same task (models trained independently on the
same task), the negatives everything else. The margin loss of the seed proposal is an option.

Augmentations act on weight features inside the jitted step: Gaussian noise scaled to each
layer's RMS, weight dropout, and the exact symmetries the encoders are *not* built to ignore
(positive per-neuron rescaling for ReLU nets, sign flips for tanh/sin nets). A hidden-neuron
permutation is an exact symmetry too, but the encoders are exactly invariant to it: a positive made
only of a permutation has the same embedding as its anchor, the loss has no gradient from that
pair, and the encoder learns nothing from it (``permute=True`` is there to show it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float, Int

from weightspace._backend import small_heaps_cpu_options
from weightspace._errors import ConfigError, InvalidValueError
from weightspace.equivariant._graph import GraphEncoderConfig
from weightspace.equivariant._layout import ACTIVATION_IDS, Bucket, Layout, WeightFeatures, permute, random_hidden_perms
from weightspace.equivariant._np import NPEncoderConfig
from weightspace.nets._base import gelu_tanh
from weightspace.train import TrainConfig

LOSSES = ("ntxent", "margin")

DEFAULT_TRAIN = TrainConfig(steps=200, batch_size=32)
"""Contrastive training's optimisation when none is given: 200 steps of 32 models (two views each)."""

_HOMOGENEOUS = np.array([ACTIVATION_IDS[a] for a in ("relu", "leaky_relu", "identity")])
_ODD = np.array([ACTIVATION_IDS[a] for a in ("tanh", "sin", "identity")])


@dataclasses.dataclass(frozen=True)
class Augment:
    """Weight-space augmentations of a positive view (all applied per model, inside the jitted step).

    Attributes:
        noise: std of Gaussian noise relative to each layer's RMS.
        dropout: probability of zeroing a weight (survivors are scaled by ``1 / (1 - p)``).
        rescale: per-neuron positive scales ~ logU(1/rescale, rescale) on ReLU nets (exact symmetry).
        flip: sign flips of hidden neurons on tanh/sin nets with this probability (exact symmetry).
        permute: also permute hidden neurons (exact symmetry; teaches an invariant encoder nothing).
    """

    noise: float = 0.05
    dropout: float = 0.05
    rescale: float = 2.0
    flip: float = 0.5
    permute: bool = False

    def __post_init__(self) -> None:
        if self.noise < 0 or not 0 <= self.dropout < 1 or self.rescale < 1 or not 0 <= self.flip <= 1:
            raise ConfigError(f"bad augmentation settings {self}")


@dataclasses.dataclass(frozen=True)
class ContrastiveConfig:
    """How contrastive training views and compares models; the optimisation (steps, models per
    step, learning rate, ...) is a :class:`~weightspace.learn.TrainConfig`.

    Attributes:
        augmentation: the weight-space augmentations of a positive view (:class:`Augment`).
        tau: NT-Xent temperature.
        loss: ``"ntxent"`` or ``"margin"`` (:func:`contrastive_loss`).
        margin: the margin of ``loss="margin"``.
        proj_dim: projection head output size.

    Example:
        >>> ContrastiveConfig(tau=0.2).loss
        'ntxent'
    """

    augmentation: Augment = Augment()
    tau: float = 0.1
    loss: str = "ntxent"
    margin: float = 0.5
    proj_dim: int = 32

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown contrastive loss {self.loss!r}; known: {list(LOSSES)}")
        if not self.tau > 0:
            raise ConfigError(f"ContrastiveConfig.tau must be > 0, got {self.tau}")
        if not isinstance(self.proj_dim, int) or self.proj_dim < 1:
            raise ConfigError(f"ContrastiveConfig.proj_dim must be an int >= 1, got {self.proj_dim!r}")


def augment(x: WeightFeatures, key: Array, aug: Augment) -> WeightFeatures:
    """One randomly augmented view of ONE model's features (padding stays zero)."""
    k_sym, k_noise, k_drop, k_perm = jax.random.split(key, 4)
    depth = len(x.weights)
    ws, bs = list(x.weights), list(x.biases)
    homog = jnp.isin(x.activation, _HOMOGENEOUS)
    odd = jnp.isin(x.activation, _ODD)
    for i in range(1, depth):  # hidden neuron layer i sits between weight layers i-1 and i
        n = x.masks[i].shape[0]
        ka, kb = jax.random.split(jax.random.fold_in(k_sym, i))
        log_s = jax.random.uniform(ka, (n,), minval=-np.log(aug.rescale), maxval=np.log(aug.rescale))
        sign = jnp.where(jax.random.bernoulli(kb, aug.flip, (n,)), -1.0, 1.0)
        s = jnp.where(homog, jnp.exp(log_s), 1.0) * jnp.where(odd, sign, 1.0)
        ws[i - 1] = ws[i - 1] * s[:, None, None]
        bs[i - 1] = bs[i - 1] * s[:, None]
        ws[i] = ws[i] / s[None, :, None]
    out_w, out_b = [], []
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        m2 = x.masks[i + 1][:, None, None] * x.masks[i][None, :, None]
        cnt = jnp.maximum(m2.sum() * w.shape[-1], 1.0)
        rms = jnp.sqrt((w * w * m2).sum() / cnt + 1e-12)
        kn, kd = jax.random.fold_in(k_noise, i), jax.random.fold_in(k_drop, i)
        w = w + aug.noise * rms * jax.random.normal(kn, w.shape)
        b = b + aug.noise * rms * jax.random.normal(jax.random.fold_in(kn, 1), b.shape)
        if aug.dropout > 0:
            w = jnp.where(jax.random.bernoulli(kd, 1 - aug.dropout, w.shape), w / (1 - aug.dropout), 0.0)
        out_w.append(w * m2)
        out_b.append(b * x.masks[i + 1][:, None])
    y = WeightFeatures(tuple(out_w), tuple(out_b), x.masks, x.activation)
    if aug.permute:
        from weightspace.equivariant._layout import layout_of

        y = permute(y, random_hidden_perms(layout_of(y), k_perm, masks=y.masks))
    return y


def contrastive_loss(
    z: Float[Array, "n d"],
    labels: Int[Array, " n"],
    *,
    tau: float = 0.1,
    loss: str = "ntxent",
    margin: float = 0.5,
    standardize: bool = True,
) -> Array:
    """Supervised NT-Xent (``loss="ntxent"``) or a cosine margin loss (``"margin"``) over a batch of views.

    .. math::
        \\mathrm{NT\\text{-}Xent} = -\\frac{1}{n}\\sum_i \\frac{1}{|P(i)|}\\sum_{p \\in P(i)}
            \\log \\frac{e^{s_{ip}/\\tau}}{\\sum_{j \\ne i} e^{s_{ij}/\\tau}}, \\qquad
        \\mathrm{margin} = \\mathrm{mean}_{i \\ne j}\\, y_{ij} (1 - s_{ij}) + (1 - y_{ij}) \\max(0, s_{ij} - m)

    with ``s`` the cosine similarity of the batch-standardised projections (``standardize``: each
    dimension centred and scaled over the batch), ``P(i)`` the views with the label of ``i`` (``j != i``).
    (The seed proposal writes the margin loss with ``+ y sim``; read as a distance ``1 - sim`` it
    is the usual contrastive loss, which is what this computes.)

    Example:
        >>> import jax.numpy as jnp
        >>> z = jnp.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
        >>> good = contrastive_loss(z, jnp.array([0, 0, 1, 1]))
        >>> bad = contrastive_loss(z, jnp.array([0, 1, 0, 1]))
        >>> bool(good < bad)
        True
    """
    if loss not in LOSSES:
        raise ConfigError(f"unknown contrastive loss {loss!r}; known: {list(LOSSES)}")
    if standardize:
        # Batch-standardised projections (the role of SimCLR's BatchNorm in the projection head): a
        # common component shared by every view cannot dominate the cosines, so the loss cannot
        # park all embeddings on one point (without it, training sat on the collapsed plateau
        # loss = log(n - 1) for hundreds of steps).
        z = (z - z.mean(0)) / (z.std(0) + 1e-6)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-8)
    sim = z @ z.T
    n = z.shape[0]
    eye = jnp.eye(n, dtype=bool)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    if loss == "margin":
        per = jnp.where(pos, 1.0 - sim, jnp.maximum(0.0, sim - margin))
        return jnp.sum(jnp.where(eye, 0.0, per)) / (n * (n - 1))
    logits = jnp.where(eye, -jnp.inf, sim / tau)
    logp = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    n_pos = jnp.maximum(pos.sum(-1), 1)
    return -jnp.mean(jnp.sum(jnp.where(pos, logp, 0.0), -1) / n_pos)


class ContrastiveModel(nnx.Module):
    """An encoder plus the projection head the contrastive loss sees (retrieval uses the encoder only)."""

    def __init__(
        self, encoder: nnx.Module, *, proj_dim: int = 32, config: ContrastiveConfig | None = None, rngs: nnx.Rngs
    ) -> None:
        self.encoder = encoder
        # static (graph definition): the training loss reads it, equal configs share one compiled step
        self.config = config or ContrastiveConfig(proj_dim=proj_dim)
        d = encoder.config.embed_dim  # type: ignore[attr-defined]
        self.proj1 = nnx.Linear(d, d, rngs=rngs)
        self.proj2 = nnx.Linear(d, self.config.proj_dim, rngs=rngs)

    def __call__(self, x: WeightFeatures) -> Array:
        return self.proj2(gelu_tanh(self.proj1(self.encoder(x))))


EncoderConfig = NPEncoderConfig | GraphEncoderConfig
"""The frozen settings of an encoder: :class:`NPEncoderConfig` or :class:`GraphEncoderConfig`."""

_ENCODER_CONFIGS: dict[str, type[NPEncoderConfig] | type[GraphEncoderConfig]] = {
    "np": NPEncoderConfig,
    "graph": GraphEncoderConfig,
}


def encoder_config(d: Mapping[str, Any]) -> EncoderConfig:
    """An :data:`EncoderConfig` from its JSON form (``to_dict()``: a ``kind``, ``np`` or ``graph``,
    and the fields).

    Example:
        >>> encoder_config({"kind": "graph", "taps": [1], "rounds": 1})
        GraphEncoderConfig(taps=(1,), width=32, rounds=1, embed_dim=64, max_inputs=784, max_outputs=10, max_depth=8)
    """
    if not isinstance(d, Mapping):
        raise ConfigError(f"an encoder config must be a mapping with a 'kind', got {type(d).__name__}")
    cfg = dict(d)
    kind = cfg.pop("kind", None)
    if kind not in _ENCODER_CONFIGS:
        raise ConfigError(f"unknown encoder kind {kind!r}; known: {sorted(_ENCODER_CONFIGS)}")
    cls = _ENCODER_CONFIGS[kind]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"bad {kind} encoder config: unknown fields {unknown}; known: {sorted(known)}")
    return cls(**cfg)


def build_encoder(config: EncoderConfig | Mapping[str, Any], *, seed: int = 0) -> nnx.Module:
    """An :class:`NPEncoder` or :class:`GraphEncoder` from its config (an :data:`EncoderConfig`, or
    its JSON form as saved next to checkpoints), initialised from ``nnx.Rngs(seed)``.

    Example:
        >>> build_encoder(NPEncoderConfig(taps=(1,), width=8, embed_dim=16)).config.embed_dim
        16
    """
    cfg = config if isinstance(config, NPEncoderConfig | GraphEncoderConfig) else encoder_config(config)
    return cfg.build(seed=seed)


def _two_view_loss(model: ContrastiveModel, batch: Any, key: Array) -> tuple[Array, dict[str, Array]]:
    """``fit``'s loss: two augmented views per model, concatenated over buckets."""
    cfg = model.config
    zs, ys = [], []
    for b, (x, y) in enumerate(zip(batch["x"], batch["y"], strict=True)):
        n = y.shape[0]
        keys = jax.random.split(jax.random.fold_in(key, b), 2 * n).reshape(2, n)
        for v in range(2):
            xv = jax.vmap(lambda xi, ki: augment(xi, ki, cfg.augmentation))(x, keys[v])
            zs.append(jax.vmap(model)(xv))
            ys.append(y)
    z, lab = jnp.concatenate(zs), jnp.concatenate(ys)
    return contrastive_loss(z, lab, tau=cfg.tau, loss=cfg.loss, margin=cfg.margin), {}


def step_compiler_options(encoder: nnx.Module, batches: Sequence[tuple[Layout, int]]) -> dict[str, Any]:
    """XLA options for a training step of ``encoder`` over ``(layout, models per view)`` batches.

    The step's largest intermediates are the per-entry features of the largest weight layer,
    ``[models, rows, cols, max(width, taps)]`` in float32; when they are small, the step's
    temporary memory is split into heaps that glibc reuses (:func:`weightspace._backend.small_heaps_cpu_options`).

    Example:
        >>> from flax import nnx
        >>> from weightspace.equivariant import NPEncoder
        >>> from weightspace.equivariant._contrastive import step_compiler_options
        >>> from weightspace.equivariant._layout import Layout
        >>> enc = NPEncoder(taps=(1,), width=16, max_inputs=784, rngs=nnx.Rngs(0))
        >>> step_compiler_options(enc, [(Layout((2, 32, 32, 1), (1, 1, 1)), 64)])  # 4 MiB: SIRENs
        {'xla_multiheap_size_constraint_per_heap': 16777216}
        >>> step_compiler_options(enc, [(Layout((784, 64, 10), (1, 1)), 64)])  # 205 MB: MLP-784
        {}
    """
    width = int(encoder.config.width)  # type: ignore[attr-defined]
    largest = max(
        n * max(a * b for a, b in zip(lay.widths, lay.widths[1:], strict=False)) * max(width, *lay.taps) * 4
        for lay, n in batches
    )
    return dict(small_heaps_cpu_options(largest))


def task_labels(values: Sequence[Any]) -> np.ndarray:
    """Integer task ids from hashable task descriptions (class sets become frozensets)."""
    keys = [frozenset(v) if isinstance(v, list | tuple | set) else v for v in values]
    uniq: dict[Any, int] = {}
    return np.array([uniq.setdefault(k, len(uniq)) for k in keys], np.int64)


def _sampler(
    buckets: Sequence[Bucket],
    labels: Sequence[np.ndarray],
    train: Sequence[np.ndarray],
    sizes: Sequence[int],
    seed: int,
) -> Callable[[Any, int], Any]:
    """Per bucket ``sizes[b]`` train models a step: half anchors, half a same-task partner when one exists."""
    groups = []
    for lab, tr in zip(labels, train, strict=True):
        g: dict[int, list[int]] = {}
        for i in tr:
            g.setdefault(int(lab[i]), []).append(int(i))
        groups.append(g)

    def sample(key: Any, step: int) -> Any:
        rng = np.random.default_rng([seed, step])
        xs, ys = [], []
        for b, bucket in enumerate(buckets):
            tr, lab, n = train[b], labels[b], sizes[b]
            anchors = rng.choice(tr, size=(n + 1) // 2, replace=len(tr) < (n + 1) // 2)
            partners = []
            for a in anchors:
                same = [j for j in groups[b][int(lab[a])] if j != a]
                partners.append(rng.choice(same) if same else rng.choice(tr))
            idx = np.concatenate([anchors, np.asarray(partners, np.int64)])[:n]
            xs.append(jax.tree_util.tree_map(lambda a, idx=idx: a[idx], bucket.features))
            ys.append(lab[idx].astype(np.int32))
        return {"x": tuple(xs), "y": tuple(ys)}

    return sample


def train_contrastive(
    encoder: nnx.Module,
    buckets: Sequence[Bucket],
    labels: Sequence[np.ndarray],
    *,
    train: Sequence[np.ndarray] | None = None,
    config: ContrastiveConfig = ContrastiveConfig(),
    train_config: TrainConfig = DEFAULT_TRAIN,
    val_fn: Callable[[nnx.Module], float] | None = None,
    checkpoint_dir: Any = None,
    progress: bool | None = None,
    optimizer: optax.GradientTransformation | None = None,
) -> tuple[ContrastiveModel, Any]:
    """Train ``encoder`` contrastively on the models of ``buckets`` (in place) with :func:`weightspace.learn.fit`.

    Args:
        encoder: an :class:`NPEncoder` or :class:`GraphEncoder`.
        buckets: from :func:`~weightspace.equivariant.bucketize`.
        labels: per bucket, an int task id per model (:func:`task_labels`); same id = positive.
        train: per bucket, the model indices to train on (default all).
        config: a :class:`ContrastiveConfig` (augmentations, temperature, loss, projection size).
        train_config: the optimisation (default :data:`DEFAULT_TRAIN`); its ``batch_size`` is the
            models per step over all buckets (each seen in two views), split by bucket size.
        val_fn: ``encoder -> score`` (higher is better) for early stopping / best state.
        checkpoint_dir, progress, optimizer: passed to :func:`weightspace.learn.fit` (pass the same
            optimizer object to several calls and their train steps compile once).

    Returns:
        ``(ContrastiveModel, FitReport)``; ``model.encoder`` is ``encoder``, trained.
    """
    from weightspace.learn import fit

    if not isinstance(config, ContrastiveConfig):
        raise ConfigError(f"train_contrastive: config must be a ContrastiveConfig, got {type(config).__name__}")
    if not isinstance(train_config, TrainConfig):
        raise ConfigError(f"train_contrastive: train_config must be a TrainConfig, got {type(train_config).__name__}")
    batch_size = train_config.batch_size
    if len(labels) != len(buckets):
        raise InvalidValueError(f"{len(labels)} label arrays for {len(buckets)} buckets")
    train = [np.arange(len(b)) for b in buckets] if train is None else [np.asarray(t, np.int64) for t in train]
    keep = [i for i, t in enumerate(train) if len(t)]
    if not keep:
        raise InvalidValueError("no training models")
    buckets, labels, train = [buckets[i] for i in keep], [labels[i] for i in keep], [train[i] for i in keep]
    # per-bucket batch shares from the bucket sizes (not the split): other splits/seeds reuse the compiled step
    total = sum(len(b) for b in buckets)
    sizes = [max(2, round(batch_size * len(b) / total)) for b in buckets]
    model = ContrastiveModel(encoder, config=config, rngs=nnx.Rngs(train_config.seed + 1))
    wrapped = None if val_fn is None else (lambda m: val_fn(m.encoder))
    report = fit(
        model,
        _two_view_loss,
        None,
        config=train_config,
        val_fn=wrapped,
        checkpoint_dir=checkpoint_dir,
        sample=_sampler(buckets, labels, train, sizes, train_config.seed),
        progress=progress,
        optimizer=optimizer,
        compiler_options=step_compiler_options(encoder, [(b.layout, n) for b, n in zip(buckets, sizes)]),
    )
    return model, report


def save_encoder(encoder: nnx.Module, path: Any, *, extra: Mapping[str, Any] | None = None) -> Path:
    """Save an encoder (orbax, via :func:`weightspace.learn.save_module`) with its config."""
    from weightspace.learn import save_module

    cfg = {"encoder": encoder.config.to_dict(), **(dict(extra) if extra else {})}  # type: ignore[attr-defined]
    json.dumps(cfg)  # fail early on non-JSON extras
    return save_module(encoder, path, config=cfg)


def load_encoder(path: Any) -> nnx.Module:
    """Load an encoder saved by :func:`save_encoder` (a ``weightspace`` error if it is not one)."""
    from weightspace.learn import load_module

    return load_module(path, lambda cfg: build_encoder(cfg["encoder"]))

"""The ProbeX module (Flax NNX): learned probes on one layer, a shared projection, per-probe encoders."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from weightspace._errors import ConfigError

READOUTS = ("classes", "zero-shot")
"""How an expert reads out its target, which is always a model's class set (the ``multilabel``
:class:`~weightspace.learn.Task`): ``classes``, one logit per class (BCE); ``zero-shot``, the
representation is mapped into a text-embedding space and scored against class-prompt embeddings."""


@dataclasses.dataclass(frozen=True)
class ProbeXConfig:
    """The ProbeX method's settings: what a user chooses (the layer's shape comes from the data).

    Attributes:
        r_u: number of learned probes (``U`` is ``[d_W, r_U]``).
        r_v: width of the shared projection (``V`` is ``[d_H, r_V]``).
        r_t: representation width (``e`` in ``R^{r_T}``).
        readout: one of :data:`READOUTS`: ``classes`` (a logit per training class) or
            ``zero-shot`` (a vector in a text-embedding space, scored against class prompts).
        temperature: softmax temperature of the zero-shot cosine logits.

    Example:
        >>> ProbeXConfig().r_u, ProbeXConfig(r_u=32).replace(readout="zero-shot").readout
        (128, 'zero-shot')
    """

    r_u: int = 128
    r_v: int = 128
    r_t: int = 512
    readout: str = "classes"
    temperature: float = 0.07

    def __post_init__(self) -> None:
        for k in ("r_u", "r_v", "r_t"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"ProbeXConfig.{k} must be a positive int, got {v!r}")
        if self.readout not in READOUTS:
            raise ConfigError(f"ProbeXConfig.readout must be one of {READOUTS}, got {self.readout!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"ProbeXConfig.temperature must be > 0, got {self.temperature}")

    def replace(self, **changes: Any) -> ProbeXConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ProbeXSpec:
    """The static description of one ProbeX expert module: the method's :class:`ProbeXConfig` on one
    layer's shape (hashable; saved next to every checkpoint).

    Attributes:
        d_h, d_w: the layer's matrix shape ``[d_H, d_W]`` (linear: ``[out, in]``).
        n_out: head outputs: classes (``classes``) or the text-embedding width (``zero-shot``).
        method: the :class:`ProbeXConfig`; its fields read through (``spec.r_u``, ``spec.readout``).
        x_scale: inputs are divided by this (the train split's weight std), so trees whose layers
            differ in scale train with one learning rate.

    Example:
        >>> spec = ProbeXSpec(d_h=64, d_w=128, n_out=20, method=ProbeXConfig(r_u=16))
        >>> spec.r_u, ProbeXSpec.from_dict(spec.to_dict()) == spec
        (16, True)
    """

    d_h: int
    d_w: int
    n_out: int
    method: ProbeXConfig = ProbeXConfig()
    x_scale: float = 1.0

    def __post_init__(self) -> None:
        for k in ("d_h", "d_w", "n_out"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"ProbeXSpec.{k} must be a positive int, got {v!r}")
        if not isinstance(self.method, ProbeXConfig):
            raise ConfigError(f"ProbeXSpec.method must be a ProbeXConfig, got {type(self.method).__name__}")
        if not (self.x_scale > 0 and math.isfinite(self.x_scale)):
            raise ConfigError(f"ProbeXSpec.x_scale must be > 0, got {self.x_scale}")

    @property
    def r_u(self) -> int:
        return self.method.r_u

    @property
    def r_v(self) -> int:
        return self.method.r_v

    @property
    def r_t(self) -> int:
        return self.method.r_t

    @property
    def readout(self) -> str:
        return self.method.readout

    @property
    def temperature(self) -> float:
        return self.method.temperature

    def to_dict(self) -> dict[str, Any]:
        """One flat JSON record (the method's fields beside the shape)."""
        return {"d_h": self.d_h, "d_w": self.d_w, "n_out": self.n_out, "x_scale": self.x_scale, **self.method.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProbeXSpec:
        """The inverse of :meth:`to_dict` (also reads experts saved before the readout was named so)."""
        if "task" in d and "readout" not in d:
            d = {("readout" if k == "task" else k): v for k, v in d.items()}
        shape = {"d_h", "d_w", "n_out", "x_scale"}
        method = {f.name for f in dataclasses.fields(ProbeXConfig)}
        unknown = sorted(set(d) - shape - method)
        if unknown:
            raise ConfigError(f"ProbeXSpec: unknown fields {unknown}; known: {sorted(shape | method)}")
        return cls(
            **{k: d[k] for k in shape if k in d},
            method=ProbeXConfig(**{k: d[k] for k in method if k in d}),
        )


def _uniform(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """PyTorch ``nn.Linear``'s default: U(+-1/sqrt(fan_in))."""
    b = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(rngs.params(), shape, jnp.float32, -b, b)


class ProbeX(nnx.Module):
    """Probing experts on one weight matrix (Horwitz et al., CVPR 2025).

    For a layer ``X`` in ``R^{d_H x d_W}`` (one model):

    .. math:: Z = X U,\\qquad H = \\sigma(V^\\top Z) \\in R^{r_V \\times r_U},\\qquad
        e = M\\,\\mathrm{vec}(H^\\top) + b \\in R^{r_T},\\qquad y = \\mathrm{head}(e)

    ``U`` (``[d_W, r_U]``) are the learned probes, ``V`` (``[d_H, r_V]``) the projection shared by
    every probe, and ``M`` (one dense layer on the flattened ``[r_U, r_V]`` responses) equals the
    sum of one encoder per probe. Written for a batch of models ``[batch, d_H, d_W]``.

    Args:
        config: a :class:`ProbeXSpec`.
        rngs: ``nnx.Rngs`` for the initialisation.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> m = ProbeX(ProbeXSpec(8, 6, 3, ProbeXConfig(r_u=4, r_v=5, r_t=7)), rngs=nnx.Rngs(0))
        >>> m(jnp.ones((2, 8, 6))).shape, m.represent(jnp.ones((2, 8, 6))).shape
        ((2, 3), (2, 7))

    References:
        E. Horwitz, B. Cavia, J. Kahana, Y. Hoshen. Learning on Model Weights using Tree Experts.
        CVPR 2025 (arXiv:2410.13569).
    """

    def __init__(self, config: ProbeXSpec, *, rngs: nnx.Rngs) -> None:
        c = config
        self.spec = c
        self.probes = nnx.Param(_uniform(rngs, (c.d_w, c.r_u), c.r_u))
        self.proj = nnx.Param(_uniform(rngs, (c.d_h, c.r_v), c.d_h))
        self.encoder = nnx.Linear(
            c.r_u * c.r_v, c.r_t, rngs=rngs, kernel_init=nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
        )
        self.head = nnx.Linear(
            c.r_t, c.n_out, rngs=rngs, kernel_init=nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
        )

    def responses(self, x: Float[Array, "batch d_h d_w"]) -> Float[Array, "batch r_u r_v"]:
        """The projected probe responses ``sigma(V^T X U)`` transposed to ``[batch, r_U, r_V]``."""
        z = (x / self.spec.x_scale) @ self.probes[...]  # [b, d_h, r_u]
        return jax.nn.relu(jnp.einsum("bhu,hv->buv", z, self.proj[...]))

    def represent(self, x: Float[Array, "batch d_h d_w"]) -> Float[Array, "batch r_t"]:
        """The representation ``e`` of each model."""
        h = self.responses(x)
        return self.encoder(h.reshape(h.shape[0], -1))

    def __call__(self, x: Float[Array, "batch d_h d_w"]) -> Float[Array, "batch n_out"]:
        """Task outputs: class logits (``classes``) or a vector in the text space (``zero-shot``)."""
        return self.head(self.represent(x))


def zero_shot_logits(
    out: Float[Array, "batch d_text"], text: Float[Array, "classes d_text"], *, temperature: float
) -> Float[Array, "batch classes"]:
    """Cosine similarity between normalised outputs and normalised text embeddings, over ``temperature``.

    Example:
        >>> import jax.numpy as jnp
        >>> zero_shot_logits(jnp.array([[1.0, 0.0]]), jnp.array([[2.0, 0.0], [0.0, 1.0]]), temperature=0.5).tolist()
        [[2.0, 0.0]]
    """
    o = out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    t = text / jnp.maximum(jnp.linalg.norm(text, axis=-1, keepdims=True), 1e-12)
    return (o @ t.T) / temperature


def probex_flops(config: ProbeXSpec) -> float:
    """Multiply-adds x 2 of one forward pass of one model (the three matrix products + head).

    Example:
        >>> probex_flops(ProbeXSpec(2, 3, 1, ProbeXConfig(r_u=1, r_v=1, r_t=1)))
        20.0
    """
    c = config
    return 2.0 * (c.d_h * c.d_w * c.r_u + c.d_h * c.r_u * c.r_v + c.r_u * c.r_v * c.r_t + c.r_t * c.n_out)

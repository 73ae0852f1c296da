"""Penultimate-layer features and source-class probabilities of every model of a zoo, via the probe engine."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from weightspace._errors import ConfigError
from weightspace.nets import Architecture, Params


def final_layer(arch: Architecture) -> str:
    """Name prefix of the architecture's final dense layer (``<name>.weight [out, in]`` + ``<name>.bias``).

    Example:
        >>> from weightspace.nets import MLP
        >>> from weightspace.selection import final_layer
        >>> final_layer(MLP(in_features=4, hidden=(8,), out_features=3))
        'layers.1'
    """
    shapes = arch.param_shapes()
    for name in reversed(list(shapes)):
        if not name.endswith(".weight") or len(shapes[name]) != 2:
            continue
        prefix = name[: -len(".weight")]
        if shapes[name][0] == arch.num_outputs and shapes.get(f"{prefix}.bias") == (arch.num_outputs,):
            return prefix
    raise ConfigError(
        f"{type(arch).__name__} has no final dense layer with {arch.num_outputs} outputs "
        "(a '<name>.weight' [out, in] and '<name>.bias' [out] pair): cannot read its features"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class PenultimateFeatures(Architecture):
    """The architecture ``base`` cut before its final dense layer: outputs are that layer's inputs.

    The final layer computes ``h W^T + b``; running ``base`` with ``W = I`` and ``b = 0`` in its
    place returns ``h`` itself, so any architecture whose last operation is that dense layer works
    unchanged (the same parameters, hence the same zoo and the same probe engine).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from weightspace.nets import MLP
        >>> from weightspace.selection import PenultimateFeatures
        >>> base = MLP(in_features=4, hidden=(8,), out_features=3)
        >>> p = base.init(jax.random.key(0))
        >>> x = jnp.ones((2, 4))
        >>> h = PenultimateFeatures(base=base).apply(p, x)
        >>> h.shape, bool(jnp.allclose(h @ p["layers.1.weight"].T + p["layers.1.bias"], base.apply(p, x)))
        ((2, 8), True)
    """

    base: Architecture
    kind = "features"

    @property
    def layer(self) -> str:
        return final_layer(self.base)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.base.input_shape

    @property
    def num_outputs(self) -> int:
        return self.base.param_shapes()[f"{self.layer}.weight"][1]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.base.param_shapes()

    def init(self, key: Array, *, scale: float = 1.0) -> Params:
        return self.base.init(key, scale=scale)

    def _forward(self, params: Params, x: Array, key: Array | None) -> Array:
        d = self.num_outputs
        dt = params[f"{self.layer}.weight"].dtype
        cut = {**params, f"{self.layer}.weight": jnp.eye(d, dtype=dt), f"{self.layer}.bias": jnp.zeros((d,), dt)}
        return self.base._forward(cut, x, key)

    def adapt(self, probes: Float[Array, "probes ..."]) -> Float[Array, "probes ..."]:
        return self.base.adapt(probes)

    def flops_per_example(self) -> int:
        return self.base.flops_per_example()

    def to_config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "base": self.base.to_config()}


def extract_features(
    zoo: Any, images: Any, *, model_chunk: int | None = None, progress: bool | None = None
) -> tuple[Float[np.ndarray, "models n d"], Float[np.ndarray, "models n logits"]]:
    """Penultimate features and softmax probabilities of every model of ``zoo`` on ``images``.

    Both go through :func:`weightspace.probing.probe` (vmapped, chunked, sharded), once with the
    zoo as is and once with :class:`PenultimateFeatures` of its architecture.

    Args:
        zoo: a :class:`~weightspace.zoo.Zoo` of classifiers.
        images: ``[n, H, W, C]`` in ``[0, 1]`` (adapted by the architecture) or exact inputs.
        model_chunk, progress: passed to the probe engine.

    Returns:
        ``(features [models, n, d], probs [models, n, outputs])`` float32.
    """
    from weightspace.probing import probe
    from weightspace.zoo import Zoo

    logits = probe(zoo, images, model_chunk=model_chunk, progress=progress)
    feat_zoo = Zoo(PenultimateFeatures(base=zoo.arch), zoo.params, zoo.meta, zoo.name)
    feats = probe(feat_zoo, images, model_chunk=model_chunk, progress=progress)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
    return np.asarray(feats), probs

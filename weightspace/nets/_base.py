"""The Architecture protocol: a static, hashable spec with pure ``init``/``apply`` for one model."""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from weightspace._errors import ConfigError, ShapeError

Params = dict[str, Array]
"""One model's parameters: PyTorch state_dict names -> arrays in PyTorch layouts."""

_REGISTRY: dict[str, type[Architecture]] = {}
_A = TypeVar("_A", bound="type[Architecture]")


@jax.custom_jvp
def tanh(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """``jnp.tanh`` whose derivative is ``1 - tanh(x)^2`` from the saved output alone.

    JAX's own rule, ``g (1 + y)(1 - y)``, leaves XLA two saved tensors per activation (``y`` and
    ``1 - y``); through a zoo of tanh CNNs that doubles the backward's memory traffic
    (``benchmarks/results/backend.md``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from weightspace.nets._base import tanh
        >>> x = jnp.linspace(-3.0, 3.0, 7)
        >>> bool(jnp.allclose(jax.vmap(jax.grad(tanh))(x), 1 - jnp.tanh(x) ** 2))
        True
    """
    return jnp.tanh(x)


@tanh.defjvp
def _tanh_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    y = tanh(primals[0])
    return y, tangents[0] * (1.0 - y * y)


_GELU_C = 0.7978845608028654  # sqrt(2 / pi)


@jax.custom_jvp
def gelu_tanh(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """``jax.nn.gelu(x, approximate=True)`` whose derivative is one tensor computed in the forward pass.

    Differentiating ``0.5 x (1 + tanh(c (x + 0.044715 x^3)))`` leaves XLA several saved tensors
    per activation (``x``, the tanh, ``1 - t``, the cube); here the forward fusion also writes
    ``gelu'(x)`` and the backward multiplies by it (the NP encoder's contrastive step on SIRENs:
    one full-size pass fewer per layer, forward and backward).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from weightspace.nets._base import gelu_tanh
        >>> x = jnp.linspace(-3.0, 3.0, 7)
        >>> bool(jnp.allclose(jax.vmap(jax.grad(gelu_tanh))(x), jax.vmap(jax.grad(jax.nn.gelu))(x), atol=1e-6))
        True
    """
    return jax.nn.gelu(x, approximate=True)


@gelu_tanh.defjvp
def _gelu_tanh_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,) = primals
    x2 = x * x
    t = jnp.tanh(_GELU_C * x * (1.0 + 0.044715 * x2))
    half = 0.5 * (1.0 + t)
    dy = half + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x2)
    return x * half, tangents[0] * dy


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "tanh": tanh,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.01),
    "identity": lambda x: x,
    "sin": jnp.sin,
}


def register_architecture(cls: _A) -> _A:
    """Class decorator: make an Architecture loadable from its config by ``cls.__name__``."""
    _REGISTRY[cls.__name__] = cls
    return cls


def architecture_from_config(config: Mapping[str, Any] | str) -> Architecture:
    """Rebuild an architecture from :meth:`Architecture.to_config` output (dict or JSON).

    Example:
        >>> from weightspace.nets import MLP, architecture_from_config
        >>> a = MLP(in_features=4, hidden=(8,), out_features=3)
        >>> architecture_from_config(a.to_config()) == a
        True
    """
    if isinstance(config, str):
        try:
            parsed = json.loads(config)
        except json.JSONDecodeError as e:
            raise ConfigError(f"architecture config is not valid JSON: {e}") from e
    else:
        parsed = config
    if not isinstance(parsed, Mapping):
        raise ConfigError(f"architecture config must be a JSON object, got {type(parsed).__name__}")
    config = dict(parsed)
    kind = config.pop("type", None)
    if kind not in _REGISTRY:
        raise ConfigError(f"unknown architecture type {kind!r}; known: {sorted(_REGISTRY)}")
    cls = _REGISTRY[kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(config) - set(fields)
    if unknown:
        raise ConfigError(f"{kind} config has unknown fields {sorted(unknown)}")
    kwargs = {k: _tuplify(v) for k, v in config.items()}
    return cls(**kwargs)


def _tuplify(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    return v


class Architecture(abc.ABC):
    """A target-network architecture, written for ONE model.

    Subclasses are frozen, keyword-only dataclasses (hence hashable and usable as static
    arguments of ``jax.jit``). Parameters are flat dicts with PyTorch ``state_dict`` names and
    layouts (dense ``[out, in]``, conv ``[out, in, kh, kw]``), so real weights import and export
    without renaming tables. Batching over models is always ``jax.vmap`` (see
    :meth:`apply_many`).
    """

    kind: ClassVar[str] = "generic"
    compiler_options: ClassVar[tuple[tuple[str, bool | int | str], ...]] = ()
    """XLA options that the many-model kernels of this architecture compile with (``jax.jit``'s
    ``compiler_options``, as ``(name, value)`` pairs; options of another backend are ignored)."""
    grad_formulation: ClassVar[str | None] = None
    """The :meth:`apply_many` formulation to differentiate through (the default of
    :func:`weightspace.probing.apply_models`, which training losses call); ``None``: the same
    per-backend choice as the forward-only probe engine."""

    # ---- what every architecture must say -------------------------------------------------
    @property
    @abc.abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of ONE example as ``apply`` receives it (images are ``(H, W, C)``)."""

    @property
    @abc.abstractmethod
    def num_outputs(self) -> int:
        """Number of outputs (logits) per example."""

    @abc.abstractmethod
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every parameter, in a fixed order."""

    @abc.abstractmethod
    def init(self, key: Array, *, scale: float = 1.0) -> Params:
        """Fresh parameters for one model (``scale`` multiplies the default init)."""

    @abc.abstractmethod
    def _forward(self, params: Params, x: Array, key: Array | None) -> Array:
        """Forward pass on a batch ``[batch, *input_shape] -> [batch, num_outputs]``."""

    def flops_per_example(self) -> int:
        """Forward-pass FLOPs for one example (2 x multiply-adds), for benchmarks."""
        return 0

    # ---- provided ------------------------------------------------------------------------
    def apply(self, params: Params, x: Float[Array, "..."], *, key: Array | None = None) -> Float[Array, "..."]:
        """Outputs of one model on one example ``input_shape`` or a batch ``[batch, ...]``.

        ``key`` enables train-time stochasticity (dropout) where the architecture has any.
        """
        nd = len(self.input_shape)
        if x.shape[x.ndim - nd :] != self.input_shape or x.ndim not in (nd, nd + 1):
            raise ShapeError(
                f"{type(self).__name__}.apply expected input of shape {self.input_shape} or "
                f"[batch, *{self.input_shape}], got {tuple(x.shape)}"
            )
        if x.ndim == nd:
            return self._forward(params, x[None], key)[0]
        return self._forward(params, x, key)

    def apply_many(self, params: Params, x: Float[Array, "probes ..."]) -> Float[Array, "models probes logits"]:
        """Outputs of many models (params stacked on axis 0) on one shared batch.

        The default is ``vmap`` of :meth:`apply`; architectures may override it with a faster
        formulation that gives the same numbers (tested against the per-model loop).
        """
        return jax.vmap(lambda p: self.apply(p, x))(params)

    def adapt(self, probes: Float[Array, "probes ..."]) -> Float[Array, "probes ..."]:
        """Map a shared probe batch onto this architecture's input.

        Images come as ``[n, H, W, C]`` in ``[0, 1]``; image architectures resize and convert
        channels so every model of a heterogeneous hub sees the same ordered probes.
        Non-image architectures require the exact input shape.
        """
        probes = jnp.asarray(probes, jnp.float32)
        if probes.shape[1:] != self.input_shape:
            raise ShapeError(
                f"probes of shape {tuple(probes.shape)} do not fit {type(self).__name__} input {self.input_shape}"
            )
        return probes

    def to_config(self) -> dict[str, Any]:
        """A JSON-serialisable dict that :func:`architecture_from_config` turns back into self."""
        cfg: dict[str, Any] = {"type": type(self).__name__}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            cfg[f.name] = getattr(self, f.name)
        return json.loads(json.dumps(cfg))

    @property
    def signature(self) -> str:
        """A canonical string identifying the architecture (for bucketing hubs)."""
        return json.dumps(self.to_config(), sort_keys=True, separators=(",", ":"))

    def num_params(self) -> int:
        """Total number of scalar parameters of one model."""
        return int(sum(int(np.prod(s)) for s in self.param_shapes().values()))

    def check_params(self, params: Mapping[str, Any], *, stacked: bool = False, where: str = "params") -> None:
        """Raise :class:`ShapeError`/:class:`LoadError` if ``params`` does not fit this spec."""
        from weightspace._errors import LoadError

        expected = self.param_shapes()
        missing = [k for k in expected if k not in params]
        if missing:
            raise LoadError(f"{where}: missing tensors {missing} for {type(self).__name__}")
        extra = [k for k in params if k not in expected]
        if extra:
            raise LoadError(f"{where}: unexpected tensors {extra} for {type(self).__name__}")
        for k, shape in expected.items():
            got = tuple(params[k].shape)
            want = got[:1] + shape if stacked and got else shape
            if got != want or (stacked and len(got) != len(shape) + 1):
                raise ShapeError(
                    f"{where}: tensor {k!r} has shape {got}, expected "
                    f"{'[models, *' + str(shape) + ']' if stacked else shape}"
                )


def resize_images(images: Float[Array, "n h w c"], image_shape: tuple[int, int, int]) -> Float[Array, "n H W C"]:
    """Resize ``[n, h, w, c]`` images to ``image_shape = (H, W, C)`` and convert channels.

    Gray -> RGB repeats the channel; RGB -> gray uses ITU-R 601 luminance. Resizing is
    antialiased bilinear (``jax.image.resize``).
    """
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4:
        raise ShapeError(f"image probes must be [n, H, W, C], got shape {tuple(images.shape)}")
    h, w, c = image_shape
    cin = images.shape[-1]
    if cin != c:
        if cin == 1:
            images = jnp.repeat(images, c, axis=-1)
        elif cin == 3 and c == 1:
            images = images @ jnp.array([0.299, 0.587, 0.114], jnp.float32)[:, None]
        else:
            raise ShapeError(f"cannot convert {cin}-channel probes to {c} channels")
    if images.shape[1:3] != (h, w):
        images = jax.image.resize(images, (images.shape[0], h, w, c), "linear", antialias=True)
    return images

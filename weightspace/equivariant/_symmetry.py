"""Symmetries of weight space as data: hidden-neuron permutations, positive rescaling, sign flips.

Each transform is written for ONE model (a params dict in PyTorch layout) and leaves the function
the network computes unchanged:

* permutation: reorder the hidden neurons (dense units, conv channels) of every hidden layer,
  i.e. the rows of layer ``l`` (and its bias) and the columns of layer ``l + 1``;
* positive rescaling (ReLU, leaky ReLU, identity: ``act(s z) = s act(z)`` for ``s > 0``): multiply
  a hidden neuron's incoming weights and bias by ``s`` and its outgoing weights by ``1 / s``;
* sign flip (odd activations: tanh, sin, identity): the same with ``s = -1``. For a SIREN layer
  ``sin(w0 (W x + b))`` flipping the neuron's incoming weights, bias and outgoing weights is exact.

Global average pooling between a CNN's convs and its head is linear, so channel transforms pass
through it unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array

from weightspace._errors import ConfigError
from weightspace.equivariant._layout import activation_of, layer_specs
from weightspace.nets import Architecture, Params

SYMMETRIES = ("permute", "rescale", "flip")
"""Names accepted by :func:`apply_symmetry`."""

_HOMOGENEOUS = ("relu", "leaky_relu", "identity")
_ODD = ("tanh", "sin", "identity")


def _bcast(v: Array, ndim: int, axis: int) -> Array:
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


def _scale_hidden(arch: Architecture, params: Params, scales: list[Array]) -> Params:
    specs = layer_specs(arch)
    out = dict(params)
    for i, s in enumerate(scales):
        a, b = specs[i], specs[i + 1]
        out[a.weight] = out[a.weight] * _bcast(s, out[a.weight].ndim, 0)
        out[a.bias] = out[a.bias] * s
        out[b.weight] = out[b.weight] / _bcast(s, out[b.weight].ndim, 1)
    return out


def permute_hidden(arch: Architecture, params: Params, *, key: Array) -> Params:
    """Randomly permute every hidden neuron layer of ONE model (an exact symmetry).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from weightspace.nets import MLP
        >>> arch = MLP(in_features=3, hidden=(8, 8), out_features=2)
        >>> p = arch.init(jax.random.key(0))
        >>> q = permute_hidden(arch, p, key=jax.random.key(1))
        >>> x = jnp.ones((4, 3))
        >>> bool(jnp.allclose(arch.apply(p, x), arch.apply(q, x), atol=1e-5))
        True
    """
    specs = layer_specs(arch)
    out = dict(params)
    keys = jax.random.split(key, len(specs))
    for i in range(len(specs) - 1):
        a, b = specs[i], specs[i + 1]
        perm = jax.random.permutation(keys[i], a.out)
        out[a.weight] = out[a.weight][perm]
        out[a.bias] = out[a.bias][perm]
        out[b.weight] = out[b.weight][:, perm]
    return out


def rescale_hidden(arch: Architecture, params: Params, *, key: Array, low: float = 0.5, high: float = 2.0) -> Params:
    """Multiply each hidden neuron's incoming weights and bias by ``s`` ~ logU(low, high), outgoing by ``1/s``.

    Exact for positively homogeneous activations (ReLU, leaky ReLU, identity).

    Raises:
        ConfigError: the activation is not positively homogeneous, or bad bounds.
    """
    act = activation_of(arch)
    if act not in _HOMOGENEOUS:
        raise ConfigError(
            f"positive rescaling is a symmetry only for {_HOMOGENEOUS}; {type(arch).__name__} uses {act!r}"
        )
    if not 0 < low <= high:
        raise ConfigError(f"rescale bounds must satisfy 0 < low <= high, got ({low}, {high})")
    specs = layer_specs(arch)
    keys = jax.random.split(key, len(specs))
    scales = [
        jnp.exp(jax.random.uniform(keys[i], (specs[i].out,), jnp.float32, jnp.log(low), jnp.log(high)))
        for i in range(len(specs) - 1)
    ]
    return _scale_hidden(arch, params, scales)


def flip_hidden(arch: Architecture, params: Params, *, key: Array, p: float = 0.5) -> Params:
    """Flip the sign of each hidden neuron (incoming weights, bias, outgoing weights) with probability ``p``.

    Exact for odd activations (tanh, sin of a SIREN, identity).

    Raises:
        ConfigError: the activation is not odd.
    """
    act = activation_of(arch)
    if act not in _ODD:
        raise ConfigError(
            f"sign flips are a symmetry only for odd activations {_ODD}; {type(arch).__name__} uses {act!r}"
        )
    specs = layer_specs(arch)
    keys = jax.random.split(key, len(specs))
    scales = [
        jnp.where(jax.random.bernoulli(keys[i], p, (specs[i].out,)), -1.0, 1.0).astype(jnp.float32)
        for i in range(len(specs) - 1)
    ]
    return _scale_hidden(arch, params, scales)


def symmetries_of(arch: Architecture) -> tuple[str, ...]:
    """The exact symmetries of an architecture: always ``permute``; ``rescale`` / ``flip`` by activation."""
    act = activation_of(arch)
    return ("permute",) + (("rescale",) if act in _HOMOGENEOUS else ()) + (("flip",) if act in _ODD else ())


def apply_symmetry(arch: Architecture, params: Params, kind: str, *, key: Array, **kw: Any) -> Params:
    """Apply one named symmetry (:data:`SYMMETRIES`) to ONE model; ``vmap`` it over a zoo.

    Example:
        >>> import jax
        >>> from weightspace.nets import SIREN
        >>> from weightspace.zoo import Zoo
        >>> zoo = Zoo.init(SIREN(hidden=(8, 8)), 4, key=jax.random.key(0))
        >>> keys = jax.random.split(jax.random.key(1), 4)
        >>> q = jax.vmap(lambda p, k: apply_symmetry(zoo.arch, p, "flip", key=k))(zoo.params, keys)
        >>> q["layers.1.weight"].shape
        (4, 8, 8)
    """
    fns = {"permute": permute_hidden, "rescale": rescale_hidden, "flip": flip_hidden}
    if kind not in fns:
        raise ConfigError(f"unknown symmetry {kind!r}; known: {list(SYMMETRIES)}")
    return fns[kind](arch, params, key=key, **kw)


def transform_zoo(zoo: Any, kinds: tuple[str, ...] | str, *, key: Array) -> Any:
    """A new zoo: every model passed through the named symmetries in order (one key per model).

    Example:
        >>> import jax
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Zoo
        >>> zoo = Zoo.init(MLP(in_features=3, hidden=(8,), out_features=2), 3, key=jax.random.key(0))
        >>> transform_zoo(zoo, ("permute", "rescale"), key=jax.random.key(1)).ids == zoo.ids
        True
    """
    from weightspace.zoo import Zoo

    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    params = {k: jnp.asarray(v) for k, v in zoo.params.items()}
    fn = _zoo_fn(zoo.arch, kinds)
    out = fn(params, jax.random.split(key, len(zoo)))
    return Zoo(zoo.arch, {k: jax.device_get(v) for k, v in out.items()}, dict(zoo.meta), zoo.name)


@functools.lru_cache(maxsize=64)
def _zoo_fn(arch: Architecture, kinds: tuple[str, ...]) -> Any:
    def one(p: Params, k: Array) -> Params:
        for j, kind in enumerate(kinds):
            p = apply_symmetry(arch, p, kind, key=jax.random.fold_in(k, j))
        return p

    return jax.jit(jax.vmap(one))

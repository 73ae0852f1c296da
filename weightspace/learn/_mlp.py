"""The one small MLP of weightspace's learned parts (ProbeGen's predictor, the MLP baselines)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
from flax import nnx
from jaxtyping import Array, Float


class MLP(nnx.Module):
    """A ReLU MLP ``d_in -> hidden... -> d_out`` (no hidden layers: one linear map).

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from weightspace.learn import MLP
        >>> head = MLP(5, (8, 8), 3, rngs=nnx.Rngs(0))
        >>> head(jnp.ones((2, 5))).shape, head.embed(jnp.ones((2, 5))).shape
        ((2, 3), (2, 8))
    """

    def __init__(self, d_in: int, hidden: Sequence[int], d_out: int, *, rngs: nnx.Rngs) -> None:
        dims = (int(d_in), *(int(h) for h in hidden), int(d_out))
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(dims)])

    def embed(self, x: Float[Array, "batch d_in"]) -> Float[Array, "batch width"]:
        """The last hidden layer's activations (the input itself without hidden layers)."""
        for layer in list(self.layers)[:-1]:
            x = jax.nn.relu(layer(x))
        return x

    def __call__(self, x: Float[Array, "batch d_in"]) -> Float[Array, "batch d_out"]:
        return self.layers[-1](self.embed(x))

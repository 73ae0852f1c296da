"""Embedding zoos with an encoder: jitted, streamed in fixed-size chunks, sharded over a ``models`` axis."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Float

from weightspace._backend import memory_bound_cpu_options
from weightspace._errors import ConfigError
from weightspace.equivariant._layout import Bucket, WeightFeatures, bucketize


def encode_fn(encoder: Any) -> Callable[[WeightFeatures], jax.Array]:
    """A jitted ``features [models, ...] -> embeddings [models, d]`` from a one-model encoder.

    NNX modules are split once (graph definition + state, flattened to a list of arrays) and merged
    inside the jitted function, so the compiled function is reused for every chunk of the same
    shape and no NNX pytree is flattened in Python per call (``benchmarks/results/backend.md``).

    Example:
        >>> import jax
        >>> from flax import nnx
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Zoo
        >>> from weightspace.equivariant import NPEncoder, features_of
        >>> enc = NPEncoder(taps=(1,), width=4, depth=1, embed_dim=8, max_inputs=3, rngs=nnx.Rngs(0))
        >>> f = features_of(Zoo.init(MLP(in_features=3, hidden=(5,), out_features=2), 4, key=jax.random.key(0)))
        >>> encode_fn(enc)(f).shape
        (4, 8)
    """
    if isinstance(encoder, nnx.Module):
        gdef, state = nnx.split(encoder)
        leaves, treedef = jax.tree_util.tree_flatten(state)
        return _Encode(_jit_merged(gdef, treedef), leaves)
    if not callable(encoder):
        raise ConfigError(f"encoder must be an NNX module or a callable, got {type(encoder).__name__}")
    return jax.jit(jax.vmap(encoder), compiler_options=dict(memory_bound_cpu_options()) or None)


class _Encode:
    """``encode_fn``'s result for an NNX encoder: the jitted program bound to the encoder's arrays.

    ``lower(x)`` lowers that program itself (with its compiler options), so
    :func:`weightspace.learn.flops_per_model` can count it (a ``jax.jit`` around it could not:
    JAX refuses compiler options on a nested jit)."""

    def __init__(self, run: Any, leaves: list[jax.Array]) -> None:
        self.run, self.leaves = run, leaves

    def __call__(self, x: WeightFeatures) -> jax.Array:
        return self.run(self.leaves, x)

    def lower(self, x: Any) -> Any:
        return self.run.lower(self.leaves, x)


@functools.lru_cache(maxsize=16)
def _jit_merged(gdef: Any, treedef: Any) -> Any:
    def run(leaves: list[jax.Array], x: WeightFeatures) -> jax.Array:
        model = nnx.merge(gdef, jax.tree_util.tree_unflatten(treedef, leaves))
        return jax.vmap(model)(x)

    return jax.jit(run, compiler_options=dict(memory_bound_cpu_options()) or None)


def embed_bucket(
    encoder: Any,
    bucket: Bucket,
    *,
    chunk: int = 256,
    mesh: Mesh | None = None,
    fn: Callable[[WeightFeatures], jax.Array] | None = None,
) -> Float[np.ndarray, "models embed"]:
    """Embeddings of one bucket, ``chunk`` models at a time (every call has the same shape: one compile).

    With ``mesh``, each chunk is sharded over the mesh's ``models`` axis (``chunk`` is rounded up
    to a multiple of its size); memory is bounded by one chunk of features on the device.
    """
    from weightspace.parallel import map_chunks, model_axis_size, shard_models

    fn = fn or encode_fn(encoder)
    if mesh is None:
        return map_chunks(fn, bucket.features, chunk=chunk)
    k = model_axis_size(mesh)
    return map_chunks(fn, bucket.features, chunk=chunk, multiple=k, place=lambda part: shard_models(part, mesh))


def embed_zoo(
    encoder: Any,
    source: Any,
    *,
    chunk: int = 256,
    mesh: Mesh | None = None,
    widths: dict[tuple[int, ...], tuple[int, ...]] | None = None,
) -> tuple[Float[np.ndarray, "models embed"], list[str]]:
    """Embed every model of a Zoo / Collection; returns ``(embeddings, ids)`` in the source's model order.

    Streams: each zoo is read ``chunk`` models at a time (a memory-mapped zoo is never loaded whole),
    padded to its layout's common widths (``widths``, default the largest in the source), and every
    chunk has the same shape, so each layout compiles once.

    Example:
        >>> import jax
        >>> from flax import nnx
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Collection, Zoo
        >>> from weightspace.equivariant import GraphEncoder
        >>> c = Collection([Zoo.init(MLP(in_features=3, hidden=(5,), out_features=2), 2, key=jax.random.key(0),
        ...                          name="a"),
        ...                 Zoo.init(MLP(in_features=3, hidden=(7,), out_features=3), 3, key=jax.random.key(1),
        ...                          name="b")])
        >>> enc = GraphEncoder(taps=(1,), width=4, rounds=1, embed_dim=8, rngs=nnx.Rngs(0))
        >>> emb, ids = embed_zoo(enc, c)
        >>> emb.shape, len(ids)
        ((5, 8), 5)
    """
    from weightspace.equivariant._layout import Layout, _zoos_of

    zoos = _zoos_of(source)
    target = dict(widths or {})
    for z in zoos:
        lay = Layout.of(z.arch)
        sig = lay.signature()
        if widths is None or sig not in widths:
            old = target.get(sig, lay.widths)
            target[sig] = tuple(max(a, b) for a, b in zip(old, lay.widths, strict=True))
    fn = encode_fn(encoder)
    embs, ids = [], []
    for z in zoos:
        for lo in range(0, len(z), chunk):
            part = z.select(np.arange(lo, min(len(z), lo + chunk)))
            (b,) = bucketize(part, widths=target)
            embs.append(embed_bucket(encoder, b, chunk=chunk, mesh=mesh, fn=fn))
            ids.extend(b.ids)
    return np.concatenate(embs), ids

"""The neuron-graph encoder: neurons are nodes, weights are edges, equivariant message passing.

Nodes carry the neuron's bias (and a learned position for input/output neurons and a learned
embedding of its layer); edges carry the weight (a conv kernel is an edge with ``k*k`` features).
Messages flow forward (layer ``l`` -> ``l + 1``) and backward along the weight layers as masked
means of ``(E A) * (H B)`` (a bilinear edge-gated message: one contraction per layer, no
per-edge MLP), nodes update by a residual MLP, edges by a residual gated update. Every operation is
either per-node, per-edge or a mean over a neuron layer, so the whole network commutes with any
permutation of hidden neurons, and the mean-pooled readout is invariant (NG-GNN, Kofinas et al.
2024; Lim et al. 2024).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from weightspace.equivariant._layout import NeuronGraph, WeightFeatures, layout_of
from weightspace.equivariant._np import Lift, _check_fields, role_context
from weightspace.nets._base import gelu_tanh


def _count(m: Array) -> Array:
    return jnp.maximum(m.sum(), 1.0)


def _mean_nodes(h: Array, m: Array) -> Array:
    return (h * m[:, None]).sum(0) / _count(m)


class MessagePassing(nnx.Module):
    """One round of equivariant message passing over a :class:`NeuronGraph` (graph -> graph)."""

    def __init__(self, width: int, *, rngs: nnx.Rngs) -> None:
        self.fe, self.fh = nnx.Linear(width, width, rngs=rngs), nnx.Linear(width, width, rngs=rngs)
        self.be, self.bh = nnx.Linear(width, width, rngs=rngs), nnx.Linear(width, width, rngs=rngs)
        self.node1 = nnx.Linear(3 * width, width, rngs=rngs)
        self.node2 = nnx.Linear(width, width, rngs=rngs)
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.e_self = nnx.Linear(width, width, rngs=rngs)
        self.e_src = nnx.Linear(width, width, use_bias=False, rngs=rngs)
        self.e_dst = nnx.Linear(width, width, use_bias=False, rngs=rngs)

    def __call__(self, g: NeuronGraph) -> NeuronGraph:
        n_layers = len(g.nodes)
        fwd = [jnp.zeros_like(h) for h in g.nodes]
        bwd = [jnp.zeros_like(h) for h in g.nodes]
        for i, e in enumerate(g.edges):
            mi, mj = g.masks[i], g.masks[i + 1]  # columns (from), rows (to)
            hf = self.fh(g.nodes[i]) * mi[:, None]
            fwd[i + 1] = jnp.einsum("jic,ic->jc", self.fe(e), hf) / _count(mi)
            hb = self.bh(g.nodes[i + 1]) * mj[:, None]
            bwd[i] = jnp.einsum("jic,jc->ic", self.be(e), hb) / _count(mj)
        nodes = []
        for l_ in range(n_layers):
            h = g.nodes[l_]
            u = self.node2(gelu_tanh(self.node1(jnp.concatenate([h, fwd[l_], bwd[l_]], -1))))
            nodes.append(self.norm(h + u) * g.masks[l_][:, None])
        edges = []
        for i, e in enumerate(g.edges):
            mi, mj = g.masks[i], g.masks[i + 1]
            upd = gelu_tanh(self.e_self(e) + self.e_dst(nodes[i + 1])[:, None] + self.e_src(nodes[i])[None])
            edges.append((e + upd) * (mj[:, None, None] * mi[None, :, None]))
        return NeuronGraph(tuple(nodes), tuple(edges), g.masks)


@dataclasses.dataclass(frozen=True)
class GraphEncoderConfig:
    """The frozen settings of a :class:`GraphEncoder` (see its arguments); ``build`` makes one.

    Example:
        >>> GraphEncoderConfig(taps=(1,), rounds=1).build().config.rounds
        1
    """

    taps: tuple[int, ...] = (1, 9)
    width: int = 32
    rounds: int = 2
    embed_dim: int = 64
    max_inputs: int = 784
    max_outputs: int = 10
    max_depth: int = 8
    kind: ClassVar[str] = "graph"

    def __post_init__(self) -> None:
        object.__setattr__(self, "taps", tuple(int(t) for t in self.taps))
        _check_fields(self, ("width", "rounds", "embed_dim", "max_inputs", "max_outputs", "max_depth"))

    def build(self, *, seed: int = 0) -> GraphEncoder:
        """A freshly initialised encoder (parameters from ``nnx.Rngs(seed)``)."""
        return GraphEncoder(**dataclasses.asdict(self), rngs=nnx.Rngs(seed))

    def replace(self, **changes: Any) -> GraphEncoderConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, with its ``kind`` (as saved next to checkpoints)."""
        return {"kind": self.kind, **dataclasses.asdict(self), "taps": list(self.taps)}


class GraphEncoder(nnx.Module):
    """Invariant embedding of ONE model by message passing on its neuron graph; vmap it over models.

    Args:
        taps: edge feature sizes it accepts (1: dense, ``k*k``: k x k conv).
        width: node/edge channels; rounds: message-passing rounds; embed_dim: output size.
        max_inputs / max_outputs: sizes of the input / output neuron position tables.
        max_depth: hidden layers with their own layer embedding (deeper ones share the last).
        rngs: NNX random streams.

    Example:
        >>> import jax
        >>> from flax import nnx
        >>> from weightspace.nets import CNN
        >>> from weightspace.zoo import Zoo
        >>> from weightspace.equivariant import GraphEncoder, features_of
        >>> f = features_of(Zoo.init(CNN(image_shape=(8, 8, 1), channels=(4, 4)), 3, key=jax.random.key(0)))
        >>> enc = GraphEncoder(taps=(1, 9), width=8, rounds=1, embed_dim=16, rngs=nnx.Rngs(0))
        >>> jax.vmap(enc)(f).shape
        (3, 16)
    """

    def __init__(
        self,
        *,
        taps: tuple[int, ...] = (1, 9),
        width: int = 32,
        rounds: int = 2,
        embed_dim: int = 64,
        max_inputs: int = 784,
        max_outputs: int = 10,
        max_depth: int = 8,
        rngs: nnx.Rngs,
    ) -> None:
        # static (graph definition): hashable, so equal encoders share compiled programs
        self.config = GraphEncoderConfig(taps, width, rounds, embed_dim, max_inputs, max_outputs, max_depth)
        self.lift = Lift(
            width, taps=taps, max_inputs=max_inputs, max_outputs=max_outputs, in_embed=False, out_embed=False, rngs=rngs
        )
        init = nnx.initializers.normal(1.0)
        self.in_pos = nnx.Param(init(rngs.params(), (max_inputs, width)))
        self.out_pos = nnx.Param(init(rngs.params(), (max_outputs, width)))
        self.layer_pos = nnx.Param(init(rngs.params(), (max_depth + 2, width)))
        self.max_depth = max_depth
        self.rounds = nnx.List([MessagePassing(width, rngs=rngs) for _ in range(rounds)])
        # the LayerNorm sees the scale-free pooled features only; the log scales join after it (see NPEncoder)
        self.norm = nnx.LayerNorm(6 * width, rngs=rngs)
        self.head1 = nnx.Linear(6 * width + 3, 2 * embed_dim, rngs=rngs)
        self.head2 = nnx.Linear(2 * embed_dim, embed_dim, rngs=rngs)

    def graph(self, x: WeightFeatures) -> tuple[NeuronGraph, Array]:
        """The initial neuron graph of one model (and the per-role log weight scales)."""
        lay = layout_of(x)
        from weightspace._errors import ConfigError

        if lay.widths[0] > self.in_pos.shape[0] or lay.widths[-1] > self.out_pos.shape[0]:
            raise ConfigError(
                f"models with {lay.widths[0]} inputs / {lay.widths[-1]} outputs exceed the encoder's "
                f"max_inputs={self.in_pos.shape[0]} / max_outputs={self.out_pos.shape[0]}"
            )
        h, logs = self.lift(x)
        pos = self.layer_pos[...]
        nodes = [(self.in_pos[...][: lay.widths[0]] + pos[0]) * x.masks[0][:, None]]
        for i, b in enumerate(h.biases):
            last = i == lay.depth - 1
            p = pos[-1] + self.out_pos[...][: lay.widths[-1]] if last else pos[min(i + 1, self.max_depth)]
            nodes.append((b + p) * x.masks[i + 1][:, None])
        return NeuronGraph(tuple(nodes), h.weights, x.masks), logs

    def __call__(self, x: WeightFeatures) -> Float[Array, " embed"]:
        g, logs = self.graph(x)
        for mp in self.rounds:
            g = mp(g)
        depth = len(g.edges)
        hidden = [_mean_nodes(g.nodes[i], g.masks[i]) for i in range(1, depth)]
        edge_means = [
            (e * (g.masks[i + 1][:, None, None] * g.masks[i][None, :, None])).sum((0, 1))
            / (_count(g.masks[i + 1]) * _count(g.masks[i]))
            for i, e in enumerate(g.edges)
        ]
        pooled = jnp.concatenate(
            [
                _mean_nodes(g.nodes[0], g.masks[0]),
                jnp.mean(jnp.stack(hidden), 0),
                _mean_nodes(g.nodes[-1], g.masks[-1]),
                role_context(edge_means, depth),
            ],
            -1,
        )
        return self.head2(gelu_tanh(self.head1(jnp.concatenate([self.norm(pooled), logs], -1))))

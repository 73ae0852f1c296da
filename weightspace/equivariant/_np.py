"""Neural-functional (NP) layers over weight space and the NP encoder (Zhou et al., NFN, NeurIPS 2023).

An NP layer maps weight-space features to weight-space features and commutes with every
permutation of every neuron layer (hidden and, without position embeddings, inputs and outputs
too). Its parameters are tied by layer *role* (first, hidden-to-hidden, last), so one layer serves
networks of any depth; with three weight layers it is exactly ``nfn.layers.NPLinear``.
All means are masked, so padded neurons never leak into real ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

from weightspace._backend import channel_mix, lifted_mix
from weightspace._errors import ConfigError
from weightspace.equivariant._layout import ACTIVATION_IDS, WeightFeatures, layout_of
from weightspace.nets._base import gelu_tanh

ROLES = ("first", "mid", "last")


def _dense(lin: nnx.Linear, x: Array) -> Array:
    """``lin(x)`` for the large per-entry tensors (:func:`weightspace._backend.channel_mix`)."""
    y = channel_mix(x, lin.kernel[...])
    return y + lin.bias[...] if lin.bias is not None else y


class LiftedWeight(NamedTuple):
    """One weight layer's lifted features, kept factored (never written out at full size).

    The features are ``(u @ kernel + row[:, None] + col[None] + const) * mask``: the lift is linear
    in the (scaled, masked) raw weights ``u``, so an NP layer applied to it composes with it in
    closed form (``kernel @ A`` instead of ``[rows, cols, C] @ A``), and its masked means are the
    means of ``u`` pushed through ``kernel``. :class:`NPEncoder` therefore never materialises the
    lifted tensor: its first full-size tensor is the first NP layer's output.
    """

    u: Float[Array, "rows cols taps"]
    kernel: Float[Array, "taps channels"]
    row: Float[Array, "rows channels"]
    col: Float[Array, "cols channels"]
    const: Float[Array, " channels"]


def _bias(lin: nnx.Linear) -> Array:
    if lin.bias is None:
        raise ConfigError("a linear layer of the NP encoder was built without a bias")
    return lin.bias[...]


def _linears(x: Array, *lins: nnx.Linear) -> list[Array]:
    """``[lin(x) for lin in lins]`` as one matrix product (one small dot instead of several)."""
    k = jnp.concatenate([lin.kernel[...] for lin in lins], 1)
    b = jnp.concatenate([_bias(lin) for lin in lins])
    y = x @ k + b
    sizes = np.cumsum([lin.kernel.shape[1] for lin in lins])[:-1]
    return jnp.split(y, sizes, axis=-1)


def _materialize(lw: LiftedWeight, mr: Array, mc: Array) -> Array:
    mask = (mr[:, None] * mc[None, :])[..., None]
    return (lifted_mix(lw.u, lw.kernel) + lw.row[:, None] + lw.col[None] + lw.const) * mask


def _lifted_means(lw: LiftedWeight, mr: Array, mc: Array) -> tuple[Array, Array, Array]:
    """Masked (row, col, whole-layer) means of :func:`_materialize` without materialising it."""
    cr, cc = _count(mr), _count(mc)
    fr, fc = mr.sum() / cr, mc.sum() / cc  # 1 unless a whole neuron layer is padding
    rmean, cmean = (lw.row * mr[:, None]).sum(0) / cr, (lw.col * mc[:, None]).sum(0) / cc
    row = (lifted_mix(lw.u.sum(0) / cr, lw.kernel) + rmean + fr * (lw.col + lw.const)) * mc[:, None]
    col = (lifted_mix(lw.u.sum(1) / cc, lw.kernel) + cmean + fc * (lw.row + lw.const)) * mr[:, None]
    rc = lifted_mix(lw.u.sum((0, 1)) / (cr * cc), lw.kernel) + rmean * fc + cmean * fr + lw.const * (fr * fc)
    return row, col, rc


def role_of(i: int, depth: int) -> int:
    """0 for the first weight layer, 2 for the last, 1 for the others."""
    return 0 if i == 0 else (2 if i == depth - 1 else 1)


def _count(m: Array) -> Array:
    return jnp.maximum(m.sum(), 1.0)


def masked_stats(x: WeightFeatures, *, zero_padded: bool = False) -> dict[str, list[Array]]:
    """Masked row/column/total means of every weight layer and the mean of every bias.

    ``zero_padded=True`` promises that every padded entry of ``x`` is already zero (true of the
    outputs of :class:`Lift` and :class:`NPLayer`, and of GELU/ReLU of them), so only the
    counts need the masks. The sums then read the tensors as they are: no mask broadcast is
    multiplied in, which on CPU kept XLA from writing full-size copies of the masks.
    """
    row, col, rc, bm = [], [], [], []
    for i, (w, b) in enumerate(zip(x.weights, x.biases, strict=True)):
        mr, mc = x.masks[i + 1], x.masks[i]
        bb = b if zero_padded else b * mr[:, None]
        bm.append(bb.sum(0) / _count(mr))
        if isinstance(w, LiftedWeight):
            for out, v in zip((row, col, rc), _lifted_means(w, mr, mc), strict=True):
                out.append(v)
            continue
        wm = w if zero_padded else w * mr[:, None, None] * mc[None, :, None]
        row.append(wm.sum(0) / _count(mr))  # [cols, C]: mean over rows
        col.append(wm.sum(1) / _count(mc))  # [rows, C]: mean over cols
        rc.append(wm.sum((0, 1)) / (_count(mr) * _count(mc)))
    return {"row": row, "col": col, "rc": rc, "bias": bm}


def role_context(values: list[Array], depth: int) -> Array:
    """Concatenate, per role (first, mid, last), the mean of per-layer vectors (zeros if no mid layer)."""
    out = []
    for r in range(3):
        vs = [v for i, v in enumerate(values) if role_of(i, depth) == r]
        out.append(jnp.mean(jnp.stack(vs), 0) if vs else jnp.zeros_like(values[0]))
    return jnp.concatenate(out, -1)


class NPLayer(nnx.Module):
    """One permutation-equivariant linear layer over weight space (NFN's NP layer, role-tied).

    For weight layer ``l`` with features ``W_l [rows, cols, C]`` and ``b_l [rows, C]``:

    .. math::
        W'_l = W_l A + g B + \\mathbf 1 [\\bar W_l^{row}, \\bar W_{l-1}^{col}, b_{l-1}] R
             + [\\bar W_l^{col}, b_l, \\bar W_{l+1}^{row}] C \\mathbf 1^T, \\quad
        b'_l = [\\bar W_l^{col}, b_l, \\bar W_{l+1}^{row}] D + g E

    where bars are masked means over rows / columns and ``g`` holds the whole-layer means of
    weights and biases per role. ``A..E`` depend only on the layer's role.

    Args:
        c_in, c_out: channels per weight entry in and out.
        rngs: NNX random streams.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> from weightspace.equivariant import WeightFeatures, NPLayer
        >>> x = WeightFeatures((jnp.ones((5, 3, 2)), jnp.ones((4, 5, 2))), (jnp.ones((5, 2)), jnp.ones((4, 2))),
        ...                    (jnp.ones(3), jnp.ones(5), jnp.ones(4)), jnp.int32(0))
        >>> y = NPLayer(2, 7, rngs=nnx.Rngs(0))(x)
        >>> [w.shape for w in y.weights], [b.shape for b in y.biases]
        ([(5, 3, 7), (4, 5, 7)], [(5, 7), (4, 7)])
    """

    def __init__(self, c_in: int, c_out: int, *, rngs: nnx.Rngs) -> None:
        self.c_in, self.c_out = c_in, c_out

        def lin(n_in: int) -> nnx.Linear:
            return nnx.Linear(n_in * c_in, c_out, rngs=rngs)

        self.point = nnx.List([lin(1) for _ in ROLES])
        self.w_rc = nnx.List([lin(6) for _ in ROLES])
        self.w_row = nnx.List([lin(1 + (2 if r > 0 else 0)) for r in range(3)])
        self.w_col = nnx.List([lin(2 + (1 if r < 2 else 0)) for r in range(3)])
        self.b_col = nnx.List([lin(2 + (1 if r < 2 else 0)) for r in range(3)])
        self.b_rc = nnx.List([lin(6) for _ in ROLES])

    def __call__(self, x: WeightFeatures, *, zero_padded: bool = False) -> WeightFeatures:
        """The layer on ONE model's features; ``zero_padded``: see :func:`masked_stats`.

        Weight layers given as :class:`LiftedWeight` (from :meth:`Lift.factored`) are composed with
        the lift in closed form; the output is always materialised.
        """
        depth = len(x.weights) if isinstance(x.weights[0], LiftedWeight) else layout_of(x).depth
        if depth < 2:
            raise ConfigError("NP layers need at least two weight layers (one hidden neuron layer)")
        s = masked_stats(x, zero_padded=zero_padded)
        g = jnp.concatenate([role_context(s["rc"], depth), role_context(s["bias"], depth)], -1)
        ws, bs = [], []
        for i, (w, b) in enumerate(zip(x.weights, x.biases, strict=True)):
            r = role_of(i, depth)
            rows = [s["row"][i]] + ([s["col"][i - 1], x.biases[i - 1]] if r > 0 else [])
            cols = [s["col"][i], b] + ([s["row"][i + 1]] if r < 2 else [])
            rows_in, cols_in = jnp.concatenate(rows, -1), jnp.concatenate(cols, -1)
            per_col = self.w_row[r](rows_in)
            per_row, b_rows = _linears(cols_in, self.w_col[r], self.b_col[r])
            whole, b_whole = _linears(g, self.w_rc[r], self.b_rc[r])
            mr, mc = x.masks[i + 1], x.masks[i]
            if isinstance(w, LiftedWeight):
                a, beta = self.point[r].kernel[...], self.point[r].bias[...]
                ws.append(
                    _materialize(
                        LiftedWeight(
                            w.u, w.kernel @ a, w.row @ a + per_row, w.col @ a + per_col, w.const @ a + beta + whole
                        ),
                        mr,
                        mc,
                    )
                )
            else:
                w_new = _dense(self.point[r], w) + whole[None, None] + per_col[None, :, :] + per_row[:, None, :]
                ws.append(w_new * mr[:, None, None] * mc[None, :, None])
            b_new = b_rows + b_whole[None]
            bs.append(b_new * mr[:, None])
        return WeightFeatures(tuple(ws), tuple(bs), x.masks, x.activation)


def _map(x: WeightFeatures, fn: Any) -> WeightFeatures:
    return WeightFeatures(tuple(fn(w) for w in x.weights), tuple(fn(b) for b in x.biases), x.masks, x.activation)


class Lift(nnx.Module):
    """Raw features -> ``width`` channels: per-layer scale normalisation, one linear map per tap count.

    Each weight layer is divided by its own (masked) RMS, an invariant, and ``log RMS`` per role is
    kept for the readout, so scale information is not lost. Adding the embeddings of the model's
    activation, of the input neurons (``in_embed``) and of the output neurons (``out_embed``) breaks
    the symmetries that are not symmetries of the network: the order of inputs and outputs.
    """

    def __init__(
        self,
        width: int,
        *,
        taps: tuple[int, ...],
        max_inputs: int,
        max_outputs: int,
        in_embed: bool,
        out_embed: bool,
        rngs: nnx.Rngs,
    ) -> None:
        self.taps = tuple(sorted(set(int(t) for t in taps)))
        self.width = width
        self.edge = nnx.Dict({f"t{t}": nnx.Linear(t, width, rngs=rngs) for t in self.taps})
        self.bias = nnx.Linear(1, width, rngs=rngs)
        # a one-hot product, not a gather: a gather by a models-sharded index has no unambiguous sharding
        self.act = nnx.Linear(len(ACTIVATION_IDS), width, use_bias=False, rngs=rngs)
        self.max_inputs, self.max_outputs = max_inputs, max_outputs
        init = nnx.initializers.normal(0.1)
        self.in_embed = nnx.Param(init(rngs.params(), (max_inputs, width))) if in_embed else None
        self.out_embed = nnx.Param(init(rngs.params(), (max_outputs, width))) if out_embed else None

    def __call__(self, x: WeightFeatures) -> tuple[WeightFeatures, Array]:
        """Lifted features ``[rows, cols, width]`` per weight layer, and the per-role log RMS."""
        h, logs = self.factored(x)
        ws = tuple(_materialize(cast(LiftedWeight, w), x.masks[i + 1], x.masks[i]) for i, w in enumerate(h.weights))
        return WeightFeatures(ws, h.biases, h.masks, h.activation), logs

    def factored(self, x: WeightFeatures) -> tuple[WeightFeatures, Array]:
        """Like ``__call__``, with the weight layers left as :class:`LiftedWeight` (biases materialised)."""
        lay = layout_of(x)
        for t in lay.taps:
            if t not in self.taps:
                raise ConfigError(
                    f"this encoder was built for edges with {list(self.taps)} features (kernel taps); "
                    f"a layer has {t}: rebuild it with taps including {t}"
                )
        if self.in_embed is not None and lay.widths[0] > self.max_inputs:
            raise ConfigError(f"models with {lay.widths[0]} inputs exceed the encoder's max_inputs={self.max_inputs}")
        if self.out_embed is not None and lay.widths[-1] > self.max_outputs:
            raise ConfigError(f"models with {lay.widths[-1]} outputs exceed max_outputs={self.max_outputs}")
        a = self.act(jax.nn.one_hot(x.activation, len(ACTIVATION_IDS)))
        ws: list[Any] = []  # LiftedWeight in the weight slots (see factored's docstring)
        bs, logs = [], []
        for i, (w, b) in enumerate(zip(x.weights, x.biases, strict=True)):
            mr, mc = x.masks[i + 1], x.masks[i]
            m2 = mr[:, None, None] * mc[None, :, None]
            rms = jnp.sqrt((w * w * m2).sum() / (_count(mr) * _count(mc) * w.shape[-1]) + 1e-12)
            logs.append(jnp.log(rms)[None])
            edge = self.edge[f"t{w.shape[-1]}"]
            row = jnp.zeros((w.shape[0], self.width), a.dtype)
            col = jnp.zeros((w.shape[1], self.width), a.dtype)
            if i == 0 and self.in_embed is not None:
                col = col + self.in_embed[...][: w.shape[1]]
            be = self.bias(b / rms) + a
            if i == lay.depth - 1 and self.out_embed is not None:
                row = row + self.out_embed[...][: w.shape[0]]
                be = be + self.out_embed[...][: w.shape[0]]
            ws.append(LiftedWeight(w * (m2 / rms), edge.kernel[...], row, col, _bias(edge) + a))
            bs.append(be * mr[:, None])
        return WeightFeatures(tuple(ws), tuple(bs), x.masks, x.activation), role_context(logs, lay.depth)


def _check_fields(cfg: Any, ints: tuple[str, ...]) -> None:
    name = type(cfg).__name__
    taps = cfg.taps
    if not isinstance(taps, tuple) or not taps or any(not isinstance(t, int) or t < 1 for t in taps):
        raise ConfigError(f"{name}.taps must be a non-empty tuple of positive ints, got {taps!r}")
    for k in ints:
        v = getattr(cfg, k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{name}.{k} must be a positive int, got {v!r}")


@dataclasses.dataclass(frozen=True)
class NPEncoderConfig:
    """The frozen settings of an :class:`NPEncoder` (see its arguments); ``build`` makes one.

    Example:
        >>> NPEncoderConfig(taps=(1,), width=8).to_dict()["kind"]
        'np'
    """

    taps: tuple[int, ...] = (1, 9)
    width: int = 16
    depth: int = 2
    embed_dim: int = 64
    max_inputs: int = 784
    max_outputs: int = 10
    in_embed: bool = True
    out_embed: bool = False
    kind: ClassVar[str] = "np"

    def __post_init__(self) -> None:
        object.__setattr__(self, "taps", tuple(int(t) for t in self.taps))
        _check_fields(self, ("width", "depth", "embed_dim", "max_inputs", "max_outputs"))

    def build(self, *, seed: int = 0) -> NPEncoder:
        """A freshly initialised encoder (parameters from ``nnx.Rngs(seed)``)."""
        return NPEncoder(**dataclasses.asdict(self), rngs=nnx.Rngs(seed))

    def replace(self, **changes: Any) -> NPEncoderConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, with its ``kind`` (as saved next to checkpoints)."""
        return {"kind": self.kind, **dataclasses.asdict(self), "taps": list(self.taps)}


class NPEncoder(nnx.Module):
    """Invariant embedding of ONE model: lift, NP layers with ReLU, masked mean pooling per role, MLP.

    Invariant to every permutation of the hidden neurons (exactly, up to float round-off), and,
    without ``in_embed``/``out_embed``, to permutations of inputs/outputs as well. Vmap it over models.

    Args:
        taps: edge feature sizes it accepts (1 for dense layers, ``k*k`` for k x k convs).
        width: channels per weight entry; depth: NP layers; embed_dim: output size.
        max_inputs / max_outputs: sizes of the input/output position tables.
        in_embed / out_embed: learn positions of input / output neurons.
        rngs: NNX random streams.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Zoo
        >>> from weightspace.equivariant import NPEncoder, features_of
        >>> f = features_of(Zoo.init(MLP(in_features=4, hidden=(8,), out_features=3), 5, key=jax.random.key(0)))
        >>> enc = NPEncoder(taps=(1,), width=8, depth=2, embed_dim=16, max_inputs=4, rngs=nnx.Rngs(0))
        >>> jax.vmap(enc)(f).shape
        (5, 16)
    """

    def __init__(
        self,
        *,
        taps: tuple[int, ...] = (1, 9),
        width: int = 16,
        depth: int = 2,
        embed_dim: int = 64,
        max_inputs: int = 784,
        max_outputs: int = 10,
        in_embed: bool = True,
        out_embed: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        # static (graph definition): hashable, so equal encoders share compiled programs
        self.config = NPEncoderConfig(taps, width, depth, embed_dim, max_inputs, max_outputs, in_embed, out_embed)
        self.lift = Lift(
            width,
            taps=taps,
            max_inputs=max_inputs,
            max_outputs=max_outputs,
            in_embed=in_embed,
            out_embed=out_embed,
            rngs=rngs,
        )
        self.layers = nnx.List([NPLayer(width, width, rngs=rngs) for _ in range(depth)])
        # LayerNorm of the pooled (invariant) vector keeps the head out of saturation: without it the
        # contrastive loss collapsed every embedding onto one point within 10 steps. The per-role log
        # weight scales join AFTER the norm: normalised together with the pooled features they
        # dominated its variance and the norm divided the models' scale away (an untrained encoder's
        # embedding then predicted the init scale of SIRENs with Kendall tau ~0).
        self.norm = nnx.LayerNorm(6 * width, rngs=rngs)
        self.head1 = nnx.Linear(6 * width + 3, 2 * embed_dim, rngs=rngs)
        self.head2 = nnx.Linear(2 * embed_dim, embed_dim, rngs=rngs)

    def __call__(self, x: WeightFeatures) -> Float[Array, " embed"]:
        h, logs = self.lift.factored(x)  # the first NP layer composes with the (linear) lift
        for layer in self.layers:
            h = _map(layer(h, zero_padded=True), gelu_tanh)  # GELU(0) = 0: padding stays zero
        s = masked_stats(h, zero_padded=True)
        pooled = jnp.concatenate([role_context(s["rc"], len(h.weights)), role_context(s["bias"], len(h.weights))], -1)
        return self.head2(gelu_tanh(self.head1(jnp.concatenate([self.norm(pooled), logs], -1))))

"""Fast top-k search kernels over a block-major descriptor matrix (the gallery hot path).

The gallery lives on the device as ``[blocks, probes, block]``: probe-major inside fixed-width
column blocks. A query touches only its k selected probe rows, so the "gather" kernel reads
``k`` contiguous rows per block (memory traffic ``k * logits * itemsize``) and keeps the
accumulator of one block in cache. For large k (or "all" probes) the "dense" kernel rewrites the
squared L2 / cosine score as matrix products, which is what accelerators are good at.

XLA's generic ``gather`` of a few rows of a very wide matrix is orders of magnitude slower on CPU
than a ``fori_loop`` of dynamic row reads (``benchmarks/results/probelog.md``); hence the loop below.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from weightspace._backend import on_cpu
from weightspace._errors import ConfigError, ShapeError
from weightspace.search._descriptors import DISTANCES, Distance, Selection, resolve_k, select_probes

DEFAULT_BLOCK = 32768
"""Logits per device block (a k-row slice of one block stays in L2 cache)."""

_UNROLL = 8
# Cost model for method="auto" on CPU: the gather kernel is bound by memory bandwidth, the dense
# one by matmul throughput; both figures measured on the project machine (assets.md).
_CPU_BYTES_PER_S = 10e9
_CPU_FLOPS = 35e9


class BlockedMatrix:
    """A ``[probes, logits]`` descriptor matrix stored as ``[blocks, probes, block]`` on the device.

    ``sq_norms`` (every column's squared norm over all probes, for the dense "all probes" path)
    is computed on first use.
    """

    def __init__(self, blocks: Float[Array, "blocks probes block"], num_logits: int) -> None:
        self.blocks = blocks
        self.num_logits = int(num_logits)
        self._sq_norms: Array | None = None

    @property
    def num_probes(self) -> int:
        return int(self.blocks.shape[1])

    @property
    def block(self) -> int:
        return int(self.blocks.shape[2])

    @property
    def sq_norms(self) -> Float[Array, "blocks block"]:
        if self._sq_norms is None:
            self._sq_norms = _sq_norms(self.blocks)
        return self._sq_norms


def to_blocks(
    columns: Float[np.ndarray, "probes logits"] | list[Float[np.ndarray, "probes n"]],
    *,
    block: int = DEFAULT_BLOCK,
    dtype: np.dtype | str | None = None,
) -> BlockedMatrix:
    """Pack probe-major descriptor columns (one array, or shards concatenated along logits) into blocks.

    Args:
        columns: ``[probes, logits]`` or a list of ``[probes, n_i]`` shards (memory maps are fine:
            each is read once, in order).
        block: logits per block (capped at the number of logits).
        dtype: storage dtype on the device (default: that of the input).

    Returns:
        A :class:`BlockedMatrix` (the padding columns of the last block are zero and never returned).

    Example:
        >>> import numpy as np
        >>> m = to_blocks(np.ones((4, 10), np.float32), block=4)
        >>> m.blocks.shape, m.num_logits
        ((3, 4, 4), 10)
    """
    shards = columns if isinstance(columns, list) else [columns]
    if not shards:
        raise ShapeError("to_blocks: no descriptor columns given")
    p = shards[0].shape[0]
    for s in shards:
        if s.ndim != 2 or s.shape[0] != p:
            raise ShapeError(f"descriptor shards must be [probes={p}, n], got {s.shape}")
    n = int(sum(s.shape[1] for s in shards))
    if n < 1:
        raise ShapeError("to_blocks: the gallery has no logits")
    dt = np.dtype(dtype or shards[0].dtype)
    block = max(1, min(int(block), n))
    nb = math.ceil(n / block)
    host = np.zeros((nb, p, block), dt)
    col = 0
    for s in shards:
        w = s.shape[1]
        done = 0
        while done < w:  # copy shard columns into (possibly several) blocks
            b, off = divmod(col, block)
            take = min(block - off, w - done)
            host[b, :, off : off + take] = s[:, done : done + take]
            col += take
            done += take
    blocks = jnp.asarray(host)
    del host
    return BlockedMatrix(blocks, n)


@jax.jit
def _sq_norms(blocks: Array) -> Array:
    def one(g: Array) -> Array:  # block by block: bounded float32 temporaries
        g = g.astype(jnp.float32)
        return jnp.sum(g * g, axis=0)

    return jax.lax.map(one, blocks)


class Searched(NamedTuple):
    """Raw search output: ``scores`` (lower is closer) and global logit ``indices``, ``[queries, top]``."""

    scores: Float[np.ndarray, "queries top"]
    indices: Int[np.ndarray, "queries top"]


def search_blocks(
    matrix: BlockedMatrix,
    queries: Float[np.ndarray, "queries probes"],
    *,
    top: int = 10,
    k: int | None = None,
    selection: Selection = "top",
    distance: Distance = "l2",
    key: jax.Array | None = None,
    method: str = "auto",
    query_batch: int = 32,
) -> Searched:
    """The ``top`` gallery columns closest to each query under :func:`~weightspace.search.discrepancy`.

    Args:
        matrix: the gallery (:func:`to_blocks`).
        queries: query descriptors ``[queries, probes]`` (already normalised like the gallery).
        top: hits per query (capped at the gallery size).
        k, selection, distance, key: as in :func:`~weightspace.search.discrepancy`.
        method: ``"gather"`` (read the k selected probe rows; best on CPU for small k),
            ``"dense"`` (matrix products over all probes; best for large k and on accelerators) or
            ``"auto"`` (a cost model; see module docs).
        query_batch: queries per kernel call (bounds the ``[queries, logits]`` score buffer).

    Returns:
        :class:`Searched` with NumPy ``scores`` and ``indices`` ``[queries, top]``, best first.

    Example:
        >>> import numpy as np
        >>> g = np.random.default_rng(0).normal(size=(16, 100)).astype(np.float32)  # [probes, logits]
        >>> out = search_blocks(to_blocks(g, block=32), g[:, [7, 42]].T, top=3, k=4)
        >>> out.indices[:, 0].tolist(), out.scores[:, 0].tolist()
        ([7, 42], [0.0, 0.0])
    """
    if distance not in DISTANCES:
        raise ConfigError(f"distance must be one of {DISTANCES}, got {distance!r}")
    q = np.asarray(queries, np.float32)
    q = q[None] if q.ndim == 1 else q
    p = matrix.num_probes
    if q.ndim != 2 or q.shape[1] != p:
        raise ShapeError(
            f"query descriptors have shape {q.shape}, the gallery has {p} probes: queries must be computed on "
            "the gallery's own ordered probe set"
        )
    top = max(1, min(int(top), matrix.num_logits))
    kk = resolve_k(k, p, selection)
    idx = select_probes(q, kk, selection=selection, key=key)
    if method == "auto":
        method = choose_method(len(q), kk, p, matrix.blocks.dtype.itemsize, distance)
    if method not in ("gather", "dense"):
        raise ConfigError(f"method must be 'auto', 'gather' or 'dense', got {method!r}")
    if method == "dense" and distance == "l1":
        raise ConfigError("distance='l1' has no matrix-product form; use method='gather'")
    scores, inds = [], []
    for s in range(0, len(q), query_batch):
        qb, ib = q[s : s + query_batch], idx[s : s + query_batch]
        if method == "gather":
            qs = np.take_along_axis(qb, ib, axis=1)
            d, i = _gather_topk(
                matrix.blocks,
                jnp.asarray(ib),
                jnp.asarray(qs),
                jnp.int32(matrix.num_logits),
                top=top,
                distance=distance,
            )
        else:
            mask = np.zeros_like(qb)
            np.put_along_axis(mask, ib, 1.0, axis=1)
            d, i = _dense_topk(
                matrix.blocks,
                matrix.sq_norms,
                jnp.asarray(qb * mask),
                jnp.asarray(mask),
                jnp.int32(matrix.num_logits),
                top=top,
                distance=distance,
                all_probes=selection == "all",
            )
        scores.append(np.asarray(d))
        inds.append(np.asarray(i))
    return Searched(np.concatenate(scores), np.concatenate(inds).astype(np.int64))


def choose_method(queries: int, k: int, probes: int, itemsize: int, distance: str) -> str:
    """``"gather"`` or ``"dense"`` by a bandwidth/FLOP cost model (dense always off the CPU for batches)."""
    if distance == "l1":
        return "gather"
    if not on_cpu():
        return "dense" if queries > 1 or k == probes else "gather"
    gather = k * itemsize / _CPU_BYTES_PER_S
    dense = (2 if k == probes else 4) * probes / _CPU_FLOPS + probes * itemsize / (queries * _CPU_BYTES_PER_S)
    return "gather" if gather <= dense else "dense"


def _finish(d: Array, n: Array, top: int) -> tuple[Array, Array]:
    d = d.reshape(d.shape[0], -1)
    # ``n`` is traced, not static: a static bound makes XLA constant-fold a logits-wide iota (seconds).
    col = jax.lax.broadcasted_iota(jnp.int32, d.shape, 1)
    d = jnp.where(col < n, d, jnp.inf)  # padding columns of the last block
    neg, i = jax.lax.top_k(-d, top)
    return -neg, i


@functools.partial(jax.jit, static_argnames=("top", "distance"))
def _gather_topk(blocks: Array, sel: Array, qs: Array, n: Array, *, top: int, distance: str) -> tuple[Array, Array]:
    nb, _, width = blocks.shape
    nq, k = sel.shape
    full, rem = divmod(k, _UNROLL)

    def rows(j: Array, s: Array, qv: Array, start: Array, count: int, acc: tuple[Array, ...]) -> tuple[Array, ...]:
        for u in range(count):
            row = jax.lax.dynamic_slice(blocks, (j, s[start + u], 0), (1, 1, width))[0, 0].astype(jnp.float32)
            qi = qv[start + u]
            if distance == "l2":
                t = row - qi
                acc = (acc[0] + t * t,)
            elif distance == "l1":
                acc = (acc[0] + jnp.abs(row - qi),)
            else:
                acc = (acc[0] + row * row, acc[1] + qi * row)
        return acc

    def per_query(b: Array, best: tuple[Array, Array]) -> tuple[Array, Array]:
        s, qv = sel[b], qs[b]

        def per_block(j: Array, out_b: Array) -> Array:
            zero = jnp.zeros((width,), jnp.float32)
            acc0 = (zero,) if distance != "cosine" else (zero, zero)
            acc = jax.lax.fori_loop(0, full, lambda i, a: rows(j, s, qv, i * _UNROLL, _UNROLL, a), acc0)
            acc = rows(j, s, qv, jnp.asarray(full * _UNROLL), rem, acc)
            if distance == "l2":
                d = jnp.sqrt(acc[0])
            elif distance == "l1":
                d = acc[0]
            else:
                qq = jnp.sum(qv * qv)
                d = 1.0 - acc[1] / jnp.maximum(jnp.sqrt(qq * acc[0]), 1e-12)
            return jax.lax.dynamic_update_slice(out_b, d[None], (j, 0))

        # one query's [logits] scores at a time: the buffer stays small and is reused in place
        d, i = _finish(jax.lax.fori_loop(0, nb, per_block, jnp.zeros((nb, width), jnp.float32))[None], n, top)
        return best[0].at[b].set(d[0]), best[1].at[b].set(i[0])

    init = (jnp.zeros((nq, top), jnp.float32), jnp.zeros((nq, top), jnp.int32))
    return jax.lax.fori_loop(0, nq, per_query, init)


@functools.partial(jax.jit, static_argnames=("top", "distance", "all_probes"))
def _dense_topk(
    blocks: Array, sq_norms: Array, qm: Array, mask: Array, n: Array, *, top: int, distance: str, all_probes: bool
) -> tuple[Array, Array]:
    hp = jax.lax.Precision.HIGHEST
    qq = jnp.sum(qm * qm, -1, keepdims=True)

    def per_block(g: Array, sq: Array) -> Array:
        g = g.astype(jnp.float32)
        qg = jnp.matmul(qm, g, precision=hp)
        gg = jnp.broadcast_to(sq, qg.shape) if all_probes else jnp.matmul(mask, g * g, precision=hp)
        if distance == "l2":
            return jnp.sqrt(jnp.maximum(qq - 2.0 * qg + gg, 0.0))
        return 1.0 - qg / jnp.maximum(jnp.sqrt(qq * gg), 1e-12)

    d = jax.lax.map(lambda a: per_block(*a), (blocks, sq_norms))  # [blocks, queries, block]
    return _finish(jnp.swapaxes(d, 0, 1), n, top)

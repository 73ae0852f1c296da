"""LoRA adapters as pytrees: merge, unmerge and spectra (singular values of A, B and B@A)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from weightspace._errors import InvalidValueError, ShapeError

KINDS = ("A", "B", "BA")
"""The LoRA tensors DSiRe reads: the down projection A, the up projection B and their product."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoRA:
    """One low-rank adapter of one layer: ``W' = W + (alpha / r) B A``.

    All three fields are array leaves, so adapters of many models (or many layers of one shape)
    stack on leading axes and pass through ``jax.vmap``/``jax.jit`` unchanged. Build validated
    instances with :meth:`LoRA.of`; the plain constructor does no checking (JAX calls it on
    tracers).

    Attributes:
        A: the down projection ``[*batch, r, d_in]`` (PEFT ``lora_A``, kohya ``lora_down``).
            Convolution adapters store the kernel flattened to ``d_in = in * kh * kw``.
        B: the up projection ``[*batch, d_out, r]`` (PEFT ``lora_B``, kohya ``lora_up``).
        alpha: the scale numerator ``[*batch]``; the update is scaled by ``alpha / r``.

    Example:
        >>> import numpy as np
        >>> from weightspace.lora import LoRA
        >>> lo = LoRA.of(np.ones((2, 5)), np.ones((3, 2)), alpha=4.0)
        >>> lo.rank, float(lo.scaling), lo.delta().shape
        (2, 2.0, (3, 5))
    """

    A: Float[Array, "*batch r d_in"]
    B: Float[Array, "*batch d_out r"]
    alpha: Float[Array, "*batch"]

    @classmethod
    def of(cls, A: Any, B: Any, alpha: Any = None, *, name: str = "lora") -> LoRA:
        """A validated adapter; ``alpha=None`` means ``alpha = r`` (scaling 1, kohya's default).

        Raises :class:`~weightspace.ShapeError` when ``A``/``B`` are not ``[.., r, d_in]`` /
        ``[.., d_out, r]`` with the same rank and batch axes, and
        :class:`~weightspace.InvalidValueError` for NaN/Inf values.
        """
        A, B = _as_float(A, f"{name}: A"), _as_float(B, f"{name}: B")
        if A.ndim < 2 or B.ndim < 2:
            raise ShapeError(
                f"{name}: A must be [.., r, d_in] and B [.., d_out, r]; got A{list(A.shape)}, B{list(B.shape)}"
            )
        if A.shape[-2] != B.shape[-1]:
            raise ShapeError(
                f"{name}: rank mismatch: A has rank {A.shape[-2]} (shape {list(A.shape)}) but B has "
                f"rank {B.shape[-1]} (shape {list(B.shape)}); expected A [r, d_in] and B [d_out, r]"
            )
        if A.shape[:-2] != B.shape[:-2]:
            raise ShapeError(f"{name}: A batch axes {list(A.shape[:-2])} differ from B's {list(B.shape[:-2])}")
        rank = A.shape[-2]
        if alpha is None:
            alpha = np.full(A.shape[:-2], float(rank), np.float32)
        alpha = np.broadcast_to(np.asarray(alpha, np.float32), A.shape[:-2]).copy()
        for label, x in (("A", A), ("B", B), ("alpha", alpha)):
            bad = int(np.size(x) - np.isfinite(x).sum())
            if bad:
                raise InvalidValueError(f"{name}: {label} holds {bad} NaN/Inf values")
        return cls(A, B, alpha)

    @property
    def rank(self) -> int:
        """The LoRA rank ``r``."""
        return int(self.A.shape[-2])

    @property
    def shape(self) -> tuple[int, int]:
        """``(d_out, d_in)`` of the (flattened) weight the adapter updates."""
        return int(self.B.shape[-2]), int(self.A.shape[-1])

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading (model / layer) axes."""
        return tuple(self.A.shape[:-2])

    @property
    def scaling(self) -> Float[Array, "*batch"]:
        """``alpha / r``."""
        return jnp.asarray(self.alpha) / self.rank

    def delta(self) -> Float[Array, "*batch d_out d_in"]:
        """The weight update ``(alpha / r) B A``."""
        return self.scaling[..., None, None] * (jnp.asarray(self.B) @ jnp.asarray(self.A))

    def __getitem__(self, idx: Any) -> LoRA:
        """Index the leading (batch) axes: ``adapter[i]`` is model ``i`` of a stacked adapter."""
        if not self.batch_shape:
            raise ShapeError("this LoRA has no batch axes to index")
        return LoRA(self.A[idx], self.B[idx], self.alpha[idx])


Adapter = dict[str, LoRA]
"""One model's adapters: base weight name (``layers.0.weight``) -> :class:`LoRA`."""


def _as_float(x: Any, where: str) -> np.ndarray | jax.Array:
    if isinstance(x, jax.Array):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ShapeError(f"{where} has dtype {x.dtype}, expected a float dtype")
        return x
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ShapeError(f"{where} has dtype {arr.dtype}, expected a float dtype")
    return arr


def _apply_delta(w: Any, lora: LoRA, sign: float, name: str) -> jax.Array:
    w = jnp.asarray(w)
    delta = lora.delta().astype(w.dtype)
    d_out, d_in = lora.shape
    if w.size == delta.size and w.shape[: lora.A.ndim - 2] == lora.batch_shape:
        return w + sign * delta.reshape(w.shape)
    base = w.shape[w.ndim - 2 :] if w.ndim >= 2 else w.shape
    if w.ndim >= 2 and base == (d_out, d_in):
        return w + sign * delta  # one adapter broadcast over stacked weights (or vice versa)
    raise ShapeError(
        f"LoRA for {name!r} updates a [{d_out}, {d_in}] weight (batch {list(lora.batch_shape)}) but "
        f"the weight has shape {list(w.shape)}; conv kernels must flatten to [out, in*kh*kw]"
    )


def merge(params: Mapping[str, Any], adapter: Mapping[str, LoRA]) -> dict[str, jax.Array]:
    """Add every adapter's update to its base weight: ``W' = W + (alpha / r) B A``.

    Args:
        params: base weights, ``name -> array`` (one model, or stacked on axis 0 with a stacked
            adapter of the same leading axes). Conv kernels ``[out, in, kh, kw]`` take adapters of
            the flattened ``[out, in*kh*kw]`` kernel.
        adapter: ``name -> LoRA`` for a subset of ``params``.

    Returns:
        A new params dict (unadapted tensors are passed through).

    Example:
        >>> import numpy as np
        >>> from weightspace.lora import LoRA, merge, unmerge
        >>> base = {"w": np.zeros((3, 4), np.float32)}
        >>> ad = {"w": LoRA.of(np.ones((1, 4)), np.ones((3, 1)), alpha=2.0)}
        >>> float(merge(base, ad)["w"][0, 0]), float(unmerge(merge(base, ad), ad)["w"].sum())
        (2.0, 0.0)
    """
    return _merge(params, adapter, 1.0)


def unmerge(params: Mapping[str, Any], adapter: Mapping[str, LoRA]) -> dict[str, jax.Array]:
    """Subtract every adapter's update: the inverse of :func:`merge` (``W = W' - (alpha / r) B A``)."""
    return _merge(params, adapter, -1.0)


def _merge(params: Mapping[str, Any], adapter: Mapping[str, LoRA], sign: float) -> dict[str, jax.Array]:
    missing = [k for k in adapter if k not in params]
    if missing:
        raise ShapeError(f"adapters for {missing} have no base weight (params has {sorted(params)[:8]}...)")
    out = {k: jnp.asarray(v) for k, v in params.items()}
    for k, lora in adapter.items():
        out[k] = _apply_delta(out[k], lora, sign, k)
    return out


@functools.partial(jax.jit, static_argnames=("top_k", "scaled"))
def _spectra_one(A: Array, B: Array, alpha: Array, *, top_k: int, scaled: bool) -> dict[str, Array]:
    A = A.astype(jnp.float32)
    B = B.astype(jnp.float32)
    sa = jnp.linalg.svd(A, compute_uv=False)
    sb = jnp.linalg.svd(B, compute_uv=False)
    # B A = Qb (Rb Ra^T) Qa^T with orthonormal Qa, Qb: its singular values are those of the tiny
    # r x r core, so no d_out x d_in product is ever formed.
    _, rb = jnp.linalg.qr(B)
    _, ra = jnp.linalg.qr(jnp.swapaxes(A, -1, -2))
    sba = jnp.linalg.svd(rb @ jnp.swapaxes(ra, -1, -2), compute_uv=False)
    if scaled:
        sba = sba * (alpha / A.shape[-2])[..., None]
    return {"A": sa[..., :top_k], "B": sb[..., :top_k], "BA": sba[..., :top_k]}


def lora_spectra(
    adapter: Mapping[str, LoRA], *, top_k: int | None = None, kinds: Sequence[str] = KINDS, scaled: bool = False
) -> dict[str, Float[Array, "*batch k"]]:
    """Singular values (descending) of every adapter's A, B and B@A, batched over leading axes.

    The product's spectrum is computed from the ``r x r`` core ``R_B R_A^T`` of the QR factors
    (``B = Q_B R_B``, ``A^T = Q_A R_A``), which equals ``svd(B @ A)`` without forming it.

    Args:
        adapter: ``name -> LoRA``, every leaf with the same leading (model) axes.
        top_k: keep the ``top_k`` largest values (default: all ``r``; padded with zeros when an
            adapter's rank is smaller, so every feature has ``top_k`` entries).
        kinds: which of ``"A"``, ``"B"``, ``"BA"``.
        scaled: multiply the ``BA`` spectrum by ``alpha / r`` (the paper and its code use the
            unscaled product; with one fixed recipe the two give the same neighbours).

    Returns:
        ``"{name}:{kind}" -> [*batch, k]`` in adapter order, then kind order.

    Example:
        >>> import numpy as np
        >>> from weightspace.lora import LoRA, lora_spectra
        >>> A = np.diag([3.0, 1.0]) @ np.eye(2, 5)
        >>> sp = lora_spectra({"w": LoRA.of(A, 2 * np.eye(4, 2))})
        >>> [round(float(v), 4) for v in sp["w:BA"]]
        [6.0, 2.0]
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise InvalidValueError(f"unknown spectrum kinds {bad}; choose from {list(KINDS)}")
    if not adapter:
        raise ShapeError("lora_spectra: the adapter is empty")
    k = top_k if top_k is not None else max(lo.rank for lo in adapter.values())
    if k < 1:
        raise InvalidValueError(f"top_k must be >= 1, got {top_k}")
    out: dict[str, Array] = {}
    for name, lo in adapter.items():
        got = _spectra_one(jnp.asarray(lo.A), jnp.asarray(lo.B), jnp.asarray(lo.alpha), top_k=k, scaled=scaled)
        for kind in kinds:
            v = got[kind]
            if v.shape[-1] < k:
                v = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, k - v.shape[-1])])
            out[f"{name}:{kind}"] = v
    return out


def stack_adapters(adapters: Sequence[Mapping[str, LoRA]]) -> Adapter:
    """Stack per-model adapters (same names, shapes and ranks) on a new leading model axis."""
    if not adapters:
        raise ShapeError("stack_adapters: no adapters given")
    names = list(adapters[0])
    for i, ad in enumerate(adapters[1:], 1):
        if list(ad) != names:
            raise ShapeError(f"adapter {i} adapts {sorted(ad)} but adapter 0 adapts {sorted(names)}")
        for n in names:
            a, b = ad[n], adapters[0][n]
            if a.A.shape != b.A.shape or a.B.shape != b.B.shape:
                raise ShapeError(
                    f"adapter {i}: {n!r} has A{list(a.A.shape)}/B{list(a.B.shape)} but adapter 0 has "
                    f"A{list(b.A.shape)}/B{list(b.B.shape)} (ranks or shapes differ)"
                )
    return {
        n: LoRA.of(
            np.stack([np.asarray(ad[n].A) for ad in adapters]),
            np.stack([np.asarray(ad[n].B) for ad in adapters]),
            np.stack([np.asarray(ad[n].alpha) for ad in adapters]),
            name=n,
        )
        for n in names
    }

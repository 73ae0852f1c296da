"""Spectral DeTuning: recover pre-fine-tuning weights from several LoRA fine-tunes of them.

One jit-compiled program runs the whole alternating optimisation (``lax.scan`` over
iterations) for every layer at once (``vmap`` over layers; ``shard_map`` over a device mesh).
The rank never changes a shape: singular values beyond the scheduled rank are masked, so the
rank scheduler costs no recompilation.

Speed comes from an exact reduction. Write ``D_i = W'_i - mean_j W'_j``. Every iterate
``W'_i - W*`` equals ``D_i + mean_j M_j`` and every ``M_j`` is a truncated SVD of such an iterate,
so all of them live in ``span(cols of D_1..D_K) x span(rows of D_1..D_K)``, a space of dimension
at most ``K r`` for rank-``r`` LoRAs. With orthonormal bases ``P``, ``Q`` of it the algorithm runs
on the ``d x d`` cores ``P^T D_i Q`` (``d ~ K r``) and gives the same iterates as on the full
matrices, because ``svd(P C Q^T) = P svd(C) Q^T``. The bases come from a randomized range finder;
the part of ``D_i`` they miss is measured, and layers whose fine-tune differences are not
low-rank (missed part above tolerance) run unreduced.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, Int

from weightspace._errors import ConfigError, InvalidValueError, ShapeError

SOLVERS = ("auto", "full", "randomized")


# ---- the rank scheduler ---------------------------------------------------------------------
class RankSchedule(NamedTuple):
    """State of the increase-rank-on-plateau scheduler (all scalar arrays; vmappable)."""

    rank: Int[Array, ""]
    best: Float[Array, ""]
    bad: Int[Array, ""]
    step: Int[Array, ""]


def rank_schedule_init(start_rank: int = 1) -> RankSchedule:
    """The scheduler before the first iteration: rank ``start_rank``, no best loss yet."""
    return RankSchedule(
        jnp.asarray(start_rank, jnp.int32),
        jnp.asarray(jnp.inf, jnp.float32),
        jnp.asarray(0, jnp.int32),
        jnp.asarray(0, jnp.int32),
    )


def rank_schedule_update(
    state: RankSchedule,
    loss: Float[Array, ""],
    *,
    n_iters: int,
    end_rank: int,
    patience: int = 16,
    factor: int = 2,
    force_fraction: float = 0.5,
) -> RankSchedule:
    """One step of the scheduler of Spectral DeTuning, after an iteration with loss ``loss``.

    Multiply the rank by ``factor`` (capped at ``end_rank``) once the loss has not improved
    (strictly decreased below the best so far) for ``patience`` consecutive steps; once a
    fraction ``force_fraction`` of the iterations remains, the rank is ``end_rank``. This is the
    reference code's ``IncreaseRankOnPlateau(patience=15)``, whose test ``bad > 15`` fires on
    the 16th step without improvement; the best loss is not reset when the rank grows.

    Args:
        state: the scheduler state (from :func:`rank_schedule_init` or a previous update).
        loss: the loss of the iteration just run.
        n_iters: total iterations; the final rank is forced from step
            ``n_iters * (1 - force_fraction)`` on.
        end_rank: the final rank.
        patience: steps without improvement that trigger a rank increase.
        factor: rank multiplier.
        force_fraction: fraction of the iterations run at the final rank.

    Returns:
        The new state; ``state.rank`` is the rank to use for the next iteration.

    Example:
        >>> import jax.numpy as jnp
        >>> from weightspace.lora import rank_schedule_init, rank_schedule_update
        >>> s = rank_schedule_init(1)
        >>> for _ in range(17):
        ...     s = rank_schedule_update(s, jnp.float32(1.0), n_iters=300, end_rank=16)
        >>> int(s.rank)
        2
    """
    step = state.step + 1
    improved = loss < state.best
    best = jnp.where(improved, loss, state.best)
    bad = jnp.where(improved, 0, state.bad + 1)
    grow = bad >= patience
    rank = jnp.where(grow, jnp.minimum(state.rank * factor, end_rank), state.rank)
    bad = jnp.where(grow, 0, bad)
    forced = step >= n_iters - n_iters * force_fraction
    return RankSchedule(
        jnp.where(forced, end_rank, rank).astype(jnp.int32),
        jnp.where(forced, state.best, best),
        jnp.where(forced, state.bad, bad).astype(jnp.int32),
        step,
    )


# ---- low-rank approximations with a traced rank -------------------------------------------------
def randomized_svd(
    x: Float[Array, "*batch m n"],
    k: int,
    *,
    key: Array | None = None,
    omega: Float[Array, "*batch n q"] | None = None,
    oversample: int = 8,
    power_iters: int = 2,
) -> tuple[Float[Array, "*batch m k"], Float[Array, "*batch k"], Float[Array, "*batch q n"]]:
    """The top-``k`` singular triplets by a randomized range finder (Halko et al. 2011).

    ``q = k + oversample`` Gaussian test vectors (or the given ``omega``), ``power_iters``
    re-orthonormalised power iterations, then an exact SVD of the ``q x n`` projection. With
    ``oversample=0, power_iters=2`` this is what ``torch.svd_lowrank(x, q=k)`` computes.

    Returns:
        ``(U [.., m, k], S [.., k], Vt [.., q, n])``: all ``q`` right vectors are returned, so
        ``Vt^T`` can warm-start the next call on a slowly changing matrix.

    Example:
        >>> import numpy as np
        >>> from weightspace.lora import randomized_svd
        >>> rng = np.random.default_rng(0)
        >>> x = (rng.normal(size=(40, 3)) @ rng.normal(size=(3, 30))).astype(np.float32)
        >>> u, s, vt = randomized_svd(x, 3, omega=rng.normal(size=(30, 11)).astype(np.float32))
        >>> bool(np.allclose(u * s[None] @ vt[:3], x, atol=1e-4))
        True
    """
    m, n = x.shape[-2:]
    if omega is None:
        if key is None:
            raise ConfigError("randomized_svd needs key= or omega=")
        omega = jax.random.normal(key, (*x.shape[:-2], n, min(k + oversample, m, n)), x.dtype)
    xt = jnp.swapaxes(x, -1, -2)
    basis, _ = jnp.linalg.qr(x @ omega)
    for _ in range(power_iters):
        z, _ = jnp.linalg.qr(xt @ basis)
        basis, _ = jnp.linalg.qr(x @ z)
    u, s, vt = jnp.linalg.svd(jnp.swapaxes(basis, -1, -2) @ x, full_matrices=False)
    return (basis @ u)[..., :k], s[..., :k], vt


def _masked_lowrank(
    d: Array, rank: Array, omega: Array, *, max_rank: int, solver: str, power_iters: int
) -> tuple[Array, Array]:
    """Best rank-``rank`` approximation of each ``d[i]`` (``rank`` traced, ``<= max_rank``).

    Returns the approximation and the next warm start of the randomized solver.
    """
    k = min(max_rank, *d.shape[-2:])
    if solver == "full":
        u, s, vt = jnp.linalg.svd(d, full_matrices=False)
        u, s, vt = u[..., :k], s[..., :k], vt[..., :k, :]
    else:
        # the iterates change slowly, so last step's right vectors are a far better start than
        # fresh Gaussian vectors: the solver becomes a subspace iteration across steps
        u, s, vt_all = randomized_svd(d, k, omega=omega, power_iters=power_iters)
        omega, vt = jnp.swapaxes(vt_all, -1, -2), vt_all[..., :k, :]
    s = jnp.where(jnp.arange(k) < rank, s, 0.0)
    return (u * s[..., None, :]) @ vt, omega


# ---- the jit-compiled programs ------------------------------------------------------------------
class _Cfg(NamedTuple):
    n_iters: int
    rank: int
    start_rank: int
    patience: int
    factor: int
    force_fraction: float
    solver: str
    power_iters: int
    numel: int


def _run_layer(c0: Array, g: Array, c: Array, omega: Array, cfg: _Cfg) -> tuple[Array, Array, Array, Array]:
    """Alternating minimisation on one layer's (possibly reduced) differences ``c0 [K, m, n]``.

    Returns ``(mean_i M_i, loss [n_iters], rank [n_iters], error [n_iters])``; ``W* = mean W' -
    mean_i M_i`` (in the reduced coordinates when reduced). ``g``/``c`` give the distance to a
    reference weight: ``||W* - W_ref||^2 = ||g - mean M||^2 + c``.
    """

    def body(
        carry: tuple[Array, Array, RankSchedule], _: Array
    ) -> tuple[tuple[Array, Array, RankSchedule], tuple[Array, ...]]:
        mbar, om, sched = carry
        m_i, om = _masked_lowrank(
            c0 + mbar, sched.rank, om, max_rank=cfg.rank, solver=cfg.solver, power_iters=cfg.power_iters
        )
        mbar_new = m_i.mean(0)
        # loss of the reference code: mean_i mean((W'_i - (W* + M_i))^2), W' - W* = c0 + mean M
        loss = jnp.sum((c0 + mbar_new - m_i) ** 2) / (cfg.numel * c0.shape[0])
        err = (jnp.sum((g - mbar_new) ** 2) + c) / cfg.numel
        new = rank_schedule_update(
            sched,
            loss,
            n_iters=cfg.n_iters,
            end_rank=cfg.rank,
            patience=cfg.patience,
            factor=cfg.factor,
            force_fraction=cfg.force_fraction,
        )
        return (mbar_new, om, new), (loss, sched.rank, err)

    init = (jnp.zeros(c0.shape[1:], c0.dtype), omega, rank_schedule_init(cfg.start_rank))
    (mbar, _, _), (loss, ranks, err) = lax.scan(body, init, None, length=cfg.n_iters)
    return mbar, loss, ranks, err


def _orth(x: Array) -> Array:
    return jnp.linalg.qr(x)[0]


@functools.partial(jax.jit, static_argnames=("power_iters", "tol_eps"))
def _reduce_batch(
    wp: Array, om_c: Array, om_r: Array, ref: Array, *, power_iters: int, tol_eps: float
) -> dict[str, Array]:
    """Per layer: orthonormal bases of the span of the fine-tune differences, the cores, what the
    bases miss, the singular values of the stacked cores and the reference's projection."""

    def one(w: Array, oc: Array, orr: Array, r: Array) -> dict[str, Array]:
        mean = w.mean(0)
        diff = w - mean
        pc = _orth(jnp.einsum("kmn,knd->md", diff, oc))
        qc = _orth(jnp.einsum("kmn,kmd->nd", diff, orr))
        for _ in range(power_iters):  # subspace iteration on sum_i D_i D_i^T (and D_i^T D_i)
            pc = _orth(jnp.einsum("kmn,knd->md", diff, jnp.einsum("kmn,md->knd", diff, pc)))
            qc = _orth(jnp.einsum("kmn,kmd->nd", diff, jnp.einsum("kmn,nd->kmd", diff, qc)))
        core = jnp.einsum("md,kmn,ne->kde", pc, diff, qc)
        missed = jnp.sqrt(jnp.sum((diff - jnp.einsum("md,kde,ne->kmn", pc, core, qc)) ** 2))
        total = jnp.sqrt(jnp.sum(diff**2))
        wnorm = jnp.sqrt(jnp.sum(w**2))
        # what the bases miss must be round-off of the merged weights or a negligible fraction
        ok = missed <= jnp.sqrt((1e-4 * total) ** 2 + (64 * tol_eps * wnorm) ** 2)
        d = core.shape[-1]
        sv = jnp.linalg.svd(jnp.swapaxes(core, 0, 1).reshape(d, -1), compute_uv=False)
        floor = jnp.maximum(1e-4 * sv[0], 64 * tol_eps * wnorm)
        e0 = mean - r
        g = pc.T @ e0 @ qc
        c = jnp.sum((e0 - pc @ g @ qc.T) ** 2)
        return {
            "mean": mean,
            "pc": pc,
            "qc": qc,
            "core": core,
            "ok": ok,
            "missed": missed / jnp.maximum(total, 1e-30),
            "dims": jnp.sum(sv > floor),
            "g": g,
            "c": c,
        }

    return jax.vmap(one)(wp, om_c, om_r, ref)


def _program(
    wp: Array, core: Array, pc: Array, qc: Array, g: Array, c: Array, omega: Array, *, cfg: _Cfg, reduced: bool
) -> tuple[Array, ...]:
    def one(w: Array, c0: Array, p_: Array, q_: Array, gg: Array, cc: Array, om: Array) -> tuple[Array, ...]:
        mean = w.mean(0)
        if not reduced:
            c0 = w - mean
        mbar, loss, ranks, err = _run_layer(c0, gg, cc, om, cfg)
        if reduced:
            mbar = p_ @ mbar @ q_.T
        return mean - mbar, loss, ranks, err

    return jax.vmap(one)(wp, core, pc, qc, g, c, omega)


@functools.partial(jax.jit, static_argnames=("cfg", "reduced", "mesh", "axis"))
def _detune_program(
    wp: Array,
    core: Array,
    pc: Array,
    qc: Array,
    g: Array,
    c: Array,
    omega: Array,
    *,
    cfg: _Cfg,
    reduced: bool,
    mesh: Mesh | None,
    axis: str | None,
) -> tuple[Array, ...]:
    fn = functools.partial(_program, cfg=cfg, reduced=reduced)
    if mesh is None:
        return fn(wp, core, pc, qc, g, c, omega)
    spec = P(axis)
    # layers are independent (no collectives), so the per-device program is the unsharded one;
    # check_vma=False lets the scan carry start from replicated constants
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * 7, out_specs=(spec,) * 4, check_vma=False)(
        wp, core, pc, qc, g, c, omega
    )


# ---- public API -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DetuneResult:
    """What :func:`spectral_detune` recovered and how it got there.

    Attributes:
        weights: recovered pre-fine-tuning weights ``[layers, d_out, d_in]`` (``[d_out, d_in]``
            for a single-layer input).
        loss: the reference code's loss per iteration ``[layers, n_iters]``
            (``mean_i mean((W'_i - W* - M_i)^2)``, measured inside the reduced space).
        ranks: rank used at each iteration ``[layers, n_iters]``.
        error: ``mean((W* - W_ref)^2)`` per iteration when ``reference`` was given, else ``None``.
        reduced: per layer, whether the exact subspace reduction was used.
        missed: per layer, relative norm of the fine-tune differences outside the reduced space
            (``nan`` where no reduction was tried).
        rank_estimate: per layer, the LoRA rank the data suggest: ``numerical rank of the stacked
            differences / K`` (``-1`` where no reduction was tried).
        warnings: human-readable notes (over- or under-estimated rank, unreduced layers...).
    """

    weights: np.ndarray
    loss: np.ndarray
    ranks: np.ndarray
    error: np.ndarray | None
    reduced: np.ndarray
    missed: np.ndarray
    rank_estimate: np.ndarray
    warnings: tuple[str, ...]


def _mesh_axis(mesh: Mesh | None, axis: str | None) -> tuple[Mesh | None, str | None, int]:
    if mesh is None:
        return None, None, 1
    axis = axis or mesh.axis_names[0]
    if axis not in mesh.axis_names:
        raise ConfigError(f"mesh has axes {mesh.axis_names}, not {axis!r}")
    return mesh, axis, int(mesh.shape[axis])


def _host_rng(key: Array | None) -> np.random.Generator:
    # Test matrices are drawn on the host from the key's bits: the same numbers for a key, and no
    # threefry program to compile (seconds on CPU) for what is a one-off draw.
    if key is None:
        return np.random.default_rng(0)
    data = np.asarray(jax.random.key_data(key)).ravel()
    return np.random.default_rng([int(v) for v in data])


def spectral_detune(
    finetuned: Float[Array, "*layers loras d_out d_in"] | Float[np.ndarray, "*layers loras d_out d_in"],
    *,
    rank: int = 16,
    n_iters: int = 300,
    start_rank: int = 1,
    patience: int = 16,
    factor: int = 2,
    force_fraction: float = 0.5,
    svd: str = "auto",
    reduce: bool = True,
    oversample: int = 8,
    power_iters: int = 2,
    reference: Float[Array, "*layers d_out d_in"] | Float[np.ndarray, "*layers d_out d_in"] | None = None,
    mesh: Mesh | None = None,
    axis: str | None = None,
    key: Array | None = None,
) -> DetuneResult:
    """Recover the pre-fine-tuning weight of each layer from ``K`` LoRA fine-tunes of it.

    Given ``W'_i = W + B_i A_i`` (``i = 1..K``), minimise ``sum_i ||W'_i - W* - M_i||^2`` over
    ``W*`` and rank-``r`` matrices ``M_i`` by alternating: ``M_i = svd_r(W'_i - W*)``,
    ``W* = mean_i (W'_i - M_i)``, from ``W* = mean_i W'_i``. The rank follows
    :func:`rank_schedule_update` (start at ``start_rank``, multiply by ``factor`` after
    ``patience`` steps without improvement, ``rank`` for the last ``force_fraction`` of the
    iterations). Layers run independently (vmapped; sharded over ``mesh``).

    Args:
        finetuned: ``[K, d_out, d_in]`` for one layer or ``[layers, K, d_out, d_in]``.
        rank: final rank (the LoRA rank; the paper's default 16).
        n_iters: iterations (paper: 300).
        start_rank, patience, factor, force_fraction: the scheduler (paper: 1, 16, 2, 0.5).
        svd: ``"full"`` (exact SVD every step), ``"randomized"`` (a randomized SVD with
            ``q = rank + oversample`` vectors, warm-started from the previous step's right
            singular vectors, ``power_iters`` power iterations per step) or ``"auto"``
            (randomized when ``q`` is under half the size of the matrices the iterations see).
        reduce: run in the exact low-dimensional span of the fine-tune differences (module docs).
        oversample, power_iters: randomized range finder settings (reduction and ``svd``).
        reference: the true pre-fine-tuning weights, to record the error per iteration.
        mesh, axis: shard the layers over this mesh axis (default: its first axis).
        key: seeds the random test matrices (default ``jax.random.key(0)``).

    Returns:
        A :class:`DetuneResult`.

    Example:
        >>> import jax
        >>> from weightspace.lora import spectral_detune, synthetic_finetunes
        >>> w, wp = synthetic_finetunes(jax.random.key(0), layers=1, shape=(32, 24), n_loras=5, rank=2)
        >>> res = spectral_detune(wp[0], rank=2, n_iters=100)
        >>> bool(((res.weights - w[0]) ** 2).mean() < 1e-12)
        True

    References:
        Horwitz, Kahana, Hoshen. Recovering the Pre-Fine-Tuning Weights of Generative Models.
        ICML 2024 (arXiv 2402.10208).
    """
    host = np.asarray(finetuned)
    single = host.ndim == 3
    if single:
        host = host[None]
    if host.ndim != 4:
        raise ShapeError(f"finetuned must be [K, d_out, d_in] or [layers, K, d_out, d_in], got {list(host.shape)}")
    if not np.issubdtype(host.dtype, np.floating):
        raise ShapeError(f"finetuned has dtype {host.dtype}, expected a float dtype")
    dtype = np.float64 if host.dtype == np.float64 and jax.config.read("jax_enable_x64") else np.float32
    host = host.astype(dtype, copy=False)
    n_layers, n_loras, m, n = host.shape
    if svd not in SOLVERS:
        raise ConfigError(f"svd must be one of {SOLVERS}, got {svd!r}")
    for label, v in (
        ("n_iters", n_iters),
        ("rank", rank),
        ("start_rank", start_rank),
        ("patience", patience),
        ("factor", factor),
    ):
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"{label} must be a positive int, got {v!r}")
    if not 0.0 <= force_fraction <= 1.0:
        raise ConfigError(f"force_fraction must be in [0, 1], got {force_fraction}")
    nonfinite = int(host.size - np.isfinite(host).sum())
    if nonfinite:
        raise InvalidValueError(f"finetuned weights hold {nonfinite} NaN/Inf values")
    warnings: list[str] = []
    if rank > min(m, n):
        warnings.append(f"rank {rank} exceeds min(d_out, d_in) = {min(m, n)}; using {min(m, n)}")
        rank = min(m, n)
    start_rank = min(start_rank, rank)
    if n_loras == 1:
        warnings.append("one fine-tune only: nothing to separate, the result is that fine-tune")
    if reference is not None:
        ref = np.asarray(reference, dtype)
        ref = ref[None] if single else ref
        if ref.shape != (n_layers, m, n):
            raise ShapeError(f"reference has shape {list(ref.shape)}, expected {[n_layers, m, n]}")
    else:
        ref = None
    rng = _host_rng(key)
    mesh, axis, n_dev = _mesh_axis(mesh, axis)

    d = min(m, n, n_loras * rank + oversample)
    reduced = np.zeros(n_layers, bool)
    missed = np.full(n_layers, np.nan, np.float32)
    rank_est = np.full(n_layers, -1, np.int32)
    red: dict[str, np.ndarray] = {}
    if reduce and n_loras > 1:
        om_c = rng.standard_normal((n_layers, n_loras, n, d)).astype(dtype)
        om_r = rng.standard_normal((n_layers, n_loras, m, d)).astype(dtype)
        red = {
            k: np.asarray(v)
            for k, v in _reduce_batch(
                host,
                om_c,
                om_r,
                ref if ref is not None else np.zeros((n_layers, m, n), dtype),
                power_iters=power_iters,
                tol_eps=float(np.finfo(dtype).eps),
            ).items()
        }
        reduced, missed = red["ok"].astype(bool), red["missed"].astype(np.float32)
        rank_est = np.rint(red["dims"] / n_loras).astype(np.int32)

    weights = np.zeros((n_layers, m, n), dtype)
    loss = np.zeros((n_layers, n_iters), np.float32)
    ranks = np.zeros((n_layers, n_iters), np.int32)
    error = np.zeros((n_layers, n_iters), np.float32) if ref is not None else None
    for idx, is_red in ((np.nonzero(reduced)[0], True), (np.nonzero(~reduced)[0], False)):
        if idx.size == 0:
            continue
        dim = d if is_red else min(m, n)
        cols = d if is_red else n
        q = min(rank + oversample, dim)
        # a warm-started randomized SVD of q vectors is cheaper than a full one once q < dim / 2
        # (3x on the 88x88 cores of 5 rank-16 LoRAs) and as accurate after a few iterations
        solver = svd if svd != "auto" else ("full" if 2 * q > dim else "randomized")
        omega = rng.standard_normal((idx.size, n_loras, cols, q)).astype(dtype)
        if is_red:
            core, pc, qc, g, c = (red[k][idx] for k in ("core", "pc", "qc", "g", "c"))
        else:
            core = pc = qc = np.zeros((idx.size, 1, 1, 1), dtype)[:, 0]
            if ref is not None:
                g, c = host[idx].mean(1) - ref[idx], np.zeros(idx.size, dtype)
            else:
                g, c = np.zeros((idx.size, m, n), dtype), np.zeros(idx.size, dtype)
        if ref is None and is_red:
            c = np.zeros_like(c)
        cfg = _Cfg(n_iters, rank, start_rank, patience, factor, float(force_fraction), solver, power_iters, m * n)
        args = [host[idx], core, pc, qc, g, c, omega]
        pad = (-idx.size) % n_dev
        if pad:
            args = [np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) for a in args]
        if mesh is not None:  # declare the layer sharding at the top; the kernel is sharding-agnostic
            args = jax.device_put(args, NamedSharding(mesh, P(axis)))
        out = _detune_program(*args, cfg=cfg, reduced=is_red, mesh=mesh, axis=axis)
        w_, lo, rk, er = (np.asarray(o)[: idx.size] for o in out)
        weights[idx], loss[idx], ranks[idx] = w_, lo, rk
        if error is not None:
            error[idx] = er
    if reduce and n_loras > 1 and (~reduced).any():
        warnings.append(
            f"{int((~reduced).sum())} layer(s) ran unreduced: their fine-tune differences are not of "
            f"rank <= {n_loras} x {rank} (largest missed fraction {np.nanmax(missed):.2e}); the final "
            "rank may be under-estimated"
        )
    over = (rank_est >= 0) & (rank_est < rank) & reduced
    if over.any():
        warnings.append(
            f"final rank {rank} exceeds the LoRA rank the fine-tunes suggest "
            f"({sorted(set(rank_est[over].tolist()))}) in {int(over.sum())} layer(s): an over-estimated "
            "rank barely improves on the mean of the fine-tunes"
        )
    return DetuneResult(
        weights[0] if single else weights, loss, ranks, error, reduced, missed, rank_est, tuple(warnings)
    )


def synthetic_finetunes(
    key: Array,
    *,
    layers: int,
    shape: tuple[int, int],
    n_loras: int,
    rank: int,
    lora_scale: float = 1.0,
    dtype: Any = np.float32,
) -> tuple[Float[np.ndarray, "layers d_out d_in"], Float[np.ndarray, "layers loras d_out d_in"]]:
    """Random pre-fine-tuning weights and ``n_loras`` rank-``rank`` fine-tunes of each layer.

    ``W ~ N(0, 1/d_in)`` (a unit-gain layer); the updates ``lora_scale * B_i A_i`` have
    ``B ~ N(0, 1/r)`` and ``A ~ N(0, 1/d_in)``. Drawn on the host from the key's bits.

    Returns:
        ``(W [layers, d_out, d_in], W' [layers, n_loras, d_out, d_in])`` as NumPy arrays.

    Example:
        >>> import jax
        >>> from weightspace.lora import synthetic_finetunes
        >>> w, wp = synthetic_finetunes(jax.random.key(0), layers=2, shape=(6, 5), n_loras=3, rank=1)
        >>> wp.shape, int(np.linalg.matrix_rank(wp[0, 1] - w[0]))
        ((2, 3, 6, 5), 1)
    """
    m, n = shape
    rng = _host_rng(key)
    w = rng.standard_normal((layers, m, n)) / math.sqrt(n)
    b = rng.standard_normal((layers, n_loras, m, rank)) / math.sqrt(rank)
    a = rng.standard_normal((layers, n_loras, rank, n)) / math.sqrt(n)
    return w.astype(dtype), (w[:, None] + lora_scale * (b @ a)).astype(dtype)


def detune_model(
    finetunes: Sequence[Mapping[str, Any]],
    *,
    names: Sequence[str] | None = None,
    rank: int = 16,
    **kwargs: Any,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Recover a whole pre-fine-tuning model from ``K`` fine-tuned models (LoRA merged in).

    Tensors identical in every fine-tune are copied. Every other tensor with at least two axes
    (conv kernels are flattened to ``[out, in*kh*kw]``, as LoRA adapts them) is recovered by
    :func:`spectral_detune`, layers of one shape together in one program. Differing 1-D tensors
    (biases) cannot be separated by a low-rank model; their mean is returned and reported.

    Args:
        finetunes: ``K`` parameter dicts with the same names and shapes.
        names: tensors to recover (default: every differing tensor with two or more axes).
        rank: final rank; other keyword arguments go to :func:`spectral_detune`.

    Returns:
        ``(params, report)``; ``report`` holds, per recovered tensor, its final loss, the
        estimated LoRA rank and whether it ran reduced, plus ``warnings`` and ``copied``.

    Example:
        >>> import numpy as np
        >>> from weightspace.lora import detune_model
        >>> rng = np.random.default_rng(0)
        >>> base = {"w": rng.normal(size=(20, 16)).astype(np.float32), "b": np.zeros(20, np.float32)}
        >>> fts = [{"w": base["w"] + np.outer(rng.normal(size=20), rng.normal(size=16)).astype(np.float32),
        ...         "b": base["b"]} for _ in range(4)]
        >>> params, report = detune_model(fts, rank=1, n_iters=60)
        >>> bool(np.abs(params["w"] - base["w"]).max() < 1e-4), report["copied"]
        (True, ['b'])
    """
    if not finetunes:
        raise ShapeError("detune_model: no fine-tuned models given")
    ref = finetunes[0]
    for i, ft in enumerate(finetunes[1:], 1):
        if sorted(ft) != sorted(ref):
            raise ShapeError(
                f"fine-tune {i} has tensors {sorted(set(ft) ^ set(ref))[:8]} that fine-tune 0 lacks (or the reverse)"
            )
        for k, v in ft.items():
            if np.shape(v) != np.shape(ref[k]):
                raise ShapeError(
                    f"fine-tune {i}: tensor {k!r} has shape {list(np.shape(v))}, fine-tune 0 has "
                    f"{list(np.shape(ref[k]))}"
                )
    host = {k: np.stack([np.asarray(ft[k]) for ft in finetunes]) for k in ref}
    differ = {k for k, v in host.items() if not (v == v[:1]).all()}
    if names is None:
        targets = [k for k in ref if k in differ and host[k].ndim >= 3]
    else:
        unknown = [k for k in names if k not in ref]
        if unknown:
            raise ShapeError(f"detune_model: no tensors named {unknown} (have {sorted(ref)[:8]}...)")
        targets = [k for k in names if host[k].ndim >= 3]
    out: dict[str, np.ndarray] = {}
    report: dict[str, Any] = {"layers": {}, "warnings": [], "copied": [], "averaged": []}
    by_shape: dict[tuple[int, int], list[str]] = {}
    for k in targets:
        v = host[k]
        by_shape.setdefault((v.shape[1], int(np.prod(v.shape[2:]))), []).append(k)
    for (m, n), ks in by_shape.items():
        stack = np.stack([host[k].reshape(len(finetunes), m, n) for k in ks])
        res = spectral_detune(stack, rank=rank, **kwargs)
        for j, k in enumerate(ks):
            out[k] = res.weights[j].reshape(ref[k].shape).astype(np.asarray(ref[k]).dtype)
            report["layers"][k] = {
                "loss": float(res.loss[j, -1]),
                "rank_estimate": int(res.rank_estimate[j]),
                "reduced": bool(res.reduced[j]),
            }
        report["warnings"].extend(f"{m}x{n} layers: {w}" for w in res.warnings)
    for k in ref:
        if k in out:
            continue
        if k in differ:
            out[k] = host[k].mean(0)
            report["averaged"].append(k)
        else:
            out[k] = host[k][0]
            report["copied"].append(k)
    if report["averaged"]:
        report["warnings"].append(
            f"tensors {report['averaged'][:8]} differ between fine-tunes but are not "
            "recovered (1-D or excluded): their mean is returned"
        )
    return {k: out[k] for k in ref}, report


def merged_finetunes(base: Mapping[str, Any], adapters: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray]]:
    """The fine-tuned models ``merge(base, adapter_i)`` as host arrays (to feed :func:`detune_model`)."""
    from weightspace.lora._lora import merge

    return [{k: np.asarray(v) for k, v in merge(base, ad).items()} for ad in adapters]

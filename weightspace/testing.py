"""Public test helpers: tolerances in one place, pytree comparison, recompilation checks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

# One table of tolerances for the whole project; never relaxed ad hoc in a test.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-10, 1e-12),
    "float32": (1e-5, 1e-6),
    "float16": (1e-2, 1e-3),
    "bfloat16": (2e-2, 1e-2),
}
"""dtype name -> (rtol, atol)."""


def tolerance(dtype: Any) -> tuple[float, float]:
    """``(rtol, atol)`` for a dtype (the looser of two dtypes when comparing mixed arrays)."""
    return TOLERANCES.get(np.dtype(dtype).name, TOLERANCES["float32"])


def tree_allclose(a: Any, b: Any, *, rtol: float | None = None, atol: float | None = None, scale: float = 1.0) -> bool:
    """True when two pytrees have the same structure and allclose leaves.

    Tolerances default to :data:`TOLERANCES` of the lower-precision dtype, times ``scale``
    (use ``scale`` for quantities accumulated over many terms, and say why in the test).

    Example:
        >>> import numpy as np
        >>> tree_allclose({"w": np.ones(3)}, {"w": np.ones(3) + 1e-13})
        True
    """
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:  # type: ignore[operator]  # jaxlib's stub gives PyTreeDef no comparison
        return False
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            return False
        lo = x.dtype if np.finfo(x.dtype).bits <= np.finfo(y.dtype).bits else y.dtype
        r, t = tolerance(lo)
        if not np.allclose(
            x, y, rtol=(rtol if rtol is not None else r) * scale, atol=(atol if atol is not None else t) * scale
        ):
            return False
    return True


def assert_tree_allclose(a: Any, b: Any, **kw: Any) -> None:
    """Assert :func:`tree_allclose`, reporting the largest difference per leaf on failure."""
    if tree_allclose(a, b, **kw):
        return
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    diffs = []
    for i, (x, y) in enumerate(zip(la, lb, strict=False)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            diffs.append(f"leaf {i}: shapes {x.shape} vs {y.shape}")
        else:
            diffs.append(f"leaf {i}: max|diff| {np.max(np.abs(x - y)) if x.size else 0:.3g}")
    raise AssertionError("pytrees differ: " + "; ".join(diffs))


@contextlib.contextmanager
def assert_no_recompile(fn: Any, *, allowed: int = 0) -> Iterator[None]:
    """Assert that calling the jitted ``fn`` inside the block compiles at most ``allowed`` times.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> f = jax.jit(lambda x: x * 2)
        >>> _ = f(jnp.ones(3))
        >>> with assert_no_recompile(f):
        ...     _ = f(jnp.zeros(3))
    """
    size = getattr(fn, "_cache_size", None)
    if size is None:
        raise TypeError("assert_no_recompile needs a jax.jit-wrapped function")
    before = size()
    yield
    after = size()
    if after - before > allowed:
        raise AssertionError(f"{getattr(fn, '__name__', fn)} recompiled {after - before} time(s) (allowed {allowed})")


# ---- symmetries of weight space (weightspace.equivariant) -------------------------------------
def assert_permutation_invariant(
    encoder: Any,
    zoo: Any,
    *,
    key: Any = None,
    trials: int = 2,
    symmetries: tuple[str, ...] = ("permute",),
    scale: float = 1.0,
) -> None:
    """Assert that an encoder's embeddings do not change when the zoo's models go through symmetries.

    The models themselves are transformed (:func:`weightspace.equivariant.transform_zoo`: random
    hidden-neuron permutations by default, or any of ``rescale``/``flip``), re-read into weight
    features and embedded again; embeddings must agree within :data:`TOLERANCES` of float32
    (times ``scale``).

    Args:
        encoder: a one-model encoder (NNX module or function of
            :class:`~weightspace.equivariant.WeightFeatures`), vmapped here.
        zoo: a :class:`~weightspace.zoo.Zoo` (or Collection) of a covered architecture.
        key: PRNG key of the random transforms (default ``jax.random.key(0)``).
        trials: independent random transforms to try.
        symmetries: names from :data:`weightspace.equivariant.SYMMETRIES`, applied in order.
        scale: tolerance multiplier (say why in the test when it is not 1).

    Example:
        >>> import jax
        >>> from flax import nnx
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Zoo
        >>> from weightspace.equivariant import NPEncoder
        >>> zoo = Zoo.init(MLP(in_features=3, hidden=(6, 5), out_features=2), 3, key=jax.random.key(0))
        >>> enc = NPEncoder(taps=(1,), width=4, depth=1, embed_dim=8, max_inputs=3, rngs=nnx.Rngs(0))
        >>> assert_permutation_invariant(enc, zoo)
    """
    from weightspace.equivariant._embed import embed_zoo
    from weightspace.equivariant._layout import _zoos_of
    from weightspace.equivariant._symmetry import transform_zoo

    key = jax.random.key(0) if key is None else key
    zoos = _zoos_of(zoo)
    base, _ = embed_zoo(encoder, zoos)
    for t in range(trials):
        moved = [
            transform_zoo(z, symmetries, key=jax.random.fold_in(jax.random.fold_in(key, t), i))
            for i, z in enumerate(zoos)
        ]
        out, _ = embed_zoo(encoder, moved)
        if not tree_allclose(base, out, scale=scale):
            err = float(np.max(np.abs(np.asarray(base, np.float64) - out)))
            raise AssertionError(
                f"embeddings changed under {'+'.join(symmetries)} (trial {t}): max|diff| "
                f"{err:.3g} (max|embedding| {float(np.max(np.abs(base))):.3g})"
            )


def _jitted(layer: Any) -> Any:
    """``layer`` as one compiled function (NNX modules through split/merge): op-by-op dispatch is slow."""
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover
        return jax.jit(layer)
    if isinstance(layer, nnx.Module):
        gdef, state = nnx.split(layer)
        run = jax.jit(lambda s, v: nnx.merge(gdef, s)(v))
        return lambda v: run(state, v)
    return jax.jit(layer)


def assert_permutation_equivariant(layer: Any, x: Any, *, key: Any = None, trials: int = 3, scale: float = 1.0) -> None:
    """Assert ``layer(P x) == P layer(x)`` for random permutations ``P`` of the hidden neurons.

    Args:
        layer: maps ONE model's :class:`~weightspace.equivariant.WeightFeatures` (or
            :class:`~weightspace.equivariant.NeuronGraph`) to the same type (an NP layer, a
            message-passing round).
        x: unbatched features; padding (mask 0) stays in place, real neurons are permuted.
        key: PRNG key (default ``jax.random.key(0)``); trials: random permutations to try.
        scale: tolerance multiplier over float32 :data:`TOLERANCES`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> from weightspace.equivariant import NPLayer, WeightFeatures
        >>> r = jax.random.normal(jax.random.key(1), (40,))
        >>> x = WeightFeatures((r[:12].reshape(4, 3, 1), r[12:32].reshape(5, 4, 1)),
        ...                    (r[32:36].reshape(4, 1), r[35:40].reshape(5, 1)),
        ...                    (jnp.ones(3), jnp.ones(4), jnp.ones(5)), jnp.int32(0))
        >>> assert_permutation_equivariant(NPLayer(1, 3, rngs=nnx.Rngs(0)), x)
    """
    from weightspace.equivariant._layout import layout_of, permute, random_hidden_perms

    key = jax.random.key(0) if key is None else key

    def floats(v: Any) -> Any:  # the int activation id is not permuted and not compared
        return tuple(a for a in v if not (hasattr(a, "dtype") and np.issubdtype(a.dtype, np.integer)))

    layer = _jitted(layer)
    y = layer(x)
    lay = layout_of(x)
    for t in range(trials):
        perms = random_hidden_perms(lay, jax.random.fold_in(key, t), masks=x.masks)
        lhs = floats(layer(permute(x, perms)))
        rhs = floats(permute(y, perms))
        if not tree_allclose(lhs, rhs, scale=scale):
            diffs = [
                float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(jax.tree_util.tree_leaves(lhs), jax.tree_util.tree_leaves(rhs), strict=True)
            ]
            raise AssertionError(f"layer is not permutation-equivariant (trial {t}): max|diff| per leaf {diffs}")

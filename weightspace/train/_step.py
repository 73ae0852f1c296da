"""THE training step of weightspace: one pure function of a pytree state, and its compiled form.

:func:`make_train_step` turns a loss and an optax optimizer into ``step(state, batch, key) ->
(state, metrics)``. Both drivers run it: :func:`~weightspace.train.fit` jits it over the flat leaves
of one model's state (:func:`compile_step`), :func:`~weightspace.train.fit_population` vmaps and
scans it over a population. Data (batches, text embeddings, shared tensors) always enters as an
argument of the step, never as a compile-time constant.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding

from weightspace._backend import training_cpu_options
from weightspace._errors import ConfigError, ShapeError

PyTree = Any


class TrainState(NamedTuple):
    """What one training step reads and writes (a pytree: ``vmap``, ``scan`` and orbax take it whole).

    Attributes:
        params: the trained parameters.
        opt_state: the optax state of ``params``.
        model_state: non-trained state that the loss carries forward (batch statistics, RNG
            counters of an NNX module); ``()`` for a plain loss.
    """

    params: PyTree
    opt_state: PyTree
    model_state: PyTree = ()


def init_train_state(params: PyTree, optimizer: optax.GradientTransformation, model_state: PyTree = ()) -> TrainState:
    """The state before the first step: ``TrainState(params, optimizer.init(params), model_state)``."""
    return TrainState(params, optimizer.init(params), model_state)


def _split_loss_output(out: Any, where: str) -> tuple[jax.Array, dict[str, Any]]:
    loss, aux = out if isinstance(out, tuple) else (out, {})
    if jnp.ndim(loss) != 0:
        raise ShapeError(f"{where}: the loss must be a scalar, got shape {jnp.shape(loss)}")
    if not isinstance(aux, Mapping):
        raise ConfigError(
            f"{where}: the loss must return (loss, dict of metrics), got aux of type {type(aux).__name__}"
        )
    return loss, dict(aux)


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """``step(state, batch, key) -> (state, metrics)``: one optimizer update (see :func:`make_train_step`).

    A frozen dataclass of its loss and optimizer, so equal steps are equal objects and compiled
    forms of them are shared (:func:`compile_step`).
    """

    loss_fn: Callable[..., Any]
    optimizer: optax.GradientTransformation
    stateful: bool = False

    def __call__(self, state: TrainState, batch: PyTree, key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        def objective(params: PyTree) -> tuple[jax.Array, tuple[dict[str, Any], PyTree]]:
            if self.stateful:
                loss, aux, model_state = self.loss_fn(params, state.model_state, batch, key)
                loss, aux = _split_loss_output((loss, aux), "train step")
                return loss, (aux, model_state)
            loss, aux = _split_loss_output(self.loss_fn(params, batch, key), "train step")
            return loss, (aux, state.model_state)

        (loss, (aux, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, model_state), {"loss": loss, **aux}


def make_train_step(
    loss_fn: Callable[..., Any], optimizer: optax.GradientTransformation, *, stateful: bool = False
) -> TrainStep:
    """The training step: differentiate ``loss_fn`` at ``state.params`` and apply ``optimizer``.

    .. math:: (\\ell, \\nabla) = \\mathrm{value\\_and\\_grad}(L)(\\theta_t; B, k),\\quad
        (u, s_{t+1}) = \\mathrm{opt.update}(\\nabla, s_t, \\theta_t),\\quad \\theta_{t+1} = \\theta_t + u

    The step is pure: no randomness but ``key``, no data but ``batch``. ``jax.jit`` it for one
    model, ``jax.vmap`` it for many; the drivers :func:`~weightspace.train.fit` and
    :func:`~weightspace.train.fit_population` do exactly that.

    Args:
        loss_fn: ``(params, batch, key) -> loss`` or ``(loss, {name: scalar})``; with
            ``stateful``, ``(params, model_state, batch, key) -> (loss, metrics, model_state)``
            (:func:`nnx_loss` makes one from an NNX module's loss).
        optimizer: an optax transformation (its hyper-parameters may live in its state, as with
            ``optax.inject_hyperparams``).
        stateful: see ``loss_fn``.

    Returns:
        A :class:`TrainStep`: ``step(state: TrainState, batch, key) -> (TrainState, metrics)``;
        ``metrics["loss"]`` is the loss at the parameters BEFORE the update.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from weightspace.train import init_train_state, make_train_step
        >>> def loss(p, batch, key):
        ...     return jnp.mean((batch["x"] * p["w"] - batch["y"]) ** 2)
        >>> step = jax.jit(make_train_step(loss, optax.sgd(0.1)))
        >>> state = init_train_state({"w": jnp.zeros(())}, optax.sgd(0.1))
        >>> batch = {"x": jnp.arange(1.0, 4.0), "y": 2 * jnp.arange(1.0, 4.0)}
        >>> for _ in range(50):
        ...     state, metrics = step(state, batch, jax.random.key(0))
        >>> round(float(state.params["w"]), 3), bool(metrics["loss"] < 1e-6)
        (2.0, True)
    """
    if not callable(loss_fn):
        raise ConfigError(f"make_train_step: loss_fn must be callable, got {type(loss_fn).__name__}")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ConfigError(
            f"make_train_step: optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}"
        )
    return TrainStep(loss_fn, optimizer, bool(stateful))


@dataclasses.dataclass(frozen=True)
class NNXLoss:
    """A stateful pure loss ``(params, rest, batch, key) -> (loss, metrics, rest)`` of an NNX loss
    ``(module, batch, key) -> loss | (loss, metrics)`` (see :func:`nnx_loss`)."""

    graphdef: Any
    loss_fn: Callable[..., Any]

    def __call__(self, params: PyTree, rest: PyTree, batch: PyTree, key: jax.Array) -> tuple[Any, Any, PyTree]:
        # copy=True: Variables made at the jit level cannot be mutated (RNG counters) inside grad's trace.
        model = nnx.merge(self.graphdef, params, rest, copy=True)
        loss, aux = _split_loss_output(self.loss_fn(model, batch, key), "fit: loss_fn")
        _, _, new_rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
        return loss, aux, new_rest


def nnx_loss(graphdef: Any, loss_fn: Callable[..., Any]) -> NNXLoss:
    """Adapt a loss of an NNX module to :func:`make_train_step` (``stateful=True``).

    The trained parameters are the module's ``nnx.Param`` variables; every other variable (RNG
    counters, batch statistics) is the step's ``model_state`` and is carried as the loss leaves it.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from flax import nnx
        >>> from weightspace.train import TrainState, make_train_step, nnx_loss
        >>> lin = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
        >>> graphdef, params, rest = nnx.split(lin, nnx.Param, ...)
        >>> def mse(model, batch, key):
        ...     return jnp.mean((model(batch["x"])[:, 0] - batch["y"]) ** 2)
        >>> tx = optax.adam(0.1)
        >>> step = make_train_step(nnx_loss(graphdef, mse), tx, stateful=True)
        >>> batch = {"x": jnp.ones((4, 2)), "y": jnp.ones(4)}
        >>> state, m = step(TrainState(params, tx.init(params), rest), batch, jax.random.key(0))
        >>> sorted(m)
        ['loss']
    """
    return NNXLoss(graphdef, loss_fn)


def shard_batch(batch: PyTree, sharding: NamedSharding) -> PyTree:
    """Lay a batch's leading axis out as ``sharding`` inside a jitted program."""
    # jax.make_mesh gives Explicit axes (reshard); meshes built by hand may be Auto (constraint).
    types = dict(zip(sharding.mesh.axis_names, getattr(sharding.mesh, "axis_types", ()), strict=False))
    if types.get("models") == jax.sharding.AxisType.Explicit:
        return jax.sharding.reshard(batch, sharding)
    return jax.lax.with_sharding_constraint(batch, sharding)


@functools.lru_cache(maxsize=32)
def compile_step(
    step: TrainStep,
    treedef: Any,
    *,
    batch_sharding: NamedSharding | None = None,
    compiler_options: tuple[tuple[str, Any], ...] = (),
) -> Callable[..., Any]:
    """``step`` jitted on the FLAT leaves of its :class:`TrainState`, as :func:`~weightspace.train.fit` runs it.

    The compiled function is ``run(leaves, data, idx, t, key, shared=None) -> (leaves, metrics)``:
    the batch is ``data`` gathered at rows ``idx`` on the device (``idx=None``: ``data`` is the
    batch) plus the entries of ``shared`` (a dict of arrays every batch carries whole, e.g. text
    embeddings: arguments, never compile-time constants), the step's key is ``fold_in(key, t)``,
    and the input leaves are donated.

    A flat list of arrays (rather than NNX ``State`` pytrees) keeps each call on JAX's C++ fast
    path: no hashing of graph definitions, no Variable flattening in Python; for small models that
    overhead is as large as the step. On CPU it is compiled with
    :func:`weightspace._backend.training_cpu_options` plus ``compiler_options``. Equal arguments give
    the same compiled function (an LRU cache), so repeated ``fit`` calls compile once.

    Args:
        step: a :class:`TrainStep`.
        treedef: the tree structure of the state (``jax.tree_util.tree_flatten(state)[1]``).
        batch_sharding: lay each batch out so before the step (data-parallel training).
        compiler_options: extra XLA options as sorted ``(name, value)`` pairs.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np, optax
        >>> from weightspace.train import compile_step, init_train_state, make_train_step
        >>> def loss(p, batch, key):
        ...     return jnp.mean((batch["x"] @ p - batch["y"]) ** 2)
        >>> step = make_train_step(loss, optax.adam(0.1))
        >>> leaves, treedef = jax.tree_util.tree_flatten(init_train_state(jnp.zeros(2), step.optimizer))
        >>> run = compile_step(step, treedef)
        >>> data = {"x": np.eye(2, dtype=np.float32), "y": np.ones(2, np.float32)}
        >>> for t in range(200):
        ...     leaves, metrics = run(leaves, data, None, np.int32(t), jax.random.key(0))
        >>> np.round(jax.tree_util.tree_unflatten(treedef, leaves).params, 2).tolist()
        [1.0, 1.0]
    """

    def run(leaves: list[Any], data: PyTree, idx: Any, t: jax.Array, key: jax.Array, shared: Any = None) -> Any:
        state = jax.tree_util.tree_unflatten(treedef, leaves)
        batch = data if idx is None else jax.tree.map(lambda x: jnp.take(x, idx, axis=0), data)
        if batch_sharding is not None:
            batch = shard_batch(batch, batch_sharding)
        if shared is not None:
            batch = {**batch, **shared}
        state, metrics = step(state, batch, jax.random.fold_in(key, t))
        return jax.tree_util.tree_leaves(state), metrics

    options = {**dict(training_cpu_options()), **dict(compiler_options)}
    return jax.jit(run, donate_argnums=0, compiler_options=options or None)

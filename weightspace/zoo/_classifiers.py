"""Classifier populations: initialise many models of one architecture, train image classifiers on
per-model class subsets with :func:`~weightspace.train.fit_population`, evaluate them, and return a
:class:`~weightspace.zoo.Zoo`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jaxtyping import Array, Float, Int

from weightspace._backend import init_cpu_options
from weightspace._errors import ConfigError
from weightspace.parallel import chunk_rows
from weightspace.train._population import (
    HPARAM_DEFAULTS,
    _as_table,
    _index_table,
    _slice,
    fit_population,
    validate_hparams,
)

PyTree = Any


def _init_population_fn(key: Array, seeds: Array, scale: Array, *, arch: Any) -> PyTree:
    return jax.vmap(lambda s, sc: arch.init(jax.random.fold_in(key, s), scale=sc))(seeds, scale)


@functools.cache
def _init_population(options: tuple[tuple[str, int], ...]) -> Any:
    # built on first use (jit with options made at import would start a backend to ask which)
    return jax.jit(_init_population_fn, static_argnames=("arch",), compiler_options=dict(options) or None)


def init_population(
    arch: Any,
    seeds: Int[Array, " models"] | np.ndarray | Sequence[int],
    *,
    key: Array,
    scale: Float[Array, " models"] | float = 1.0,
) -> PyTree:
    """Initial parameters of many models: model ``m`` is ``arch.init(fold_in(key, seeds[m]), scale=scale[m])``.

    One cached compiled program per architecture (initialisers draw many random tensors, and
    XLA compiles threefry slowly on CPU, so this is worth reusing), with
    :func:`weightspace._backend.init_cpu_options`.

    Example:
        >>> import jax
        >>> from weightspace.nets import MLP
        >>> p = init_population(MLP(in_features=4, hidden=(8,), out_features=2), [0, 5], key=jax.random.key(0))
        >>> p["layers.0.weight"].shape
        (2, 8, 4)
    """
    seeds = jnp.asarray(seeds)
    init = _init_population(init_cpu_options())
    return init(key, seeds, jnp.broadcast_to(jnp.asarray(scale, jnp.float32), seeds.shape), arch=arch)


# ---------------------------------------------------------------------------------------------
# Classifier populations
# ---------------------------------------------------------------------------------------------

PLAN_COLUMNS = ("classes", "train_fraction", "init_scale", "seed", "steps", "dropout", *HPARAM_DEFAULTS, "optimizer")
"""Columns a :func:`train_population` plan may hold (scalars broadcast to every model)."""


def cnn_forward_im2col(
    arch: Any,
    params: PyTree,
    x: Float[Array, "batch h w c"],
    *,
    key: Array | None = None,
    dropout: Float[Array, ""] | float = 0.0,
) -> Float[Array, "batch logits"]:
    """A :class:`~weightspace.nets.CNN` forward pass with convolutions as patch matrix products.

    .. math:: y_{b,h,w,:} = \\mathrm{vec}(x_{b,\\,sh:sh+k,\\,sw:sw+k,:})^\\top W + b,\\quad
        W = \\mathrm{reshape}(\\mathrm{transpose}(W_{OIHW}, (2, 3, 1, 0)), (k^2 C, O))

    Gives the numbers of ``arch.apply`` (to float rounding) but vectorises far better under
    ``vmap`` over models on CPU, where XLA's batched (grouped) convolutions are slow. With a
    ``key``, dropout at rate ``dropout`` (may be traced, per model) follows every conv activation:
    the keep masks of all layers are cut, in layer order, from ONE draw
    ``uniform(key, [total]) < 1 - dropout`` (one threefry program instead of two per layer: the
    Small CNN Zoo's training step compiles about twice as fast on CPU), so they are not the masks
    ``arch.apply`` draws.

    Example:
        >>> import jax, numpy as np
        >>> from weightspace.nets import CNN
        >>> arch = CNN(image_shape=(8, 8, 1), channels=(4, 4))
        >>> p = arch.init(jax.random.key(0))
        >>> x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))
        >>> bool(np.allclose(cnn_forward_im2col(arch, p, x), arch.apply(p, x), atol=1e-5))
        True
    """
    from weightspace.nets import ACTIVATIONS

    act = ACTIVATIONS[arch.activation]
    k, st, pad = arch.kernel_size, arch.strides, arch.padding
    x = arch.normalize_input(x)
    keep_all, off = None, 0
    if key is not None:
        total, (h, w) = 0, x.shape[1:3]
        for ch in arch.channels:
            h, w = (h + 2 * pad - k) // st + 1, (w + 2 * pad - k) // st + 1
            total += x.shape[0] * h * w * ch
        keep_all = jax.random.uniform(key, (total,)) < 1.0 - dropout
    for i in range(len(arch.channels)):
        c = x.shape[-1]
        patches = arch.patches(x)  # [b, ho, wo, k*k*c], ordered (kh, kw, channel): the CNN's own im2col
        wmat = jnp.transpose(params[f"convs.{i}.weight"], (2, 3, 1, 0)).reshape(k * k * c, -1)
        x = act(patches @ wmat + params[f"convs.{i}.bias"])
        if keep_all is not None:
            keep = keep_all[off : off + x.size].reshape(x.shape)
            off += x.size
            x = jnp.where(keep, x / (1.0 - dropout), 0.0)
    return arch.head(params, x.mean(axis=(1, 2)))


@dataclasses.dataclass(frozen=True)
class ClassifierLoss:
    """Cross-entropy of one classifier on a batch, with the model's own label order.

    ``model_data["label_map"][y]`` is the output index of dataset label ``y``. Options (static):
    ``shift``/``flip`` translate each image by up to ``shift`` pixels (zero padding) and flip it
    left-right with probability ``flip``; ``mask_outputs`` ignores outputs ``>= model_data["n_out"]``
    (so models with fewer classes share one program and have their heads sliced afterwards);
    ``per_model_dropout`` (CNNs) applies dropout at rate ``model_data["dropout"]`` after every
    conv activation. A frozen dataclass, so equal losses hash equal and reuse compiled programs.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from weightspace.nets import MLP
        >>> loss = ClassifierLoss(MLP(in_features=4, hidden=(), out_features=2))
        >>> p = {"layers.0.weight": jnp.zeros((2, 4)), "layers.0.bias": jnp.zeros(2)}
        >>> batch = {"x": jnp.ones((3, 4)), "y": jnp.array([0, 1, 0])}
        >>> round(float(loss(p, batch, jax.random.key(0), model_data={"label_map": jnp.array([1, 0])})), 4)
        0.6931
    """

    arch: Any
    shift: int = 0
    flip: float = 0.0
    mask_outputs: bool = False
    per_model_dropout: bool = False

    def augment(self, x: Float[Array, "batch h w c"], key: Array) -> Float[Array, "batch h w c"]:
        """Random translation (zero padding) and left-right flip of each image."""
        b, h, w, c = x.shape
        ks, kf = jax.random.split(key)
        s = self.shift
        if s > 0:
            padded = jnp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)))
            off = jax.random.randint(ks, (b, 2), 0, 2 * s + 1)
            x = jax.vmap(lambda im, o: lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(padded, off)
        if self.flip > 0:
            x = jnp.where(jax.random.bernoulli(kf, self.flip, (b, 1, 1, 1)), x[:, :, ::-1], x)
        return x

    def logits(self, params: PyTree, x: Array, key: Array, model_data: Mapping[str, Array]) -> Array:
        """Training-mode outputs (dropout on) of one model on a batch (CNNs via im2col)."""
        from weightspace.nets import CNN

        if type(self.arch) is CNN:
            rate = model_data["dropout"] if self.per_model_dropout else self.arch.dropout
            return cnn_forward_im2col(
                self.arch, params, x, key=key if self.per_model_dropout or rate > 0 else None, dropout=rate
            )
        return self.arch.apply(params, x, key=key)

    def __call__(
        self, params: PyTree, batch: Mapping[str, Array], key: Array, *, model_data: Mapping[str, Array]
    ) -> Float[Array, ""]:
        ka, kd = jax.random.split(key)
        x = batch["x"]
        if self.shift > 0 or self.flip > 0:
            x = self.augment(x, ka)
        logits = self.logits(params, x, kd, model_data)
        if self.mask_outputs:
            logits = jnp.where(jnp.arange(logits.shape[-1]) < model_data["n_out"], logits, -1e9)
        labels = model_data["label_map"][batch["y"]]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.partial(jax.jit, static_argnames=("arch", "batch"))
def _evaluate_chunk(
    params: PyTree,
    images: Array,
    labels: Array,
    rows: Array,
    count: Array,
    label_map: Array,
    n_out: Array,
    *,
    arch: Any,
    batch: int,
) -> tuple[Array, Array]:
    """Accuracy and mean cross-entropy of every model on its own rows (``rows[m, :count[m]]``)."""

    def one(p, rows_m, count_m, map_m, n_out_m):
        def body(acc, start):
            r = lax.dynamic_slice(rows_m, (start,), (batch,))
            valid = (start + jnp.arange(batch)) < count_m
            logits = arch.apply(p, images[r])
            logits = jnp.where(jnp.arange(logits.shape[-1]) < n_out_m, logits, -1e9)
            y = map_m[labels[r]]
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            hit = jnp.argmax(logits, -1) == y
            return (acc[0] + jnp.sum(hit & valid), acc[1] + jnp.sum(jnp.where(valid, ce, 0.0))), None

        starts = jnp.arange(0, rows_m.shape[0], batch)
        (hits, ce), _ = lax.scan(body, (jnp.int32(0), jnp.float32(0.0)), starts)
        n = jnp.maximum(count_m, 1)
        return hits / n, ce / n

    return jax.vmap(one)(params, rows, count, label_map, n_out)


def evaluate_population(
    arch: Any,
    params: PyTree,
    images: np.ndarray | Array,
    labels: np.ndarray | Array,
    rows: Sequence[np.ndarray],
    label_map: np.ndarray,
    *,
    n_out: np.ndarray | None = None,
    batch: int = 256,
    model_chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and cross-entropy of each classifier on its own examples, in one vmapped program.

    .. math:: \\mathrm{acc}_m = \\frac{1}{|R_m|} \\sum_{r \\in R_m}
        [\\arg\\max_j f_m(x_r)_j = \\pi_m(y_r)]

    Args:
        arch: the shared architecture.
        params: stacked parameters ``[models, ...]``.
        images: ``[n, *input_shape]`` shared examples (a JAX array saves a host-to-device copy
            per call when the same images score several populations).
        labels: ``[n]`` dataset labels.
        rows: model ``m`` is scored on ``images[rows[m]]``.
        label_map: ``[models, n_labels]`` output index of each dataset label (``pi_m``).
        n_out: ``[models]`` only the first ``n_out[m]`` outputs count (default: all).
        batch: examples per inner step; model_chunk: models per compiled call.

    Returns:
        ``(accuracy [models], cross_entropy [models])`` as float32 NumPy arrays.

    Example:
        >>> import jax, numpy as np
        >>> from weightspace.nets import MLP
        >>> arch = MLP(in_features=2, hidden=(), out_features=2)
        >>> p = {"layers.0.weight": np.eye(2, dtype=np.float32)[None], "layers.0.bias": np.zeros((1, 2), np.float32)}
        >>> x = np.array([[1., 0.], [0., 1.], [1., 0.]], np.float32)
        >>> acc, _ = evaluate_population(arch, p, x, np.array([0, 1, 1]), [np.arange(3)], np.array([[0, 1]]))
        >>> acc.round(3).tolist()
        [0.667]
    """
    n = len(rows)
    table, count = _index_table(list(rows), n, len(images), compact=True)
    assert table is not None
    width = -(-table.shape[1] // batch) * batch
    table = np.pad(table, ((0, 0), (0, width - table.shape[1])))
    chunk = min(model_chunk, n)
    images_d, labels_d = jnp.asarray(images), jnp.asarray(labels)
    if n_out is None:
        n_out = np.full((n,), arch.num_outputs, np.int32)
    accs, ces = [], []
    for lo in range(0, n, chunk):
        pos = chunk_rows(lo, chunk, n)  # the last chunk padded: one program for every chunk
        a, c = _evaluate_chunk(
            _slice(params, pos),
            images_d,
            labels_d,
            jnp.asarray(table[pos]),
            jnp.asarray(count[pos]),
            jnp.asarray(label_map[pos]),
            jnp.asarray(n_out[pos]),
            arch=arch,
            batch=batch,
        )
        live = min(chunk, n - lo)
        accs.append(np.asarray(a)[:live])
        ces.append(np.asarray(c)[:live])
    return np.concatenate(accs).astype(np.float32), np.concatenate(ces).astype(np.float32)


def _plan_table(plan: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    plan = dict(plan)
    unknown = sorted(set(plan) - set(PLAN_COLUMNS))
    if unknown:
        raise ConfigError(f"unknown plan columns {unknown}; known: {sorted(PLAN_COLUMNS)}")
    lengths = {
        k: len(v)
        for k, v in plan.items()
        if not isinstance(v, str | int | float | np.generic) and not (k == "classes" and _is_class_list(v))
    }
    if "classes" in plan and not _is_class_list(plan["classes"]):
        lengths["classes"] = len(plan["classes"])
    if not lengths:
        raise ConfigError(
            "a plan needs at least one per-model column (a list) to fix the number of models; "
            f"columns: {sorted(PLAN_COLUMNS)}"
        )
    if len(set(lengths.values())) != 1:
        raise ConfigError(f"plan columns disagree on the number of models: {lengths}")
    return next(iter(lengths.values())), plan


def _is_class_list(v: Any) -> bool:
    """True for ONE class list shared by all models (a flat list of ints)."""
    return isinstance(v, Sequence | np.ndarray) and len(v) > 0 and all(isinstance(c, int | np.integer) for c in v)


def train_population(
    arch: Any,
    dataset: Any,
    plan: Mapping[str, Any],
    *,
    key: Array,
    test: Any | None = None,
    batch_size: int = 128,
    augment: tuple[int, float] = (0, 0.0),
    snapshot_steps: Sequence[int] = (),
    eval_size: int | None = 2000,
    pad_outputs: bool = False,
    optimizers: Sequence[str] | None = None,
    model_chunk: int | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool | None = None,
    name: str = "zoo",
    id_prefix: str | None = None,
    extra_meta: Mapping[str, Sequence[Any]] | None = None,
) -> Any:
    """Train a population of image classifiers (one architecture) and return them as a :class:`Zoo`.

    Model ``m`` learns the classes ``plan["classes"][m]`` of ``dataset`` in that order (output
    ``j`` is class ``classes[m][j]``), from a random ``train_fraction`` of those classes' training
    examples, with its own optimizer hyper-parameters, init scale and seed; all models train at
    once through :func:`fit_population` on the cross-entropy

    .. math:: \\ell_m = -\\frac{1}{B}\\sum_{b} \\log \\mathrm{softmax}(f_{\\theta_m}(x_b))_{\\pi_m(y_b)}.

    Args:
        arch: an image :class:`~weightspace.nets.Architecture` with ``num_outputs`` equal to the
            length of every class list.
        dataset: a :class:`weightspace.data.Dataset` (training split).
        plan: per-model columns (:data:`PLAN_COLUMNS`; a scalar applies to all models):
            ``classes`` (list of class-index lists; default all classes in dataset order),
            ``train_fraction`` in (0, 1] (default 1), ``init_scale`` > 0 (default 1), ``seed``
            (default ``0..n-1``), ``steps`` (default 500), ``dropout`` in [0, 1) (CNNs only:
            per-model dropout after every conv activation; default 0) and the optimizer columns
            of :func:`validate_hparams`.
        key: a typed key; model ``m``'s init uses ``fold_in(k_init, seed_m)``, its training
            ``fold_in(k_train, seed_m)`` with ``k_init, k_train = split(key)``.
        test: a held-out :class:`~weightspace.data.Dataset` for ``test_acc``/``test_loss``.
        batch_size: examples per step.
        augment: ``(max_shift_pixels, flip_probability)`` train-time augmentation.
        snapshot_steps: also keep the models after these steps (rows with ``final=False``).
        pad_outputs: allow class lists shorter than ``num_outputs``: the extra outputs are
            masked out of training and evaluation (meta ``n_outputs``); :func:`split_outputs`
            then slices every model's head to its own classes. Lets models with 2..10 classes
            share one compiled program.
        optimizers: the optimizer menu compiled in (see :func:`fit_population`).
        eval_size: at most this many (random, per-model) examples when measuring train/test
            accuracy; ``None``: all.
        model_chunk, checkpoint_dir, progress: as in :func:`fit_population`.
        name: zoo name; id_prefix: model ids are ``{id_prefix}-{m:06d}`` (default ``name``).
        extra_meta: additional per-model metadata columns.

    Returns:
        A :class:`Zoo` with meta columns ``id, classes, class_indices, dataset, train_acc,
        test_acc, generalization_gap, train_loss, test_loss, final_loss, n_train, step, final,
        run`` and every hyper-parameter (``optimizer, learning_rate, weight_decay, momentum,
        init_scale, train_fraction, steps, batch_size, seed, augment_shift, augment_flip``).
        With ``snapshot_steps`` the snapshots come first, then the final models.

    Raises:
        ConfigError: malformed plan (unknown column, lengths, class lists that do not match the
            architecture's outputs or the dataset, fractions or scales out of range).

    Example:
        >>> import jax
        >>> from weightspace.data import load_dataset
        >>> from weightspace.nets import MLP
        >>> ds = load_dataset("digits", "train")
        >>> arch = MLP(in_features=64, hidden=(16,), out_features=3, image_shape=(8, 8, 1))
        >>> zoo = train_population(arch, ds, {"classes": [[0, 1, 2], [9, 4, 7]], "steps": 100,
        ...                        "learning_rate": 0.01}, key=jax.random.key(0), test=load_dataset("digits", "test"))
        >>> zoo.classes(1), all(a > 0.8 for a in zoo.meta["test_acc"])
        (['9', '4', '7'], True)
    """
    from weightspace.zoo._zoo import Zoo

    n, plan = _plan_table(plan)
    n_classes = len(dataset.class_names)
    k_out = arch.num_outputs
    classes = plan.pop("classes", list(range(n_classes)))
    if _is_class_list(classes):
        classes = [list(classes)] * n
    classes = [[int(c) for c in cl] for cl in classes]
    for m, cl in enumerate(classes):
        if len(cl) != k_out and not (pad_outputs and 1 <= len(cl) < k_out):
            raise ConfigError(
                f"plan row {m}: {len(cl)} classes {cl} but the architecture has {k_out} outputs"
                + ("" if pad_outputs else " (pad_outputs=True allows fewer)")
            )
        if len(set(cl)) != len(cl) or min(cl) < 0 or max(cl) >= n_classes:
            raise ConfigError(
                f"plan row {m}: classes {cl} must be distinct indices in 0..{n_classes - 1} of {dataset.name}"
            )
    frac = _as_table("train_fraction", plan.pop("train_fraction", 1.0), n, np.float64)
    if np.any((frac <= 0) | (frac > 1)):
        raise ConfigError(f"train_fraction must be in (0, 1]; models {np.nonzero((frac <= 0) | (frac > 1))[0][:5]}")
    scale = _as_table("init_scale", plan.pop("init_scale", 1.0), n, np.float32)
    if np.any(scale <= 0):
        raise ConfigError(f"init_scale must be > 0; models {np.nonzero(scale <= 0)[0][:5].tolist()}")
    seeds = _as_table("seed", plan.pop("seed", np.arange(n)), n, np.int64)
    dropout = _as_table("dropout", plan.pop("dropout", 0.0), n, np.float32)
    if np.any((dropout < 0) | (dropout >= 1)):
        raise ConfigError(f"dropout must be in [0, 1); models {np.nonzero((dropout < 0) | (dropout >= 1))[0][:5]}")
    per_model_dropout = bool(np.any(dropout > 0))
    if per_model_dropout and type(arch).__name__ != "CNN":
        raise ConfigError(f"per-model dropout needs a CNN architecture, got {type(arch).__name__}")
    n_out = np.array([len(cl) for cl in classes], np.int32)
    steps = _as_table("steps", plan.pop("steps", 500), n, np.int64)
    hp, names = validate_hparams(plan, n, optimizers=optimizers)
    if tuple(dataset.images.shape[1:]) != tuple(arch.input_shape):
        raise ConfigError(
            f"dataset {dataset.name} images {dataset.images.shape[1:]} do not fit the architecture "
            f"input {arch.input_shape}"
        )

    label_map = np.full((n, n_classes), 0, np.int32)
    for m, cl in enumerate(classes):
        label_map[m, cl] = np.arange(len(cl))
    by_class = [np.flatnonzero(dataset.labels == c) for c in range(n_classes)]
    rows = []
    for m, cl in enumerate(classes):
        rng = np.random.default_rng([int(seeds[m]), 1])
        r = np.sort(np.concatenate([by_class[c] for c in cl]))
        take = max(1, round(frac[m] * len(r)))
        rows.append(np.sort(rng.choice(r, size=take, replace=False)) if take < len(r) else r)

    k_init, k_train = jax.random.split(key)
    params0 = init_population(arch, jnp.asarray(seeds), key=k_init, scale=jnp.asarray(scale))
    loss = ClassifierLoss(arch, int(augment[0]), float(augment[1]), pad_outputs, per_model_dropout)
    model_data = {"label_map": label_map, "n_out": n_out, "dropout": dropout}
    res = fit_population(
        loss,
        params0,
        {"x": dataset.images, "y": dataset.labels},
        key=k_train,
        steps=steps,
        batch_size=batch_size,
        index=rows,
        hparams={**{k: v for k, v in hp.items() if k != "optimizer"}, "optimizer": [names[i] for i in hp["optimizer"]]},
        seeds=seeds,
        optimizers=optimizers,
        model_data=model_data,
        model_chunk=model_chunk,
        snapshot_steps=snapshot_steps,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
    )

    def eval_rows(ds: Any, base_rows: list[np.ndarray], salt: int) -> list[np.ndarray]:
        if eval_size is None:
            return base_rows
        out = []
        for m, r in enumerate(base_rows):
            rng = np.random.default_rng([int(seeds[m]), salt])
            out.append(np.sort(rng.choice(r, size=eval_size, replace=False)) if len(r) > eval_size else r)
        return out

    # Train and test examples are scored in ONE call on the concatenated images (one compiled program).
    eval_rows_all = eval_rows(dataset, rows, 2)
    eval_images, eval_labels = dataset.images, dataset.labels
    if test is not None:
        test_by_class = [np.flatnonzero(test.labels == c) for c in range(n_classes)]
        test_rows = eval_rows(test, [np.sort(np.concatenate([test_by_class[c] for c in cl])) for cl in classes], 3)
        eval_rows_all += [r + len(dataset) for r in test_rows]
        eval_images = np.concatenate([dataset.images, test.images])
        eval_labels = np.concatenate([dataset.labels, test.labels])
    # One host-to-device copy for every scored version (snapshots and final), not one per call.
    eval_images, eval_labels = jnp.asarray(eval_images), jnp.asarray(eval_labels)
    twice = np.tile(np.arange(n), len(eval_rows_all) // n)

    tail = max(1, int(steps.max()) // 10)
    final_loss = np.array(
        [
            np.nanmean(res.losses[m, max(0, s - tail) : s]) if s and res.updates[m] else np.nan
            for m, s in enumerate(steps)
        ],
        np.float32,
    )
    versions = [(s, res.snapshots[s]) for s in sorted(res.snapshots)] + [(None, res.params)]
    zoos_params, meta_rows = [], []
    for snap, p in versions:
        acc, ce = evaluate_population(
            arch, _slice(p, twice), eval_images, eval_labels, eval_rows_all, label_map[twice], n_out=n_out[twice]
        )
        tr_acc, tr_loss, te_acc, te_loss = acc[:n], ce[:n], acc[n:], ce[n:]
        prefix = id_prefix or name
        for m in range(n):
            run_id = f"{prefix}-{m:06d}"
            row = {
                "id": run_id if snap is None else f"{run_id}-step{snap}",
                "run": run_id,
                "classes": [dataset.class_names[c] for c in classes[m]] + [None] * (k_out - len(classes[m])),
                "n_outputs": len(classes[m]),
                "class_indices": classes[m],
                "dataset": dataset.name,
                "train_acc": float(tr_acc[m]),
                "train_loss": float(tr_loss[m]),
                "test_acc": float(te_acc[m]) if test is not None else None,
                "test_loss": float(te_loss[m]) if test is not None else None,
                "generalization_gap": float(tr_acc[m] - te_acc[m]) if test is not None else None,
                "final_loss": float(final_loss[m]),
                "n_train": len(rows[m]),
                "step": int(steps[m]) if snap is None else min(int(snap), int(steps[m])),
                "final": snap is None,
                "optimizer": names[int(hp["optimizer"][m])],
                "learning_rate": float(hp["learning_rate"][m]),
                "weight_decay": float(hp["weight_decay"][m]),
                "momentum": float(hp["momentum"][m]),
                "init_scale": float(scale[m]),
                "dropout": float(dropout[m]),
                "train_fraction": float(frac[m]),
                "steps": int(steps[m]),
                "batch_size": int(batch_size),
                "seed": int(seeds[m]),
                "augment_shift": int(augment[0]),
                "augment_flip": float(augment[1]),
            }
            for k, v in (extra_meta or {}).items():
                row[k] = v[m]
            meta_rows.append(row)
        zoos_params.append(p)
    params = jax.tree.map(lambda *xs: np.concatenate(xs), *zoos_params)
    meta = {k: [r[k] for r in meta_rows] for k in meta_rows[0]}
    return Zoo(arch, params, meta, name)


def split_outputs(zoo: Any) -> list[Any]:
    """Split a ``pad_outputs`` zoo into zoos of exact architectures, one per output count.

    Every model keeps only its first ``n_outputs`` outputs: the rows of every tensor whose shape
    depends on ``out_features`` are sliced, so the result computes exactly the unmasked logits
    of the padded model.

    Args:
        zoo: a :class:`Zoo` whose meta has ``n_outputs`` and whose architecture has an
            ``out_features`` field (MLP, CNN).

    Returns:
        Zoos ordered by output count, with ``classes`` trimmed to the real outputs.

    Example:
        >>> import jax, numpy as np
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Zoo
        >>> z = Zoo.init(MLP(in_features=4, hidden=(8,), out_features=3), 3, key=jax.random.key(0))
        >>> z = z.with_meta(n_outputs=[2, 3, 2], classes=[["a", "b", None], ["a", "b", "c"], ["c", "a", None]])
        >>> [(part.arch.out_features, len(part), part.classes(0)) for part in split_outputs(z)]
        [(2, 2, ['a', 'b']), (3, 1, ['a', 'b', 'c'])]
    """
    from weightspace.zoo._zoo import Zoo

    if "n_outputs" not in zoo.meta:
        raise ConfigError(f"zoo {zoo.name!r} has no 'n_outputs' column (train it with pad_outputs=True)")
    counts = np.asarray(zoo.meta["n_outputs"], np.int64)
    out = []
    for k in sorted(set(counts.tolist())):
        sel = zoo.select(np.flatnonzero(counts == k))
        arch_k = dataclasses.replace(sel.arch, out_features=int(k))
        full, small = sel.arch.param_shapes(), arch_k.param_shapes()
        params = {
            n: (np.asarray(v)[:, : small[n][0]] if small[n] != full[n] else np.asarray(v))
            for n, v in sel.params.items()
        }
        meta = dict(sel.meta)
        if "classes" in meta:
            meta["classes"] = [list(c)[:k] for c in meta["classes"]]
        out.append(Zoo(arch_k, params, meta, sel.name))
    return out

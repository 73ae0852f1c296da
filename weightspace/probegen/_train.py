"""Training and evaluating ProbeGen (and its probing baselines) on a WeightDataset with ``learn.fit``."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from weightspace._errors import ConfigError, InvalidValueError, ShapeError
from weightspace.learn import TrainConfig, WeightDataset, fit, load_module, save_module
from weightspace.nets import Architecture, architecture_from_config
from weightspace.probegen._model import PROBE_SOURCES, ProbeGen, build_from_config
from weightspace.zoo import Collection, Zoo

TASKS = {"classify": "label", "accuracy": "test_acc"}
"""ProbeGen tasks and the meta column each reads by default: ``classify`` (which class was the
image an INR represents: accuracy) and ``accuracy`` (a classifier's held-out accuracy, i.e.
generalization prediction: Kendall tau)."""

GROUP_COLUMNS = ("run", "image_index")
"""Meta columns that group models for the split (checkpoints of one training run; fits of one image):
the first one a zoo has is used, so no group straddles train/val/test."""

ARCH_COLUMN = "architecture"
"""Meta column that :func:`weight_dataset` adds to datasets of several architectures (the signature)."""


def _task_kind(task: str) -> str:
    if task not in TASKS:
        raise ConfigError(f"unknown ProbeGen task {task!r}; known: {sorted(TASKS)}")
    return "classify" if task == "classify" else "regress"


def weight_dataset(
    source: Zoo | Collection,
    *,
    task: str,
    target: str | None = None,
    group: str | None = "auto",
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
) -> WeightDataset:
    """A :class:`~weightspace.learn.WeightDataset` of a zoo (or a Collection) for a ProbeGen task.

    A Collection's zoos (same tensors, e.g. the ReLU and tanh zoos of ``fmnist-cnn-zoo``) are
    concatenated; their architectures go to the meta column :data:`ARCH_COLUMN`. The split is by
    model with groups from :data:`GROUP_COLUMNS` (``group="auto"``), so the checkpoints of one
    run, or the fits of one image, stay in one split.

    Args:
        source: the models.
        task: a key of :data:`TASKS`.
        target: the meta column to predict (default ``TASKS[task]``).
        group: a meta column grouping models, ``"auto"``, or ``None``.
        seed: split seed.
        fractions: train / val / test fractions.

    Returns:
        The dataset, with the target under the name ``"y"``.

    Raises:
        ConfigError: the zoo lacks the target column (the message lists the columns it has).

    Example:
        >>> import jax
        >>> from weightspace.nets import SIREN
        >>> from weightspace.zoo import Zoo
        >>> zoo = Zoo.init(SIREN(), 10, key=jax.random.key(0)).with_meta(label=[i % 3 for i in range(10)])
        >>> ds = weight_dataset(zoo, task="classify")
        >>> len(ds), ds.targets["y"].tolist()[:4], [len(s) for s in ds.splits]
        (10, [0, 1, 2, 0], [7, 2, 1])
        >>> try:
        ...     weight_dataset(zoo, task="accuracy")
        ... except ConfigError as e:
        ...     print(e)
        task 'accuracy' needs the meta column 'test_acc', which zoo 'zoo' lacks; its columns are ['id', 'label']
    """
    _task_kind(task)
    column = TASKS[task] if target is None else target
    if isinstance(source, Collection):
        zoos = source.zoos
    elif isinstance(source, Zoo):
        zoos = [source]
    else:
        raise ConfigError(f"weight_dataset needs a Zoo or a Collection, got {type(source).__name__}")
    for z in zoos:
        if column not in z.meta:
            raise ConfigError(
                f"task {task!r} needs the meta column {column!r}, which zoo {z.name!r} lacks; "
                f"its columns are {sorted(z.meta)}"
            )
        if any(v is None for v in z.meta[column]):
            raise InvalidValueError(f"zoo {z.name!r}: meta column {column!r} is empty (None) for some models")
    names = sorted(zoos[0].params)
    for z in zoos[1:]:
        if sorted(z.params) != names or any(z.params[k].shape[1:] != zoos[0].params[k].shape[1:] for k in names):
            raise ConfigError(
                f"zoos {zoos[0].name!r} and {z.name!r} have different tensors; ProbeGen reads "
                f"zoos of one input/output shape and parameter layout"
            )
    if group == "auto":
        group = next((g for g in GROUP_COLUMNS if all(g in z.meta for z in zoos)), None)
    if len(zoos) == 1:
        ds = WeightDataset.from_zoo(zoos[0], targets={"y": column}, seed=seed, fractions=fractions, group=group)
        return ds
    params = {k: np.concatenate([np.asarray(z.params[k], np.float32) for z in zoos]) for k in names}
    keys = list(dict.fromkeys(k for z in zoos for k in z.meta))
    meta = {k: [x for z in zoos for x in z.meta.get(k, [None] * len(z))] for k in keys}
    meta[ARCH_COLUMN] = [z.arch.signature for z in zoos for _ in range(len(z))]
    merged = Zoo(zoos[0].arch, params, meta, zoos[0].name)
    ds = WeightDataset.from_zoo(merged, targets={"y": column}, seed=seed, fractions=fractions, group=group)
    return dataclasses.replace(ds, arch=None)


def dataset_architectures(dataset: WeightDataset) -> tuple[tuple[Architecture, ...], np.ndarray]:
    """The architectures of a dataset's models and each model's index into them.

    Example:
        >>> import jax
        >>> from weightspace.nets import SIREN
        >>> from weightspace.zoo import Zoo
        >>> zoo = Zoo.init(SIREN(), 4, key=jax.random.key(0)).with_meta(label=[0, 1, 0, 1])
        >>> archs, idx = dataset_architectures(weight_dataset(zoo, task="classify"))
        >>> archs, idx.tolist()
        ((SIREN(in_features=2, hidden=(32, 32), out_features=1, w0=30.0),), [0, 0, 0, 0])
    """
    if dataset.arch is not None:
        return (dataset.arch,), np.zeros(len(dataset), np.int64)
    if ARCH_COLUMN not in dataset.meta:
        raise ConfigError(
            f"the dataset has no architecture: build it with weight_dataset() or give "
            f"WeightDataset(arch=...) (or a meta column {ARCH_COLUMN!r} of signatures)"
        )
    sigs = list(dict.fromkeys(dataset.meta[ARCH_COLUMN]))
    archs = tuple(architecture_from_config(s) for s in sigs)
    where = {s: i for i, s in enumerate(sigs)}
    return archs, np.asarray([where[s] for s in dataset.meta[ARCH_COLUMN]], np.int64)


# ---- loss, inference ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Loss:
    """ProbeGen's loss for ``learn.fit`` (hashable, so the compiled step is reused)."""

    kind: str  # "classify" | "regress"
    mesh: Mesh | None = None

    def __call__(self, model: ProbeGen, batch: Mapping[str, Any], key: jax.Array) -> tuple[jax.Array, dict]:
        arch_index = batch["arch"][0] if "arch" in batch else 0
        out = model(batch["params"], arch_index=arch_index, mesh=self.mesh)
        if self.kind == "classify":
            loss = optax.softmax_cross_entropy_with_integer_labels(out, batch["y"]).mean()
            return loss, {"acc": jnp.mean(jnp.argmax(out, -1) == batch["y"])}
        return jnp.mean((out[:, 0] - batch["y"]) ** 2), {}


@functools.partial(jax.jit, static_argnames=("graphdef", "arch_index", "what", "mesh"))
def _infer(graphdef: Any, state: Any, params: Any, *, arch_index: int, what: str, mesh: Mesh | None) -> jax.Array:
    model = nnx.merge(graphdef, state)
    if what == "embed":
        return model.embed(params, arch_index=arch_index, mesh=mesh)
    return model(params, arch_index=arch_index, mesh=mesh)


def _run(
    model: ProbeGen,
    params: Mapping[str, np.ndarray],
    arch_index: np.ndarray | None,
    what: str,
    chunk: int = 256,
    mesh: Mesh | None = None,
) -> np.ndarray:
    graphdef, state = nnx.split(model)
    n = int(next(iter(params.values())).shape[0])
    idx_all = np.zeros(n, np.int64) if arch_index is None else np.asarray(arch_index)
    out: np.ndarray | None = None
    for a in np.unique(idx_all):
        rows = np.flatnonzero(idx_all == a)
        c = min(chunk, len(rows))
        for lo in range(0, len(rows), c):
            take = rows[lo : lo + c]
            pad = np.concatenate([take, np.repeat(take[-1:], c - len(take))])  # fixed shapes: one compile
            r = np.asarray(
                _infer(
                    graphdef,
                    state,
                    {k: jnp.asarray(v[pad]) for k, v in params.items()},
                    arch_index=int(a),
                    what=what,
                    mesh=mesh,
                )
            )[: len(take)]
            if out is None:
                out = np.zeros((n, *r.shape[1:]), np.float32)
            out[take] = r
    assert out is not None
    return out


def score(kind: str, pred: np.ndarray, y: np.ndarray) -> float:
    """Accuracy (``classify``: ``pred`` are logits) or Kendall tau (``regress``).

    Example:
        >>> import numpy as np
        >>> score("classify", np.array([[0.1, 2.0], [3.0, 0.0]]), np.array([1, 1]))
        0.5
        >>> score("regress", np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0, 3.0]))
        1.0
    """
    if kind == "classify":
        return float(np.mean(np.argmax(pred, -1) == y))
    from weightspace.learn import kendall_tau

    return float(kendall_tau(np.asarray(pred).reshape(-1), np.asarray(y).reshape(-1)))


# ---- training -----------------------------------------------------------------------------------
class ProbeGenRun(NamedTuple):
    """A trained ProbeGen (or probing baseline) and how it did.

    Attributes:
        model: the trained :class:`ProbeGen` (at its best validation step).
        config: the settings (JSON-serialisable; saved with the model).
        report: ``learn.fit``'s :class:`~weightspace.learn.FitReport`.
        val_score, test_score: accuracy or Kendall tau on the validation / test models.
        test_predictions: class logits ``[test, classes]`` or predicted targets ``[test]``.
        test_embeddings: the predictor's last hidden layer on the test models ``[test, width]``.
    """

    model: ProbeGen
    config: dict[str, Any]
    report: Any
    val_score: float
    test_score: float
    test_predictions: np.ndarray
    test_embeddings: np.ndarray

    def predict(self, dataset: WeightDataset, which: str | np.ndarray = "test") -> np.ndarray:
        """Predictions (targets de-standardised) for the models of a split or index array."""
        return predict(self.model, self.config, dataset, which)

    def embed(self, dataset: WeightDataset, which: str | np.ndarray = "test") -> np.ndarray:
        """Embeddings ``[models, width]`` for the models of a split or index array."""
        return embed(self.model, dataset, which)


def _indices(dataset: WeightDataset, which: str | np.ndarray) -> np.ndarray:
    return dataset._indices(which)  # WeightDataset's own index resolution


def predict(
    model: ProbeGen,
    config: Mapping[str, Any],
    dataset: WeightDataset,
    which: str | np.ndarray = "test",
    *,
    mesh: Mesh | None = None,
) -> np.ndarray:
    """Class logits ``[models, classes]`` or predicted targets ``[models]`` of a trained model.

    Args:
        model: a trained :class:`ProbeGen`.
        config: its config (:attr:`ProbeGenRun.config`; holds the target's standardisation).
        dataset: the models (architectures must be the model's).
        which: a split name or model indices.
        mesh: shard the models over this mesh's ``models`` axis.
    """
    idx = _indices(dataset, which)
    _, arch_index = _check_archs(model, dataset)
    params = {k: v[idx] for k, v in dataset.inputs.items()}
    out = _run(model, params, arch_index[idx], "predict", mesh=mesh)
    if config["kind"] == "classify":
        return out
    return out[:, 0] * float(config["y_std"]) + float(config["y_mean"])


def embed(
    model: ProbeGen, dataset: WeightDataset, which: str | np.ndarray = "test", *, mesh: Mesh | None = None
) -> np.ndarray:
    """The predictor's last hidden layer ``[models, width]`` for the models of a split (an embedding
    to compare with other weight encoders, e.g. by ``learn.knn_classify`` or ``learn.linear_probe``)."""
    idx = _indices(dataset, which)
    _, arch_index = _check_archs(model, dataset)
    return _run(model, {k: v[idx] for k, v in dataset.inputs.items()}, arch_index[idx], "embed", mesh=mesh)


def predict_zoo(
    model: ProbeGen, config: Mapping[str, Any], source: Zoo | Collection | Sequence[Zoo], *, mesh: Mesh | None = None
) -> tuple[list[str], np.ndarray]:
    """Predictions of a trained model for every model of a zoo or Collection (no targets needed).

    Returns:
        ``(ids, predictions)``: model ids, and class logits ``[models, classes]`` or predicted
        targets ``[models]``.

    Raises:
        ConfigError: a zoo whose architecture the model was not trained for.
    """
    zoos = source.zoos if isinstance(source, Collection) else [source] if isinstance(source, Zoo) else list(source)
    mine = {a.signature: i for i, a in enumerate(model.archs)}
    ids: list[str] = []
    outs: list[np.ndarray] = []
    for z in zoos:
        if z.arch.signature not in mine:
            raise ConfigError(
                f"zoo {z.name!r} is {z.arch!r}; this ProbeGen was trained for {[repr(a) for a in model.archs]}"
            )
        z.arch.check_params(z.params, stacked=True, where=f"zoo {z.name!r}")
        params = {k: np.asarray(v, np.float32) for k, v in z.params.items()}
        out = _run(model, params, np.full(len(z), mine[z.arch.signature]), "predict", mesh=mesh)
        outs.append(
            out if config["kind"] == "classify" else out[:, 0] * float(config["y_std"]) + float(config["y_mean"])
        )
        ids.extend(z.ids)
    return ids, np.concatenate(outs)


def _check_archs(model: ProbeGen, dataset: WeightDataset) -> tuple[tuple[Architecture, ...], np.ndarray]:
    archs, arch_index = dataset_architectures(dataset)
    mine = {a.signature: i for i, a in enumerate(model.archs)}
    missing = [a for a in archs if a.signature not in mine]
    if missing:
        raise ConfigError(
            f"the model was trained for {[repr(a) for a in model.archs]}; the dataset holds "
            f"{[repr(a) for a in missing]}"
        )
    remap = np.asarray([mine[a.signature] for a in archs], np.int64)
    for name, shape in model.archs[0].param_shapes().items():
        got = dataset.inputs.get(name)
        if got is None or tuple(got.shape[1:]) != tuple(shape):
            raise ShapeError(
                f"dataset tensor {name!r} is {None if got is None else list(got.shape)}, the "
                f"architecture needs [models, *{list(shape)}]"
            )
    return archs, remap[arch_index]


def fixed_probe_data(kind: str, arch: Architecture, n: int, *, seed: int = 0) -> np.ndarray:
    """A fixed probe set for the baselines: ``weightspace.data.make_probes(kind)`` for images
    (``uniform``, ``dead-leaves``, ``natural``, or a dataset name for in-distribution samples);
    for coordinate inputs ``uniform`` (uniform in ``[-1, 1]^d``) or ``grid`` (a regular grid).

    Example:
        >>> from weightspace.nets import SIREN
        >>> fixed_probe_data("grid", SIREN(), 16).shape
        (16, 2)
    """
    shape = tuple(arch.input_shape)
    if len(shape) == 3:
        from weightspace.data import make_probes

        return np.asarray(make_probes(kind, n, shape=shape, seed=seed).data, np.float32)
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.uniform(-1.0, 1.0, (n, *shape)).astype(np.float32)
    if kind == "grid" and shape == (2,):
        side = math.ceil(math.sqrt(n))
        g = np.linspace(-1.0, 1.0, side + 2)[1:-1]
        yy, xx = np.meshgrid(g, g, indexing="ij")
        return np.stack([yy.ravel(), xx.ravel()], -1)[:n].astype(np.float32)
    raise ConfigError(
        f"no fixed probe set {kind!r} for inputs of shape {shape}; use 'uniform' or 'grid' "
        f"(coordinates) or an image probe kind"
    )


def train_probegen(
    dataset: WeightDataset,
    *,
    task: str,
    probes: str = "generator",
    n_probes: int = 64,
    latent_dim: int = 32,
    nonlinear: bool = False,
    bounded: bool = True,
    fixed: str | np.ndarray | None = None,
    depth: int = 6,
    width: int = 256,
    steps: int = 2000,
    batch_size: int = 32,
    learning_rate: float = 3e-4,
    weight_decay: float = 0.0,
    eval_every: int = 100,
    patience: int | None = None,
    seed: int = 0,
    mesh: Mesh | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool | None = None,
) -> ProbeGenRun:
    """Train ProbeGen (or a probing baseline) on a weight dataset and evaluate it on the test split.

    Adam with cosine decay (paper: 3e-4, batch 32 models), through :func:`weightspace.learn.fit`;
    the model returned is the one of the best validation score (accuracy or Kendall tau), checked
    every ``eval_every`` steps; the test split is touched once, at the end. Regression targets
    are standardised on the training split.

    Args:
        dataset: the models (see :func:`weight_dataset`), target ``"y"``.
        task: a key of :data:`TASKS` (``classify``: cross-entropy; ``accuracy``: MSE).
        probes: ``"generator"`` (ProbeGen), ``"vanilla"`` (free learned probes) or ``"fixed"``.
        n_probes: number of probes.
        latent_dim: latent code dimension.
        nonlinear: a non-linear generator (ablation).
        bounded: coordinate probes end in ``tanh`` (``False``: unbounded, as the paper's two
            linear layers; see :class:`~weightspace.probegen.ProbeGenerator`).
        fixed: for ``probes="fixed"``: a probe kind for :func:`fixed_probe_data` or an array.
        depth, width: the predictor MLP.
        steps, batch_size, learning_rate, weight_decay, eval_every, patience: optimisation.
        seed: initialisation, batch order.
        mesh: shard each batch's models over this mesh's ``models`` axis.
        checkpoint_dir: orbax checkpoints; a run there is resumed.
        progress: progress bar.

    Returns:
        A :class:`ProbeGenRun`.

    Raises:
        TrainingDivergedError: a NaN/Inf loss (the message names the step; the last good
            checkpoint is kept).

    Example:
        >>> import jax
        >>> from weightspace.nets import SIREN
        >>> from weightspace.zoo import Zoo
        >>> zoo = Zoo.init(SIREN(), 12, key=jax.random.key(0)).with_meta(label=[i % 2 for i in range(12)])
        >>> run = train_probegen(weight_dataset(zoo, task="classify"), task="classify", n_probes=8, steps=4,
        ...                      batch_size=4, eval_every=2)
        >>> run.test_predictions.shape, run.test_embeddings.shape, run.report.steps_done
        ((2, 2), (2, 256), 4)
    """
    kind = _task_kind(task)
    if probes not in PROBE_SOURCES:
        raise ConfigError(f"probes must be one of {PROBE_SOURCES}, got {probes!r}")
    if "y" not in dataset.targets:
        raise ConfigError(
            f"the dataset has no target 'y' (it has {sorted(dataset.targets)}); build it with "
            f"weight_dataset(..., task={task!r})"
        )
    dataset.check_finite()
    archs, arch_index = dataset_architectures(dataset)
    y = np.asarray(dataset.targets["y"])
    tr, va = dataset.splits.train, dataset.splits.val
    cfg: dict[str, Any] = {
        "task": task,
        "kind": kind,
        "probes": probes,
        "n_probes": int(n_probes),
        "latent_dim": int(latent_dim),
        "nonlinear": bool(nonlinear),
        "bounded": bool(bounded),
        "depth": int(depth),
        "width": int(width),
        "archs": [a.to_config() for a in archs],
        "fixed": fixed if isinstance(fixed, str) or fixed is None else "array",
        "steps": int(steps),
        "batch_size": int(batch_size),
        "learning_rate": float(learning_rate),
        "seed": int(seed),
    }
    if kind == "classify":
        if y.dtype.kind not in "iub":
            raise InvalidValueError(f"task {task!r} needs integer class labels, got dtype {y.dtype}")
        n_out = int(y.max()) + 1
        y_fit = y.astype(np.int32)
        cfg["classes"] = n_out
    else:
        n_out = 1
        mu, sd = float(y[tr].mean()), float(y[tr].std() or 1.0)
        y_fit = ((y - mu) / sd).astype(np.float32)
        cfg["y_mean"], cfg["y_std"] = mu, sd
    cfg["n_out"] = n_out
    fixed_data = None
    if probes == "fixed":
        if fixed is None:
            raise ConfigError("probes='fixed' needs fixed= (a probe kind or an array)")
        fixed_data = (
            fixed_probe_data(fixed, archs[0], n_probes, seed=seed)
            if isinstance(fixed, str)
            else np.asarray(fixed, np.float32)
        )
    model = ProbeGen(
        archs,
        n_out=n_out,
        n_probes=n_probes,
        probes=probes,
        latent_dim=latent_dim,
        nonlinear=nonlinear,
        bounded=bounded,
        fixed=fixed_data,
        depth=depth,
        width=width,
        rngs=nnx.Rngs(seed),
    )
    params = {k: np.asarray(v, np.float32) for k, v in dataset.inputs.items()}
    for name, shape in archs[0].param_shapes().items():
        if name not in params or params[name].shape[1:] != shape:
            raise ShapeError(f"dataset tensor {name!r} does not fit {archs[0]!r}: expected [models, *{list(shape)}]")
    cal = tr[: min(len(tr), 256)]
    model.calibrate({k: jnp.asarray(v[cal]) for k, v in params.items()}, arch_index=int(arch_index[cal[0]]))

    config = TrainConfig(
        steps=int(steps),
        batch_size=int(batch_size),
        learning_rate=float(learning_rate),
        weight_decay=float(weight_decay),
        schedule="cosine",
        eval_every=int(eval_every),
        patience=patience,
        seed=int(seed),
    )
    val_params = {k: v[va] for k, v in params.items()}

    def val_fn(m: ProbeGen) -> float:
        out = _run(m, val_params, arch_index[va], "predict")
        return score(kind, out if kind == "classify" else out[:, 0], y_fit[va])

    train_tr = {k: v[tr] for k, v in params.items()}
    sample = None
    train_data: Any = {"params": train_tr, "y": y_fit[tr]}
    if len(archs) > 1:  # one architecture per batch: the kernel runs once (lax.switch), not per arch
        groups = [np.flatnonzero(arch_index[tr] == a) for a in range(len(archs))]
        sizes = np.asarray([len(g) for g in groups], np.float64)
        bs = int(min(batch_size, min(len(g) for g in groups if len(g))))
        if mesh is not None:
            bs = max(mesh.devices.size, bs // mesh.devices.size * mesh.devices.size)

        def sample(key: jax.Array, step: int) -> Any:
            rng = np.random.default_rng([int(seed), int(step)])
            a = int(rng.choice(len(groups), p=sizes / sizes.sum()))
            take = groups[a][rng.choice(len(groups[a]), bs, replace=len(groups[a]) < bs)]
            return {
                "params": {k: v[take] for k, v in train_tr.items()},
                "y": y_fit[tr][take],
                "arch": np.full(bs, a, np.int32),
            }

        train_data = None
    t0 = time.perf_counter()
    report = fit(
        model,
        _Loss(kind, mesh),
        train_data,
        config=config,
        val_fn=val_fn if len(va) else None,
        checkpoint_dir=checkpoint_dir,
        sample=sample,
        progress=progress,
        mesh=mesh,
    )
    cfg["train_seconds"] = time.perf_counter() - t0
    val = float(report.best_score) if report.best_score is not None else float("nan")
    te = dataset.splits.test
    test_pred = predict(model, cfg, dataset, te)
    test_emb = embed(model, dataset, te)
    test = score(kind, test_pred, y[te]) if len(te) else float("nan")
    return ProbeGenRun(model, cfg, report, val, test, test_pred, test_emb)


# ---- saving -------------------------------------------------------------------------------------
def save_run(run: ProbeGenRun, directory: str | Path) -> Path:
    """Save a trained model (orbax, via ``learn.save_module``) with its config and scores."""
    directory = Path(directory)
    cfg = dict(run.config)
    cfg["val_score"], cfg["test_score"] = run.val_score, run.test_score
    return save_module(run.model, directory / "model", config=json.loads(json.dumps(cfg, default=float)))


def load_run(directory: str | Path) -> tuple[ProbeGen, dict[str, Any]]:
    """Load what :func:`save_run` wrote: ``(model, config)``."""
    path = Path(directory) / "model"
    holder: dict[str, Any] = {}

    def build(cfg: dict[str, Any]) -> ProbeGen:
        holder.update(cfg)
        return build_from_config(cfg)

    model = load_module(path, build)
    return model, holder  # type: ignore[return-value]

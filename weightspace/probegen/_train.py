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
from flax import nnx
from jax.sharding import Mesh

from weightspace._errors import ConfigError, InvalidValueError, LoadError, ShapeError
from weightspace.learn import TargetScale, Task, TrainConfig, WeightDataset, as_task, fit, load_module, save_module
from weightspace.nets import Architecture, architecture_from_config
from weightspace.parallel import map_chunks
from weightspace.probegen._model import ProbeGen, ProbeGenConfig, build_probegen
from weightspace.zoo import Collection, Zoo

DEFAULT_TARGETS = {"classify": "label", "rank": "test_acc", "regress": "test_acc"}
"""The meta column each :class:`~weightspace.learn.Task` kind reads by default: ``classify`` (which
class was the image an INR represents: accuracy) and ``rank`` (a classifier's held-out accuracy,
i.e. generalization prediction: Kendall tau); ``multilabel`` needs ``target=``."""

GROUP_COLUMNS = ("run", "image_index")
"""Meta columns that group models for the split (checkpoints of one training run; fits of one image):
the first one a zoo has is used, so no group straddles train/val/test."""

ARCH_COLUMN = "architecture"
"""Meta column that :func:`weight_dataset` adds to datasets of several architectures (the signature)."""


def weight_dataset(
    source: Zoo | Collection,
    *,
    task: Task | str,
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
        task: a :class:`~weightspace.learn.Task` or its kind.
        target: the meta column to predict (default :data:`DEFAULT_TARGETS` of the task).
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
        ...     weight_dataset(zoo, task="rank")
        ... except ConfigError as e:
        ...     print(e)
        task 'rank' needs the meta column 'test_acc', which zoo 'zoo' lacks; its columns are ['id', 'label']
    """
    task = as_task(task)
    if target is None and task.kind not in DEFAULT_TARGETS:
        raise ConfigError(f"task {task.kind!r} has no default target column: give target=")
    column = DEFAULT_TARGETS[task.kind] if target is None else target
    if isinstance(source, Collection):
        zoos = source.zoos
    elif isinstance(source, Zoo):
        zoos = [source]
    else:
        raise ConfigError(f"weight_dataset needs a Zoo or a Collection, got {type(source).__name__}")
    for z in zoos:
        if column not in z.meta:
            raise ConfigError(
                f"task {task.kind!r} needs the meta column {column!r}, which zoo {z.name!r} lacks; "
                f"its columns are {sorted(z.meta)}"
            )
        if any(v is None for v in z.meta[column]):
            raise InvalidValueError(f"zoo {z.name!r}: meta column {column!r} is empty (None) for some models")
    shapes0 = {k: tuple(v.shape[1:]) for k, v in zoos[0].params.items()}
    for z in zoos[1:]:
        shapes = {k: tuple(v.shape[1:]) for k, v in z.params.items()}
        if shapes != shapes0:
            diff = sorted(k for k in {*shapes, *shapes0} if shapes.get(k) != shapes0.get(k))[:3]
            detail = ", ".join(f"{k}: {shapes0.get(k)} vs {shapes.get(k)}" for k in diff)
            raise ConfigError(
                f"zoos {zoos[0].name!r} ({zoos[0].arch.signature}) and {z.name!r} ({z.arch.signature}) have "
                f"different tensors ({detail}); ProbeGen trains on models of one parameter layout: train one "
                "run per architecture (pass one zoo file of the hub)"
            )
    if group == "auto":
        group = next((g for g in GROUP_COLUMNS if all(g in z.meta for z in zoos)), None)
    if len(zoos) == 1:
        ds = WeightDataset.from_zoo(zoos[0], targets={"y": column}, seed=seed, fractions=fractions, group=group)
        return ds
    params = {k: np.concatenate([np.asarray(z.params[k], np.float32) for z in zoos]) for k in sorted(shapes0)}
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
def _probegen_loss(model: ProbeGen, batch: Mapping[str, Any], key: jax.Array) -> tuple[jax.Array, dict]:
    """``fit``'s loss: the model's task loss on its outputs (one architecture per batch)."""
    arch_index = batch["arch"][0] if "arch" in batch else 0
    return model.task.loss(model(batch["params"], arch_index=arch_index, mesh=model.mesh), batch["y"])


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
    mesh = mesh if mesh is not None else model.mesh
    graphdef, state = nnx.split(model)
    n = int(next(iter(params.values())).shape[0])
    idx_all = np.zeros(n, np.int64) if arch_index is None else np.asarray(arch_index)
    out: np.ndarray | None = None
    for a in np.unique(idx_all):
        rows = np.flatnonzero(idx_all == a)

        def run(part: Any, a: int = int(a)) -> jax.Array:
            return _infer(graphdef, state, jax.tree.map(jnp.asarray, part), arch_index=a, what=what, mesh=mesh)

        r = map_chunks(run, {k: v[rows] for k, v in params.items()}, chunk=chunk)
        if out is None:
            out = np.zeros((n, *r.shape[1:]), np.float32)
        out[rows] = r
    assert out is not None
    return out


def _outputs_to_predictions(model: ProbeGen, out: np.ndarray, scale: TargetScale) -> np.ndarray:
    # logits stay logits (classify, multilabel); values come back in target units
    return model.task.decode(out, scale) if model.task.scaled else out


def _score(task: Task, pred: np.ndarray, y: np.ndarray) -> float:
    """The task's score of :func:`predict`'s output (logits are decoded first)."""
    return task.score(pred if task.scaled else task.decode(pred), y)


# ---- training -----------------------------------------------------------------------------------
class ProbeGenRun(NamedTuple):
    """A trained ProbeGen (or probing baseline) and how it did.

    Attributes:
        model: the trained :class:`ProbeGen` (at its best validation step).
        config: its :class:`ProbeGenConfig`.
        train: the :class:`~weightspace.learn.TrainConfig` it was trained with.
        scale: the standardisation of a ``regress``/``rank`` target (undone by :meth:`predict`).
        report: ``fit``'s :class:`~weightspace.learn.FitReport` (``None`` after :func:`load_run`).
        val_score, test_score: the task's score on the validation / test models.
        test_predictions: class logits ``[test, classes]`` or predicted targets ``[test]``
            (``None`` after :func:`load_run`).
        test_embeddings: the predictor's last hidden layer on the test models ``[test, width]``
            (``None`` after :func:`load_run`).
        train_seconds: wall time of training.
    """

    model: ProbeGen
    config: ProbeGenConfig
    train: TrainConfig
    scale: TargetScale
    report: Any
    val_score: float
    test_score: float
    test_predictions: np.ndarray | None
    test_embeddings: np.ndarray | None
    train_seconds: float = float("nan")

    @property
    def task(self) -> Task:
        return self.config.task_spec

    def predict(self, dataset: WeightDataset, which: str | np.ndarray = "test") -> np.ndarray:
        """Predictions (targets de-standardised) for the models of a split or index array."""
        return predict(self.model, dataset, which, scale=self.scale)

    def predict_zoo(self, source: Zoo | Collection | Sequence[Zoo]) -> tuple[list[str], np.ndarray]:
        """``(ids, predictions)`` for every model of a zoo or Collection (see :func:`predict_zoo`)."""
        return predict_zoo(self.model, source, scale=self.scale)

    def embed(self, dataset: WeightDataset, which: str | np.ndarray = "test") -> np.ndarray:
        """Embeddings ``[models, width]`` for the models of a split or index array."""
        return embed(self.model, dataset, which)


def _indices(dataset: WeightDataset, which: str | np.ndarray) -> np.ndarray:
    return dataset._indices(which)  # WeightDataset's own index resolution


def predict(
    model: ProbeGen,
    dataset: WeightDataset,
    which: str | np.ndarray = "test",
    *,
    scale: TargetScale | None = None,
    mesh: Mesh | None = None,
) -> np.ndarray:
    """Class logits ``[models, classes]`` or predicted targets ``[models]`` of a trained model.

    Args:
        model: a trained :class:`ProbeGen`.
        dataset: the models (architectures must be the model's).
        which: a split name or model indices.
        scale: the target standardisation (:attr:`ProbeGenRun.scale`) to undo.
        mesh: shard the models over this mesh's ``models`` axis (default: the model's).
    """
    idx = _indices(dataset, which)
    _, arch_index = _check_archs(model, dataset)
    params = {k: v[idx] for k, v in dataset.inputs.items()}
    out = _run(model, params, arch_index[idx], "predict", mesh=mesh)
    return _outputs_to_predictions(model, out, scale or TargetScale())


def embed(
    model: ProbeGen, dataset: WeightDataset, which: str | np.ndarray = "test", *, mesh: Mesh | None = None
) -> np.ndarray:
    """The predictor's last hidden layer ``[models, width]`` for the models of a split (an embedding
    to compare with other weight encoders, e.g. by ``learn.knn_classify`` or ``learn.linear_probe``)."""
    idx = _indices(dataset, which)
    _, arch_index = _check_archs(model, dataset)
    return _run(model, {k: v[idx] for k, v in dataset.inputs.items()}, arch_index[idx], "embed", mesh=mesh)


def predict_zoo(
    model: ProbeGen,
    source: Zoo | Collection | Sequence[Zoo],
    *,
    scale: TargetScale | None = None,
    mesh: Mesh | None = None,
) -> tuple[list[str], np.ndarray]:
    """Predictions of a trained model for every model of a zoo or Collection (no targets needed).

    Returns:
        ``(ids, predictions)``: model ids, and class logits ``[models, classes]`` or predicted
        targets ``[models]`` (de-standardised with ``scale``).

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
        outs.append(_outputs_to_predictions(model, out, scale or TargetScale()))
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


DEFAULT_TRAIN = TrainConfig(steps=2000, batch_size=32, learning_rate=3e-4, schedule="cosine", eval_every=100)
"""The paper's optimisation: Adam 3e-4 with cosine decay, batches of 32 models."""


def train_probegen(
    dataset: WeightDataset,
    config: ProbeGenConfig,
    *,
    train_config: TrainConfig = DEFAULT_TRAIN,
    fixed: np.ndarray | None = None,
    mesh: Mesh | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool | None = None,
) -> ProbeGenRun:
    """Train ProbeGen (or a probing baseline) on a weight dataset and evaluate it on the test split.

    Through :func:`weightspace.learn.fit` with ``train_config`` (default :data:`DEFAULT_TRAIN`, the paper's);
    the model returned is the one of the best validation score (the task's score, checked every
    ``train.eval_every`` steps); the test split is touched once, at the end. Regression targets are
    standardised on the training split.

    Args:
        dataset: the models (see :func:`weight_dataset`), target ``"y"``.
        config: a :class:`ProbeGenConfig` (task, probe source, sizes).
        train_config: the optimisation settings (``seed`` also seeds the initialisation).
        fixed: for ``probes="fixed"``: the probes as an array (instead of ``config.fixed``'s kind).
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
        >>> from weightspace.learn import TrainConfig
        >>> from weightspace.nets import SIREN
        >>> from weightspace.zoo import Zoo
        >>> zoo = Zoo.init(SIREN(), 12, key=jax.random.key(0)).with_meta(label=[i % 2 for i in range(12)])
        >>> run = train_probegen(weight_dataset(zoo, task="classify"), ProbeGenConfig(task="classify", n_probes=8),
        ...                      train_config=TrainConfig(steps=4, batch_size=4, eval_every=2))
        >>> run.test_predictions.shape, run.test_embeddings.shape, run.report.steps_done
        ((2, 2), (2, 256), 4)
    """
    if not isinstance(config, ProbeGenConfig):
        raise ConfigError(f"train_probegen: config must be a ProbeGenConfig, got {type(config).__name__}")
    if not isinstance(train_config, TrainConfig):
        raise ConfigError(f"train_probegen: train_config must be a TrainConfig, got {type(train_config).__name__}")
    train = train_config
    task = config.task_spec
    if "y" not in dataset.targets:
        raise ConfigError(
            f"the dataset has no target 'y' (it has {sorted(dataset.targets)}); build it with "
            f"weight_dataset(..., task={config.task!r})"
        )
    dataset.check_finite()
    archs, arch_index = dataset_architectures(dataset)
    tr, va = dataset.splits.train, dataset.splits.val
    y = task.targets(dataset.targets["y"], len(dataset), "the dataset's target 'y'")
    scale = task.scale(y[tr])
    y_fit = task.standardise(y, scale)
    n_out = task.n_out(y)
    fixed_data = None
    if config.probes == "fixed":
        if fixed is None and config.fixed is None:
            raise ConfigError("probes='fixed' needs a probe kind (ProbeGenConfig.fixed) or fixed= (an array)")
        fixed_data = (
            np.asarray(fixed, np.float32)
            if fixed is not None
            else fixed_probe_data(str(config.fixed), archs[0], config.n_probes, seed=train.seed)
        )
    model = build_probegen(config, archs, n_out=n_out, fixed=fixed_data, mesh=mesh, seed=train.seed)
    params = {k: np.asarray(v, np.float32) for k, v in dataset.inputs.items()}
    for name, shape in archs[0].param_shapes().items():
        if name not in params or params[name].shape[1:] != shape:
            raise ShapeError(f"dataset tensor {name!r} does not fit {archs[0]!r}: expected [models, *{list(shape)}]")
    cal = tr[: min(len(tr), 256)]
    model.calibrate({k: jnp.asarray(v[cal]) for k, v in params.items()}, arch_index=int(arch_index[cal[0]]))

    val_params = {k: v[va] for k, v in params.items()}

    def val_fn(m: ProbeGen) -> float:
        out = _run(m, val_params, arch_index[va], "predict")
        return _score(task, _outputs_to_predictions(m, out, scale), y[va])

    train_tr = {k: v[tr] for k, v in params.items()}
    sample = None
    train_data: Any = {"params": train_tr, "y": y_fit[tr]}
    if len(archs) > 1:  # one architecture per batch: the kernel runs once (lax.switch), not per arch
        groups = [np.flatnonzero(arch_index[tr] == a) for a in range(len(archs))]
        sizes = np.asarray([len(g) for g in groups], np.float64)
        bs = int(min(train.batch_size, min(len(g) for g in groups if len(g))))
        if mesh is not None:
            bs = max(mesh.devices.size, bs // mesh.devices.size * mesh.devices.size)

        def sample(key: jax.Array, step: int) -> Any:
            rng = np.random.default_rng([int(train.seed), int(step)])
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
        _probegen_loss,
        train_data,
        config=train,
        val_fn=val_fn if len(va) else None,
        checkpoint_dir=checkpoint_dir,
        sample=sample,
        progress=progress,
        mesh=mesh,
    )
    seconds = time.perf_counter() - t0
    val = float(report.best_score) if report.best_score is not None else float("nan")
    te = dataset.splits.test
    test_pred = predict(model, dataset, te, scale=scale)
    test_emb = embed(model, dataset, te)
    test = _score(task, test_pred, y[te]) if len(te) else float("nan")
    return ProbeGenRun(model, config, train, scale, report, val, test, test_pred, test_emb, seconds)


# ---- saving -------------------------------------------------------------------------------------
_RUN_FORMAT = "weightspace.probegen.run/2"


def save_run(run: ProbeGenRun, directory: str | Path) -> Path:
    """Save a trained model (orbax, via ``learn.save_module``) with its configs, scale and scores."""
    record = {
        "format": _RUN_FORMAT,
        "probegen": run.config.to_dict(),
        "train": run.train.to_dict(),
        "archs": [a.to_config() for a in run.model.archs],
        "n_out": int(run.model.predictor.layers[-1].out_features),
        "scale": [run.scale.mean, run.scale.std],
        "val_score": run.val_score,
        "test_score": run.test_score,
        "train_seconds": run.train_seconds,
    }
    return save_module(run.model, Path(directory) / "model", config=json.loads(json.dumps(record, default=float)))


def _from_record(record: Mapping[str, Any], where: str) -> tuple[ProbeGenConfig, TrainConfig, TargetScale]:
    try:
        if record.get("format") == _RUN_FORMAT:
            return (
                ProbeGenConfig.from_dict(record["probegen"]),
                TrainConfig(**record["train"]),
                TargetScale(*(float(v) for v in record["scale"])),
            )
        # the first format: one flat dict ("kind": classify | regress, "y_mean"/"y_std" for regress)
        cfg = ProbeGenConfig(
            task="classify" if record["kind"] == "classify" else "rank",
            probes=record["probes"],
            n_probes=int(record["n_probes"]),
            latent_dim=int(record["latent_dim"]),
            nonlinear=bool(record["nonlinear"]),
            bounded=bool(record.get("bounded", True)),
            fixed=record.get("fixed") if record.get("fixed") != "array" else None,
            depth=int(record["depth"]),
            width=int(record["width"]),
        )
        train = TrainConfig(
            steps=int(record["steps"]),
            batch_size=int(record["batch_size"]),
            learning_rate=float(record["learning_rate"]),
            schedule="cosine",
            seed=int(record["seed"]),
        )
        return cfg, train, TargetScale(float(record.get("y_mean", 0.0)), float(record.get("y_std", 1.0)))
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise LoadError(f"{where}: not a ProbeGen run record ({type(e).__name__}: {e})") from e


def load_run(directory: str | Path) -> ProbeGenRun:
    """Load what :func:`save_run` wrote, as a :class:`ProbeGenRun` (without the training report and
    test outputs)."""
    path = Path(directory) / "model"
    holder: dict[str, Any] = {}

    def build(record: dict[str, Any]) -> ProbeGen:
        cfg, train, _ = _from_record(record, str(path / "config.json"))
        try:
            archs = [architecture_from_config(c) for c in record["archs"]]
            n_out = int(record["n_out"])
        except (KeyError, TypeError, ValueError) as e:
            raise LoadError(f"{path / 'config.json'}: not a ProbeGen run record ({e})") from e
        holder.update(record)
        return build_probegen(cfg, archs, n_out=n_out, seed=train.seed)

    model = load_module(path, build)
    cfg, train, scale = _from_record(holder, str(path / "config.json"))
    return ProbeGenRun(
        model,  # type: ignore[arg-type]
        cfg,
        train,
        scale,
        None,
        float(holder.get("val_score", float("nan"))),
        float(holder.get("test_score", float("nan"))),
        None,
        None,
        float(holder.get("train_seconds", float("nan"))),
    )

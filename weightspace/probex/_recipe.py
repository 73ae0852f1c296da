"""The ``fmnist-trees`` recipe: a local Model-J of model trees (fine-tunes of a few base models).

Public models cluster into *model trees*: many fine-tunes of one ancestor. ``fmnist-trees`` builds
that structure at Fashion-MNIST scale, from real data only:

* a **pool of 20 classes**: the 10 Fashion-MNIST classes and the 10 MNIST digits (``"digit 0"`` ...
  ``"digit 9"``), all 28x28 grey images (Fashion-MNIST: 1000 training images per class drawn once,
  MNIST-5k: its 400 per class; test images from the official / stratified test splits);
* **4 trees**, each rooted at its own pre-trained base (:data:`TREES`): two MLPs 784-128-64 of the
  same shape pre-trained on Fashion-MNIST and on MNIST, two CNNs (16-32 conv, stride 2, dense 64)
  of the same shape pre-trained on the 20-class mix and on the scikit-learn 8x8 digits upsampled
  to 28x28. Same-shape pairs make routing a model to its tree a real problem (shapes alone do not
  tell the trees apart);
* every tree is **fine-tuned** ``size`` times on a random ordered subset of 3-8 pool classes, each
  model with its own optimizer (Adam or SGD-momentum), learning rate, steps, weight decay, data
  fraction and seed; all fine-tunes of a tree train in ONE compiled program
  (:func:`weightspace.zoo.fit_population`), checkpointed and resumable.

**Output layer.** A fine-tune replaces the base's head by a fresh 8-way head (the largest subset
size): output ``j`` is the model's ``j``-th class, outputs ``>= n_outputs`` are masked out of the
loss (they stay at their random initialisation and carry no information). Every model of a tree
therefore has the same tensor shapes; ``meta["classes"]`` names each output (``None`` for the
masked ones) and ``meta["class_indices"]`` holds the pool indices (the multi-label target).
ProbeX reads an inner layer, which every fine-tune inherits from its base and moves.

Example:
    >>> from weightspace.probex import POOL_CLASSES, TREES
    >>> len(POOL_CLASSES), POOL_CLASSES[10], sorted(TREES)
    (20, 'digit 0', ['cnn-digits', 'cnn-mix', 'mlp-fmnist', 'mlp-mnist'])
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from weightspace._cache import cache_dir
from weightspace._errors import ConfigError, InvalidValueError, LoadError
from weightspace.data import FASHION_MNIST_CLASSES
from weightspace.nets import CNN, MLP, Architecture
from weightspace.zoo import (
    ClassifierLoss,
    Zoo,
    evaluate_population,
    fit_population,
    init_population,
    load_model,
    load_zoo,
    register_recipe,
    save_model,
    save_zoo,
    train_population,
)

RECIPE_VERSION = 1
"""Bump when ``fmnist-trees`` changes what it builds (cached builds of older versions are ignored)."""

NAME = "fmnist-trees"
_FASHION = FASHION_MNIST_CLASSES
POOL_CLASSES: tuple[str, ...] = (*_FASHION, *(f"digit {d}" for d in range(10)))
"""The 20 pool classes: Fashion-MNIST (indices 0-9) then the MNIST digits (10-19)."""
MAX_CLASSES = 8
"""Head width of every fine-tune (the largest subset size)."""
_MEAN, _STD = 0.25, 0.35  # pixel statistics of the pool; every tree normalises its input the same way
_IMAGE = (28, 28, 1)


def _mlp(out: int) -> MLP:
    return MLP(
        in_features=784, hidden=(128, 64), out_features=out, image_shape=_IMAGE, input_mean=_MEAN, input_std=_STD
    )


def _cnn(out: int) -> CNN:
    return CNN(
        image_shape=_IMAGE,
        channels=(16, 32),
        strides=2,
        dense=(64,),
        out_features=out,
        input_mean=_MEAN,
        input_std=_STD,
    )


@dataclasses.dataclass(frozen=True)
class TreeSpec:
    """One tree: its base architecture and what the base is pre-trained on.

    Attributes:
        name: the tree name (meta ``tree``).
        arch: ``arch(out_features) -> Architecture`` (the base has the pre-training width, the
            fine-tunes :data:`MAX_CLASSES` outputs).
        pretrain: ``"fashion-mnist"``, ``"mnist-5k"``, ``"mix"`` (the 20-class pool) or
            ``"digits-up"`` (scikit-learn digits upsampled to 28x28).
        description: one line for the docs.
    """

    name: str
    arch: Callable[[int], Architecture]
    pretrain: str
    description: str


TREES: dict[str, TreeSpec] = {
    t.name: t
    for t in (
        TreeSpec("mlp-fmnist", _mlp, "fashion-mnist", "MLP 784-128-64, pre-trained on Fashion-MNIST (10 classes)"),
        TreeSpec("mlp-mnist", _mlp, "mnist-5k", "MLP 784-128-64 (same shape), pre-trained on MNIST-5k digits"),
        TreeSpec("cnn-mix", _cnn, "mix", "CNN conv16-conv32 (stride 2) + dense 64, pre-trained on the 20-class mix"),
        TreeSpec(
            "cnn-digits", _cnn, "digits-up", "CNN of the same shape, pre-trained on 8x8 digits upsampled to 28x28"
        ),
    )
}
"""Tree name -> :class:`TreeSpec` (the order is the order of the trees in a build)."""

PRETRAIN_STEPS = {"full": 1500, "tiny": 100}
"""Pre-training steps of a base (Adam 1e-3, batch 128); builds of at most ``tiny_size`` models per
tree use the tiny bases (tests in seconds)."""
FINETUNE: dict[str, Any] = {
    "steps": (80, 240),
    "batch_size": 64,
    "adam_lr": (3e-4, 3e-3),
    "momentum_lr": (1e-2, 5e-2),
    "fraction": (0.2, 1.0),
    "k": (3, 8),
    "eval_size": 500,
}
"""Sampling ranges of the fine-tunes (steps, learning rates log-uniform, data fraction uniform, k
classes uniform in ``k``; weight decay 0 or 1e-4) and the examples per model for accuracies."""
TINY_STEPS = (20, 40)


def _rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(NAME.encode()), int(seed), *salt])


# ---- data ----------------------------------------------------------------------------------
def pool_dataset(split: str = "train") -> Any:
    """The 20-class pool as one :class:`weightspace.data.Dataset` (labels index :data:`POOL_CLASSES`).

    ``train``: 1000 Fashion-MNIST training images per class (drawn once, seed 0) and the 4000
    MNIST-5k training digits; ``test``: 200 Fashion-MNIST test images per class and the 1000
    MNIST-5k test digits.

    Example:
        >>> ds = pool_dataset("test")
        >>> len(ds), ds.class_names[19], int((ds.labels == 19).sum())
        (3000, 'digit 9', 100)
    """
    from weightspace.data import Dataset, load_dataset

    if split not in ("train", "test"):
        raise InvalidValueError(f"pool_dataset: split must be 'train' or 'test', got {split!r}")
    fm, mn = load_dataset("fashion-mnist", split), load_dataset("mnist-5k", split)
    per = 1000 if split == "train" else 200
    rng = np.random.default_rng([zlib.crc32(b"fmnist-trees-pool"), 0 if split == "train" else 1])
    keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(fm.labels == c), per, replace=False) for c in range(10)]))
    images = np.concatenate([fm.images[keep], mn.images])
    labels = np.concatenate([fm.labels[keep], mn.labels + 10]).astype(np.int32)
    return Dataset(
        name=f"fmnist-trees-pool/{split}",
        images=images,
        labels=labels,
        class_names=POOL_CLASSES,
        provenance=f"{per} Fashion-MNIST {split} images per class (seed 0) + MNIST-5k {split}; "
        "digits relabelled 10..19",
    )


def _digits_up() -> Any:
    from weightspace.data import Dataset, load_dataset
    from weightspace.nets import resize_images

    d = load_dataset("digits", "all")
    up = np.clip(np.asarray(resize_images(jnp.asarray(d.images), _IMAGE)), 0.0, 1.0).astype(np.float32)
    return Dataset(
        name="digits-up",
        images=up,
        labels=d.labels,
        class_names=d.class_names,
        provenance=f"{d.provenance}; bilinear upsampling to 28x28",
    )


def _pretrain_data(kind: str) -> Any:
    from weightspace.data import load_dataset

    if kind == "mix":
        return pool_dataset("train")
    if kind == "digits-up":
        return _digits_up()
    return load_dataset(kind, "train")


# ---- bases ---------------------------------------------------------------------------------
def pretrain_base(
    tree: str, *, tiny: bool = False, progress: bool | None = None, cache: bool = True
) -> tuple[Architecture, dict[str, np.ndarray], dict[str, Any]]:
    """The pre-trained base of a tree (one model, trained with :func:`weightspace.zoo.train_population`; cached).

    Bases do not depend on the recipe seed: builds with other seeds are fresh fine-tunes of the
    same trees.

    Args:
        tree: a key of :data:`TREES`.
        tiny: the short pre-training of tiny builds (:data:`PRETRAIN_STEPS`).
        progress: progress bar; cache: read/write ``cache_dir("zoos")``.

    Returns:
        ``(arch, params, meta)``; meta has ``tree``, ``pretrain``, ``steps`` and ``test_acc``.
    """
    from weightspace.data import load_dataset

    if tree not in TREES:
        raise ConfigError(f"unknown tree {tree!r}; trees: {sorted(TREES)}")
    spec = TREES[tree]
    steps = PRETRAIN_STEPS["tiny" if tiny else "full"]
    path = cache_dir("zoos") / f"{NAME}-base-{tree}-t{steps}-v{RECIPE_VERSION}.safetensors"
    if cache and path.exists():
        arch, params, meta = load_model(path)
        return arch, params, meta
    data = _pretrain_data(spec.pretrain)
    n_cls = len(data.class_names)
    arch = spec.arch(n_cls)
    test = None
    if spec.pretrain in ("fashion-mnist", "mnist-5k"):
        test = load_dataset(spec.pretrain, "test")
    elif spec.pretrain == "mix":
        test = pool_dataset("test")
    seed = int(zlib.crc32(tree.encode()) % (2**31))
    zoo = train_population(
        arch,
        data,
        {"steps": [steps], "learning_rate": 1e-3, "seed": [seed]},
        key=jax.random.key(seed),
        test=test,
        eval_size=2000,
        progress=progress,
        name=f"{NAME}-base-{tree}",
    )
    params = {k: np.asarray(v[0]) for k, v in zoo.params.items()}
    acc = zoo.meta["test_acc"][0] if test is not None else zoo.meta["train_acc"][0]
    meta = {"tree": tree, "pretrain": spec.pretrain, "steps": steps, "test_acc": acc, "classes": list(data.class_names)}
    if cache:
        save_model(path, arch, params, meta)
    return arch, params, meta


# ---- fine-tunes ----------------------------------------------------------------------------
def _head_names(base_arch: Architecture, arch: Architecture) -> set[str]:
    a, b = base_arch.param_shapes(), arch.param_shapes()
    return {k for k in b if a.get(k) != b[k]}


def fine_tune(
    tree: str,
    n: int,
    *,
    seed: int = 0,
    tiny: bool = False,
    progress: bool | None = None,
    checkpoint_dir: str | Path | None = None,
    id_prefix: str | None = None,
) -> Zoo:
    """``n`` fine-tunes of a tree's base, each on a random ordered subset of 3-8 pool classes.

    Model ``m`` keeps every base tensor except the head (fresh, :data:`MAX_CLASSES` outputs, the
    unused ones masked), then trains for its own steps with its own optimizer, learning rate,
    weight decay and data fraction (:data:`FINETUNE`), all models in one
    :func:`~weightspace.zoo.fit_population` program. Deterministic for ``(tree, n, seed, tiny)``.

    Returns:
        A :class:`~weightspace.zoo.Zoo` with meta ``id, tree, base, pretrain, classes,
        class_indices, n_outputs, test_acc, train_acc, optimizer, learning_rate, weight_decay,
        steps, train_fraction, batch_size, seed``.

    Example:
        >>> zoo = fine_tune("mlp-mnist", 2, tiny=True)  # doctest: +SKIP
        >>> zoo.meta["tree"], len(zoo.meta["class_indices"][0]) >= 3  # doctest: +SKIP
        (['mlp-mnist', 'mlp-mnist'], True)
    """
    if not isinstance(n, int | np.integer) or n < 1:
        raise ConfigError(f"fine_tune: n must be a positive int, got {n!r}")
    base_arch, base, base_meta = pretrain_base(tree, tiny=tiny, progress=progress)
    arch = TREES[tree].arch(MAX_CLASSES)
    train, test = pool_dataset("train"), pool_dataset("test")
    t_i = list(TREES).index(tree)
    rng = _rng(seed, t_i)
    lo_k, hi_k = FINETUNE["k"]
    k = rng.integers(lo_k, hi_k + 1, n)
    classes = [rng.permutation(len(POOL_CLASSES))[:kk].tolist() for kk in k]
    optimizer = rng.choice(["adam", "momentum"], n, p=[0.7, 0.3])
    a_lo, a_hi = np.log(FINETUNE["adam_lr"])
    m_lo, m_hi = np.log(FINETUNE["momentum_lr"])
    lr = np.where(optimizer == "adam", np.exp(rng.uniform(a_lo, a_hi, n)), np.exp(rng.uniform(m_lo, m_hi, n))).astype(
        np.float32
    )
    wd = rng.choice([0.0, 1e-4], n).astype(np.float32)
    s_lo, s_hi = TINY_STEPS if tiny else FINETUNE["steps"]
    steps = rng.integers(s_lo, s_hi, n, endpoint=True)
    f_lo, f_hi = FINETUNE["fraction"]
    frac = rng.uniform(f_lo, f_hi, n)
    seeds = rng.integers(0, 2**31 - 1, n)
    key = jax.random.key(int(rng.integers(0, 2**31 - 1)))
    k_init, k_fit, _ = jax.random.split(key, 3)

    params = init_population(arch, seeds.tolist(), key=k_init)
    heads = _head_names(base_arch, arch)
    params = {
        name: (np.asarray(v) if name in heads else np.broadcast_to(base[name], v.shape).copy())
        for name, v in params.items()
    }
    label_map = np.zeros((n, len(POOL_CLASSES)), np.int32)
    for m, cl in enumerate(classes):
        label_map[m, cl] = np.arange(len(cl))
    by_class = [np.flatnonzero(train.labels == c) for c in range(len(POOL_CLASSES))]
    rows = []
    for m, cl in enumerate(classes):
        r = np.sort(np.concatenate([by_class[c] for c in cl]))
        take = max(len(cl), round(frac[m] * len(r)))
        rows.append(np.sort(np.random.default_rng([int(seeds[m]), 1]).choice(r, take, replace=False)))
    n_out = k.astype(np.int32)
    res = fit_population(
        ClassifierLoss(arch, mask_outputs=True),
        params,
        {"x": train.images, "y": train.labels},
        key=k_fit,
        steps=steps,
        batch_size=FINETUNE["batch_size"],
        index=rows,
        hparams={"optimizer": optimizer.tolist(), "learning_rate": lr, "weight_decay": wd},
        optimizers=("momentum", "adam"),
        seeds=seeds,
        model_data={"label_map": label_map, "n_out": n_out, "dropout": np.zeros(n, np.float32)},
        model_chunk=256,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
    )
    test_by_class = [np.flatnonzero(test.labels == c) for c in range(len(POOL_CLASSES))]
    eval_rows = []
    for m, cl in enumerate(classes):
        r = np.sort(np.concatenate([test_by_class[c] for c in cl]))
        size = min(FINETUNE["eval_size"], len(r))
        eval_rows.append(np.sort(np.random.default_rng([int(seeds[m]), 2]).choice(r, size, replace=False)))
    test_acc, test_ce = evaluate_population(
        arch, res.params, test.images, test.labels, eval_rows, label_map, n_out=n_out
    )
    prefix = id_prefix or f"{NAME}-s{seed}-{tree}"
    meta: dict[str, list[Any]] = {
        "id": [f"{prefix}-{m:05d}" for m in range(n)],
        "tree": [tree] * n,
        "base": [f"{NAME}-base-{tree}"] * n,
        "pretrain": [TREES[tree].pretrain] * n,
        "base_test_acc": [float(base_meta["test_acc"])] * n,
        "classes": [[POOL_CLASSES[c] for c in cl] + [None] * (MAX_CLASSES - len(cl)) for cl in classes],
        "class_indices": classes,
        "n_outputs": n_out.tolist(),
        "test_acc": test_acc.astype(float).tolist(),
        "test_loss": test_ce.astype(float).tolist(),
        "final_loss": [float(np.nanmean(res.losses[m, max(0, s - 10) : s])) for m, s in enumerate(steps)],
        "optimizer": optimizer.tolist(),
        "learning_rate": lr.astype(float).tolist(),
        "weight_decay": wd.astype(float).tolist(),
        "steps": steps.astype(int).tolist(),
        "train_fraction": frac.astype(float).tolist(),
        "n_train": [len(r) for r in rows],
        "batch_size": [FINETUNE["batch_size"]] * n,
        "seed": seeds.astype(int).tolist(),
        "recipe_seed": [int(seed)] * n,
    }
    return Zoo(arch, {k_: np.asarray(v) for k_, v in res.params.items()}, meta, f"{NAME}/{tree}")


# ---- the result type -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class ModelTrees:
    """A local Model-J: one :class:`~weightspace.zoo.Zoo` of fine-tunes per tree.

    Trees of the same architecture stay apart (a :class:`~weightspace.zoo.Collection` would merge
    them). Iterating yields the zoos in tree order.

    Attributes:
        zoos: tree name -> zoo of its fine-tunes.
        name: the recipe name.
    """

    zoos: dict[str, Zoo]
    name: str = NAME

    def __post_init__(self) -> None:
        if not self.zoos:
            raise InvalidValueError("ModelTrees needs at least one tree")

    def __len__(self) -> int:
        return sum(len(z) for z in self.zoos.values())

    def __iter__(self) -> Iterator[Zoo]:
        return iter(self.zoos.values())

    @property
    def trees(self) -> list[str]:
        return list(self.zoos)

    def __getitem__(self, tree: str) -> Zoo:
        if tree not in self.zoos:
            raise InvalidValueError(f"no tree {tree!r}; trees: {self.trees}")
        return self.zoos[tree]

    def check_finite(self) -> None:
        for z in self.zoos.values():
            z.check_finite()

    def summary(self) -> list[dict[str, Any]]:
        """Per tree: models, architecture, pre-training, mean/min test accuracy."""
        out = []
        for t, z in self.zoos.items():
            acc = np.asarray(z.meta["test_acc"], float)
            out.append(
                {
                    "tree": t,
                    "models": len(z),
                    "arch": z.arch.kind,
                    "pretrain": z.meta["pretrain"][0],
                    "base_test_acc": z.meta["base_test_acc"][0],
                    "test_acc_mean": float(acc.mean()),
                    "test_acc_min": float(acc.min()),
                }
            )
        return out

    def __repr__(self) -> str:
        return f"ModelTrees({', '.join(f'{t}: {len(z)}' for t, z in self.zoos.items())})"


def _partial_dir(size: int, seed: int) -> Path:
    return cache_dir("zoos") / f".{NAME}-n{size}-s{seed}-v{RECIPE_VERSION}-partial"


def _build(size: int, seed: int, progress: bool | None) -> ModelTrees:
    """``size`` fine-tunes per tree. Finished trees are kept in a partial directory and fit_population
    checkpoints the running one, so a killed build resumes where it stopped."""
    tiny = size <= 4
    part = _partial_dir(size, seed)
    part.mkdir(parents=True, exist_ok=True)
    zoos = {}
    for tree in TREES:
        f = part / f"{tree}.safetensors"
        if f.exists():
            zoos[tree] = load_zoo(f)
            continue
        zoo = fine_tune(tree, size, seed=seed, tiny=tiny, progress=progress, checkpoint_dir=part / f"ckpt-{tree}")
        save_zoo(zoo, f)
        shutil.rmtree(part / f"ckpt-{tree}", ignore_errors=True)
        zoos[tree] = zoo
    return ModelTrees(zoos)


def _save(result: ModelTrees, directory: Path) -> list[str]:
    files = []
    for tree, zoo in result.zoos.items():
        save_zoo(zoo, directory / f"{tree}.safetensors")
        files.append(f"{tree}.safetensors")
    (directory / "model-trees.json").write_text(
        json.dumps({"trees": result.trees, "files": files, "summary": result.summary()}, indent=1)
    )
    size, seed = len(next(iter(result))), result.zoos[result.trees[0]].meta["recipe_seed"][0]
    shutil.rmtree(_partial_dir(size, seed), ignore_errors=True)
    return files


def _load(directory: Path, files: list[str]) -> ModelTrees:
    if not files:
        raise LoadError(f"{directory}: the fmnist-trees manifest lists no files")
    return ModelTrees({Path(f).stem: load_zoo(directory / f) for f in files})


def load_trees(path: str | Path) -> ModelTrees:
    """Read a built ``fmnist-trees`` directory (the recipe cache dir, or one written by
    ``weightspace zoo build fmnist-trees --out DIR``)."""
    path = Path(path)
    for name in ("recipe.json", "model-trees.json"):
        if (path / name).exists():
            try:
                files = list(json.loads((path / name).read_text())["files"])
            except (OSError, json.JSONDecodeError, KeyError) as e:
                raise LoadError(f"{path / name}: unreadable ({e})") from e
            return _load(path, files)
    raise LoadError(f"{path}: not an fmnist-trees build directory (no recipe.json or model-trees.json)")


def trees_from(obj: Any) -> Mapping[str, Zoo]:
    """Tree name -> zoo for a :class:`ModelTrees`, a :class:`~weightspace.zoo.Zoo` (grouped by its
    ``tree`` column if it has one) or a mapping of zoos."""
    if isinstance(obj, ModelTrees):
        return obj.zoos
    if isinstance(obj, Zoo):
        if "tree" not in obj.meta:
            return {obj.name: obj}
        trees = list(dict.fromkeys(obj.meta["tree"]))
        return {t: obj.select(np.flatnonzero(np.asarray(obj.meta["tree"]) == t)) for t in trees}
    if isinstance(obj, Mapping):
        return dict(obj)
    raise InvalidValueError(f"expected ModelTrees, a Zoo or a mapping of zoos, got {type(obj).__name__}")


register_recipe(
    NAME,
    _build,
    description="a local Model-J: 4 model trees (MLP/CNN bases pre-trained on Fashion-MNIST, MNIST, the 20-class "
    "mix, upsampled digits), each fine-tuned `size` times on random 3-8 class subsets of a 20-class pool",
    default_size=250,
    tiny_size=4,
    returns="ModelTrees",
    save=_save,
    load=_load,
    version=RECIPE_VERSION,
)

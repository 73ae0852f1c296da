"""Zoos on disk: one safetensors file per model (a hub-like directory) or one packed file.

Formats:
    * **per-model file** — tensors under their PyTorch names; header metadata
      ``{"weightspace": "model/1", "arch": <json>, "meta": <json row>}``.
    * **directory** — ``zoo.json`` (name, arch, ordered ids) plus ``<id>.safetensors`` per model.
    * **packed** — one safetensors file, every tensor stacked ``[models, ...]``; header metadata
      ``{"weightspace": "zoo/1", "arch", "meta" (columns), "name"}``.
    * **recipe directory** — ``recipe.json`` (recipe, size, seed, returns, files) plus the files it
      lists (``part-NN.safetensors`` packed zoos): a build cache or ``weightspace zoo build --out``.
    * **any other directory** (a downloaded hub, a folder of zoos) — every ``.safetensors`` under it
      is classified by its header: packed zoos, and one-model files (weightspace's or a plain
      PyTorch ``state_dict``, whose architecture is read from ``config.json``/metadata; see
      ``_declared.py``) bucketed by architecture; other kinds are refused, naming which files are which.

Loading never executes code (safetensors only). Every write goes to a temporary name first.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError

from weightspace._atomic import atomic_path
from weightspace._errors import ConfigError, GuessWarning, LoadError, ShapeError, WeightspaceError
from weightspace._safetensors import open_safetensors, read_safetensors, write_safetensors
from weightspace.nets import Architecture, architecture_from_config
from weightspace.zoo._declared import Declared, architecture_from_files, declared_from, meta_from, read_config_files
from weightspace.zoo._zoo import Collection, Zoo, concat, meta_to_json

MODEL_FORMAT = "model/1"
PACKED_FORMAT = "zoo/1"
MANIFEST = "zoo.json"
RECIPE_MANIFEST = "recipe.json"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._\-]+$")
_DTYPES = (np.float16, np.float32, np.float64)


def _arch_from(config: Any, where: Path) -> Architecture:
    try:
        return architecture_from_config(config)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


def _json_header(header: Mapping[str, str], key: str, path: Path, *, default: Any = None) -> dict[str, Any]:
    """A JSON object stored under ``key`` of a safetensors header (``default`` when absent)."""
    if key not in header:
        if default is None:
            raise LoadError(f"{path}: the header has no {key!r} entry")
        return dict(default)
    try:
        value = json.loads(header[key])
    except (json.JSONDecodeError, TypeError) as e:
        raise LoadError(f"{path}: header entry {key!r} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise LoadError(f"{path}: header entry {key!r} must be a JSON object, found a {type(value).__name__}")
    return value


def _zoo_at(path: Path, arch: Architecture, tensors: Any, meta: Any, name: str) -> Zoo:
    """A :class:`Zoo` read from ``path``: its errors name the file."""
    try:
        return Zoo(arch, tensors, meta, name)
    except WeightspaceError as e:
        raise type(e)(f"{path}: {e}") from e


def _check_dtype(name: str, arr: np.ndarray, where: str) -> None:
    if arr.dtype not in _DTYPES:
        raise ShapeError(f"{where}: tensor {name!r} has dtype {arr.dtype}, expected a float dtype")


# ---- single models ---------------------------------------------------------------------------
def save_model(
    path: str | os.PathLike[str], arch: Architecture, params: Mapping[str, Any], meta: Mapping[str, Any] | None = None
) -> Path:
    """Write one model as a self-describing safetensors file (atomic)."""
    path = Path(path)
    arch.check_params(params, where=str(path))
    write_safetensors(
        path,
        params,
        {"weightspace": MODEL_FORMAT, "arch": json.dumps(arch.to_config()), "meta": meta_to_json(dict(meta or {}))},
    )
    return path


def _read_model(
    path: Path,
    *,
    arch: Architecture | None,
    activation: str | None,
    strict: bool,
    configs: dict[Path, Declared] | None = None,
    default_id: str | None = None,
) -> tuple[Architecture, dict[str, np.ndarray], dict[str, Any], list[str]]:
    """``(arch, params, meta, what was guessed)`` of one model file (see :func:`load_model`)."""
    tensors, header = read_safetensors(path)
    guessed: list[str] = []
    extra_meta: dict[str, Any] = {}
    if arch is None and "arch" in header:
        arch = _arch_from(header["arch"], path)
    elif arch is None:
        decl = read_config_files(path.parent, configs)
        decl.merge(declared_from(header, f"{path} (safetensors metadata)", strings=True))
        arch, guessed = architecture_from_files(
            {k: tuple(v.shape) for k, v in tensors.items()}, decl, where=str(path), activation=activation
        )
        extra_meta = meta_from(decl)
        if guessed and strict:
            raise ConfigError(
                f"{path}: strict=True, and the files do not say {' or '.join(guessed)}; add a "
                "config.json, or pass activation= (--activation) or arch="
            )
    arch.check_params(tensors, where=str(path))
    for k, v in tensors.items():
        _check_dtype(k, v, str(path))
    try:
        own = "weightspace" in header or "arch" in header  # weightspace's own header: its meta row
        meta = json.loads(header.get("meta", "{}")) if own else {}
    except json.JSONDecodeError as e:
        raise LoadError(f"{path}: metadata header is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise LoadError(f"{path}: metadata header must be a JSON object")
    for k, v in extra_meta.items():
        meta.setdefault(k, v)
    meta.setdefault("id", default_id or path.stem)
    return arch, tensors, meta, guessed


def _model_id(path: Path, root: Path) -> str:
    """A file's model id in a directory: its relative path without ``.safetensors`` (``/`` -> ``--``),
    without the hub's generic file name (``user1/model.safetensors`` -> ``user1``)."""
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if len(parts) > 1 and parts[-1] in ("model", "pytorch_model", "weights"):
        parts = parts[:-1]
    return "--".join(parts)


def _warn_guessed(guesses: Sequence[tuple[Path, list[str]]]) -> None:
    if not guesses:
        return
    what = sorted({g for _, gs in guesses for g in gs})
    files = [str(p) for p, _ in guesses]
    more = ", ..." if len(files) > 3 else ""
    named = files[0] if len(files) == 1 else f"{len(files)} files ({', '.join(files[:3])}{more})"
    warnings.warn(
        f"{named}: the files do not say {' or '.join(what)}; inferred from tensor shapes. Pass "
        "activation= (--activation) or arch=, add a config.json, or strict=True (--strict) to refuse",
        GuessWarning,
        stacklevel=3,
    )


def load_model(
    path: str | os.PathLike[str],
    *,
    arch: Architecture | None = None,
    activation: str | None = None,
    strict: bool = False,
) -> tuple[Architecture, dict[str, np.ndarray], dict[str, Any]]:
    """Read one model file: ``(arch, params, meta)``.

    The architecture is read, in this order, from: ``arch`` (the argument); weightspace's own
    header; a Hugging Face-style ``config.json`` (then ``preprocessor_config.json``) next to the
    file; the file's safetensors metadata; and only then the tensor names and shapes of a plain
    PyTorch ``state_dict`` (MLP ``layers.*``; CNN ``convs.*`` + ``head.*``). Declared facts:
    ``hidden_sizes``, the activation (``hidden_act``/``activation``), ``id2label``/``label2id``/
    ``classes`` (the output class names: ``meta["classes"]``), ``num_labels``, ``image_size``,
    ``num_channels``, ``image_mean``/``image_std`` (one global value), ``per_image_standardization``,
    ``kernel_size``/``stride``/``padding``, ``model_type``. What the files do not say is guessed
    with a :class:`~weightspace.GuessWarning` naming the file.

    Args:
        path: a ``.safetensors`` file.
        arch: the architecture (skips reading it).
        activation: the activation of a file that does not declare one (it must agree with one
            that does).
        strict: refuse to guess: a :class:`~weightspace.ConfigError` instead of the warning.

    Raises:
        ConfigError: a declaration contradicts the tensors or another declaration (naming both);
            with ``strict``, anything left to guess.
        LoadError, ShapeError: unreadable files, missing tensors, wrong shapes or dtypes.

    Example:
        >>> import json, tempfile, pathlib, numpy as np
        >>> from safetensors.numpy import save_file
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> w = {"layers.0.weight": np.zeros((8, 4), np.float32), "layers.0.bias": np.zeros(8, np.float32),
        ...      "layers.1.weight": np.zeros((2, 8), np.float32), "layers.1.bias": np.zeros(2, np.float32)}
        >>> save_file(w, str(d / "model.safetensors"))
        >>> _ = (d / "config.json").write_text(json.dumps({"hidden_act": "tanh", "id2label": {"0": "cat", "1": "dog"}}))
        >>> arch, params, meta = load_model(d / "model.safetensors")
        >>> arch.activation, arch.hidden, meta["classes"]
        ('tanh', (8,), ['cat', 'dog'])
    """
    path = Path(path)
    a, params, meta, guessed = _read_model(path, arch=arch, activation=activation, strict=strict)
    _warn_guessed([(path, guessed)] if guessed else [])
    return a, params, meta


def infer_architecture(shapes: Mapping[str, tuple[int, ...]], *, where: str = "state_dict") -> Architecture:
    """Guess an MLP or CNN spec from a plain ``state_dict``'s tensor names and shapes alone.

    What weights cannot say is assumed: ReLU, no input normalisation, and for a CNN 28x28
    images, stride 2 and "same" padding. :func:`load_model` reads a file's configuration first.

    Example:
        >>> infer_architecture({"layers.0.weight": (8, 4), "layers.0.bias": (8,)}).hidden
        ()
    """
    return architecture_from_files(shapes, Declared(), where=where)[0]


# ---- zoos ------------------------------------------------------------------------------------
def _check_id(model_id: str) -> str:
    if not _SAFE_ID.match(model_id):
        raise ConfigError(f"model id {model_id!r} cannot be a file name (use letters, digits, . _ -)")
    return model_id


def save_zoo(zoo: Zoo, path: str | os.PathLike[str], *, format: str = "packed") -> Path:
    """Write a zoo as one packed safetensors file or as a directory of per-model files.

    Args:
        zoo: the zoo.
        path: the target file (``packed``) or directory (``directory``).
        format: ``"packed"`` (fast; one file) or ``"directory"`` (hub-like; one file per model).

    Returns:
        ``path``.

    Example:
        >>> import jax, tempfile, pathlib
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Zoo, save_zoo, load_zoo
        >>> zoo = Zoo.init(MLP(in_features=4, hidden=(8,), out_features=2), 3, key=jax.random.key(0))
        >>> p = save_zoo(zoo, pathlib.Path(tempfile.mkdtemp()) / "z.safetensors")
        >>> len(load_zoo(p))
        3
    """
    path = Path(path)
    arch_json = json.dumps(zoo.arch.to_config())
    if format == "packed":
        write_safetensors(
            path,
            zoo.params,
            {"weightspace": PACKED_FORMAT, "arch": arch_json, "meta": meta_to_json(zoo.meta), "name": zoo.name},
        )
    elif format == "directory":
        ids = [_check_id(i) for i in zoo.ids]
        host = {k: np.asarray(v) for k, v in zoo.params.items()}
        path.mkdir(parents=True, exist_ok=True)
        for i, mid in enumerate(ids):  # each file atomic; the manifest, written last, marks completion
            write_safetensors(
                path / f"{mid}.safetensors",
                {k: v[i] for k, v in host.items()},
                {"weightspace": MODEL_FORMAT, "arch": arch_json, "meta": meta_to_json(zoo.row(i))},
            )
        manifest = {"weightspace": "zoo-dir/1", "name": zoo.name, "arch": zoo.arch.to_config(), "ids": ids}
        with atomic_path(path / MANIFEST) as tmp:
            tmp.write_text(json.dumps(manifest, indent=1))
    else:
        raise ConfigError(f"unknown zoo format {format!r}; use 'packed' or 'directory'")
    return path


def load_zoo(
    path: str | os.PathLike[str],
    *,
    arch: Architecture | None = None,
    check_finite: bool = True,
    workers: int = 8,
    activation: str | None = None,
    strict: bool = False,
) -> Zoo:
    """Read ONE zoo from any path :func:`load_collection` reads (see the module docs for the formats).

    A path holding several zoos of one architecture (a recipe's parts) is concatenated; several
    architectures are a :class:`~weightspace.ShapeError` that names them (use :func:`load_collection`).
    ``activation``/``strict`` apply to plain ``state_dict`` files (see :func:`load_model`).

    Raises :class:`~weightspace.LoadError` for missing/corrupt files or tensors,
    :class:`~weightspace.ShapeError` for shape/dtype mismatches between models, and
    :class:`~weightspace.InvalidValueError` for NaN/Inf weights (unless ``check_finite=False``).
    """
    path = Path(path)
    zoos = _read_path(path, arch=arch, activation=activation, strict=strict, workers=workers)
    if len(zoos) == 1:
        zoo = zoos[0]
    elif len({z.arch.signature for z in zoos}) == 1:
        zoo = concat(zoos, name=path.stem if path.is_file() else path.name)
    else:
        parts = "; ".join(f"{z.name!r}: {len(z)} x {z.arch!r}" for z in zoos[:4])
        more = "; ..." if len(zoos) > 4 else ""
        raise ShapeError(
            f"{path}: holds {len(zoos)} zoos of different architectures ({parts}{more}); "
            "read it with load_collection (the `weightspace` commands do), or pass one of its files"
        )
    if check_finite:
        zoo.check_finite()
    return zoo


def _load_file(path: Path, *, arch: Architecture | None, activation: str | None, strict: bool) -> Zoo:
    """One ``.safetensors`` file: a packed zoo or a one-model file."""
    tensors, header = read_safetensors(path)
    fmt = header.get("weightspace")
    if (
        fmt == MODEL_FORMAT
        or (fmt is None and "arch" not in header and "meta" not in header)
        or (fmt is None and arch is not None and "meta" not in header and _looks_unstacked(arch, tensors))
    ):
        a, params, meta, guessed = _read_model(path, arch=arch, activation=activation, strict=strict)
        _warn_guessed([(path, guessed)] if guessed else [])
        try:
            return Zoo.stack(a, [params], [meta], name=path.stem)
        except WeightspaceError as e:
            raise type(e)(f"{path}: {e}") from e
    if fmt not in (PACKED_FORMAT, None):
        raise LoadError(
            f"{path}: a {fmt!r} file, not a zoo or model file"
            + (
                " (a LoRA zoo: `weightspace.lora.load_lora_zoo`, or the recipe directory holding it)"
                if str(fmt).startswith("lora")
                else ""
            )
        )
    if fmt is None and arch is None:
        raise LoadError(f"{path}: not a weightspace zoo file (header {sorted(header)})")
    a = arch or _arch_from(header["arch"], path)
    for k, v in tensors.items():
        _check_dtype(k, v, str(path))
    a.check_params(tensors, stacked=True, where=str(path))
    meta = _json_header(header, "meta", path, default={})
    return _zoo_at(path, a, tensors, meta, header.get("name", path.stem))


def _looks_unstacked(arch: Architecture, tensors: Mapping[str, np.ndarray]) -> bool:
    shapes = arch.param_shapes()
    return all(k in tensors and tuple(tensors[k].shape) == s for k, s in shapes.items())


def _file_kind(path: Path) -> str:
    """``"packed"``, ``"model"`` (weightspace one-model or plain state_dict) or the header's format."""
    f = open_safetensors(path)
    try:
        with f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise LoadError(f"{path}: truncated or corrupt safetensors data ({e})") from e
    fmt = meta.get("weightspace")
    if fmt == PACKED_FORMAT:
        return "packed"
    if fmt in (None, MODEL_FORMAT):
        return "model"
    return str(fmt)


_KIND_NAMES = {"packed": "packed zoos", "model": "one-model files (weightspace or plain state_dict)"}


def _read_path(
    path: Path, *, arch: Architecture | None, activation: str | None, strict: bool, workers: int
) -> list[Zoo]:
    """Every zoo under ``path``: a file, a recipe directory (``recipe.json``), a zoo directory
    (``zoo.json``), or a directory of packed zoos and/or one-model files (read recursively; a
    sub-directory with a manifest is read as a unit)."""
    if not path.exists():
        raise LoadError(f"{path}: no such file or directory")
    if path.is_file():
        return [_load_file(path, arch=arch, activation=activation, strict=strict)]
    if (path / RECIPE_MANIFEST).exists():
        return _read_recipe_dir(path)
    if (path / MANIFEST).exists():
        files, arch_hint, name = _dir_files(path)
        return _load_files(files, arch or arch_hint, workers=workers, name=name, activation=activation, strict=strict)
    units, loose = _walk(path)
    if not units and not loose:
        raise LoadError(f"{path}: no .safetensors files (an empty zoo)")
    kinds: dict[str, list[Path]] = {}
    for f in loose:
        kinds.setdefault(_file_kind(f), []).append(f)
    foreign = {k: v for k, v in kinds.items() if k not in _KIND_NAMES}
    if foreign:

        def names(fs: list[Path]) -> str:
            rel = [str(f.relative_to(path)) for f in fs]
            return ", ".join(rel[:4]) + (f", ... ({len(rel)} files)" if len(rel) > 4 else "")

        listing = "; ".join(f"{_KIND_NAMES.get(k, repr(k) + ' files')}: {names(v)}" for k, v in sorted(kinds.items()))
        raise LoadError(
            f"{path}: holds files that are not zoos or models ({listing}); weightspace reads packed "
            "zoos and one-model files, a recipe directory (recipe.json) or a zoo directory (zoo.json)"
        )
    zoos: list[Zoo] = []
    for unit in units:
        zoos.extend(_read_path(unit, arch=arch, activation=activation, strict=strict, workers=workers))
    for f in kinds.get("packed", []):
        zoos.append(_load_file(f, arch=arch, activation=activation, strict=strict))
    if kinds.get("model"):
        zoos.extend(
            _load_files(
                kinds["model"], arch, workers=workers, name=path.name, activation=activation, strict=strict, root=path
            )
        )
    return zoos


def _walk(path: Path) -> tuple[list[Path], list[Path]]:
    """Sub-directories holding a manifest, and the other ``.safetensors`` files, under ``path``
    (sorted; hidden entries, e.g. a recipe build's temporary directory, are skipped)."""
    units: list[Path] = []
    loose: list[Path] = []
    for root, dirs, files in os.walk(path):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        keep = []
        for d in dirs:
            if (here / d / RECIPE_MANIFEST).exists() or (here / d / MANIFEST).exists():
                units.append(here / d)
            else:
                keep.append(d)
        dirs[:] = keep
        loose.extend(here / f for f in sorted(files) if f.endswith(".safetensors") and not f.startswith("."))
    return sorted(units), sorted(loose)


def _read_recipe_dir(path: Path) -> list[Zoo]:
    """A recipe's cache (or ``zoo build --out``) directory: the files its ``recipe.json`` lists."""
    manifest_path = path / RECIPE_MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        files = [str(f) for f in manifest["files"]]
        returns = manifest.get("returns", "Collection")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise LoadError(f"{manifest_path}: unreadable recipe manifest ({e}); delete the directory to rebuild") from e
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise LoadError(f"{path}: the recipe manifest lists files that are missing: {missing}")
    if returns in ("Zoo", "Collection"):
        return [_load_file(path / f, arch=None, activation=None, strict=False) for f in files]
    from weightspace.zoo._recipes import _recipe  # the registry sits above this module

    recipe = _recipe(str(manifest.get("recipe")))
    if recipe.load is None or recipe.as_zoos is None:
        raise LoadError(
            f"{path}: recipe {recipe.name!r} returns a {returns}, which has no models to probe "
            "(it registers no as_zoos hook)"
        )
    result = recipe.as_zoos(recipe.load(path, files))
    return [result] if isinstance(result, Zoo) else list(result)


def _dir_files(path: Path) -> tuple[list[Path], Architecture | None, str]:
    manifest = path / MANIFEST
    if manifest.exists():
        try:
            m = json.loads(manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LoadError(f"{manifest}: not valid JSON ({e})") from e
        if not isinstance(m, dict):
            raise LoadError(f"{manifest}: must be a JSON object, found a {type(m).__name__}")
        for key in ("ids", "arch"):
            if key not in m:
                raise LoadError(f"{manifest}: missing key {key!r} (a zoo directory lists its model ids and arch)")
        ids = m["ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise LoadError(f"{manifest}: 'ids' must be a non-empty list of model ids, found {ids!r:.80}")
        files = [path / f"{_check_id(i)}.safetensors" for i in ids]
        return files, _arch_from(m["arch"], manifest), str(m.get("name", path.name))
    files = sorted(path.rglob("*.safetensors"))
    if not files:
        raise LoadError(f"{path}: no .safetensors files (an empty zoo)")
    return files, None, path.name


def _load_files(
    files: Sequence[Path],
    arch: Architecture | None,
    *,
    workers: int,
    name: str,
    activation: str | None = None,
    strict: bool = False,
    root: Path | None = None,
) -> list[Zoo]:
    configs: dict[Path, Declared] = {}

    def one(f: Path) -> tuple[Architecture, dict[str, np.ndarray], dict[str, Any], list[str]]:
        return _read_model(
            f,
            arch=arch,
            activation=activation,
            strict=strict,
            configs=configs,
            default_id=_model_id(f, root) if root is not None else None,
        )

    with ThreadPoolExecutor(max_workers=workers) as ex:
        loaded = list(ex.map(one, files))
    _warn_guessed([(f, g) for f, (_, _, _, g) in zip(files, loaded, strict=True) if g])
    buckets: dict[str, list[tuple[Path, Architecture, dict[str, np.ndarray], dict[str, Any]]]] = {}
    for f, (a, p, m, _) in zip(files, loaded, strict=True):
        buckets.setdefault(a.signature, []).append((f, a, p, m))
    zoos: list[Zoo] = []
    for items in buckets.values():
        a = items[0][1]
        ref = items[0]
        for f, _, p, _ in items[1:]:
            for k, v in p.items():
                r = ref[2][k]
                if v.dtype != r.dtype:
                    raise ShapeError(f"{f}: tensor {k!r} has dtype {v.dtype}, but {ref[0]} has {r.dtype}")
        zoos.append(
            Zoo.stack(
                a,
                [it[2] for it in items],
                [it[3] for it in items],
                name=name if len(buckets) == 1 else f"{name}/{a.kind}-{len(zoos)}",
            )
        )
    return zoos


def load_collection(
    paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    workers: int = 8,
    check_finite: bool = True,
    activation: str | None = None,
    strict: bool = False,
) -> Collection:
    """Read zoos from files and directories into a Collection (bucketed by architecture).

    Every path weightspace prints as "where your zoo is" reads here:

    * a packed zoo file, or a one-model file (weightspace's, or a plain PyTorch ``state_dict``);
    * a recipe directory (``recipe.json``: a build cache, or ``weightspace zoo build --out``);
    * a zoo directory (``zoo.json``: :func:`save_zoo` with ``format="directory"``);
    * any other directory: every ``.safetensors`` under it is classified by its header, packed
      zoos are read as zoos and one-model files are bucketed by architecture; sub-directories
      with a manifest are read as above. Files of another kind (e.g. a LoRA zoo) are refused
      with a message listing which files are of which kind.

    ``activation``/``strict`` apply to plain ``state_dict`` files (see :func:`load_model`).

    Example:
        >>> import jax, tempfile, pathlib
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Zoo, save_zoo, load_collection
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = save_zoo(Zoo.init(MLP(in_features=4, hidden=(8,), out_features=2), 3, key=jax.random.key(0)),
        ...              d / "part-00.safetensors")
        >>> _ = save_zoo(Zoo.init(MLP(in_features=4, hidden=(8,), out_features=5), 2, key=jax.random.key(1),
        ...              name="b"), d / "part-01.safetensors")
        >>> c = load_collection(d)
        >>> len(c), c.num_models
        (2, 5)
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    coll = Collection()
    for p in map(Path, paths):
        for z in _read_path(p, arch=None, activation=activation, strict=strict, workers=workers):
            if check_finite:
                z.check_finite()
            coll.add(z)
    return coll


def load_tensors(
    files: Sequence[str | os.PathLike[str]], names: Sequence[str], *, workers: int = 16
) -> dict[str, np.ndarray]:
    """Read only the named tensors from many model files, in parallel; stacked on axis 0.

    This is how a method that reads one layer (ProbeX) touches thousands of models without
    loading whole checkpoints: safetensors seeks straight to the bytes of each tensor.

    Example:
        >>> import jax, tempfile, pathlib
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Zoo, save_zoo, load_tensors
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> zoo = Zoo.init(MLP(in_features=4, hidden=(8,), out_features=2), 3, key=jax.random.key(0))
        >>> _ = save_zoo(zoo, d, format="directory")
        >>> load_tensors(sorted(d.glob("*.safetensors")), ["layers.1.weight"])["layers.1.weight"].shape
        (3, 2, 8)
    """
    files = [Path(f) for f in files]
    if not files:
        raise LoadError("load_tensors: no files given")

    def one(f: Path) -> dict[str, np.ndarray]:
        h = open_safetensors(f)
        try:
            with h:
                keys = set(h.keys())
                missing = [n for n in names if n not in keys]
                if missing:
                    raise LoadError(f"{f}: missing tensors {missing} (has {sorted(keys)[:8]})")
                return {n: h.get_tensor(n) for n in names}
        except (SafetensorError, OSError, ValueError) as e:
            if isinstance(e, WeightspaceError):
                raise
            raise LoadError(f"{f}: truncated or corrupt safetensors data ({e})") from e

    with ThreadPoolExecutor(max_workers=workers) as ex:
        got = list(ex.map(one, files))
    out = {}
    for n in names:
        first = got[0][n]
        for f, g in zip(files, got, strict=True):
            if g[n].shape != first.shape or g[n].dtype != first.dtype:
                raise ShapeError(
                    f"{f}: tensor {n!r} is {g[n].dtype}{list(g[n].shape)}, but {files[0]} has "
                    f"{first.dtype}{list(first.shape)}"
                )
        out[n] = np.stack([g[n] for g in got])
    return out


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Header summary of a zoo or model file without reading tensor data."""
    path = Path(path)
    if path.is_dir() and (path / RECIPE_MANIFEST).exists():
        try:
            m = json.loads((path / RECIPE_MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise LoadError(f"{path / RECIPE_MANIFEST}: unreadable recipe manifest ({e})") from e
        return {
            "format": "recipe",
            "name": m.get("recipe"),
            "size": m.get("size"),
            "seed": m.get("seed"),
            "returns": m.get("returns"),
            "files": m.get("files"),
        }
    if path.is_dir() and (path / MANIFEST).exists():
        files, arch, name = _dir_files(path)
        return {"format": "directory", "name": name, "models": len(files), "arch": arch.to_config() if arch else None}
    if path.is_dir():
        units, loose = _walk(path)
        kinds: dict[str, int] = {}
        for f in loose:
            k = _file_kind(f)
            kinds[k] = kinds.get(k, 0) + 1
        return {"format": "directory", "name": path.name, "files": kinds, "subdirectories": [u.name for u in units]}
    f = open_safetensors(path)
    with f:
        meta = f.metadata() or {}
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    out: dict[str, Any] = {"format": meta.get("weightspace", "safetensors"), "tensors": shapes}
    if "arch" in meta:
        out["arch"] = _json_header(meta, "arch", path)
    if meta.get("weightspace") == PACKED_FORMAT:
        out["name"] = meta.get("name")
        out["models"] = next(iter(shapes.values()))[0] if shapes else 0
        out["meta_columns"] = sorted(_json_header(meta, "meta", path, default={}))
    return out

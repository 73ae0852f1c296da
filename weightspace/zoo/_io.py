"""Zoos on disk: one safetensors file per model (a hub-like directory) or one packed file.

Formats:
    * **per-model file** — tensors under their PyTorch names; header metadata
      ``{"weightspace": "model/1", "arch": <json>, "meta": <json row>}``.
    * **directory** — ``zoo.json`` (name, arch, ordered ids) plus ``<id>.safetensors`` per model.
      A directory without ``zoo.json`` (e.g. downloaded hub repos) is read file by file.
    * **packed** — one safetensors file, every tensor stacked ``[models, ...]``; header metadata
      ``{"weightspace": "zoo/1", "arch", "meta" (columns), "name"}``.

Loading never executes code (safetensors only). Every write goes to a temporary name first.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError

from weightspace._atomic import atomic_path
from weightspace._errors import ConfigError, LoadError, ShapeError, WeightspaceError
from weightspace._safetensors import open_safetensors, read_safetensors, write_safetensors
from weightspace.nets import Architecture, architecture_from_config
from weightspace.zoo._zoo import Collection, Zoo, meta_to_json

MODEL_FORMAT = "model/1"
PACKED_FORMAT = "zoo/1"
MANIFEST = "zoo.json"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._\-]+$")
_DTYPES = (np.float16, np.float32, np.float64)


def _arch_from(config: Any, where: Path) -> Architecture:
    try:
        return architecture_from_config(config)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


def _check_dtype(name: str, arr: np.ndarray, where: str) -> None:
    if arr.dtype not in _DTYPES:
        raise ShapeError(f"{where}: tensor {name!r} has dtype {arr.dtype}, expected a float dtype")


# ---- single models ---------------------------------------------------------------------------
def save_model(path: str | os.PathLike[str], arch: Architecture, params: Mapping[str, Any],
               meta: Mapping[str, Any] | None = None) -> Path:
    """Write one model as a self-describing safetensors file (atomic)."""
    path = Path(path)
    arch.check_params(params, where=str(path))
    write_safetensors(path, params, {"weightspace": MODEL_FORMAT, "arch": json.dumps(arch.to_config()),
                                      "meta": meta_to_json(dict(meta or {}))})
    return path


def load_model(path: str | os.PathLike[str], *, arch: Architecture | None = None
               ) -> tuple[Architecture, dict[str, np.ndarray], dict[str, Any]]:
    """Read one model file: ``(arch, params, meta)``.

    ``arch`` is taken from the file header, or from the argument, or inferred from the tensor
    names and shapes of a plain PyTorch ``state_dict`` (MLP ``layers.*``; CNN ``convs.*``).
    """
    path = Path(path)
    tensors, header = read_safetensors(path)
    if arch is None:
        if "arch" in header:
            arch = _arch_from(header["arch"], path)
        else:
            arch = infer_architecture({k: v.shape for k, v in tensors.items()}, where=str(path))
    arch.check_params(tensors, where=str(path))
    for k, v in tensors.items():
        _check_dtype(k, v, str(path))
    meta = json.loads(header.get("meta", "{}"))
    meta.setdefault("id", path.stem)
    return arch, tensors, meta


def infer_architecture(shapes: Mapping[str, tuple[int, ...]], *, where: str = "state_dict") -> Architecture:
    """Guess an MLP or CNN spec from a plain ``state_dict``'s tensor names and shapes.

    Activation and normalisation cannot be read from weights; defaults (ReLU, none) are used.
    """
    from weightspace.nets import CNN, MLP

    layer = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"layers\.(\d+)\.weight$", k))})
    convs = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"convs\.(\d+)\.weight$", k))})
    if layer and not convs and layer == list(range(len(layer))):
        ws = [shapes[f"layers.{i}.weight"] for i in layer]
        return MLP(in_features=ws[0][1], hidden=tuple(w[0] for w in ws[:-1]), out_features=ws[-1][0])
    if convs and "head.weight" in shapes:
        ws = [shapes[f"convs.{i}.weight"] for i in convs]
        dense = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"dense\.(\d+)\.weight$", k))})
        raise_if = [w for w in ws if w[2] != ws[0][2]]
        if raise_if:
            raise ConfigError(f"{where}: conv kernels of different sizes are not a CNN spec")
        return CNN(image_shape=(28, 28, ws[0][1]), channels=tuple(w[0] for w in ws), kernel_size=ws[0][2],
                   dense=tuple(shapes[f"dense.{j}.weight"][0] for j in dense),
                   out_features=shapes["head.weight"][0])
    raise ConfigError(
        f"{where}: cannot infer an architecture from tensors {sorted(shapes)[:8]}...; pass arch="
    )


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
        write_safetensors(path, zoo.params, {"weightspace": PACKED_FORMAT, "arch": arch_json,
                                              "meta": meta_to_json(zoo.meta), "name": zoo.name})
    elif format == "directory":
        path.mkdir(parents=True, exist_ok=True)
        ids = [_check_id(i) for i in zoo.ids]
        host = {k: np.asarray(v) for k, v in zoo.params.items()}
        for i, mid in enumerate(ids):
            write_safetensors(path / f"{mid}.safetensors", {k: v[i] for k, v in host.items()},
                               {"weightspace": MODEL_FORMAT, "arch": arch_json, "meta": meta_to_json(zoo.row(i))})
        manifest = {"weightspace": "zoo-dir/1", "name": zoo.name, "arch": zoo.arch.to_config(), "ids": ids}
        with atomic_path(path / MANIFEST) as tmp:
            tmp.write_text(json.dumps(manifest, indent=1))
    else:
        raise ConfigError(f"unknown zoo format {format!r}; use 'packed' or 'directory'")
    return path


def load_zoo(path: str | os.PathLike[str], *, arch: Architecture | None = None, check_finite: bool = True,
             workers: int = 8) -> Zoo:
    """Read a zoo from a packed file or a directory (see module docs for the formats).

    Raises :class:`~weightspace.LoadError` for missing/corrupt files or tensors,
    :class:`~weightspace.ShapeError` for shape/dtype mismatches between models, and
    :class:`~weightspace.InvalidValueError` for NaN/Inf weights (unless ``check_finite=False``).
    """
    path = Path(path)
    if path.is_dir():
        files, arch_hint, name = _dir_files(path)
        zoos = _load_files(files, arch or arch_hint, workers=workers, name=name)
        if len(zoos) != 1:
            raise ShapeError(f"{path}: models of {len(zoos)} different architectures; use load_collection")
        zoo = zoos[0]
    else:
        tensors, header = read_safetensors(path)
        if header.get("weightspace") == MODEL_FORMAT or (header.get("weightspace") is None and arch is None
                                                          and "meta" not in header):
            a, params, meta = load_model(path, arch=arch)
            zoo = Zoo.stack(a, [params], [meta], name=path.stem)
        else:
            if header.get("weightspace") != PACKED_FORMAT and arch is None:
                raise LoadError(f"{path}: not a weightspace zoo file (header {sorted(header)})")
            a = arch or _arch_from(header["arch"], path)
            for k, v in tensors.items():
                _check_dtype(k, v, str(path))
            a.check_params(tensors, stacked=True, where=str(path))
            try:
                meta = json.loads(header.get("meta", "{}"))
            except json.JSONDecodeError as e:
                raise LoadError(f"{path}: metadata header is not valid JSON ({e})") from e
            zoo = Zoo(a, tensors, meta, header.get("name", path.stem))
    if check_finite:
        zoo.check_finite()
    return zoo


def _dir_files(path: Path) -> tuple[list[Path], Architecture | None, str]:
    manifest = path / MANIFEST
    if manifest.exists():
        try:
            m = json.loads(manifest.read_text())
        except json.JSONDecodeError as e:
            raise LoadError(f"{manifest}: not valid JSON ({e})") from e
        files = [path / f"{i}.safetensors" for i in m["ids"]]
        return files, _arch_from(m["arch"], manifest), m.get("name", path.name)
    files = sorted(path.rglob("*.safetensors"))
    if not files:
        raise LoadError(f"{path}: no .safetensors files (an empty zoo)")
    return files, None, path.name


def _load_files(files: Sequence[Path], arch: Architecture | None, *, workers: int, name: str) -> list[Zoo]:
    def one(f: Path) -> tuple[Architecture, dict[str, np.ndarray], dict[str, Any]]:
        return load_model(f, arch=arch)

    with ThreadPoolExecutor(max_workers=workers) as ex:
        loaded = list(ex.map(one, files))
    buckets: dict[str, list[tuple[Path, Architecture, dict[str, np.ndarray], dict[str, Any]]]] = {}
    for f, (a, p, m) in zip(files, loaded, strict=True):
        buckets.setdefault(a.signature, []).append((f, a, p, m))
    zoos = []
    for items in buckets.values():
        a = items[0][1]
        ref = items[0]
        for f, _, p, _ in items[1:]:
            for k, v in p.items():
                r = ref[2][k]
                if v.dtype != r.dtype:
                    raise ShapeError(f"{f}: tensor {k!r} has dtype {v.dtype}, but {ref[0]} has {r.dtype}")
        zoos.append(Zoo.stack(a, [it[2] for it in items], [it[3] for it in items],
                              name=name if len(buckets) == 1 else f"{name}/{a.kind}-{len(zoos)}"))
    return zoos


def load_collection(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], *, workers: int = 8,
                    check_finite: bool = True) -> Collection:
    """Read zoos (files, directories, or directories of mixed-architecture models) into a Collection."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    coll = Collection()
    for p in map(Path, paths):
        if p.is_dir() and not (p / MANIFEST).exists():
            files, _, name = _dir_files(p)
            zoos = _load_files(files, None, workers=workers, name=name)
        else:
            zoos = [load_zoo(p, workers=workers, check_finite=False)]
        for z in zoos:
            if check_finite:
                z.check_finite()
            coll.add(z)
    return coll


def load_tensors(files: Sequence[str | os.PathLike[str]], names: Sequence[str], *, workers: int = 16
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
                raise ShapeError(f"{f}: tensor {n!r} is {g[n].dtype}{list(g[n].shape)}, but {files[0]} has "
                                 f"{first.dtype}{list(first.shape)}")
        out[n] = np.stack([g[n] for g in got])
    return out


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Header summary of a zoo or model file without reading tensor data."""
    path = Path(path)
    if path.is_dir():
        files, arch, name = _dir_files(path)
        return {"format": "directory", "name": name, "models": len(files),
                "arch": arch.to_config() if arch else None}
    f = open_safetensors(path)
    with f:
        meta = f.metadata() or {}
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    out: dict[str, Any] = {"format": meta.get("weightspace", "safetensors"), "tensors": shapes}
    if "arch" in meta:
        out["arch"] = json.loads(meta["arch"])
    if meta.get("weightspace") == PACKED_FORMAT:
        out["name"] = meta.get("name")
        out["models"] = next(iter(shapes.values()))[0] if shapes else 0
        out["meta_columns"] = sorted(json.loads(meta.get("meta", "{}")))
    return out



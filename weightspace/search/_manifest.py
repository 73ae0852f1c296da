"""A gallery directory's manifest (``gallery.json``): reading it with every key checked, writing it
atomically, and where a gallery may be written."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightspace._atomic import atomic_path
from weightspace._errors import InvalidValueError, LoadError

FORMAT = "gallery/1"
MANIFEST = "gallery.json"
PROBES_FILE = "probes.safetensors"
DTYPES = ("float16", "float32")


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        m = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise LoadError(f"{path}: not a gallery (no {MANIFEST})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoadError(f"{path / MANIFEST}: not valid JSON ({e})") from e
    if not isinstance(m, dict) or m.get("weightspace") != FORMAT:
        raise LoadError(f"{path / MANIFEST}: not a {FORMAT} manifest")
    _check_manifest(m, path / MANIFEST)
    return m


# What every manifest entry must be: key -> type(s). A manifest edited by hand or cut short is a
# LoadError naming the key, never a KeyError deep in a search.
_MANIFEST_KEYS: dict[str, Any] = {"dtype": str, "normalize": bool, "zoos": list, "probes": dict}
_PROBES_KEYS: dict[str, Any] = {"name": str, "n": int, "shape": list, "fingerprint": str, "labels": bool, "file": str}
_ZOO_KEYS: dict[str, Any] = {
    "name": str,
    "fingerprint": str,
    "models": int,
    "logits_per_model": int,
    "models_per_shard": int,
    "shards": list,
    "complete": bool,
}
_SHARD_KEYS: dict[str, Any] = {"file": str, "models": list, "sha256": str}


def _check_keys(obj: Any, keys: Mapping[str, Any], where: str) -> None:
    if not isinstance(obj, dict):
        raise LoadError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    for k, t in keys.items():
        if k not in obj:
            raise LoadError(
                f"{where}: missing key {k!r}; the gallery manifest is damaged (re-index into a new gallery)"
            )
        v = obj[k]
        if not isinstance(v, t) or (t is int and isinstance(v, bool)):
            raise LoadError(f"{where}: key {k!r} must be a {t.__name__}, found {type(v).__name__} {v!r:.60}")


def _check_manifest(m: dict[str, Any], where: Path) -> None:
    _check_keys(m, _MANIFEST_KEYS, str(where))
    if m["dtype"] not in DTYPES:
        raise LoadError(f"{where}: key 'dtype' must be one of {sorted(DTYPES)}, found {m['dtype']!r}")
    _check_keys(m["probes"], _PROBES_KEYS, f"{where} (probes)")
    for i, z in enumerate(m["zoos"]):
        _check_keys(z, _ZOO_KEYS, f"{where} (zoos[{i}])")
        for j, s in enumerate(z["shards"]):
            _check_keys(s, _SHARD_KEYS, f"{where} (zoos[{i}].shards[{j}])")
            if len(s["models"]) != 2 or not all(isinstance(v, int) for v in s["models"]):
                raise LoadError(f"{where} (zoos[{i}].shards[{j}]): 'models' must be [first, end], found {s['models']}")


_GALLERY_FILES = {MANIFEST, PROBES_FILE, "shards"}


def _check_out_dir(path: Path) -> None:
    """A gallery is written into a new directory, an empty one, or an existing gallery: never over
    other files (a folder that holds models, a file)."""
    if not path.exists():
        if path.is_symlink():
            raise InvalidValueError(f"{path}: a broken symbolic link, not a gallery directory")
        return
    if not path.is_dir():
        raise InvalidValueError(f"{path} is a file, not a gallery directory; choose a new or empty directory")
    if (path / MANIFEST).exists():
        return
    other = sorted(p.name for p in path.iterdir() if p.name not in _GALLERY_FILES and not p.name.startswith("."))
    if other:
        raise InvalidValueError(
            f"{path} is not a gallery (no {MANIFEST}; it holds {other[:5]}{' ...' if len(other) > 5 else ''}); "
            "index into a new or empty directory"
        )


def _write_manifest(path: Path, m: Mapping[str, Any]) -> None:
    with atomic_path(path / MANIFEST) as tmp:
        tmp.write_text(json.dumps(m, indent=1, sort_keys=True) + "\n")

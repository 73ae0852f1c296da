"""The one safetensors reader and writer of weightspace: clear errors; deterministic bytes, atomic rename.

The reference writer orders header keys through a Rust ``HashMap`` (random per process), so the
same tensors could give different bytes run to run; that breaks "a resumed build is byte-identical"
and content hashing. Here tensors and metadata keys are sorted.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from weightspace._atomic import atomic_path
from weightspace._errors import LoadError, ShapeError

_DTYPES = {
    np.dtype(np.float16): "F16",
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
    np.dtype(np.int8): "I8",
    np.dtype(np.int16): "I16",
    np.dtype(np.int32): "I32",
    np.dtype(np.int64): "I64",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


def write_safetensors(
    path: str | os.PathLike[str], tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``tensors`` (name -> array) and string ``metadata`` to ``path``, atomically.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> from safetensors.numpy import load_file
        >>> p = write_safetensors(pathlib.Path(tempfile.mkdtemp()) / "t.safetensors", {"w": np.ones((2, 3))})
        >>> load_file(str(p))["w"].shape
        (2, 3)
    """
    path = Path(path)
    meta = {str(k): str(v) for k, v in sorted((metadata or {}).items())}
    header: dict[str, Any] = {"__metadata__": meta} if meta else {}
    arrays, offset = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(np.asarray(tensors[name]))
        if a.dtype not in _DTYPES:
            raise ShapeError(f"{path}: cannot store tensor {name!r} of dtype {a.dtype}")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": _DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        arrays.append(a)
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays:
            f.write(a.tobytes())
    return path


def open_safetensors(path: str | os.PathLike[str]) -> Any:
    """``safe_open`` (NumPy) with a :class:`~weightspace.LoadError` naming the file on any failure."""
    path = Path(path)
    if not path.exists():
        raise LoadError(f"{path}: no such file")
    if path.is_dir():
        raise LoadError(f"{path}: is a directory, expected a .safetensors file")
    try:
        return safe_open(str(path), framework="np")
    except (SafetensorError, OSError, ValueError) as e:
        raise LoadError(f"{path}: not a readable safetensors file ({e})") from e


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors and the metadata of a safetensors file (never executes code).

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> p = write_safetensors(pathlib.Path(tempfile.mkdtemp()) / "t.safetensors", {"w": np.ones(2)}, {"a": "b"})
        >>> read_safetensors(p)[1]
        {'a': 'b'}
    """
    f = open_safetensors(path)
    try:
        with f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    except (SafetensorError, OSError, ValueError) as e:
        raise LoadError(f"{path}: truncated or corrupt safetensors data ({e})") from e
    return tensors, meta

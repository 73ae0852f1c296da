"""The IDX file format (MNIST, Fashion-MNIST): a magic number, big-endian dimensions, raw data."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from weightspace._atomic import atomic_path
from weightspace._errors import InvalidValueError, LoadError

# Type code (third magic byte) -> big-endian numpy dtype, as specified by LeCun et al.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in _IDX_DTYPES.items()}


def parse_idx(raw: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file into a native-endian numpy array.

    Layout: two zero bytes, a type code, the number of dimensions ``d``, ``d`` big-endian uint32
    sizes, then ``prod(sizes)`` items of the type, big-endian, with nothing after them.

    Args:
        raw: the file contents.
        source: a name for error messages (usually the path).

    Returns:
        An array of shape ``sizes`` (uint8 for image/label files), native byte order.

    Raises:
        LoadError: bad magic number, unknown type code, or a data section that is shorter or
            longer than the header announces (a truncated or corrupt file).

    Example:
        >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        array([7, 8, 9], dtype=uint8)
    """
    if len(raw) < 4:
        raise LoadError(f"{source}: IDX file too short for its magic number ({len(raw)} bytes, need >= 4)")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES:
        raise LoadError(
            f"{source}: not an IDX file: magic bytes {raw[:4].hex()} (expected 0000 + type code in "
            f"{sorted(hex(c) for c in _IDX_DTYPES)} + ndim)"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise LoadError(f"{source}: truncated IDX header: {len(raw)} bytes, the {ndim} dims need {header_len}")
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header_len
    if found != expected:
        what = "truncated" if found < expected else "has trailing bytes"
        raise LoadError(
            f"{source}: IDX data {what}: header says shape {tuple(dims)} of {dtype.name} "
            f"({expected} bytes), found {found} bytes"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (``.gz``-compressed or not) into a numpy array, validating it fully.

    Args:
        path: the file; names ending in ``.gz`` are decompressed with gzip.

    Returns:
        The array, native byte order (see :func:`parse_idx`).

    Raises:
        LoadError: missing file, corrupt/truncated gzip stream, or a malformed IDX payload.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x-idx2-ubyte.gz"
        >>> write_idx(p, np.arange(6, dtype=np.uint8).reshape(2, 3))
        >>> read_idx(p)
        array([[0, 1, 2],
               [3, 4, 5]], dtype=uint8)
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise LoadError(f"{path}: cannot read IDX file: {e}") from e
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise LoadError(f"{path}: corrupt or truncated gzip stream: {e}") from e
    return parse_idx(raw, source=str(path))


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed if ``path`` ends in ``.gz``), atomically.

    Args:
        path: destination.
        array: uint8, int8, int16, int32, float32 or float64 array with at least one dimension.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "y-idx1-ubyte"
        >>> write_idx(p, np.array([1, 2], np.uint8))
        >>> p.read_bytes()
        b'\\x00\\x00\\x08\\x01\\x00\\x00\\x00\\x02\\x01\\x02'
    """
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None or array.ndim == 0 or array.ndim > 255:
        raise InvalidValueError(
            f"write_idx: cannot store dtype {array.dtype} with {array.ndim} dims as IDX "
            f"(need 1..255 dims of {sorted(str(d) for d in _CODES)})"
        )
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        raw = gzip.compress(raw, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)

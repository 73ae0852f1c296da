"""ProbeLog galleries on disk: probe-major safetensors shards + a JSON manifest; build, resume, append, search.

Layout of a gallery directory::

    gallery.json                 manifest: probe set fingerprint, dtype, zoos, shards (+ sha256 each)
    probes.safetensors           the ordered probes ("data", and "labels" when in-distribution)
    shards/SSS-CCCCC.safetensors "descriptors" [probes, models_in_shard * logits] (probe-major),
                                 header metadata: zoo name, model ids, class names per model

Row ``m * logits + j`` of a shard (a column of its probe-major matrix) is logit ``j`` of model
``m``. A build is split into shards of ``models_per_shard`` models; each shard is written
atomically and then recorded in the manifest (also atomic), so a killed build resumes at the first
unrecorded shard and ends byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jaxtyping import Float

from weightspace._errors import ConfigError, InvalidValueError, LoadError, ShapeError, WeightspaceError
from weightspace._safetensors import read_safetensors, write_safetensors
from weightspace.search._descriptors import (
    DEFAULT_DISTANCE,
    Distance,
    Selection,
    logit_descriptors,
    normalize_descriptors,
)
from weightspace.search._kernels import DEFAULT_BLOCK, BlockedMatrix, search_blocks, to_blocks
from weightspace.search._manifest import (
    FORMAT,
    MANIFEST,
    PROBES_FILE,
    _check_out_dir,
    _read_manifest,
    _write_manifest,
)
from weightspace.search._results import Hit, SearchResult

_DTYPES = {"float16": np.float16, "float32": np.float32}
_TARGET_SHARD_LOGITS = 1 << 16
Progress = bool | Callable[[int, int], None] | None


# ---- sources ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Responses:
    """Precomputed responses of a population to the gallery's probes (index models probed elsewhere).

    Args:
        name: zoo name recorded with every logit.
        values: ``[models, probes, logits]`` float responses, probes in the gallery's order.
        ids: one unique id per model.
        classes: per model, the class name of each logit (or ``None`` when unknown).

    Example:
        >>> import numpy as np
        >>> r = Responses("mine", np.zeros((2, 5, 3), np.float32), ["a", "b"])
        >>> r.values.shape
        (2, 5, 3)
    """

    name: str
    values: Float[np.ndarray, "models probes logits"]
    ids: Sequence[str]
    classes: Sequence[Sequence[str] | None] | None = None

    def __post_init__(self) -> None:
        v = np.asarray(self.values)
        if v.ndim != 3 or 0 in v.shape:
            raise ShapeError(f"Responses {self.name!r}: values must be [models, probes, logits], got {v.shape}")
        if not np.issubdtype(v.dtype, np.floating):
            raise ShapeError(f"Responses {self.name!r}: values must be floats, got {v.dtype}")
        object.__setattr__(self, "values", v)
        ids = [str(i) for i in self.ids]
        if len(ids) != v.shape[0] or len(set(ids)) != len(ids):
            raise InvalidValueError(
                f"Responses {self.name!r}: need {v.shape[0]} unique ids, got {len(ids)} ({len(set(ids))} unique)"
            )
        object.__setattr__(self, "ids", ids)
        if self.classes is not None:
            cl = [None if c is None else [str(x) for x in c] for c in self.classes]
            if len(cl) != v.shape[0] or any(c is not None and len(c) != v.shape[2] for c in cl):
                raise ShapeError(
                    f"Responses {self.name!r}: classes must hold {v.shape[2]} names for each of {v.shape[0]} models"
                )
            object.__setattr__(self, "classes", cl)


class _Source:
    """A zoo or precomputed responses, as the build loop sees it."""

    def __init__(self, item: Any, probes: Any) -> None:
        from weightspace.zoo import Zoo

        self.item = item
        self.probes = probes
        if isinstance(item, Responses):
            self.name, self.ids, self.num_logits = item.name, list(item.ids), item.values.shape[2]
            self.arch: dict[str, Any] | None = None
            if item.values.shape[1] != len(probes.data):
                raise ShapeError(
                    f"Responses {item.name!r} cover {item.values.shape[1]} probes, the gallery has "
                    f"{len(probes.data)}: responses must be computed on the gallery's probe set"
                )
        elif isinstance(item, Zoo):
            self.name, self.ids, self.num_logits = item.name, item.ids, item.arch.num_outputs
            self.arch = item.arch.to_config()
        else:
            raise ConfigError(f"cannot index a {type(item).__name__}; pass a Zoo, a Collection or Responses")

    def __len__(self) -> int:
        return len(self.ids)

    def classes(self, i: int) -> list[str] | None:
        if isinstance(self.item, Responses):
            return None if self.item.classes is None else self.item.classes[i]  # type: ignore[return-value]
        c = self.item.classes(i)
        if c is not None and len(c) != self.num_logits:
            raise ShapeError(
                f"zoo {self.name!r}: model {self.ids[i]!r} lists {len(c)} class names for {self.num_logits} outputs"
            )
        return None if c is None else [str(x) for x in c]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.arch, self.ids, [self.classes(i) for i in range(len(self))]]).encode())
        if isinstance(self.item, Responses):
            h.update(np.ascontiguousarray(self.item.values).tobytes())
        else:
            for k in sorted(self.item.params):
                h.update(k.encode())
                h.update(np.ascontiguousarray(np.asarray(self.item.params[k])).tobytes())
        return h.hexdigest()

    def responses(self, a: int, b: int) -> np.ndarray:
        if isinstance(self.item, Responses):
            return np.asarray(self.item.values[a:b], np.float32)
        from weightspace.probing import probe

        return np.asarray(probe(self.item.select(slice(a, b)), self.probes), np.float32)


def _sources(source: Any, probes: Any) -> list[_Source]:
    from weightspace.zoo import Collection, Zoo

    if isinstance(source, Zoo | Responses):
        items: list[Any] = [source]
    elif isinstance(source, Collection):
        items = source.zoos
    elif isinstance(source, Iterable) and not isinstance(source, str | bytes):
        items = []
        for s in source:
            items.extend(s.zoos if isinstance(s, Collection) else [s])
    else:
        raise ConfigError(f"cannot index a {type(source).__name__}; pass a Zoo, a Collection or Responses")
    out = [_Source(i, probes) for i in items]
    # A hub Collection holds one zoo per architecture bucket, often all with the hub's name:
    # later namesakes get "#1", "#2", ... (deterministic in the collection's order, so resume works).
    seen: dict[str, int] = {}
    for s in out:
        j = seen.get(s.name, 0)
        seen[s.name] = j + 1
        if j:
            s.name = f"{s.name}#{j}"
    return out


# ---- probes ----------------------------------------------------------------------------------
def as_probe_set(probes: Any) -> Any:
    """A :class:`weightspace.data.ProbeSet` from a ProbeSet or a plain float array."""
    from weightspace.data import ProbeSet

    if isinstance(probes, ProbeSet):
        return probes
    arr = np.ascontiguousarray(np.asarray(probes, np.float32))
    return ProbeSet(name=f"array-{'x'.join(map(str, arr.shape))}", data=arr, provenance="user array")


def probes_fingerprint(probes: Any) -> str:
    """sha256 of the probe data (and labels): a gallery answers only queries on the same ordered probes."""
    p = as_probe_set(probes)
    h = hashlib.sha256(str(p.data.shape).encode())
    h.update(np.ascontiguousarray(p.data, np.float32).tobytes())
    if p.labels is not None:
        h.update(np.ascontiguousarray(p.labels, np.int32).tobytes())
    return h.hexdigest()


def _write_probes(path: Path, p: Any) -> None:
    tensors = {"data": np.ascontiguousarray(p.data, np.float32)}
    if p.labels is not None:
        tensors["labels"] = np.ascontiguousarray(p.labels, np.int32)
    meta = {
        "name": p.name,
        "provenance": p.provenance,
        "label_names": json.dumps(list(p.label_names) if p.label_names is not None else None),
    }
    write_safetensors(path, tensors, meta)


def _read_probes(path: Path) -> Any:
    from weightspace.data import ProbeSet

    tensors, meta = read_safetensors(path)
    if "data" not in tensors:
        raise LoadError(f"{path}: no 'data' tensor (not a gallery probe file)")
    names = json.loads(meta.get("label_names", "null"))
    return ProbeSet(
        name=meta.get("name", "probes"),
        data=tensors["data"],
        provenance=meta.get("provenance", ""),
        labels=tensors.get("labels"),
        label_names=tuple(names) if names is not None else None,
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


# ---- manifest --------------------------------------------------------------------------------
def build_gallery(
    source: Any,
    probes: Any,
    out: str | os.PathLike[str],
    *,
    dtype: str = "float16",
    normalize: bool = True,
    models_per_shard: int | None = None,
    progress: Progress = None,
) -> Gallery:
    """Index zoos into a ProbeLog gallery on disk (new, resumed, or appended to).

    Every model sees the same ordered probes (each architecture adapts them to its input via
    ``arch.adapt``); each logit's responses are z-scored and stored probe-major.

    Args:
        source: a :class:`~weightspace.zoo.Zoo`, a :class:`~weightspace.zoo.Collection`,
            :class:`Responses`, or a sequence of these. Zoos are probed with
            :func:`weightspace.probing.probe`.
        probes: a :class:`~weightspace.data.ProbeSet` (or array); must equal the gallery's probes
            when ``out`` already holds a gallery.
        out: the gallery directory. If it exists, zoos already indexed (same name and content) are
            skipped, half-indexed ones resume at their first missing shard, new ones are appended.
        dtype: ``"float16"`` (half the memory traffic; default) or ``"float32"``.
        normalize: store z-scored descriptors (``False``: the "no normalisation" ablation).
        models_per_shard: models per shard (default: about 65536 logits per shard).
        progress: ``True`` for a tqdm bar, or a callable ``(models_done, models_total)``.

    Returns:
        The opened :class:`Gallery`.

    Raises:
        InvalidValueError: probe set / dtype mismatch with an existing gallery, a zoo name already
            indexed with different content, NaN/Inf responses.

    Example:
        >>> import numpy as np, tempfile
        >>> rng = np.random.default_rng(0)
        >>> r = Responses("toy", rng.normal(size=(4, 32, 3)), ids=["m0", "m1", "m2", "m3"])
        >>> g = build_gallery(r, rng.random((32, 8)), tempfile.mkdtemp(), models_per_shard=3)
        >>> g.num_logits, g.num_probes, len(g.manifest["zoos"][0]["shards"])
        (12, 32, 2)
    """
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if models_per_shard is not None and (not isinstance(models_per_shard, int) or models_per_shard < 1):
        raise ConfigError(f"models_per_shard must be a positive int or None, got {models_per_shard!r}")
    path = Path(out)
    _check_out_dir(path)
    p = as_probe_set(probes)
    fp = probes_fingerprint(p)
    srcs = _sources(source, p)
    first: dict[str, str] = {}
    for s in srcs:  # the same zoo given twice would be indexed twice (every hit doubled)
        prev = first.setdefault(s.fingerprint(), s.name)
        if prev != s.name:
            raise InvalidValueError(
                f"zoos {prev!r} and {s.name!r} are the same models (same architecture, ids and classes) given "
                "twice; give each zoo once"
            )
    created_dir = not path.exists()
    new_gallery = not (path / MANIFEST).exists()
    if not new_gallery:
        m = _read_manifest(path)
        have = m["probes"]["fingerprint"]
        if have != fp:
            raise InvalidValueError(
                f"{path}: the gallery was built on probe set {m['probes']['name']!r} ({m['probes']['n']} probes, "
                f"sha256 {have[:12]}), got {p.name!r} ({len(p.data)} probes, sha256 {fp[:12]}); "
                "use the same ordered probes or a new gallery"
            )
        if m["dtype"] != dtype or m["normalize"] != normalize:
            raise InvalidValueError(
                f"{path}: gallery stores dtype={m['dtype']}, normalize={m['normalize']}; "
                f"got dtype={dtype}, normalize={normalize}"
            )
    else:
        m = {
            "weightspace": FORMAT,
            "dtype": dtype,
            "normalize": normalize,
            "zoos": [],
            "probes": {
                "name": p.name,
                "n": len(p.data),
                "shape": list(p.data.shape[1:]),
                "fingerprint": fp,
                "labels": p.labels is not None,
                "file": PROBES_FILE,
            },
        }

    plan = []
    for s in srcs:
        fprint = s.fingerprint()
        entry = next((z for z in m["zoos"] if z["name"] == s.name), None)
        if entry is None:
            per = models_per_shard or max(1, _TARGET_SHARD_LOGITS // s.num_logits)
            entry = {
                "name": s.name,
                "fingerprint": fprint,
                "models": len(s),
                "logits_per_model": s.num_logits,
                "models_per_shard": int(per),
                "arch": s.arch,
                "shards": [],
                "complete": False,
            }
            m["zoos"].append(entry)
        elif entry["fingerprint"] != fprint:
            raise InvalidValueError(
                f"{path}: a different zoo named {s.name!r} is already indexed; rename one of them or use a new gallery"
            )
        plan.append((m["zoos"].index(entry), entry, s))

    total = sum(len(s) for _, _, s in plan)
    done = sum(min(len(e["shards"]) * e["models_per_shard"], e["models"]) for _, e, _ in plan)
    report = _progress(progress, total, done)
    try:
        if new_gallery:
            path.mkdir(parents=True, exist_ok=True)
            _write_probes(path / PROBES_FILE, p)
        (path / "shards").mkdir(exist_ok=True)
        _write_manifest(path, m)
        for slot, entry, s in plan:
            per = entry["models_per_shard"]
            for c in range(len(entry["shards"]), math.ceil(len(s) / per)):
                a, b = c * per, min(len(s), (c + 1) * per)
                rel = f"shards/{slot:03d}-{c:05d}.safetensors"
                _write_shard(path / rel, s, a, b, dtype=dtype, normalize=normalize)
                entry["shards"].append({"file": rel, "models": [a, b], "sha256": _sha256(path / rel)})
                entry["complete"] = b == len(s)
                _write_manifest(path, m)
                done += b - a
                report(done)
            entry["complete"] = True
        _write_manifest(path, m)
    except Exception:
        # A failure (bad responses, a bad class list, a full disk) takes back what this call added and
        # holds nothing yet; finished shards stay, so the same command resumes after a fix or a kill.
        _undo_empty(path, m, new_gallery=new_gallery, created_dir=created_dir)
        raise
    finally:
        report(None)
    return Gallery(path)


def _undo_empty(path: Path, m: dict[str, Any], *, new_gallery: bool, created_dir: bool) -> None:
    with contextlib.suppress(OSError):
        m["zoos"] = [z for z in m["zoos"] if z["shards"]]
        if new_gallery and not m["zoos"]:
            if created_dir:
                shutil.rmtree(path)
            else:
                for name in (MANIFEST, PROBES_FILE):
                    (path / name).unlink(missing_ok=True)
                shutil.rmtree(path / "shards", ignore_errors=True)
        elif (path / MANIFEST).exists():
            _write_manifest(path, m)


def _write_shard(path: Path, s: _Source, a: int, b: int, *, dtype: str, normalize: bool) -> None:
    r = s.responses(a, b)
    if r.shape != (b - a, len(s.probes.data), s.num_logits):
        raise ShapeError(
            f"zoo {s.name!r}: responses of models {a}..{b} have shape {r.shape}, expected "
            f"{(b - a, len(s.probes.data), s.num_logits)}"
        )
    from weightspace.probing._probe import check_finite_responses

    check_finite_responses(r, s.ids[a:b], s.name)
    d = np.asarray(logit_descriptors(r, normalize=normalize))  # [models*logits, probes]
    cols = np.ascontiguousarray(d.T.astype(_DTYPES[dtype]))
    meta = {
        "zoo": s.name,
        "ids": json.dumps(s.ids[a:b]),
        "logits_per_model": str(s.num_logits),
        "classes": json.dumps([s.classes(i) for i in range(a, b)]),
    }
    write_safetensors(path, {"descriptors": cols}, meta)


def _progress(progress: Progress, total: int, done: int) -> Callable[[int | None], None]:
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=done, unit="model", desc="indexing")

        def tick(n: int | None) -> None:
            if n is None:
                bar.close()
            else:
                bar.update(n - bar.n)

        return tick
    if callable(progress):
        return lambda n: None if n is None else progress(n, total)
    return lambda n: None


# ---- the gallery -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Shard:
    file: Path
    zoo: str
    ids: list[str]
    classes: list[list[str] | None]
    logits_per_model: int
    offset: int  # first global logit index
    width: int
    data_offset: int  # byte offset of the descriptors in the file


def _shard_header(path: Path, probes: int, dtype: str) -> tuple[dict[str, str], int, int]:
    """(metadata, number of logit columns, byte offset of the descriptor data), validated."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file size {size}")
            header = json.loads(f.read(n))
        t = header["descriptors"]
        want = {"float16": "F16", "float32": "F32"}[dtype]
        shape, (start, end) = t["shape"], t["data_offsets"]
    except FileNotFoundError:
        raise LoadError(f"{path}: gallery shard is missing") from None
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise LoadError(f"{path}: corrupt gallery shard header ({e})") from e
    if t["dtype"] != want or len(shape) != 2 or shape[0] != probes:
        raise LoadError(f"{path}: shard holds {t['dtype']}{shape}, expected {want}[{probes}, logits]")
    itemsize = np.dtype(_DTYPES[dtype]).itemsize
    if end - start != shape[0] * shape[1] * itemsize or 8 + n + end > size:
        raise LoadError(f"{path}: shard is truncated ({size} bytes, tensor needs {8 + n + end})")
    return header.get("__metadata__", {}), int(shape[1]), 8 + n + start


class Gallery:
    """A ProbeLog gallery on disk, memory-mapped; searched by descriptor, logit, model or text.

    Args:
        path: the gallery directory (see :func:`build_gallery`).
        verify: check every shard's sha256 against the manifest (reads every byte once).

    Raises:
        LoadError: missing/corrupt manifest, probe file or shard (with the file named).

    Example:
        >>> import numpy as np, tempfile
        >>> rng = np.random.default_rng(0)
        >>> resp = rng.normal(size=(5, 40, 3)).astype(np.float32)
        >>> r = Responses("toy", resp, ids=[f"m{i}" for i in range(5)], classes=[["a", "b", "c"]] * 5)
        >>> g = build_gallery(r, rng.random((40, 4)), tempfile.mkdtemp())
        >>> hits = g.search_logit("m2:1", top=3, exclude_model=False)
        >>> hits[0].model_id, hits[0].logit, hits[0].class_name, round(hits[0].score, 6)
        ('m2', 1, 'b', 0.0)
    """

    def __init__(self, path: str | os.PathLike[str], *, verify: bool = True) -> None:
        self.path = Path(path)
        self.manifest = _read_manifest(self.path)
        m = self.manifest
        self.dtype: str = m["dtype"]
        self.normalize: bool = m["normalize"]
        self.probes = _read_probes(self.path / m["probes"].get("file", PROBES_FILE))
        if probes_fingerprint(self.probes) != m["probes"]["fingerprint"]:
            raise LoadError(f"{self.path / PROBES_FILE}: probe data do not match the manifest's fingerprint")
        self.num_probes = int(m["probes"]["n"])
        self.shards: list[_Shard] = []
        offset = 0
        for z in m["zoos"]:
            for sh in z["shards"]:
                f = self.path / sh["file"]
                meta, width, data_offset = _shard_header(f, self.num_probes, self.dtype)
                if verify and _sha256(f) != sh["sha256"]:
                    raise LoadError(
                        f"{f}: shard is corrupt (sha256 differs from {MANIFEST}); rebuild it by "
                        f"deleting it and its manifest entry, then re-running the build"
                    )
                try:
                    ids = json.loads(meta["ids"])
                    classes = json.loads(meta["classes"])
                    lpm = int(meta["logits_per_model"])
                except (KeyError, ValueError) as e:
                    raise LoadError(f"{f}: shard metadata is corrupt ({e})") from e
                if len(ids) * lpm != width or len(classes) != len(ids):
                    raise LoadError(f"{f}: {len(ids)} models x {lpm} logits do not match {width} columns")
                self.shards.append(_Shard(f, z["name"], ids, classes, lpm, offset, width, data_offset))
                offset += width
        self.num_logits = offset
        self._starts = [s.offset for s in self.shards]
        self._maps: list[np.ndarray] | None = None
        self._device: dict[int, BlockedMatrix] = {}
        self._models: dict[str, list[tuple[int, int]]] | None = None

    # ---- views ----------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """False while a build is unfinished (resume it with :func:`build_gallery`)."""
        return all(z["complete"] for z in self.manifest["zoos"])

    @property
    def zoos(self) -> list[str]:
        return [z["name"] for z in self.manifest["zoos"]]

    def __len__(self) -> int:
        return self.num_logits

    def __repr__(self) -> str:
        return (
            f"Gallery({str(self.path)!r}, {self.num_logits} logits x {self.num_probes} probes, "
            f"{self.dtype}, zoos={self.zoos})"
        )

    def columns(self) -> list[np.ndarray]:
        """The descriptor shards as read-only memory maps ``[probes, n_i]`` (probe-major)."""
        if self._maps is None:
            dt = _DTYPES[self.dtype]
            self._maps = [
                np.memmap(s.file, dt, mode="r", offset=s.data_offset, shape=(self.num_probes, s.width))
                for s in self.shards
            ]
        return self._maps

    def descriptors(self, indices: Sequence[int] | np.ndarray) -> Float[np.ndarray, "n probes"]:
        """Stored descriptors of the given logits (gallery rows) as float32 ``[n, probes]``."""
        idx = np.atleast_1d(np.asarray(indices, np.int64))
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_logits):
            raise InvalidValueError(f"logit index out of range [0, {self.num_logits})")
        cols = self.columns()
        out = np.empty((idx.size, self.num_probes), np.float32)
        for r, i in enumerate(idx):
            s = bisect.bisect_right(self._starts, int(i)) - 1
            out[r] = cols[s][:, int(i) - self.shards[s].offset]
        return out

    def info(self, index: int) -> tuple[str, str, int, str | None]:
        """``(zoo, model_id, logit, class_name)`` of gallery row ``index``."""
        s = self.shards[bisect.bisect_right(self._starts, int(index)) - 1]
        m, j = divmod(int(index) - s.offset, s.logits_per_model)
        cls = s.classes[m]
        return s.zoo, s.ids[m], j, (cls[j] if cls is not None else None)

    def logits_of(self, model_id: str, *, zoo: str | None = None) -> np.ndarray:
        """Gallery rows of every logit of a model (``zoo`` disambiguates ids repeated across zoos)."""
        if self._models is None:
            self._models = {}
            for si, s in enumerate(self.shards):
                for mi, mid in enumerate(s.ids):
                    self._models.setdefault(mid, []).append((si, mi))
        found = [
            (si, mi) for si, mi in self._models.get(str(model_id), []) if zoo is None or self.shards[si].zoo == zoo
        ]
        if not found:
            where = f" in zoo {zoo!r}" if zoo else ""
            raise InvalidValueError(
                f"gallery {self.path} has no model {model_id!r}{where} (zoos: {self.zoos}; {self.num_logits} logits)"
            )
        if len(found) > 1:
            raise InvalidValueError(
                f"model id {model_id!r} is in several zoos {sorted(self.shards[si].zoo for si, _ in found)}; pass zoo="
            )
        si, mi = found[0]
        s = self.shards[si]
        return s.offset + mi * s.logits_per_model + np.arange(s.logits_per_model)

    def matrix(self, *, block: int = DEFAULT_BLOCK) -> BlockedMatrix:
        """The whole gallery on the device (loaded on first use and cached)."""
        if block not in self._device:
            if self.num_logits == 0:
                raise InvalidValueError(f"gallery {self.path} is empty")
            self._device[block] = to_blocks(self.columns(), block=block)
        return self._device[block]

    def append(self, source: Any, *, models_per_shard: int | None = None, progress: Progress = None) -> Gallery:
        """Index more zoos into this gallery (same probes, dtype and normalisation); returns the reopened gallery."""
        return build_gallery(
            source,
            self.probes,
            self.path,
            dtype=self.dtype,
            normalize=self.normalize,
            models_per_shard=models_per_shard,
            progress=progress,
        )

    # ---- search ---------------------------------------------------------------------------
    def search(
        self,
        queries: Float[np.ndarray, "queries probes"],
        *,
        top: int = 10,
        k: int | None = None,
        selection: Selection = "top",
        distance: Distance = DEFAULT_DISTANCE,
        key: jax.Array | None = None,
        method: str = "auto",
        exclude: Sequence[Sequence[int]] | None = None,
        labels: Sequence[str] | None = None,
    ) -> list[SearchResult]:
        """Ranked hits for query descriptors over this gallery's probes (a batch is one kernel call).

        Queries are z-scored like the gallery (idempotent on already-normalised descriptors).

        Args:
            queries: ``[queries, probes]`` (or one ``[probes]`` row), responses or descriptors on
                exactly this gallery's ordered probes.
            top: hits per query.
            k, selection, distance, key: the discrepancy (see :func:`~weightspace.search.discrepancy`).
            method: search kernel (see :func:`~weightspace.search.search_blocks`).
            exclude: per query, gallery rows never to return (e.g. the query's own logits).
            labels: a label per query for :attr:`SearchResult.query`.

        Returns:
            One :class:`SearchResult` per query.
        """
        if not isinstance(top, int | np.integer) or top < 1:
            raise InvalidValueError(f"top (hits per query) must be an int >= 1, got {top!r}")
        if k is not None and (not isinstance(k, int | np.integer) or not 1 <= k <= self.num_probes):
            raise InvalidValueError(
                f"k (probes compared per query) must be between 1 and the gallery's {self.num_probes} probes, "
                f"got {k!r} ({self.path})"
            )
        q = np.asarray(queries, np.float32)
        q = q[None] if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != self.num_probes:
            raise ShapeError(
                f"query descriptors have shape {q.shape}; gallery {self.path} was built on "
                f"{self.num_probes} probes ({self.manifest['probes']['name']!r}): queries must "
                "use the same ordered probe set"
            )
        if not np.isfinite(q).all():
            raise InvalidValueError(f"{int((~np.isfinite(q)).sum())} NaN/Inf values in the query descriptors")
        if self.normalize:
            q = np.asarray(normalize_descriptors(q))
        excl = [set(map(int, e)) for e in exclude] if exclude is not None else [set() for _ in q]
        if len(excl) != len(q):
            raise ShapeError(f"exclude has {len(excl)} entries for {len(q)} queries")
        extra = max((len(e) for e in excl), default=0)
        out = search_blocks(
            self.matrix(),
            q,
            top=min(top + extra, self.num_logits),
            k=k,
            selection=selection,
            distance=distance,
            key=key,
            method=method,
        )
        labels = list(labels) if labels is not None else [f"query {i}" for i in range(len(q))]
        results = []
        for qi in range(len(q)):
            hits: list[Hit] = []
            for sc, ix in zip(out.scores[qi], out.indices[qi], strict=True):
                if int(ix) in excl[qi] or not np.isfinite(sc):
                    continue
                zoo, mid, j, cls = self.info(int(ix))
                hits.append(Hit(len(hits) + 1, float(sc), zoo, mid, j, cls, int(ix)))
                if len(hits) == top:
                    break
            results.append(SearchResult(labels[qi], tuple(hits)))
        return results

    def search_logit(
        self, logit: str | tuple[str, int], *, zoo: str | None = None, exclude_model: bool = True, **kw: Any
    ) -> SearchResult:
        """Logits that behave like a gallery logit, given as ``"MODEL_ID:IDX"`` or ``(model_id, idx)``.

        ``exclude_model`` leaves the query's own model out of the hits.
        """
        if isinstance(logit, str):
            mid, sep, j = logit.rpartition(":")
            if not sep or not mid or not j.lstrip("-").isdigit():
                raise InvalidValueError(f"logit query must look like MODEL_ID:IDX, got {logit!r}")
            model_id, idx = mid, int(j)
        else:
            model_id, idx = str(logit[0]), int(logit[1])
        rows = self.logits_of(model_id, zoo=zoo)
        if not 0 <= idx < len(rows):
            raise InvalidValueError(f"model {model_id!r} has {len(rows)} logits; index {idx} is out of range")
        row = int(rows[idx])
        _, _, _, cls = self.info(row)
        label = f"logit {model_id}:{idx}" + (f" ({cls})" if cls else "")
        excl = [rows.tolist() if exclude_model else []]
        return self.search(self.descriptors([row]), exclude=excl, labels=[label], **kw)[0]

    def search_model(self, model: Any, *, exclude_self: bool = True, **kw: Any) -> list[SearchResult]:
        """One search per logit of each model of ``model`` (a Zoo, or a path :func:`~weightspace.zoo.load_zoo` reads).

        The models are probed with this gallery's own probes; gallery models with the same id are
        left out of the hits when ``exclude_self``.
        """
        from weightspace.probing import probe
        from weightspace.zoo import Zoo, load_zoo

        zoo = model if isinstance(model, Zoo) else load_zoo(model)
        resp = np.asarray(probe(zoo, self.probes), np.float32)
        d = np.asarray(logit_descriptors(resp, normalize=self.normalize))
        n_out = zoo.arch.num_outputs
        labels, excl = [], []
        for i, mid in enumerate(zoo.ids):
            cls = zoo.classes(i)
            try:
                own = self.logits_of(mid).tolist() if exclude_self else []
            except InvalidValueError:
                own = []
            for j in range(n_out):
                labels.append(f"model {mid}:{j}" + (f" ({cls[j]})" if cls is not None else ""))
                excl.append(own)
        return self.search(d, labels=labels, exclude=excl, **kw)

    def search_text(self, texts: str | Sequence[str], aligner: Any = None, **kw: Any) -> list[SearchResult]:
        """Zero-shot search by text: the aligner turns each text into a descriptor over this gallery's probes.

        Args:
            texts: one text or several.
            aligner: an :class:`~weightspace.search.Aligner` (default: :class:`~weightspace.search.LabelAligner`
                over MiniLM when the probes have labels, else :class:`~weightspace.search.ConSEAligner`).
            **kw: search options (``top``, ``k``, ...).
        """
        from weightspace.search._text import check_texts

        texts = check_texts(texts)
        if aligner is None:
            from weightspace.search._conse import default_aligner

            aligner = default_aligner(self.probes)
        d = np.asarray(aligner.describe(texts, self.probes), np.float32)
        if d.shape != (len(texts), self.num_probes):
            raise ShapeError(
                f"{type(aligner).__name__}.describe returned {d.shape}, expected {(len(texts), self.num_probes)}"
            )
        return self.search(d, labels=[f"text {t!r}" for t in texts], **kw)


def open_gallery(path: str | os.PathLike[str], *, verify: bool = True) -> Gallery:
    """Open a gallery directory (memory-mapped; ``verify`` checks shard checksums)."""
    try:
        return Gallery(path, verify=verify)
    except WeightspaceError:
        raise
    except (OSError, ValueError) as e:
        raise LoadError(f"{path}: cannot open gallery ({e})") from e

"""Weight datasets: a zoo's tensors + per-model targets + train/val/test splits by model."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from weightspace._errors import ConfigError, InvalidValueError, LoadError, ShapeError
from weightspace.nets import Architecture
from weightspace.zoo import Zoo

PathLike = str | os.PathLike[str]
TargetSpec = str | np.ndarray | Sequence[Any] | Callable[[dict[str, Any]], Any]

_SPLIT_NAMES = ("train", "val", "test")


class Splits(NamedTuple):
    """Model indices of the train / validation / test splits (sorted int64, disjoint, covering ``range(n)``)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> tuple[int, int, int]:
        """``(len(train), len(val), len(test))``."""
        return len(self.train), len(self.val), len(self.test)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    f = tuple(float(x) for x in fractions)
    if (
        len(f) != 3
        or any(not math.isfinite(x) or x < 0 for x in f)
        or f[0] <= 0
        or not math.isclose(sum(f), 1.0, abs_tol=1e-6)
    ):
        raise InvalidValueError(
            f"split fractions must be 3 non-negative numbers summing to 1 with train > 0, got {tuple(fractions)}"
        )
    return f  # type: ignore[return-value]


def split_models(
    n: int,
    *,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> Splits:
    """Split ``n`` models into train / val / test, keeping every group inside one split.

    Groups (e.g. the checkpoints of one training run) are shuffled with ``seed``; whole groups fill
    the test split up to ``round(fractions[2] * n)`` models, then val, and the rest go to train.
    Each split with a positive fraction gets at least one group.

    Args:
        n: number of models.
        fractions: ``(train, val, test)`` fractions (non-negative, sum 1, train > 0). A zero
            fraction gives an empty split.
        seed: shuffling seed (the split is a deterministic function of all arguments).
        groups: one hashable label per model; models sharing a label land in the same split.

    Returns:
        :class:`Splits` of sorted int64 model indices.

    Example:
        >>> from weightspace.learn import split_models
        >>> s = split_models(10, seed=0)
        >>> [len(x) for x in s], sorted(set(s.train) | set(s.val) | set(s.test)) == list(range(10))
        ([7, 2, 1], True)
        >>> g = split_models(6, groups=["a", "a", "b", "b", "c", "c"], fractions=(1/3, 1/3, 1/3))
        >>> [len(x) for x in g]
        [2, 2, 2]
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise InvalidValueError(f"split_models: n must be a positive int, got {n!r}")
    n = int(n)
    f = _check_fractions(fractions)
    if groups is None:
        labels = np.arange(n)
    else:
        if len(groups) != n:
            raise ShapeError(f"split_models: groups has {len(groups)} labels for {n} models")
        # Map labels to first-occurrence codes: deterministic for any hashable labels.
        codes: dict[Any, int] = {}
        try:
            labels = np.array([codes.setdefault(_hashable(g), len(codes)) for g in groups], np.int64)
        except TypeError as e:
            raise InvalidValueError(f"split_models: group labels must be hashable ({e})") from None
    num_groups = int(labels.max()) + 1
    needed = sum(1 for x in f if x > 0)
    if num_groups < needed:
        raise InvalidValueError(
            f"split_models: {num_groups} group(s) of {n} models cannot fill {needed} non-empty "
            f"splits with fractions {f}; need at least {needed} groups"
        )
    counts = np.bincount(labels, minlength=num_groups)
    order = np.random.default_rng(np.random.SeedSequence([int(seed), n, num_groups])).permutation(num_groups)
    # Target model counts by largest remainder (ties go to train, then val).
    exact = np.array(f) * n
    want = np.floor(exact).astype(np.int64)
    for s in np.argsort(-(exact - want), kind="stable")[: n - int(want.sum())]:
        want[s] += 1
    assign = np.zeros(num_groups, np.int64)  # 0 train, 1 val, 2 test
    pos = 0
    for split in (2, 1):
        if f[split] <= 0:
            continue
        # Leave at least one group for every earlier split that must be non-empty.
        reserve = sum(1 for s in range(split) if f[s] > 0)
        got = 0
        while pos < num_groups - reserve and (got == 0 or got < want[split]):
            assign[order[pos]] = split
            got += int(counts[order[pos]])
            pos += 1
    model_split = assign[labels]
    return Splits(*(np.flatnonzero(model_split == s).astype(np.int64) for s in range(3)))


def _hashable(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_hashable(v) for v in x)
    if isinstance(x, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in x.items()))
    if isinstance(x, np.ndarray):
        return tuple(x.tolist())
    return x


def _check_splits(splits: Splits, n: int) -> Splits:
    if not isinstance(splits, tuple) or len(splits) != 3:
        raise ConfigError(f"splits must be a Splits(train, val, test), got {type(splits).__name__}")
    parts = [np.asarray(s, np.int64).reshape(-1) for s in splits]
    allidx = np.concatenate(parts)
    if allidx.size != n or not np.array_equal(np.sort(allidx), np.arange(n)):
        raise InvalidValueError(
            f"splits must be disjoint and cover range({n}); got sizes {[len(p) for p in parts]} "
            f"with {allidx.size - np.unique(allidx).size} repeated index(es)"
        )
    return Splits(*(np.sort(p) for p in parts))


def _targets(
    targets: Mapping[str, TargetSpec] | None, meta: Mapping[str, list[Any]], rows: list[dict[str, Any]], n: int
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, spec in (targets or {}).items():
        if isinstance(spec, str):
            if spec not in meta:
                raise ConfigError(f"target {name!r}: no meta column {spec!r}; the columns are {sorted(meta)}")
            col = meta[spec]
            if any(v is None for v in col):
                missing = [i for i, v in enumerate(col) if v is None][:5]
                raise InvalidValueError(f"target {name!r}: meta column {spec!r} is missing for models {missing}")
            arr = np.asarray(col)
        elif callable(spec):
            arr = np.asarray([spec(r) for r in rows])
        else:
            arr = np.asarray(spec)
        if arr.ndim == 0 or arr.shape[0] != n:
            raise ShapeError(f"target {name!r} has shape {arr.shape}; expected [models={n}, ...]")
        if arr.dtype == object:
            raise InvalidValueError(
                f"target {name!r} is ragged or not numeric (dtype object); give an array "
                f"[models, ...] or a function returning fixed-shape values"
            )
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        out[name] = arr
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class WeightDataset:
    """Weight tensors of a population of models, per-model targets, and a split by model.

    Attributes:
        inputs: tensor name -> ``[models, *shape]`` float32.
        targets: target name -> ``[models, ...]``.
        ids: model ids (row-aligned).
        splits: :class:`Splits` of model indices.
        meta: the zoo's metadata columns, row-aligned.
        arch: the architecture of the models when known.

    Example:
        >>> import numpy as np
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Zoo
        >>> from weightspace.learn import WeightDataset
        >>> arch, rng = MLP(in_features=4, hidden=(8,), out_features=2), np.random.default_rng(0)
        >>> params = {k: rng.standard_normal((10, *s)).astype(np.float32) for k, s in arch.param_shapes().items()}
        >>> zoo = Zoo(arch, params, {"acc": [i / 10 for i in range(10)]})
        >>> ds = WeightDataset.from_zoo(zoo, targets={"acc": "acc"}, tensors=["layers.0.weight"])
        >>> len(ds), ds.inputs["layers.0.weight"].shape, [len(s) for s in ds.splits]
        (10, (10, 8, 4), [7, 2, 1])
        >>> x, y = ds.split("val")
        >>> x["layers.0.weight"].shape, y["acc"].shape
        ((2, 8, 4), (2,))
    """

    inputs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    ids: list[str]
    splits: Splits
    meta: dict[str, list[Any]]
    arch: Architecture | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not self.inputs:
            raise ShapeError("WeightDataset has no input tensors")
        for kind, d in (("input", self.inputs), ("target", self.targets)):
            for k, v in d.items():
                if np.ndim(v) == 0 or np.shape(v)[0] != n:
                    raise ShapeError(f"{kind} {k!r} has shape {np.shape(v)}; expected [models={n}, ...]")
        for k, col in self.meta.items():
            if len(col) != n:
                raise ShapeError(f"meta column {k!r} has {len(col)} rows for {n} models")
        object.__setattr__(self, "splits", _check_splits(self.splits, n))

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def from_zoo(
        cls,
        zoo: Zoo,
        *,
        targets: Mapping[str, TargetSpec] | None = None,
        tensors: Sequence[str] | None = None,
        splits: Splits | None = None,
        fractions: Sequence[float] = (0.7, 0.15, 0.15),
        seed: int = 0,
        group: str | None = None,
    ) -> WeightDataset:
        """A dataset of a zoo's tensors (all of them, or ``tensors``) and targets.

        Args:
            zoo: the population.
            targets: name -> a meta column name, an array ``[models, ...]``, or a function of one
                meta row (a dict).
            tensors: which parameter tensors to keep (default: all, sorted by name).
            splits: explicit splits; default :func:`split_models` with ``fractions``, ``seed`` and
                the ``group`` meta column.
            fractions: split fractions when ``splits`` is not given.
            seed: split seed.
            group: a meta column whose values group models (a group never straddles splits).
        """
        if not isinstance(zoo, Zoo):
            raise ConfigError(f"WeightDataset.from_zoo needs a Zoo, got {type(zoo).__name__}")
        names = sorted(zoo.params) if tensors is None else list(tensors)
        missing = [t for t in names if t not in zoo.params]
        if missing:
            raise ConfigError(f"zoo {zoo.name!r} has no tensors {missing}; it has {sorted(zoo.params)}")
        inputs = {t: np.asarray(zoo.params[t], np.float32) for t in names}
        n = len(zoo)
        rows = [zoo.row(i) for i in range(n)]
        return cls._build(inputs, targets, zoo.ids, dict(zoo.meta), rows, zoo.arch, splits, fractions, seed, group)

    @classmethod
    def from_files(
        cls,
        files: Sequence[PathLike],
        *,
        tensors: Sequence[str],
        targets: Mapping[str, TargetSpec] | None = None,
        splits: Splits | None = None,
        fractions: Sequence[float] = (0.7, 0.15, 0.15),
        seed: int = 0,
        group: str | None = None,
        workers: int = 16,
    ) -> WeightDataset:
        """A dataset reading ONLY ``tensors`` from per-model safetensors files (never whole models).

        Metadata rows come from each file's header (``meta``; ``id`` defaults to the file stem).

        Example:
            >>> import numpy as np, tempfile, pathlib
            >>> from weightspace.nets import MLP
            >>> from weightspace.zoo import Zoo, save_zoo
            >>> from weightspace.learn import WeightDataset
            >>> d = pathlib.Path(tempfile.mkdtemp())
            >>> arch, rng = MLP(in_features=4, hidden=(8,), out_features=2), np.random.default_rng(0)
            >>> params = {k: rng.standard_normal((4, *s)).astype(np.float32) for k, s in arch.param_shapes().items()}
            >>> _ = save_zoo(Zoo(arch, params, {"acc": [0.1, 0.2, 0.3, 0.4]}), d, format="directory")
            >>> ds = WeightDataset.from_files(sorted(d.glob("*.safetensors")), tensors=["layers.1.weight"],
            ...                               targets={"acc": "acc"})
            >>> ds.inputs["layers.1.weight"].shape, ds.targets["acc"].tolist()
            ((4, 2, 8), [0.1, 0.2, 0.3, 0.4])
        """
        from weightspace._safetensors import open_safetensors
        from weightspace.zoo import load_tensors

        paths = [Path(f) for f in files]
        if not paths:
            raise LoadError("WeightDataset.from_files: no files given")
        if not tensors:
            raise ConfigError("WeightDataset.from_files: name the tensors to read (tensors=[...])")
        raw = load_tensors(paths, list(tensors), workers=workers)
        rows: list[dict[str, Any]] = []
        for p in paths:
            h = open_safetensors(p)
            with h:
                header = h.metadata() or {}
            try:
                row = json.loads(header.get("meta", "{}"))
            except json.JSONDecodeError as e:
                raise LoadError(f"{p}: metadata header 'meta' is not valid JSON ({e})") from e
            if not isinstance(row, dict):
                raise LoadError(f"{p}: metadata header 'meta' must be a JSON object, got {type(row).__name__}")
            row.setdefault("id", p.stem)
            row["id"] = str(row["id"])
            rows.append(row)
        ids = [r["id"] for r in rows]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise InvalidValueError(f"WeightDataset.from_files: repeated model ids {dup}")
        keys = sorted({k for r in rows for k in r})
        meta = {k: [r.get(k) for r in rows] for k in keys}
        inputs = {k: np.asarray(v, np.float32) for k, v in raw.items()}
        return cls._build(inputs, targets, ids, meta, rows, None, splits, fractions, seed, group)

    @classmethod
    def _build(
        cls,
        inputs: dict[str, np.ndarray],
        targets: Mapping[str, TargetSpec] | None,
        ids: list[str],
        meta: dict[str, list[Any]],
        rows: list[dict[str, Any]],
        arch: Architecture | None,
        splits: Splits | None,
        fractions: Sequence[float],
        seed: int,
        group: str | None,
    ) -> WeightDataset:
        n = len(ids)
        tg = _targets(targets, meta, rows, n)
        if splits is None:
            groups = None
            if group is not None:
                if group not in meta:
                    raise ConfigError(f"group: no meta column {group!r}; the columns are {sorted(meta)}")
                groups = meta[group]
            splits = split_models(n, fractions=fractions, seed=seed, groups=groups)
        return cls(inputs, tg, list(ids), splits, {k: list(v) for k, v in meta.items()}, arch)

    # ---- views ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def _indices(self, which: str | np.ndarray | Sequence[int]) -> np.ndarray:
        if isinstance(which, str):
            if which not in _SPLIT_NAMES:
                raise InvalidValueError(f"unknown split {which!r}; use one of {_SPLIT_NAMES} or an index array")
            return getattr(self.splits, which)
        idx = np.asarray(which)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ShapeError(f"boolean mask has shape {idx.shape}, expected ({len(self)},)")
            return np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise InvalidValueError(f"model indices out of range for {len(self)} models: {idx.min()}..{idx.max()}")
        return idx % len(self)

    def subset(self, which: str | np.ndarray | Sequence[int]) -> WeightDataset:
        """The models of a split (``"train"``, ``"val"``, ``"test"``) or of an index array.

        The subset's splits are the original splits restricted to the chosen models.
        """
        idx = self._indices(which)
        if idx.size == 0:
            raise ShapeError(f"subset {which if isinstance(which, str) else 'of indices'} is empty")
        where = {int(m): i for i, m in enumerate(idx)}
        splits = Splits(*(np.array(sorted(where[int(m)] for m in s if int(m) in where), np.int64) for s in self.splits))
        if len(where) != len(idx):
            # Repeated indices: every copy counts as its own model, all in train.
            splits = Splits(np.arange(len(idx), dtype=np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
        return WeightDataset(
            {k: v[idx] for k, v in self.inputs.items()},
            {k: v[idx] for k, v in self.targets.items()},
            [self.ids[i] for i in idx.tolist()],
            splits,
            {k: [v[i] for i in idx.tolist()] for k, v in self.meta.items()},
            self.arch,
        )

    def split(self, name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``(inputs, targets)`` of one split (``"train"``, ``"val"`` or ``"test"``)."""
        idx = self._indices(name)
        return {k: v[idx] for k, v in self.inputs.items()}, {k: v[idx] for k, v in self.targets.items()}

    def check_finite(self) -> None:
        """Raise :class:`~weightspace.InvalidValueError` naming the models and tensors holding NaN/Inf.

        Example:
            >>> import numpy as np
            >>> from weightspace.learn import Splits, WeightDataset
            >>> w = np.zeros((3, 2), np.float32); w[1, 0] = np.nan
            >>> splits = Splits(np.array([0]), np.array([1]), np.array([2]))
            >>> ds = WeightDataset({"w": w}, {}, ["a", "b", "c"], splits, {})
            >>> ds.check_finite()
            Traceback (most recent call last):
            ...
            weightspace._errors.InvalidValueError: WeightDataset holds non-finite values: input 'w' of model 'b' ...
        """
        bad = []
        for kind, d in (("input", self.inputs), ("target", self.targets)):
            for k, v in d.items():
                v = np.asarray(v)
                if v.dtype.kind not in "fc":
                    continue
                per_model = (~np.isfinite(v.reshape(v.shape[0], -1))).sum(axis=1)
                for i in np.flatnonzero(per_model)[:5]:
                    bad.append(f"{kind} {k!r} of model {self.ids[i]!r} ({int(per_model[i])} NaN/Inf)")
        if bad:
            raise InvalidValueError("WeightDataset holds non-finite values: " + "; ".join(bad))

    def __repr__(self) -> str:
        return (
            f"WeightDataset(models={len(self)}, inputs={sorted(self.inputs)}, targets={sorted(self.targets)}, "
            f"splits={list(self.splits.sizes())})"
        )

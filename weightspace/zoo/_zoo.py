"""``Zoo`` (one architecture, params stacked on axis 0, metadata columns) and ``Collection``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from weightspace._errors import InvalidValueError, ShapeError, WeightspaceError
from weightspace.nets import Architecture, Params

StackedParams = dict[str, Any]
"""A zoo's parameters: PyTorch names -> ``[models, *shape]`` arrays, on the host (NumPy) or on a device."""

Index = int | slice | Sequence[int] | np.ndarray


def _as_columns(meta: Mapping[str, Sequence[Any]] | None, n: int, name: str) -> dict[str, list[Any]]:
    cols = {k: list(v) for k, v in (meta or {}).items()}
    for k, v in cols.items():
        if len(v) != n:
            raise ShapeError(f"metadata column {k!r} has {len(v)} rows, the zoo has {n} models")
    if "id" not in cols:
        cols["id"] = [f"{name}-{i:06d}" for i in range(n)]
    cols["id"] = [str(i) for i in cols["id"]]
    if len(set(cols["id"])) != n:
        dup = sorted({i for i in cols["id"] if cols["id"].count(i) > 1})[:5]
        raise InvalidValueError(f"model ids must be unique; repeated: {dup}")
    return cols


@dataclasses.dataclass(frozen=True, eq=False)
class Zoo:
    """A population of models of ONE architecture.

    Attributes:
        arch: the shared :class:`~weightspace.nets.Architecture`.
        params: ``name -> array [models, *shape]`` (PyTorch names and layouts).
        meta: per-model metadata columns (JSON-serialisable lists, one entry per model). ``id``
            is always present; ``classes`` (the class name of every output, or ``None``),
            accuracies and training hyper-parameters are filled by the recipes.
        name: a short name for the zoo.

    Example:
        >>> import jax
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Zoo
        >>> arch = MLP(in_features=4, hidden=(8,), out_features=2)
        >>> zoo = Zoo.init(arch, 3, key=jax.random.key(0))
        >>> len(zoo), zoo.params["layers.0.weight"].shape, zoo.ids
        (3, (3, 8, 4), ['zoo-000000', 'zoo-000001', 'zoo-000002'])
    """

    arch: Architecture
    params: StackedParams
    meta: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    name: str = "zoo"

    def __post_init__(self) -> None:
        if not isinstance(self.arch, Architecture):
            raise WeightspaceError(f"Zoo.arch must be an Architecture, got {type(self.arch).__name__}")
        sizes = {k: (v.shape[0] if np.ndim(v) else None) for k, v in self.params.items()}
        if not sizes:
            raise ShapeError(f"zoo {self.name!r} has no tensors")
        if len(set(sizes.values())) != 1:
            raise ShapeError(f"zoo {self.name!r}: tensors disagree on the number of models: {sizes}")
        n = next(iter(sizes.values()))
        if not n:
            raise ShapeError(f"zoo {self.name!r} is empty (0 models)")
        self.arch.check_params(self.params, stacked=True, where=f"zoo {self.name!r}")
        object.__setattr__(self, "meta", _as_columns(self.meta, n, self.name))
        self._check_classes()

    def _check_classes(self) -> None:
        """Each ``classes`` entry names at most one class per output: a longer list would label
        outputs with other outputs' names (a search would report wrong classes)."""
        col = self.meta.get("classes")
        if col is None:
            return
        n_out = self.arch.num_outputs
        for mid, c in zip(self.meta["id"], col, strict=True):
            if c is None:
                continue
            if not isinstance(c, list | tuple):
                raise ShapeError(f"zoo {self.name!r}: model {mid!r}: 'classes' must be a list of names, got {c!r:.60}")
            if len(c) > n_out:
                raise ShapeError(
                    f"zoo {self.name!r}: model {mid!r} lists {len(c)} class names for {n_out} outputs ({list(c)[:12]})"
                )

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def init(cls, arch: Architecture, n: int, *, key: jax.Array, scale: float = 1.0, name: str = "zoo") -> Zoo:
        """``n`` freshly initialised (untrained) models; model ``i`` uses ``fold_in(key, i)``."""
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
        params = jax.vmap(lambda k: arch.init(k, scale=scale))(keys)
        return cls(arch, params, {}, name)

    @classmethod
    def stack(
        cls,
        arch: Architecture,
        models: Sequence[Mapping[str, Any]],
        meta_rows: Sequence[Mapping[str, Any]] | None = None,
        *,
        name: str = "zoo",
    ) -> Zoo:
        """Stack per-model parameter dicts (and metadata rows) into a zoo."""
        if not models:
            raise ShapeError(f"cannot stack an empty list of models into zoo {name!r}")
        for i, m in enumerate(models):
            arch.check_params(m, where=f"model {i} of {name!r}")
        params = {k: np.stack([np.asarray(m[k]) for m in models]) for k in arch.param_shapes()}
        rows = list(meta_rows) if meta_rows is not None else [{} for _ in models]
        if len(rows) != len(models):
            raise ShapeError(f"{len(rows)} metadata rows for {len(models)} models")
        keys = sorted({k for r in rows for k in r})
        meta = {k: [r.get(k) for r in rows] for k in keys}
        return cls(arch, params, meta, name)

    # ---- views ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(next(iter(self.params.values())).shape[0])

    @property
    def ids(self) -> list[str]:
        return list(self.meta["id"])

    def row(self, i: int) -> dict[str, Any]:
        """Metadata of model ``i`` as a dict."""
        return {k: v[i] for k, v in self.meta.items()}

    def classes(self, i: int) -> list[str] | None:
        """Class name of every output of model ``i`` (``None`` when unknown)."""
        col = self.meta.get("classes")
        return None if col is None else col[i]

    def model(self, i: int) -> Params:
        """Parameters of model ``i`` (unstacked)."""
        return {k: v[i] for k, v in self.params.items()}

    def __iter__(self) -> Iterator[tuple[str, Params, dict[str, Any]]]:
        for i in range(len(self)):
            yield self.meta["id"][i], self.model(i), self.row(i)

    def index_of(self, model_id: str) -> int:
        try:
            return self.meta["id"].index(str(model_id))
        except ValueError:
            raise InvalidValueError(f"zoo {self.name!r} has no model with id {model_id!r}") from None

    def select(self, idx: Index) -> Zoo:
        """A sub-zoo (by position, slice, index array or boolean mask)."""
        n = len(self)
        pos = np.arange(n)[idx] if not isinstance(idx, int) else np.array([idx])
        pos = np.atleast_1d(pos)
        if pos.size == 0:
            raise ShapeError(f"selection from zoo {self.name!r} is empty")
        params = {k: v[pos] for k, v in self.params.items()}
        meta = {k: [v[i] for i in pos.tolist()] for k, v in self.meta.items()}
        return Zoo(self.arch, params, meta, self.name)

    def with_meta(self, **columns: Sequence[Any]) -> Zoo:
        """A copy with metadata columns added or replaced."""
        return Zoo(self.arch, self.params, {**self.meta, **{k: list(v) for k, v in columns.items()}}, self.name)

    def to_numpy(self) -> Zoo:
        """A copy whose params are host NumPy arrays."""
        return Zoo(self.arch, {k: np.asarray(v) for k, v in self.params.items()}, self.meta, self.name)

    def check_finite(self) -> None:
        """Raise :class:`InvalidValueError` naming every tensor and model holding NaN/Inf."""
        bad = []
        for k, v in self.params.items():
            v = np.asarray(v)
            nonfinite = ~np.isfinite(v.reshape(v.shape[0], -1))
            per_model = nonfinite.sum(axis=1)
            for i in np.nonzero(per_model)[0][:5]:
                bad.append(f"{k!r} of model {self.meta['id'][i]!r} ({int(per_model[i])} NaN/Inf)")
        if bad:
            raise InvalidValueError(f"zoo {self.name!r} holds non-finite weights: " + "; ".join(bad))

    def __repr__(self) -> str:
        cols = ", ".join(sorted(self.meta))
        return f"Zoo(name={self.name!r}, models={len(self)}, arch={self.arch!r}, meta=[{cols}])"


def concat(zoos: Sequence[Zoo], *, name: str | None = None) -> Zoo:
    """Concatenate zoos of the same architecture along the model axis.

    Metadata columns missing from some zoos are filled with ``None``.
    """
    if not zoos:
        raise ShapeError("concat needs at least one zoo")
    sig = zoos[0].arch.signature
    for z in zoos[1:]:
        if z.arch.signature != sig:
            raise ShapeError(
                f"cannot concat zoo {z.name!r} ({z.arch!r}) with {zoos[0].name!r} ({zoos[0].arch!r}): "
                "architectures differ; use a Collection"
            )
    params = {k: np.concatenate([np.asarray(z.params[k]) for z in zoos]) for k in zoos[0].params}
    keys = list(dict.fromkeys(k for z in zoos for k in z.meta))
    meta = {k: [x for z in zoos for x in z.meta.get(k, [None] * len(z))] for k in keys}
    return Zoo(zoos[0].arch, params, meta, name or zoos[0].name)


class Collection:
    """Zoos of several architectures, bucketed by architecture signature (a heterogeneous hub).

    Adding a zoo whose architecture is already present concatenates it into that bucket.

    Example:
        >>> import jax
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Collection, Zoo
        >>> a = Zoo.init(MLP(in_features=4, hidden=(8,), out_features=2), 2, key=jax.random.key(0), name="a")
        >>> b = Zoo.init(MLP(in_features=4, hidden=(16,), out_features=2), 3, key=jax.random.key(1), name="b")
        >>> c = Collection([a, b])
        >>> len(c), c.num_models
        (2, 5)
    """

    def __init__(self, zoos: Iterable[Zoo] = ()) -> None:
        self._buckets: dict[str, Zoo] = {}
        for z in zoos:
            self.add(z)

    def add(self, zoo: Zoo) -> None:
        sig = zoo.arch.signature
        if sig in self._buckets:
            prev = self._buckets[sig]
            self._check_ids(zoo, prev)
            self._buckets[sig] = concat([prev, zoo], name=prev.name)
        else:
            for other in self._buckets.values():
                self._check_ids(zoo, other)
            self._buckets[sig] = zoo

    @staticmethod
    def _check_ids(zoo: Zoo, other: Zoo) -> None:
        clash = set(other.ids) & set(zoo.ids)
        if clash:
            raise InvalidValueError(
                f"model ids {sorted(clash)[:5]} of zoo {zoo.name!r} are already in the collection (zoo "
                f"{other.name!r}): every model of a collection needs its own id (the same zoo given twice, "
                "or two folders with the same file names: give each once, or rename the files)"
            )

    def __iter__(self) -> Iterator[Zoo]:
        return iter(self._buckets.values())

    def __len__(self) -> int:
        return len(self._buckets)

    @property
    def zoos(self) -> list[Zoo]:
        return list(self._buckets.values())

    @property
    def num_models(self) -> int:
        return sum(len(z) for z in self._buckets.values())

    def find(self, model_id: str) -> tuple[Zoo, int]:
        """The zoo holding ``model_id`` and its position there."""
        for z in self._buckets.values():
            if model_id in z.meta["id"]:
                return z, z.meta["id"].index(model_id)
        raise InvalidValueError(f"no model with id {model_id!r} in the collection")

    def __repr__(self) -> str:
        return f"Collection({len(self)} architectures, {self.num_models} models)"


def meta_to_json(meta: Mapping[str, Any]) -> str:
    """Serialise metadata (NumPy scalars become Python numbers)."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"metadata value of type {type(o).__name__} is not JSON-serialisable")

    return json.dumps(meta, default=default)

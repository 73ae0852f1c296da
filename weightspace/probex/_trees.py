"""One expert per model tree, a router in front, and the per-layer sweep."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from weightspace._atomic import atomic_path
from weightspace._errors import ConfigError, InvalidValueError, LoadError
from weightspace.probex._experts import DEFAULT_CONFIG, DEFAULT_TRAIN, SWEEP_TRAIN, Expert, multi_hot, train_expert
from weightspace.probex._layers import lora_layer, matrix_layers, zoo_layer
from weightspace.probex._model import ProbeXConfig
from weightspace.probex._router import Router
from weightspace.train import TrainConfig

TREES_FORMAT = "probex-trees/1"


def zoo_targets(zoo: Any, class_names: Sequence[str], *, column: str = "classes") -> np.ndarray:
    """Multi-hot ``[models, classes]`` from a zoo's label column (a class name or a list of names per
    model; ``None`` entries, e.g. masked outputs, are skipped)."""
    if column not in zoo.meta:
        raise ConfigError(f"zoo {zoo.name!r} has no {column!r} column; columns: {sorted(zoo.meta)}")
    pos = {c: i for i, c in enumerate(class_names)}
    lists = []
    for i, row in enumerate(zoo.meta[column]):
        row = [row] if isinstance(row, str) else [c for c in (row or []) if c is not None]
        missing = [c for c in row if c not in pos]
        if missing:
            raise InvalidValueError(f"model {zoo.ids[i]}: classes {missing} are not among {list(class_names)}")
        lists.append([pos[c] for c in row])
    return multi_hot(lists, len(class_names))


def layers_of(zoo: Any) -> list[str]:
    """The layers ProbeX can read in a zoo (weight tensors of rank >= 2 per model)."""
    return matrix_layers({k: np.shape(v) for k, v in zoo.params.items()}, stacked=True)


def resolve_layers(trees: Mapping[str, Any], layer: str | Mapping[str, str]) -> dict[str, str]:
    """``tree -> layer`` from one name for all trees or a mapping; unknown names raise with the list."""
    out = {}
    for t, z in trees.items():
        name = layer if isinstance(layer, str) else layer.get(t)
        names = layers_of(z)
        if name is None:
            raise InvalidValueError(f"no layer given for tree {t!r}; its layers: {names}")
        if name not in names:
            raise InvalidValueError(f"tree {t!r} has no layer {name!r}; its layers: {names}")
        out[t] = name
    return out


@dataclasses.dataclass
class TreeExperts:
    """One :class:`Expert` per tree and the :class:`Router` that picks one for a new model.

    Example:
        >>> TreeExperts({}, None).trees
        []
    """

    experts: dict[str, Expert]
    router: Router | None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def trees(self) -> list[str]:
        return list(self.experts)

    @property
    def readout(self) -> str:
        readouts = {e.readout for e in self.experts.values()}
        if len(readouts) != 1:
            raise ConfigError(f"experts of different readouts: {sorted(readouts)}")
        return readouts.pop()

    def route(self, params: Mapping[str, Any], *, ids: Sequence[str] | None = None) -> list[str]:
        """The tree of every model (``name -> [models, ...]``); the only tree when there is one."""
        n = len(next(iter(params.values())))
        if self.router is None:
            if len(self.experts) != 1:
                raise ConfigError("several experts but no router")
            return [self.trees[0]] * n
        return self.router.route(params, ids=ids)

    def predict(
        self, params: Mapping[str, Any], ids: Sequence[str], *, class_names: Sequence[str] | None = None, top_k: int = 5
    ) -> list[dict[str, Any]]:
        """Route every model, read its expert's layer, and score classes.

        ``classes`` experts give sigmoid probabilities (a class is predicted when > 0.5);
        ``zero-shot`` experts give a softmax over ``class_names`` (default: the training and
        held-out classes) of the cosine logits, and the ``top_k`` classes.

        Returns:
            One dict per model: ``id, tree, predicted, scores`` (class -> score).
        """
        ids = list(ids)
        routes = self.route(params, ids=ids)
        out: list[dict[str, Any]] = [{} for _ in ids]
        for tree in sorted(set(routes)):
            idx = [i for i, r in enumerate(routes) if r == tree]
            e = self.experts[tree]
            if e.layer not in params:
                raise InvalidValueError(f"models {[ids[i] for i in idx][:4]} lack layer {e.layer!r} of tree {tree!r}")
            from weightspace.probex._layers import as_matrix, check_layer

            x = check_layer(as_matrix(np.asarray(params[e.layer])[idx]), [ids[i] for i in idx], layer=e.layer)
            if e.readout == "classes":
                names = e.classes
                p = 1.0 / (1.0 + np.exp(-e.scores(x, ids=[ids[i] for i in idx]).mean(0)))
                pred = [[names[j] for j in np.flatnonzero(row > 0.5)] for row in p]
            else:
                names = list(class_names) if class_names is not None else e.classes + list(e.info.get("held_out", []))
                s = e.scores(x, names, ids=[ids[i] for i in idx]).mean(0)
                s = np.exp(s - s.max(1, keepdims=True))
                p = s / s.sum(1, keepdims=True)
                pred = [[names[j] for j in np.argsort(-row)[:top_k]] for row in p]
            for k, i in enumerate(idx):
                out[i] = {
                    "id": ids[i],
                    "tree": tree,
                    "predicted": pred[k],
                    "scores": {n: round(float(v), 5) for n, v in zip(names, p[k], strict=True)},
                }
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``router.json``, ``trees.json`` and one expert directory per tree."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for t, e in self.experts.items():
            e.save(path / "experts" / _safe(t))
        if self.router is not None:
            with atomic_path(path / "router.json") as tmp:
                tmp.write_text(self.router.to_json())
        with atomic_path(path / "trees.json") as tmp:
            tmp.write_text(
                json.dumps(
                    {"weightspace": TREES_FORMAT, "trees": {t: _safe(t) for t in self.experts}, "info": self.info},
                    indent=1,
                    default=str,
                )
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, expect: Mapping[str, Any] | None = None) -> TreeExperts:
        path = Path(path)
        try:
            meta = json.loads((path / "trees.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise LoadError(f"{path}: not a ProbeX directory (trees.json unreadable: {e})") from e
        if meta.get("weightspace") != TREES_FORMAT:
            raise LoadError(f"{path}/trees.json: not ProbeX experts (format {meta.get('weightspace')!r})")
        experts = {t: Expert.load(path / "experts" / d, expect=expect) for t, d in meta["trees"].items()}
        router = Router.from_json((path / "router.json").read_text()) if (path / "router.json").exists() else None
        return cls(experts, router, meta.get("info", {}))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def train_trees(
    trees: Mapping[str, Any],
    *,
    layer: str | Mapping[str, str],
    class_names: Sequence[str],
    config: ProbeXConfig = DEFAULT_CONFIG,
    held_out: Sequence[str] = (),
    members: int = 1,
    train_config: TrainConfig = DEFAULT_TRAIN,
    split_seed: int = 0,
    progress: bool | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    mesh: Any | None = None,
) -> tuple[TreeExperts, dict[str, Any]]:
    """Train one expert per tree (train split of :func:`weightspace.learn.split_models`, seed
    ``split_seed``) with the method ``config`` (:class:`ProbeXConfig`: widths and readout) and fit
    a router on the training models of every tree.

    Returns:
        ``(experts, splits)`` with ``splits[tree]`` the :class:`weightspace.learn.Splits`.
    """
    from weightspace.learn import split_models

    layers = resolve_layers(trees, layer)
    experts, splits = {}, {}
    for t, zoo in trees.items():
        x = zoo_layer(zoo, layers[t])
        y = zoo_targets(zoo, class_names)
        sp = split_models(len(zoo), seed=split_seed)
        splits[t] = sp
        ck = None if checkpoint_dir is None else Path(checkpoint_dir) / _safe(t)
        experts[t], _ = train_expert(
            x,
            y,
            class_names=class_names,
            train_idx=sp.train,
            val_idx=sp.val,
            config=config,
            layer=layers[t],
            tree=t,
            members=members,
            held_out=held_out,
            train_config=train_config,
            progress=progress,
            checkpoint_dir=ck,
            mesh=mesh,
        )
    router = None
    if len(trees) > 1:
        router = Router.fit(
            {t: {k: np.asarray(v)[splits[t].train] for k, v in z.params.items()} for t, z in trees.items()}
        )
    info = {"layers": layers, "readout": config.readout, "held_out": list(held_out)}
    return TreeExperts(experts, router, info), splits


def layer_sweep(
    zoo: Any,
    *,
    class_names: Sequence[str],
    layers: Sequence[str] | None = None,
    members: int = 1,
    config: ProbeXConfig = DEFAULT_CONFIG,
    train_config: TrainConfig = SWEEP_TRAIN,
    split_seed: int = 0,
    targets: np.ndarray | None = None,
    progress: bool | None = None,
    mesh: Any | None = None,
) -> list[dict[str, Any]]:
    """Train one small ``classes`` expert per layer (``members`` seeds in one vmapped program each,
    the widths of ``config``; its readout is taken as ``classes``) and score it; the best layer is
    picked on the VALIDATION split, never on test. ``mesh`` shards every expert's batches over a
    device mesh (:func:`weightspace.parallel.make_mesh`).

    ``zoo`` is a :class:`~weightspace.zoo.Zoo` (layers: its weight matrices) or a
    :class:`weightspace.lora.LoRAZoo` (layers: its adapted weights, read as ``scale * B @ A``).
    ``targets`` (``[models, classes]`` multi-hot) replaces the zoo's ``classes`` column.

    Returns:
        One row per layer: ``layer, shape, val_map, test_map, test_exact, best`` (``best`` marks
        the layer with the highest ``val_map``).
    """
    from weightspace.learn import exact_set_accuracy, mean_average_precision, split_models

    lora = hasattr(zoo, "adapter")
    available = list(zoo.adapter) if lora else layers_of(zoo)
    read = lora_layer if lora else zoo_layer
    names = available if layers is None else list(layers)
    bad = [n for n in names if n not in available]
    if bad or not names:
        raise InvalidValueError(f"zoo {getattr(zoo, 'name', '')!r} has no layer(s) {bad}; its layers: {available}")
    y = zoo_targets(zoo, class_names) if targets is None else np.asarray(targets, np.float32)
    sp = split_models(len(y), seed=split_seed)
    rows = []
    for name in names:
        x = read(zoo, name)
        e, _ = train_expert(
            x,
            y,
            class_names=class_names,
            train_idx=sp.train,
            val_idx=sp.val,
            layer=name,
            members=members,
            config=config.replace(readout="classes"),
            train_config=train_config,
            progress=progress,
            mesh=mesh,
        )
        sv, st = e.scores(x[sp.val]), e.scores(x[sp.test])
        rows.append(
            {
                "layer": name,
                "shape": list(x.shape[1:]),
                "val_map": float(np.mean([mean_average_precision(s, y[sp.val]) for s in sv])),
                "test_map": float(np.mean([mean_average_precision(s, y[sp.test]) for s in st])),
                "test_exact": float(np.mean([exact_set_accuracy(s, y[sp.test]) for s in st])),
            }
        )
    best = int(np.argmax([r["val_map"] for r in rows]))
    for i, r in enumerate(rows):
        r["best"] = i == best
    return rows

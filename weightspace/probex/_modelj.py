"""Model-J layout: one safetensors file per model (hyper-parameters and labels in the file metadata),
a directory per subset (optionally ``train/``, ``val/``, ``test/`` inside); LoRA subsets as one file
holding many LoRAs. Readers touch only the requested layer (safetensors seeks to its bytes).

Per-model file (``<root>/<subset>/[<split>/]<model id>/model.safetensors`` or ``<id>.safetensors``):
tensors under their own names; string metadata ``dataset_chosen_targets`` (the label list, a Python
or JSON list literal, as Model-J writes it) and any hyper-parameters (``lr``, ``epochs``, ...).

LoRA subset file (``<root>/<subset>.safetensors``): for each adapted layer ``L`` the stacked
factors ``L.A`` ``[loras, r, d_in]`` and ``L.B`` ``[loras, d_out, r]``; metadata ``ids``,
``labels`` and ``hparams`` are JSON lists with one entry per LoRA, ``alpha`` optional (JSON list
or number; the layer is ``alpha / r * B @ A``, ``B @ A`` without it).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from weightspace._errors import InvalidValueError, LoadError, ShapeError
from weightspace._safetensors import write_safetensors

LABEL_KEY = "dataset_chosen_targets"
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class LayerSet:
    """One layer of many models plus their labels: what ProbeX trains on.

    Attributes:
        x: ``[models, d_H, d_W]`` float32.
        ids: model ids.
        labels: each model's label list (class names).
        hparams: each model's other metadata (strings parsed as JSON where possible).
        split: each model's split (``train``/``val``/``test``) or ``None`` when the layout has none.
        layer: the layer name.
    """

    x: np.ndarray
    ids: list[str]
    labels: list[list[str]]
    hparams: list[dict[str, Any]]
    split: list[str | None]
    layer: str

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def classes(self) -> list[str]:
        """Every label that occurs, sorted."""
        return sorted({c for cl in self.labels for c in cl})

    def targets(self, classes: Sequence[str] | None = None) -> np.ndarray:
        """Multi-hot ``[models, classes]`` (default :attr:`classes`)."""
        classes = list(classes) if classes is not None else self.classes
        pos = {c: i for i, c in enumerate(classes)}
        y = np.zeros((len(self), len(classes)), np.float32)
        for m, cl in enumerate(self.labels):
            for c in cl:
                if c in pos:
                    y[m, pos[c]] = 1.0
        return y

    def split_indices(self) -> dict[str, np.ndarray]:
        """``split -> model indices`` from the layout's ``train/val/test`` directories."""
        return {s: np.flatnonzero(np.array([v == s for v in self.split])) for s in SPLITS}


def _parse_labels(raw: str | None, where: str) -> list[str]:
    if raw is None:
        raise LoadError(f"{where}: no {LABEL_KEY!r} in the file metadata")
    try:
        val = json.loads(raw)
    except json.JSONDecodeError:
        try:
            val = ast.literal_eval(raw)  # Model-J writes Python list reprs; literal_eval never runs code
        except (ValueError, SyntaxError) as e:
            raise LoadError(f"{where}: {LABEL_KEY!r} is neither JSON nor a Python literal: {raw[:60]!r}") from e
    if isinstance(val, str | int):
        val = [val]
    if not isinstance(val, list | tuple):
        raise LoadError(f"{where}: {LABEL_KEY!r} must be a list of labels, got {type(val).__name__}")
    return [str(v) for v in val]


def _parse_value(v: str) -> Any:
    try:
        return json.loads(v)
    except (json.JSONDecodeError, TypeError):
        return v


def write_modelj(
    zoo: Any,
    root: str | os.PathLike[str],
    *,
    splits: Mapping[str, Sequence[int]] | None = None,
    label_column: str = "classes",
    per_model_dir: bool = True,
) -> list[Path]:
    """Write a :class:`~weightspace.zoo.Zoo` in the Model-J discriminative layout (one file per model).

    Args:
        zoo: the zoo; ``meta[label_column]`` gives each model's labels (``None`` entries dropped).
        root: the subset directory.
        splits: ``split name -> model indices`` (files go to ``root/<split>/``); ``None``: flat.
        label_column: the meta column holding the labels.
        per_model_dir: ``<id>/model.safetensors`` (as Hugging Face repos) or ``<id>.safetensors``.

    Returns:
        The written files.
    """
    root = Path(root)
    where_split: dict[int, str] = {}
    for s, idx in (splits or {}).items():
        if s not in SPLITS:
            raise InvalidValueError(f"unknown split {s!r}; Model-J splits are {SPLITS}")
        where_split.update({int(i): s for i in idx})
    host = {k: np.asarray(v) for k, v in zoo.params.items()}
    out = []
    for i, mid in enumerate(zoo.ids):
        row = zoo.row(i)
        labels = [str(c) for c in (row.get(label_column) or []) if c is not None]
        meta = {LABEL_KEY: repr(labels), "id": mid}
        for k, v in row.items():
            if k not in (label_column, "id"):
                meta[k] = json.dumps(v, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
        d = root / where_split[i] if i in where_split else root
        path = d / mid / "model.safetensors" if per_model_dir else d / f"{mid}.safetensors"
        write_safetensors(path, {k: v[i] for k, v in host.items()}, meta)
        out.append(path)
    return out


def load_modelj(root: str | os.PathLike[str], *, layer: str, workers: int = 16) -> LayerSet:
    """Read one layer of every model of a Model-J subset directory (lazily: only that tensor).

    Raises:
        LoadError: no model files, missing label metadata. InvalidValueError: unknown layer (lists
        the layers that exist) or NaN/Inf (names the models). ShapeError: shapes differ across
        models (names the models per shape).
    """
    from weightspace.probex._layers import file_layer

    root = Path(root)
    files = sorted(p for p in root.rglob("*.safetensors") if not any(part.startswith(".") for part in p.parts))
    if not files:
        raise LoadError(f"{root}: no .safetensors model files")
    x, ids, metas = file_layer(files, layer, workers=workers)
    labels, hparams, split = [], [], []
    for f, m in zip(files, metas, strict=True):
        labels.append(_parse_labels(m.get(LABEL_KEY), str(f)))
        hparams.append({k: _parse_value(v) for k, v in m.items() if k not in (LABEL_KEY, "id")})
        rel = f.relative_to(root).parts
        split.append(next((p for p in rel[:-1] if p in SPLITS), None))
    if "id" in metas[0]:
        ids = [m.get("id", i) for m, i in zip(metas, ids, strict=True)]
    return LayerSet(x, ids, labels, hparams, split, layer)


def write_lora_subset(
    path: str | os.PathLike[str],
    adapters: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    ids: Sequence[str],
    labels: Sequence[Sequence[str] | str],
    hparams: Sequence[Mapping[str, Any]] | None = None,
    alpha: Sequence[float] | float | None = None,
) -> Path:
    """Write many LoRAs as ONE safetensors file (the Model-J generative-subset layout above).

    Args:
        adapters: layer name -> ``(A [loras, r, d_in], B [loras, d_out, r])``.
        ids, labels, hparams: one entry per LoRA.
        alpha: LoRA alpha per LoRA (or shared); ``None``: the layer is ``B @ A``.
    """
    n = len(ids)
    tensors = {}
    for name, (a, b) in adapters.items():
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        if a.ndim != 3 or b.ndim != 3 or a.shape[0] != n or b.shape[0] != n or a.shape[1] != b.shape[2]:
            raise ShapeError(f"LoRA {name!r}: A {a.shape} and B {b.shape} must be [{n}, r, d_in] and [{n}, d_out, r]")
        tensors[f"{name}.A"], tensors[f"{name}.B"] = a, b
    labels = [[lab] if isinstance(lab, str) else list(lab) for lab in labels]
    if len(labels) != n or (hparams is not None and len(hparams) != n):
        raise ShapeError(f"need one label list (and hparams) per LoRA ({n})")
    meta = {
        "ids": json.dumps(list(ids)),
        "labels": json.dumps(labels),
        "hparams": json.dumps([dict(h) for h in hparams] if hparams is not None else [{}] * n),
    }
    if alpha is not None:
        meta["alpha"] = json.dumps(np.asarray(alpha, float).tolist())
    path = Path(path)
    write_safetensors(path, tensors, meta)
    return path


def load_lora_subset(path: str | os.PathLike[str], *, layer: str) -> LayerSet:
    """Read one adapted layer (``alpha / r * B @ A``) of every LoRA of a LoRA subset file (lazily)."""
    from safetensors import safe_open

    from weightspace.probex._layers import check_layer

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as h:
            keys = set(h.keys())
            layers = sorted(k[:-2] for k in keys if k.endswith(".A") and f"{k[:-2]}.B" in keys)
            if layer not in layers:
                raise InvalidValueError(f"{path}: no LoRA layer {layer!r}; layers: {layers}")
            a, b = h.get_tensor(f"{layer}.A"), h.get_tensor(f"{layer}.B")
            meta = dict(h.metadata() or {})
    except (OSError, ValueError) as e:
        if isinstance(e, InvalidValueError):
            raise
        raise LoadError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        ids = [str(i) for i in json.loads(meta["ids"])]
        labels = [[str(c) for c in ([v] if isinstance(v, str) else v)] for v in json.loads(meta["labels"])]
        hparams = json.loads(meta.get("hparams", "null")) or [{}] * len(ids)
    except (KeyError, json.JSONDecodeError) as e:
        raise LoadError(f"{path}: LoRA subset metadata needs JSON 'ids' and 'labels' ({e})") from e
    if not (len(ids) == len(labels) == a.shape[0] == b.shape[0]):
        raise ShapeError(
            f"{path}: {a.shape[0]} LoRAs in {layer}.A, {b.shape[0]} in .B, {len(ids)} ids, {len(labels)} label lists"
        )
    x = b.astype(np.float32) @ a.astype(np.float32)
    if "alpha" in meta:
        alpha = np.broadcast_to(np.asarray(json.loads(meta["alpha"]), np.float32), (len(ids),))
        x = x * (alpha / a.shape[1]).reshape(-1, 1, 1)
    x = check_layer(x, ids, layer=layer, where=str(path))
    return LayerSet(x, ids, labels, list(hparams), [None] * len(ids), layer)

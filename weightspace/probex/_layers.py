"""One layer of many models as a stack of matrices ``[models, d_H, d_W]``, read lazily and checked."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from weightspace._errors import InvalidValueError, LoadError, ShapeError


def as_matrix(w: np.ndarray, *, stacked: bool = True) -> np.ndarray:
    """A weight tensor as a matrix ``[d_H, d_W]`` (or a stack ``[models, d_H, d_W]``).

    Linear ``[out, in]`` stays; a conv kernel ``[out, in, kh, kw]`` becomes ``[out, in*kh*kw]``;
    anything else of rank >= 2 keeps its first axis and flattens the rest.

    Example:
        >>> as_matrix(np.zeros((5, 16, 8, 3, 3))).shape
        (5, 16, 72)
    """
    w = np.asarray(w)
    lead = 1 if stacked else 0
    if w.ndim - lead < 2:
        raise ShapeError(f"a layer must have at least 2 axes per model, got shape {w.shape[lead:]}")
    return w.reshape(*w.shape[: lead + 1], -1)


def matrix_layers(shapes: Mapping[str, Sequence[int]], *, stacked: bool = False) -> list[str]:
    """The tensors that ProbeX can read (rank >= 2 per model), in their order.

    Example:
        >>> matrix_layers({"layers.0.weight": (8, 4), "layers.0.bias": (8,)})
        ['layers.0.weight']
    """
    lead = 1 if stacked else 0
    return [k for k, s in shapes.items() if len(s) - lead >= 2]


def check_layer(
    x: np.ndarray, ids: Sequence[str], *, layer: str, expect: tuple[int, int] | None = None, where: str = ""
) -> np.ndarray:
    """Check a stack ``[models, d_H, d_W]``: finite, float, the expected shape. Returns float32.

    Raises:
        InvalidValueError: NaN/Inf (names the models and their count of bad values).
        ShapeError: shape differs from ``expect`` (e.g. a checkpoint trained on another layer shape).
    """
    where = f"{where}: " if where else ""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ShapeError(f"{where}layer {layer!r} has dtype {x.dtype}, expected floats")
    if x.ndim != 3:
        raise ShapeError(f"{where}layer {layer!r} must stack to [models, d_H, d_W], got shape {x.shape}")
    if expect is not None and tuple(x.shape[1:]) != tuple(expect):
        raise ShapeError(f"{where}layer {layer!r} is {list(x.shape[1:])} per model, the expert expects {list(expect)}")
    bad = ~np.isfinite(x).reshape(len(x), -1)
    if bad.any():
        rows = np.flatnonzero(bad.any(1))
        desc = ", ".join(f"{ids[i]} ({int(bad[i].sum())} NaN/Inf)" for i in rows[:8])
        raise InvalidValueError(
            f"{where}layer {layer!r} holds NaN/Inf in {len(rows)} model(s): {desc}" + (" ..." if len(rows) > 8 else "")
        )
    return x.astype(np.float32, copy=False)


def _unknown(layer: str, names: Sequence[str], where: str) -> InvalidValueError:
    return InvalidValueError(f"{where}: no layer {layer!r}; layers ProbeX can read: {list(names)}")


def zoo_layer(zoo: Any, layer: str) -> Float[np.ndarray, "models d_h d_w"]:
    """The layer ``layer`` of every model of an in-memory :class:`~weightspace.zoo.Zoo` (checked).

    Example:
        >>> import jax
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import Zoo
        >>> zoo = Zoo.init(MLP(in_features=4, hidden=(8,), out_features=2), 3, key=jax.random.key(0))
        >>> zoo_layer(zoo, "layers.0.weight").shape
        (3, 8, 4)
    """
    names = matrix_layers({k: np.shape(v) for k, v in zoo.params.items()}, stacked=True)
    if layer not in names:
        raise _unknown(layer, names, f"zoo {zoo.name!r}")
    return check_layer(as_matrix(np.asarray(zoo.params[layer])), zoo.ids, layer=layer, where=f"zoo {zoo.name!r}")


def lora_layer(lora_zoo: Any, layer: str) -> Float[np.ndarray, "models d_h d_w"]:
    """``scale * B @ A`` of one adapted weight of a :class:`weightspace.lora.LoRAZoo` (``[models, out, in]``)."""
    names = list(lora_zoo.adapter)
    if layer not in names:
        raise _unknown(layer, names, f"LoRA zoo {lora_zoo.name!r}")
    lo = lora_zoo.adapter[layer]
    a, b = np.asarray(lo.A, np.float32), np.asarray(lo.B, np.float32)
    scale = np.asarray(lo.alpha, np.float32).reshape(-1, 1, 1) / a.shape[1]
    return check_layer(scale * (b @ a), lora_zoo.meta["id"], layer=layer, where=f"LoRA zoo {lora_zoo.name!r}")


def file_layer(
    files: Sequence[str | os.PathLike[str]], layer: str, *, workers: int = 16
) -> tuple[np.ndarray, list[str], list[dict[str, Any]]]:
    """Read ONE tensor from many per-model safetensors files (never whole models): ``(x, ids, metas)``.

    Files whose layer shapes differ raise a :class:`~weightspace.ShapeError` naming the models and
    their shapes, grouped by shape (route them to different experts, or drop some).
    """
    from safetensors import safe_open

    from weightspace.zoo import load_tensors

    files = [Path(f) for f in files]
    if not files:
        raise LoadError("no model files given")
    shapes, metas = {}, []
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as h:
                keys = list(h.keys())
                if layer not in keys:
                    mats = [k for k in keys if len(h.get_slice(k).get_shape()) >= 2]
                    raise _unknown(layer, mats, str(f))
                shapes[f] = tuple(h.get_slice(layer).get_shape())
                metas.append(dict(h.metadata() or {}))
        except (OSError, ValueError) as e:
            if isinstance(e, InvalidValueError):
                raise
            raise LoadError(f"{f}: not a readable safetensors file ({e})") from e
    ids = [_model_id(Path(f), m) for f, m in zip(files, metas, strict=True)]
    groups: dict[tuple[int, ...], list[str]] = {}
    for f, i in zip(files, ids, strict=True):
        groups.setdefault(shapes[f], []).append(i)
    if len(groups) > 1:
        desc = "; ".join(f"{list(s)}: {g[:4]}{' ...' if len(g) > 4 else ''} ({len(g)})" for s, g in groups.items())
        raise ShapeError(
            f"layer {layer!r} has different shapes across models ({desc}); "
            "train one expert per shape (route them) or select models of one shape"
        )
    x = load_tensors(files, [layer], workers=workers)[layer]
    return check_layer(as_matrix(x), ids, layer=layer), ids, metas


def _model_id(f: Path, meta: Mapping[str, str]) -> str:
    if "meta" in meta:
        try:
            row = json.loads(meta["meta"])
            if isinstance(row, dict) and "id" in row:
                return str(row["id"])
        except json.JSONDecodeError:
            pass
    return f.parent.name if f.stem == "model" else f.stem

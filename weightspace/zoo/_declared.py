"""What a downloaded model's files say about its architecture, read before anything is inferred.

The order (docs/search.md, "Index a hub you downloaded"):

1. weightspace's own header (``arch``) — handled by :func:`weightspace.zoo.load_model`;
2. a Hugging Face-style ``config.json`` next to the weights (then ``preprocessor_config.json``);
3. the safetensors metadata of the file itself;
4. only then the tensor names and shapes; what they cannot say (the activation, a CNN's image
   size and stride) is guessed with a :class:`~weightspace.GuessWarning` naming the file, or
   refused with ``strict=True``.

Declarations must agree with each other and with the tensors; a contradiction is a
:class:`~weightspace.ConfigError` naming both sides.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightspace._errors import ConfigError, LoadError, ShapeError
from weightspace.nets import ACTIVATIONS, CNN, MLP, Architecture

CONFIG_FILES = ("config.json", "preprocessor_config.json")
"""Files next to the weights that are read, in this order, after weightspace's own header."""

ACTIVATION_KEYS = ("hidden_act", "activation", "activation_function", "hidden_activation")
CLASS_KEYS = ("id2label", "label2id", "classes", "class_names")
_ACT_ALIASES = {
    "swish": "silu",
    "linear": "identity",
    "none": "identity",
    "leakyrelu": "leaky_relu",
    "gelu_pytorch": "gelu",
    "relu6": None,
}


@dataclasses.dataclass
class Declared:
    """Facts declared about one model: ``name -> (value, source)`` (source: file and key)."""

    facts: dict[str, tuple[Any, str]] = dataclasses.field(default_factory=dict)

    def get(self, name: str) -> Any:
        return self.facts[name][0] if name in self.facts else None

    def source(self, name: str) -> str:
        return self.facts[name][1]

    def merge(self, other: Declared) -> None:
        """Add ``other``'s facts (read later); the same fact declared twice must agree."""
        for k, (v, src) in other.facts.items():
            if k in self.facts and self.facts[k][0] != v:
                raise ConfigError(f"{self.facts[k][1]} says {k}={self.facts[k][0]!r} but {src} says {k}={v!r}")
            self.facts.setdefault(k, (v, src))


def _activation(v: Any, where: str) -> str:
    name = str(v).strip().lower().replace("-", "_")
    name = _ACT_ALIASES.get(name, name)  # type: ignore[assignment]
    if name not in ACTIVATIONS:
        raise ConfigError(f"{where}: unknown activation {v!r}; known: {sorted(ACTIVATIONS)}")
    return name


def _classes(key: str, v: Any, where: str) -> list[str]:
    if key == "id2label" and isinstance(v, Mapping):
        try:
            idx = {int(k): str(name) for k, name in v.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: id2label keys must be integers, found {sorted(v)[:5]}") from None
    elif key == "label2id" and isinstance(v, Mapping):
        try:
            idx = {int(i): str(name) for name, i in v.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: label2id values must be integers") from None
    elif isinstance(v, list | tuple) and all(isinstance(x, str) for x in v):
        idx = dict(enumerate(v))
    else:
        want = "a mapping" if key in ("id2label", "label2id") else "a list of names"
        raise ConfigError(f"{where}: {key} must be {want}, found {type(v).__name__}")
    if sorted(idx) != list(range(len(idx))):
        raise ConfigError(f"{where}: {key} must number the classes 0..{len(idx) - 1}, found ids {sorted(idx)[:10]}")
    return [idx[i] for i in range(len(idx))]


def _scalar_stat(key: str, v: Any, where: str) -> float:
    vals = list(v) if isinstance(v, list | tuple) else [v]
    try:
        vals = [float(x) for x in vals]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be a number or a list of numbers, found {v!r}") from None
    if not vals or any(x != vals[0] for x in vals):
        raise ConfigError(
            f"{where}: {key}={v!r} differs per channel; weightspace architectures normalise with one "
            "global mean/std (pass arch= with your own input normalisation)"
        )
    if key.endswith("std") and vals[0] <= 0:
        raise ConfigError(f"{where}: {key} must be positive, found {v!r}")
    return vals[0]


def _int(key: str, v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(f"{where}: {key} must be a non-negative integer, found {v!r}")
    return v


def _bool(key: str, v: Any, where: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise ConfigError(f"{where}: {key} must be true or false, found {v!r}")


def declared_from(raw: Mapping[str, Any], where: str, *, strings: bool = False) -> Declared:
    """Facts from a config dict (``strings``: safetensors metadata, whose values are JSON or text)."""

    def val(k: str) -> Any:
        v = raw[k]
        if strings and isinstance(v, str):
            try:
                return json.loads(v)
            except json.JSONDecodeError:
                return v
        return v

    d = Declared()

    def put(name: str, value: Any, key: str) -> None:
        d.facts[name] = (value, f"{where} ({key})")

    for k in ACTIVATION_KEYS:
        if k in raw:
            put("activation", _activation(val(k), f"{where} ({k})"), k)
            break
    for k in CLASS_KEYS:
        if k in raw:
            put("classes", _classes(k, val(k), f"{where} ({k})"), k)
            break
    if "hidden_sizes" in raw:
        v = val("hidden_sizes")
        if not isinstance(v, list | tuple) or not all(isinstance(x, int) and x > 0 for x in v):
            raise ConfigError(f"{where}: hidden_sizes must be a list of positive integers, found {v!r}")
        put("hidden_sizes", tuple(v), "hidden_sizes")
    if "num_labels" in raw:
        put("num_labels", _int("num_labels", val("num_labels"), where), "num_labels")
    if "model_type" in raw:
        mt = str(val("model_type")).lower()
        if mt in ("mlp", "cnn"):
            put("model_type", mt, "model_type")
    if "image_size" in raw:
        v = val("image_size")
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            hw = (v, v)
        elif isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v):
            hw = (int(v[0]), int(v[1]))
        elif isinstance(v, Mapping) and {"height", "width"} <= set(v):  # HF preprocessor "size" style
            hw = (int(v["height"]), int(v["width"]))
        else:
            raise ConfigError(f"{where}: image_size must be an int or [height, width], found {v!r}")
        put("image_size", hw, "image_size")
    if "num_channels" in raw:
        put("num_channels", _int("num_channels", val("num_channels"), where), "num_channels")
    normalize = _bool("do_normalize", val("do_normalize"), where) if "do_normalize" in raw else True
    for mk, sk in (("input_mean", "input_std"), ("image_mean", "image_std")):
        if normalize and (mk in raw or sk in raw):
            if mk in raw:
                put("input_mean", _scalar_stat(mk, val(mk), where), mk)
            if sk in raw:
                put("input_std", _scalar_stat(sk, val(sk), where), sk)
            break
    if "per_image_standardization" in raw:
        put(
            "per_image_standardization",
            _bool("per_image_standardization", val("per_image_standardization"), where),
            "per_image_standardization",
        )
    for k, name in (
        ("kernel_size", "kernel_size"),
        ("stride", "strides"),
        ("strides", "strides"),
        ("padding", "padding"),
    ):
        if k in raw:
            put(name, _int(k, val(k), where), k)
    return d


def read_config_files(directory: Path, cache: dict[Path, Declared] | None = None) -> Declared:
    """The facts of ``config.json`` then ``preprocessor_config.json`` in ``directory`` (cached per dir)."""
    if cache is not None and directory in cache:
        return cache[directory]
    d = Declared()
    for name in CONFIG_FILES:
        f = directory / name
        if not f.is_file():
            continue
        try:
            raw = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LoadError(f"{f}: not a readable JSON config ({e})") from e
        if not isinstance(raw, Mapping):
            raise LoadError(f"{f}: a config must be a JSON object, found {type(raw).__name__}")
        d.merge(declared_from(raw, str(f)))
    if cache is not None:
        cache[directory] = d
    return d


def _indices(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> list[int]:
    pat = re.compile(rf"{re.escape(prefix)}\.(\d+)\.weight$")
    return sorted({int(m.group(1)) for k in shapes if (m := pat.match(k))})


def _contradiction(decl: Declared, name: str, value: Any, tensors: str, where: str) -> ConfigError:
    return ConfigError(
        f"{where}: {decl.source(name)} says {name}={decl.get(name)!r}, but the tensors say {value!r} ({tensors})"
    )


def architecture_from_files(
    shapes: Mapping[str, tuple[int, ...]],
    decl: Declared,
    *,
    where: str,
    activation: str | None = None,
) -> tuple[Architecture, list[str]]:
    """An MLP or CNN from tensor shapes and declared facts: ``(arch, what was guessed)``.

    Raises:
        ConfigError: a declaration contradicts the tensors (naming both), an ``activation``
            override contradicts a declared one, or the tensors are not an MLP/CNN state_dict.
        ShapeError: the layers do not chain (``layers.1.weight`` does not take ``layers.0``'s output).
    """
    layers, convs = _indices(shapes, "layers"), _indices(shapes, "convs")
    guessed: list[str] = []
    if activation is not None:
        activation = _activation(activation, f"{where}: activation override")
        if decl.get("activation") is not None and decl.get("activation") != activation:
            raise ConfigError(
                f"{where}: activation={activation!r} was asked for, but {decl.source('activation')} "
                f"says {decl.get('activation')!r}"
            )
    act = decl.get("activation") or activation
    if act is None:
        act = "relu"
        guessed.append("the activation (assumed relu)")
    if layers and not convs and layers == list(range(len(layers))):
        kind = "mlp"
    elif convs and convs == list(range(len(convs))) and "head.weight" in shapes:
        kind = "cnn"
    else:
        raise ConfigError(
            f"{where}: cannot infer an architecture from tensors {sorted(shapes)[:8]}... (expected an "
            "MLP `layers.{i}.weight` or a CNN `convs.{i}.weight` + `head.weight` state_dict); pass arch="
        )
    if decl.get("model_type") not in (None, kind):
        raise _contradiction(decl, "model_type", kind, "tensor names", where)
    classes = decl.get("classes")
    extra: dict[str, Any] = {}
    for fact in ("input_mean", "input_std", "per_image_standardization"):
        if decl.get(fact) is not None:
            extra[fact] = decl.get(fact)
    if kind == "mlp":
        ws = [tuple(shapes[f"layers.{i}.weight"]) for i in layers]
        for i, w in enumerate(ws):
            if len(w) != 2:
                raise ShapeError(f"{where}: tensor 'layers.{i}.weight' has shape {w}, expected [out, in]")
            if i and w[1] != ws[i - 1][0]:
                raise ShapeError(
                    f"{where}: tensor 'layers.{i}.weight' {w} does not take the {ws[i - 1][0]} outputs "
                    f"of 'layers.{i - 1}.weight' {ws[i - 1]}"
                )
        in_f, hidden, out = ws[0][1], tuple(w[0] for w in ws[:-1]), ws[-1][0]
        desc = ", ".join(f"layers.{i}.weight {w}" for i, w in enumerate(ws))
        if decl.get("hidden_sizes") is not None and tuple(decl.get("hidden_sizes")) != hidden:
            raise _contradiction(decl, "hidden_sizes", list(hidden), desc, where)
        image_shape = None
        if decl.get("image_size") is not None:
            h, w = decl.get("image_size")
            c = decl.get("num_channels")
            if c is None:
                c = in_f // (h * w) if in_f % (h * w) == 0 else 0
            if h * w * c != in_f:
                raise ConfigError(
                    f"{where}: {decl.source('image_size')} says image_size={[h, w]}"
                    f"{'' if decl.get('num_channels') is None else f' x {c} channels'}, but the "
                    f"first layer takes {in_f} inputs (layers.0.weight {ws[0]})"
                )
            image_shape = (h, w, c)
        arch: Architecture = MLP(
            in_features=in_f, hidden=hidden, out_features=out, activation=act, image_shape=image_shape, **extra
        )
    else:
        ws = [tuple(shapes[f"convs.{i}.weight"]) for i in convs]
        for i, w in enumerate(ws):
            if len(w) != 4 or w[2] != w[3] or w[2] != ws[0][2]:
                raise ConfigError(
                    f"{where}: tensor 'convs.{i}.weight' {w}: weightspace's CNN needs square kernels of "
                    "one size [out, in, k, k]; pass arch="
                )
        k = ws[0][2]
        if decl.get("kernel_size") not in (None, k):
            raise _contradiction(decl, "kernel_size", k, f"convs.0.weight {ws[0]}", where)
        cin = ws[0][1]
        if decl.get("num_channels") not in (None, cin):
            raise _contradiction(decl, "num_channels", cin, f"convs.0.weight {ws[0]}", where)
        if decl.get("image_size") is None:
            hw = (28, 28)
            guessed.append("the image size (assumed 28x28)")
        else:
            hw = decl.get("image_size")
        strides, padding = decl.get("strides"), decl.get("padding")
        if strides is None or padding is None:
            guessed.append(f"the conv stride/padding (assumed {strides or 2}/{k // 2 if padding is None else padding})")
        dense = _indices(shapes, "dense")
        arch = CNN(
            image_shape=(hw[0], hw[1], cin),
            channels=tuple(w[0] for w in ws),
            kernel_size=k,
            strides=2 if strides is None else strides,
            padding=k // 2 if padding is None else padding,
            dense=tuple(shapes[f"dense.{j}.weight"][0] for j in dense),
            out_features=shapes["head.weight"][0],
            activation=act,
            **extra,
        )
    out = arch.num_outputs
    if decl.get("num_labels") not in (None, out):
        raise _contradiction(decl, "num_labels", out, "the last layer's outputs", where)
    if classes is not None and len(classes) != out:
        raise ConfigError(
            f"{where}: {decl.source('classes')} names {len(classes)} classes, but the model has {out} "
            f"outputs (last layer {list(arch.param_shapes().values())[-2]})"
        )
    return arch, guessed


def meta_from(decl: Declared) -> dict[str, Any]:
    """The zoo metadata a declaration gives: ``classes`` (class name of every output)."""
    return {} if decl.get("classes") is None else {"classes": list(decl.get("classes"))}


__all__ = ["CONFIG_FILES", "Declared", "architecture_from_files", "declared_from", "meta_from", "read_config_files"]

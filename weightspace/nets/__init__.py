"""Target-network architectures as pure ``(init, apply)`` pairs written for one model."""

from weightspace.nets._base import ACTIVATIONS as ACTIVATIONS
from weightspace.nets._base import Architecture as Architecture
from weightspace.nets._base import Params as Params
from weightspace.nets._base import architecture_from_config as architecture_from_config
from weightspace.nets._base import register_architecture as register_architecture
from weightspace.nets._base import resize_images as resize_images
from weightspace.nets._cifar import CIFAR10_CLASSES as CIFAR10_CLASSES
from weightspace.nets._cifar import CIFAR10CNN as CIFAR10CNN
from weightspace.nets._clip import CLIPConfig as CLIPConfig
from weightspace.nets._clip import CLIPModel as CLIPModel
from weightspace.nets._clip import CLIPTowerConfig as CLIPTowerConfig
from weightspace.nets._clip import clip_image_features as clip_image_features
from weightspace.nets._clip import clip_text_features as clip_text_features
from weightspace.nets._clip import load_clip as load_clip
from weightspace.nets._efficientnet import EfficientNetLite0 as EfficientNetLite0
from weightspace.nets._minilm import BertConfig as BertConfig
from weightspace.nets._minilm import MiniLM as MiniLM
from weightspace.nets._minilm import load_minilm as load_minilm
from weightspace.nets._pretrained import PretrainedModel as PretrainedModel
from weightspace.nets._pretrained import cifar10_params_from_keras as cifar10_params_from_keras
from weightspace.nets._pretrained import convert_efficientnet_lite0 as convert_efficientnet_lite0
from weightspace.nets._pretrained import imagenet_classes as imagenet_classes
from weightspace.nets._pretrained import read_cifar10_cnn as read_cifar10_cnn
from weightspace.nets._pretrained import read_efficientnet_lite0 as read_efficientnet_lite0
from weightspace.nets._pretrained import read_keras_h5 as read_keras_h5
from weightspace.nets._standard import CNN as CNN
from weightspace.nets._standard import MLP as MLP
from weightspace.nets._standard import SIREN as SIREN
from weightspace.nets._standard import coordinate_grid as coordinate_grid

__all__ = [
    "ACTIVATIONS",
    "CIFAR10CNN",
    "CIFAR10_CLASSES",
    "CNN",
    "MLP",
    "SIREN",
    "Architecture",
    "BertConfig",
    "CLIPConfig",
    "CLIPModel",
    "CLIPTowerConfig",
    "EfficientNetLite0",
    "MiniLM",
    "Params",
    "PretrainedModel",
    "architecture_from_config",
    "cifar10_params_from_keras",
    "clip_image_features",
    "clip_text_features",
    "convert_efficientnet_lite0",
    "coordinate_grid",
    "imagenet_classes",
    "load_clip",
    "load_minilm",
    "read_cifar10_cnn",
    "read_efficientnet_lite0",
    "read_keras_h5",
    "register_architecture",
    "resize_images",
]

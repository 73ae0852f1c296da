"""Target-network architectures as pure ``(init, apply)`` pairs written for one model."""

from weightspace.nets._base import ACTIVATIONS as ACTIVATIONS
from weightspace.nets._base import Architecture as Architecture
from weightspace.nets._base import Params as Params
from weightspace.nets._base import architecture_from_config as architecture_from_config
from weightspace.nets._base import register_architecture as register_architecture
from weightspace.nets._base import resize_images as resize_images
from weightspace.nets._standard import CNN as CNN
from weightspace.nets._standard import MLP as MLP
from weightspace.nets._standard import SIREN as SIREN
from weightspace.nets._standard import coordinate_grid as coordinate_grid

__all__ = [
    "ACTIVATIONS",
    "CNN",
    "MLP",
    "SIREN",
    "Architecture",
    "Params",
    "architecture_from_config",
    "coordinate_grid",
    "register_architecture",
    "resize_images",
]

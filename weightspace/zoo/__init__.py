"""Zoos: populations of models of one architecture, collections of zoos, and their storage."""

from weightspace.zoo._hub import load_hub as load_hub
from weightspace.zoo._io import infer_architecture as infer_architecture
from weightspace.zoo._io import load_collection as load_collection
from weightspace.zoo._io import load_model as load_model
from weightspace.zoo._io import load_tensors as load_tensors
from weightspace.zoo._io import load_zoo as load_zoo
from weightspace.zoo._io import read_header as read_header
from weightspace.zoo._io import save_model as save_model
from weightspace.zoo._io import save_zoo as save_zoo
from weightspace.zoo._zoo import Collection as Collection
from weightspace.zoo._zoo import Zoo as Zoo
from weightspace.zoo._zoo import concat as concat

__all__ = [
    "Collection",
    "Zoo",
    "concat",
    "infer_architecture",
    "load_collection",
    "load_hub",
    "load_model",
    "load_tensors",
    "load_zoo",
    "read_header",
    "save_model",
    "save_zoo",
]

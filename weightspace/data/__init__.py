"""Real datasets (Fashion-MNIST, MNIST-5k, digits) and probe sets (natural crops, dead leaves, ...)."""

from weightspace.data._datasets import DATASETS as DATASETS
from weightspace.data._datasets import FASHION_MNIST_CLASSES as FASHION_MNIST_CLASSES
from weightspace.data._datasets import TEST_FRACTION as TEST_FRACTION
from weightspace.data._datasets import Dataset as Dataset
from weightspace.data._datasets import load_dataset as load_dataset
from weightspace.data._datasets import split_of as split_of
from weightspace.data._idx import parse_idx as parse_idx
from weightspace.data._idx import read_idx as read_idx
from weightspace.data._idx import write_idx as write_idx
from weightspace.data._probes import PROBE_KINDS as PROBE_KINDS
from weightspace.data._probes import ProbeSet as ProbeSet
from weightspace.data._probes import coordinate_probes as coordinate_probes
from weightspace.data._probes import make_probes as make_probes

__all__ = [
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "PROBE_KINDS",
    "TEST_FRACTION",
    "Dataset",
    "ProbeSet",
    "coordinate_probes",
    "load_dataset",
    "make_probes",
    "parse_idx",
    "read_idx",
    "split_of",
    "write_idx",
]

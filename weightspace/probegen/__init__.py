"""ProbeGen: deep linear probe generators learned through frozen zoos (Kahana et al., ICLR 2025).

A shared generator of linear layers turns n learned latent codes into probes; every model of a
batch answers them through the probe engine (:func:`weightspace.probing.apply_models`, gradients
flowing through the frozen models); an MLP reads the flattened responses. Trained with the one
loop of :mod:`weightspace.train`. See ``docs/probegen.md``.
"""

from weightspace.probegen._model import PROBE_SOURCES as PROBE_SOURCES
from weightspace.probegen._model import FixedProbes as FixedProbes
from weightspace.probegen._model import LearnedProbes as LearnedProbes
from weightspace.probegen._model import ProbeGen as ProbeGen
from weightspace.probegen._model import ProbeGenConfig as ProbeGenConfig
from weightspace.probegen._model import ProbeGenerator as ProbeGenerator
from weightspace.probegen._model import build_probegen as build_probegen
from weightspace.probegen._train import ARCH_COLUMN as ARCH_COLUMN
from weightspace.probegen._train import DEFAULT_TARGETS as DEFAULT_TARGETS
from weightspace.probegen._train import DEFAULT_TRAIN as DEFAULT_TRAIN
from weightspace.probegen._train import GROUP_COLUMNS as GROUP_COLUMNS
from weightspace.probegen._train import ProbeGenRun as ProbeGenRun
from weightspace.probegen._train import dataset_architectures as dataset_architectures
from weightspace.probegen._train import embed as embed
from weightspace.probegen._train import fixed_probe_data as fixed_probe_data
from weightspace.probegen._train import load_run as load_run
from weightspace.probegen._train import predict as predict
from weightspace.probegen._train import predict_zoo as predict_zoo
from weightspace.probegen._train import save_run as save_run
from weightspace.probegen._train import train_probegen as train_probegen
from weightspace.probegen._train import weight_dataset as weight_dataset

__all__ = [
    "ARCH_COLUMN",
    "DEFAULT_TARGETS",
    "DEFAULT_TRAIN",
    "GROUP_COLUMNS",
    "PROBE_SOURCES",
    "FixedProbes",
    "LearnedProbes",
    "ProbeGen",
    "ProbeGenConfig",
    "ProbeGenRun",
    "ProbeGenerator",
    "build_probegen",
    "dataset_architectures",
    "embed",
    "fixed_probe_data",
    "load_run",
    "predict",
    "predict_zoo",
    "save_run",
    "train_probegen",
    "weight_dataset",
]

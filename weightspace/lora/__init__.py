"""LoRA forensics: LoRA adapters (merge, spectra, file formats), DSiRe and Spectral DeTuning.

Importing this package registers the ``fmnist-lora`` zoo recipe: build it with
``weightspace.zoo.build_recipe("fmnist-lora")`` (returns a :class:`LoRAZoo`).
"""

from weightspace.lora._detune import DetuneResult as DetuneResult
from weightspace.lora._detune import RankSchedule as RankSchedule
from weightspace.lora._detune import detune_model as detune_model
from weightspace.lora._detune import merged_finetunes as merged_finetunes
from weightspace.lora._detune import randomized_svd as randomized_svd
from weightspace.lora._detune import rank_schedule_init as rank_schedule_init
from weightspace.lora._detune import rank_schedule_update as rank_schedule_update
from weightspace.lora._detune import spectral_detune as spectral_detune
from weightspace.lora._detune import synthetic_finetunes as synthetic_finetunes
from weightspace.lora._dsire import DSiRe as DSiRe
from weightspace.lora._dsire import LinearSize as LinearSize
from weightspace.lora._dsire import SpectralFeatures as SpectralFeatures
from weightspace.lora._dsire import best_tensor as best_tensor
from weightspace.lora._dsire import dsire_votes as dsire_votes
from weightspace.lora._dsire import evaluate_size_recovery as evaluate_size_recovery
from weightspace.lora._dsire import fit_dsire as fit_dsire
from weightspace.lora._dsire import fit_linear as fit_linear
from weightspace.lora._dsire import lora_features as lora_features
from weightspace.lora._dsire import predict_dsire as predict_dsire
from weightspace.lora._dsire import predict_linear as predict_linear
from weightspace.lora._dsire import size_metrics as size_metrics
from weightspace.lora._dsire import vote as vote
from weightspace.lora._io import LoraRows as LoraRows
from weightspace.lora._io import LowraRow as LowraRow
from weightspace.lora._io import load_lora_rows as load_lora_rows
from weightspace.lora._io import load_lowra_rows as load_lowra_rows
from weightspace.lora._io import parse_lora_names as parse_lora_names
from weightspace.lora._io import read_lora as read_lora
from weightspace.lora._io import read_lora_stack as read_lora_stack
from weightspace.lora._io import save_lora as save_lora
from weightspace.lora._io import save_lora_rows as save_lora_rows
from weightspace.lora._io import save_lowra_rows as save_lowra_rows
from weightspace.lora._lora import KINDS as KINDS
from weightspace.lora._lora import Adapter as Adapter
from weightspace.lora._lora import LoRA as LoRA
from weightspace.lora._lora import lora_spectra as lora_spectra
from weightspace.lora._lora import merge as merge
from weightspace.lora._lora import stack_adapters as stack_adapters
from weightspace.lora._lora import unmerge as unmerge
from weightspace.lora._recipe import SUBSETS as SUBSETS
from weightspace.lora._recipe import LoRAZoo as LoRAZoo
from weightspace.lora._recipe import autoencoder as autoencoder
from weightspace.lora._recipe import load_lora_zoo as load_lora_zoo
from weightspace.lora._recipe import pretrain_base as pretrain_base
from weightspace.lora._recipe import reconstruction_loss as reconstruction_loss
from weightspace.lora._recipe import save_lora_zoo as save_lora_zoo

__all__ = [
    "KINDS",
    "SUBSETS",
    "Adapter",
    "DSiRe",
    "DetuneResult",
    "LinearSize",
    "LoRA",
    "LoRAZoo",
    "LoraRows",
    "LowraRow",
    "RankSchedule",
    "SpectralFeatures",
    "autoencoder",
    "best_tensor",
    "detune_model",
    "dsire_votes",
    "evaluate_size_recovery",
    "fit_dsire",
    "fit_linear",
    "load_lora_rows",
    "load_lora_zoo",
    "load_lowra_rows",
    "lora_features",
    "lora_spectra",
    "merge",
    "merged_finetunes",
    "parse_lora_names",
    "predict_dsire",
    "predict_linear",
    "pretrain_base",
    "randomized_svd",
    "rank_schedule_init",
    "rank_schedule_update",
    "read_lora",
    "read_lora_stack",
    "reconstruction_loss",
    "save_lora",
    "save_lora_rows",
    "save_lora_zoo",
    "save_lowra_rows",
    "size_metrics",
    "spectral_detune",
    "stack_adapters",
    "synthetic_finetunes",
    "unmerge",
    "vote",
]

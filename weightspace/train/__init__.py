"""The training engine: ONE public pure step, the two drivers that run it, one checkpointer.

- :func:`make_train_step` -> ``step(state, batch, key) -> (state, metrics)`` over a
  :class:`TrainState` pytree; pure, so ``jax.jit`` runs it for one model and ``jax.vmap`` for many.
- :func:`fit`: the driver for one NNX module (shuffled epochs); validation and early stopping
  (:class:`Validation`), checkpoints and resume (:class:`Checkpointing`), progress
  (:class:`Progress`) and logging are :class:`Hook` objects on it; :func:`compile_step` is the
  compiled form of the step it runs.
- :func:`fit_population`: ``jit(vmap(scan(step)))`` of the same step over a population, with
  per-model optimizers and hyper-parameters held in ``optax.inject_hyperparams`` state.
- :class:`Checkpointer` and :func:`check_resume` serve both drivers.

This package knows no zoo and no method: ``weightspace.zoo`` and ``weightspace.learn`` build on it
(see docs/learn.md).
"""

from weightspace.train._checkpoint import Checkpointer as Checkpointer
from weightspace.train._checkpoint import check_resume as check_resume
from weightspace.train._checkpoint import load_module as load_module
from weightspace.train._checkpoint import save_module as save_module
from weightspace.train._config import TrainConfig as TrainConfig
from weightspace.train._fit import FitHook as FitHook
from weightspace.train._fit import FitReport as FitReport
from weightspace.train._fit import TrainingDivergedError as TrainingDivergedError
from weightspace.train._fit import fit as fit
from weightspace.train._hooks import Checkpointing as Checkpointing
from weightspace.train._hooks import FitEvent as FitEvent
from weightspace.train._hooks import FitRun as FitRun
from weightspace.train._hooks import Hook as Hook
from weightspace.train._hooks import Progress as Progress
from weightspace.train._hooks import Validation as Validation
from weightspace.train._population import HPARAM_DEFAULTS as HPARAM_DEFAULTS
from weightspace.train._population import OPTIMIZERS as OPTIMIZERS
from weightspace.train._population import FitProgress as FitProgress
from weightspace.train._population import FitResult as FitResult
from weightspace.train._population import MenuState as MenuState
from weightspace.train._population import batch_rows as batch_rows
from weightspace.train._population import fit_population as fit_population
from weightspace.train._population import population_opt_state as population_opt_state
from weightspace.train._population import population_optimizer as population_optimizer
from weightspace.train._population import validate_hparams as validate_hparams
from weightspace.train._resume import resumable as resumable
from weightspace.train._step import NNXLoss as NNXLoss
from weightspace.train._step import TrainState as TrainState
from weightspace.train._step import TrainStep as TrainStep
from weightspace.train._step import compile_step as compile_step
from weightspace.train._step import init_train_state as init_train_state
from weightspace.train._step import make_train_step as make_train_step
from weightspace.train._step import nnx_loss as nnx_loss

__all__ = [
    "HPARAM_DEFAULTS",
    "OPTIMIZERS",
    "Checkpointer",
    "Checkpointing",
    "FitEvent",
    "FitHook",
    "FitProgress",
    "FitReport",
    "FitResult",
    "FitRun",
    "Hook",
    "MenuState",
    "NNXLoss",
    "Progress",
    "TrainConfig",
    "TrainState",
    "TrainStep",
    "TrainingDivergedError",
    "Validation",
    "batch_rows",
    "check_resume",
    "compile_step",
    "fit",
    "fit_population",
    "init_train_state",
    "load_module",
    "make_train_step",
    "nnx_loss",
    "population_opt_state",
    "population_optimizer",
    "resumable",
    "save_module",
    "validate_hparams",
]

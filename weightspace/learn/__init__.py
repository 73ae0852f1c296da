"""What every learned weight encoder shares: weight datasets, ONE evaluation harness, FLOPs
counting and the shared baselines; the training loop (``fit``, ``TrainConfig``) is
:mod:`weightspace.train`'s, re-exported here (see docs/learn.md and docs/dev/learn_contract.md)."""

from weightspace.learn._baselines import BASELINES as BASELINES
from weightspace.learn._baselines import fit_baseline as fit_baseline
from weightspace.learn._baselines import flat_features as flat_features
from weightspace.learn._baselines import run_baseline as run_baseline
from weightspace.learn._baselines import statnn_features as statnn_features
from weightspace.learn._data import Splits as Splits
from weightspace.learn._data import WeightDataset as WeightDataset
from weightspace.learn._data import split_models as split_models
from weightspace.learn._eval import ResultsTable as ResultsTable
from weightspace.learn._eval import exact_set_accuracy as exact_set_accuracy
from weightspace.learn._eval import kendall_tau as kendall_tau
from weightspace.learn._eval import knn_classify as knn_classify
from weightspace.learn._eval import linear_probe as linear_probe
from weightspace.learn._eval import mean_average_precision as mean_average_precision
from weightspace.learn._eval import one_class_auc as one_class_auc
from weightspace.learn._eval import one_class_scores as one_class_scores
from weightspace.learn._eval import retrieval_recall as retrieval_recall
from weightspace.learn._eval import top_k_accuracy as top_k_accuracy
from weightspace.learn._flops import flops_per_model as flops_per_model
from weightspace.learn._mlp import MLP as MLP
from weightspace.learn._task import TASK_KINDS as TASK_KINDS
from weightspace.learn._task import TargetScale as TargetScale
from weightspace.learn._task import Task as Task
from weightspace.learn._task import as_task as as_task
from weightspace.train import FitReport as FitReport
from weightspace.train import TrainConfig as TrainConfig
from weightspace.train import TrainingDivergedError as TrainingDivergedError
from weightspace.train import fit as fit
from weightspace.train import load_module as load_module
from weightspace.train import save_module as save_module

__all__ = [
    "BASELINES",
    "MLP",
    "TASK_KINDS",
    "FitReport",
    "ResultsTable",
    "Splits",
    "TargetScale",
    "Task",
    "TrainConfig",
    "TrainingDivergedError",
    "WeightDataset",
    "as_task",
    "exact_set_accuracy",
    "fit",
    "fit_baseline",
    "flat_features",
    "flops_per_model",
    "kendall_tau",
    "knn_classify",
    "linear_probe",
    "load_module",
    "mean_average_precision",
    "one_class_auc",
    "one_class_scores",
    "retrieval_recall",
    "run_baseline",
    "save_module",
    "split_models",
    "statnn_features",
    "top_k_accuracy",
]

"""Zoos: populations of models of one architecture, collections of zoos, their storage, named recipes
and real pretrained models as one-model zoos."""

from weightspace.train import OPTIMIZERS as OPTIMIZERS
from weightspace.train import FitProgress as FitProgress
from weightspace.train import FitResult as FitResult
from weightspace.train import batch_rows as batch_rows
from weightspace.train import fit_population as fit_population
from weightspace.train import validate_hparams as validate_hparams
from weightspace.zoo._classifiers import ClassifierLoss as ClassifierLoss
from weightspace.zoo._classifiers import cnn_forward_im2col as cnn_forward_im2col
from weightspace.zoo._classifiers import evaluate_population as evaluate_population
from weightspace.zoo._classifiers import init_population as init_population
from weightspace.zoo._classifiers import split_outputs as split_outputs
from weightspace.zoo._classifiers import train_population as train_population
from weightspace.zoo._hub import load_hub as load_hub
from weightspace.zoo._io import infer_architecture as infer_architecture
from weightspace.zoo._io import load_collection as load_collection
from weightspace.zoo._io import load_model as load_model
from weightspace.zoo._io import load_tensors as load_tensors
from weightspace.zoo._io import load_zoo as load_zoo
from weightspace.zoo._io import read_header as read_header
from weightspace.zoo._io import save_model as save_model
from weightspace.zoo._io import save_zoo as save_zoo
from weightspace.zoo._pretrained import load_cifar10_cnn as load_cifar10_cnn
from weightspace.zoo._pretrained import load_efficientnet_lite0 as load_efficientnet_lite0
from weightspace.zoo._recipes import RECIPE_VERSION as RECIPE_VERSION
from weightspace.zoo._recipes import RECIPES as RECIPES
from weightspace.zoo._recipes import Recipe as Recipe
from weightspace.zoo._recipes import build_recipe as build_recipe
from weightspace.zoo._recipes import recipe_path as recipe_path
from weightspace.zoo._recipes import register_recipe as register_recipe
from weightspace.zoo._zoo import Collection as Collection
from weightspace.zoo._zoo import Zoo as Zoo
from weightspace.zoo._zoo import concat as concat

__all__ = [
    "OPTIMIZERS",
    "RECIPES",
    "RECIPE_VERSION",
    "ClassifierLoss",
    "Collection",
    "FitProgress",
    "FitResult",
    "Recipe",
    "Zoo",
    "batch_rows",
    "build_recipe",
    "cnn_forward_im2col",
    "concat",
    "evaluate_population",
    "fit_population",
    "infer_architecture",
    "init_population",
    "load_cifar10_cnn",
    "load_collection",
    "load_efficientnet_lite0",
    "load_hub",
    "load_model",
    "load_tensors",
    "load_zoo",
    "read_header",
    "recipe_path",
    "register_recipe",
    "save_model",
    "save_zoo",
    "split_outputs",
    "train_population",
    "validate_hparams",
]

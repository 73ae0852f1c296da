"""ProbeX: probing experts that read one layer of a model's weights (Horwitz et al., CVPR 2025).

One expert per model tree, a router that sends a new model to its tree's expert from its weights,
a multi-label "which classes was it trained on" task read out per class or zero-shot in the MiniLM
text space,
a per-layer sweep, Model-J-layout readers, and the ``fmnist-trees`` zoo recipe (a local Model-J),
registered when this package is imported. See ``docs/probex.md``.
"""

from weightspace.probex._experts import DEFAULT_CONFIG as DEFAULT_CONFIG
from weightspace.probex._experts import DEFAULT_TRAIN as DEFAULT_TRAIN
from weightspace.probex._experts import SWEEP_TRAIN as SWEEP_TRAIN
from weightspace.probex._experts import Expert as Expert
from weightspace.probex._experts import make_ensemble as make_ensemble
from weightspace.probex._experts import multi_hot as multi_hot
from weightspace.probex._experts import train_expert as train_expert
from weightspace.probex._layers import as_matrix as as_matrix
from weightspace.probex._layers import check_layer as check_layer
from weightspace.probex._layers import file_layer as file_layer
from weightspace.probex._layers import lora_layer as lora_layer
from weightspace.probex._layers import zoo_layer as zoo_layer
from weightspace.probex._model import READOUTS as READOUTS
from weightspace.probex._model import ProbeX as ProbeX
from weightspace.probex._model import ProbeXConfig as ProbeXConfig
from weightspace.probex._model import ProbeXSpec as ProbeXSpec
from weightspace.probex._model import probex_flops as probex_flops
from weightspace.probex._model import zero_shot_logits as zero_shot_logits
from weightspace.probex._modelj import LayerSet as LayerSet
from weightspace.probex._modelj import load_lora_subset as load_lora_subset
from weightspace.probex._modelj import load_modelj as load_modelj
from weightspace.probex._modelj import write_lora_subset as write_lora_subset
from weightspace.probex._modelj import write_modelj as write_modelj
from weightspace.probex._recipe import MAX_CLASSES as MAX_CLASSES
from weightspace.probex._recipe import POOL_CLASSES as POOL_CLASSES
from weightspace.probex._recipe import TREES as TREES
from weightspace.probex._recipe import ModelTrees as ModelTrees
from weightspace.probex._recipe import TreeSpec as TreeSpec
from weightspace.probex._recipe import fine_tune as fine_tune
from weightspace.probex._recipe import load_trees as load_trees
from weightspace.probex._recipe import pool_dataset as pool_dataset
from weightspace.probex._recipe import pretrain_base as pretrain_base
from weightspace.probex._recipe import trees_from as trees_from
from weightspace.probex._router import Router as Router
from weightspace.probex._router import routing_accuracy as routing_accuracy
from weightspace.probex._router import weight_summary as weight_summary
from weightspace.probex._text import class_embeddings as class_embeddings
from weightspace.probex._trees import TreeExperts as TreeExperts
from weightspace.probex._trees import layer_sweep as layer_sweep
from weightspace.probex._trees import layers_of as layers_of
from weightspace.probex._trees import resolve_layers as resolve_layers
from weightspace.probex._trees import train_trees as train_trees
from weightspace.probex._trees import zoo_targets as zoo_targets

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_TRAIN",
    "MAX_CLASSES",
    "POOL_CLASSES",
    "READOUTS",
    "SWEEP_TRAIN",
    "TREES",
    "Expert",
    "LayerSet",
    "ModelTrees",
    "ProbeX",
    "ProbeXConfig",
    "ProbeXSpec",
    "Router",
    "TreeExperts",
    "TreeSpec",
    "as_matrix",
    "check_layer",
    "class_embeddings",
    "file_layer",
    "fine_tune",
    "layer_sweep",
    "layers_of",
    "load_lora_subset",
    "load_modelj",
    "load_trees",
    "lora_layer",
    "make_ensemble",
    "multi_hot",
    "pool_dataset",
    "pretrain_base",
    "probex_flops",
    "resolve_layers",
    "routing_accuracy",
    "train_expert",
    "train_trees",
    "trees_from",
    "weight_summary",
    "write_lora_subset",
    "write_modelj",
    "zero_shot_logits",
    "zoo_layer",
    "zoo_targets",
]

"""Permutation-equivariant weight encoders (NP layers, neuron graphs), trained contrastively to embed models by task."""

from weightspace.equivariant._contrastive import LOSSES as LOSSES
from weightspace.equivariant._contrastive import Augment as Augment
from weightspace.equivariant._contrastive import ContrastiveConfig as ContrastiveConfig
from weightspace.equivariant._contrastive import ContrastiveModel as ContrastiveModel
from weightspace.equivariant._contrastive import EncoderConfig as EncoderConfig
from weightspace.equivariant._contrastive import augment as augment
from weightspace.equivariant._contrastive import build_encoder as build_encoder
from weightspace.equivariant._contrastive import contrastive_loss as contrastive_loss
from weightspace.equivariant._contrastive import encoder_config as encoder_config
from weightspace.equivariant._contrastive import load_encoder as load_encoder
from weightspace.equivariant._contrastive import save_encoder as save_encoder
from weightspace.equivariant._contrastive import task_labels as task_labels
from weightspace.equivariant._contrastive import train_contrastive as train_contrastive
from weightspace.equivariant._embed import embed_bucket as embed_bucket
from weightspace.equivariant._embed import embed_zoo as embed_zoo
from weightspace.equivariant._embed import encode_fn as encode_fn
from weightspace.equivariant._gallery import embed_gallery as embed_gallery
from weightspace.equivariant._gallery import encoder_fingerprint as encoder_fingerprint
from weightspace.equivariant._gallery import neighbours as neighbours
from weightspace.equivariant._graph import GraphEncoder as GraphEncoder
from weightspace.equivariant._graph import GraphEncoderConfig as GraphEncoderConfig
from weightspace.equivariant._graph import MessagePassing as MessagePassing
from weightspace.equivariant._layout import ACTIVATION_IDS as ACTIVATION_IDS
from weightspace.equivariant._layout import COVERED as COVERED
from weightspace.equivariant._layout import Bucket as Bucket
from weightspace.equivariant._layout import LayerSpec as LayerSpec
from weightspace.equivariant._layout import Layout as Layout
from weightspace.equivariant._layout import NeuronGraph as NeuronGraph
from weightspace.equivariant._layout import WeightFeatures as WeightFeatures
from weightspace.equivariant._layout import bucketize as bucketize
from weightspace.equivariant._layout import features_of as features_of
from weightspace.equivariant._layout import layer_specs as layer_specs
from weightspace.equivariant._layout import layout_of as layout_of
from weightspace.equivariant._layout import permute as permute
from weightspace.equivariant._layout import random_hidden_perms as random_hidden_perms
from weightspace.equivariant._np import NPEncoder as NPEncoder
from weightspace.equivariant._np import NPEncoderConfig as NPEncoderConfig
from weightspace.equivariant._np import NPLayer as NPLayer
from weightspace.equivariant._supervised import SUPERVISED_TASKS as SUPERVISED_TASKS
from weightspace.equivariant._supervised import SupervisedModel as SupervisedModel
from weightspace.equivariant._supervised import SupervisedRun as SupervisedRun
from weightspace.equivariant._supervised import train_supervised as train_supervised
from weightspace.equivariant._symmetry import SYMMETRIES as SYMMETRIES
from weightspace.equivariant._symmetry import apply_symmetry as apply_symmetry
from weightspace.equivariant._symmetry import flip_hidden as flip_hidden
from weightspace.equivariant._symmetry import permute_hidden as permute_hidden
from weightspace.equivariant._symmetry import rescale_hidden as rescale_hidden
from weightspace.equivariant._symmetry import symmetries_of as symmetries_of
from weightspace.equivariant._symmetry import transform_zoo as transform_zoo

__all__ = [
    "ACTIVATION_IDS",
    "COVERED",
    "LOSSES",
    "SUPERVISED_TASKS",
    "SYMMETRIES",
    "Augment",
    "Bucket",
    "ContrastiveConfig",
    "ContrastiveModel",
    "EncoderConfig",
    "GraphEncoder",
    "GraphEncoderConfig",
    "LayerSpec",
    "Layout",
    "MessagePassing",
    "NPEncoder",
    "NPEncoderConfig",
    "NPLayer",
    "NeuronGraph",
    "SupervisedModel",
    "SupervisedRun",
    "WeightFeatures",
    "apply_symmetry",
    "augment",
    "bucketize",
    "build_encoder",
    "contrastive_loss",
    "embed_bucket",
    "embed_gallery",
    "embed_zoo",
    "encode_fn",
    "encoder_config",
    "encoder_fingerprint",
    "features_of",
    "flip_hidden",
    "layer_specs",
    "layout_of",
    "load_encoder",
    "neighbours",
    "permute",
    "permute_hidden",
    "random_hidden_perms",
    "rescale_hidden",
    "save_encoder",
    "symmetries_of",
    "task_labels",
    "train_contrastive",
    "train_supervised",
    "transform_zoo",
]

"""Model selection: transferability metrics, ranking evaluation and Model Spider.

Every metric follows one sign convention: higher = more transferable.
"""

from weightspace.selection._features import PenultimateFeatures as PenultimateFeatures
from weightspace.selection._features import extract_features as extract_features
from weightspace.selection._features import final_layer as final_layer
from weightspace.selection._gmm import GMMParams as GMMParams
from weightspace.selection._gmm import fit_gmm as fit_gmm
from weightspace.selection._gmm import gmm_init as gmm_init
from weightspace.selection._gmm import gmm_posterior as gmm_posterior
from weightspace.selection._logme import LogMEFit as LogMEFit
from weightspace.selection._logme import logme as logme
from weightspace.selection._logme import logme_fit as logme_fit
from weightspace.selection._metrics import gbc as gbc
from weightspace.selection._metrics import h_score as h_score
from weightspace.selection._metrics import ledoit_wolf as ledoit_wolf
from weightspace.selection._metrics import leep as leep
from weightspace.selection._metrics import lfc as lfc
from weightspace.selection._metrics import nce as nce
from weightspace.selection._metrics import nleep as nleep
from weightspace.selection._metrics import pactran as pactran
from weightspace.selection._metrics import pca as pca
from weightspace.selection._metrics import regularized_h_score as regularized_h_score
from weightspace.selection._metrics import transrate as transrate
from weightspace.selection._ot import OTCETerms as OTCETerms
from weightspace.selection._ot import otce as otce
from weightspace.selection._ot import otce_terms as otce_terms
from weightspace.selection._ot import sinkhorn as sinkhorn
from weightspace.selection._ranking import kendall_tau as kendall_tau
from weightspace.selection._ranking import pearson as pearson
from weightspace.selection._ranking import ranking_report as ranking_report
from weightspace.selection._ranking import top1_regret as top1_regret
from weightspace.selection._ranking import weighted_tau as weighted_tau
from weightspace.selection._score import ALL_METRICS as ALL_METRICS
from weightspace.selection._score import FEATURE_METRICS as FEATURE_METRICS
from weightspace.selection._score import PROB_METRICS as PROB_METRICS
from weightspace.selection._score import SOURCE_METRICS as SOURCE_METRICS
from weightspace.selection._score import score_all as score_all
from weightspace.selection._spider import SPIDER_TRAIN as SPIDER_TRAIN
from weightspace.selection._spider import ModelSpider as ModelSpider
from weightspace.selection._spider import SpiderConfig as SpiderConfig
from weightspace.selection._spider import SpiderTasks as SpiderTasks
from weightspace.selection._spider import class_means as class_means
from weightspace.selection._spider import evaluate_rankings as evaluate_rankings
from weightspace.selection._spider import leave_one_task_out as leave_one_task_out
from weightspace.selection._spider import listmle_loss as listmle_loss
from weightspace.selection._spider import load_model_spider as load_model_spider
from weightspace.selection._spider import rank_models as rank_models
from weightspace.selection._spider import save_model_spider as save_model_spider
from weightspace.selection._spider import stack_tasks as stack_tasks
from weightspace.selection._spider import train_model_spider as train_model_spider

__all__ = [
    "ALL_METRICS",
    "FEATURE_METRICS",
    "PROB_METRICS",
    "SOURCE_METRICS",
    "SPIDER_TRAIN",
    "GMMParams",
    "LogMEFit",
    "ModelSpider",
    "OTCETerms",
    "PenultimateFeatures",
    "SpiderConfig",
    "SpiderTasks",
    "class_means",
    "evaluate_rankings",
    "extract_features",
    "final_layer",
    "fit_gmm",
    "gbc",
    "gmm_init",
    "gmm_posterior",
    "h_score",
    "kendall_tau",
    "leave_one_task_out",
    "ledoit_wolf",
    "leep",
    "lfc",
    "listmle_loss",
    "load_model_spider",
    "logme",
    "logme_fit",
    "nce",
    "nleep",
    "otce",
    "otce_terms",
    "pactran",
    "pca",
    "pearson",
    "rank_models",
    "ranking_report",
    "regularized_h_score",
    "save_model_spider",
    "score_all",
    "sinkhorn",
    "stack_tasks",
    "top1_regret",
    "train_model_spider",
    "transrate",
    "weighted_tau",
]

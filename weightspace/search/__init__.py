"""ProbeLog model search: logit descriptors, galleries on disk, search by logit/model/text, collaborative probing.

References:
    Kahana et al., "Can this Model Also Recognize Dogs? Zero-Shot Model Search from Weights",
    arXiv 2502.09619 (2025).
"""

from weightspace.search._collab import CollaborativeProbing as CollaborativeProbing
from weightspace.search._collab import Completion as Completion
from weightspace.search._collab import collaborative_probe as collaborative_probe
from weightspace.search._collab import complete_matrix as complete_matrix
from weightspace.search._collab import randomized_svd as randomized_svd
from weightspace.search._conse import DEFAULT_CONSE_TOP as DEFAULT_CONSE_TOP
from weightspace.search._conse import ConSEAligner as ConSEAligner
from weightspace.search._conse import conse_embeddings as conse_embeddings
from weightspace.search._conse import default_aligner as default_aligner
from weightspace.search._descriptors import DEFAULT_DISTANCE as DEFAULT_DISTANCE
from weightspace.search._descriptors import DEFAULT_K as DEFAULT_K
from weightspace.search._descriptors import DISTANCES as DISTANCES
from weightspace.search._descriptors import SELECTIONS as SELECTIONS
from weightspace.search._descriptors import discrepancy as discrepancy
from weightspace.search._descriptors import logit_descriptors as logit_descriptors
from weightspace.search._descriptors import model_descriptors as model_descriptors
from weightspace.search._descriptors import normalize_descriptors as normalize_descriptors
from weightspace.search._descriptors import select_probes as select_probes
from weightspace.search._gallery import Gallery as Gallery
from weightspace.search._gallery import Responses as Responses
from weightspace.search._gallery import build_gallery as build_gallery
from weightspace.search._gallery import open_gallery as open_gallery
from weightspace.search._gallery import probes_fingerprint as probes_fingerprint
from weightspace.search._kernels import BlockedMatrix as BlockedMatrix
from weightspace.search._kernels import Searched as Searched
from weightspace.search._kernels import search_blocks as search_blocks
from weightspace.search._kernels import to_blocks as to_blocks
from weightspace.search._results import Hit as Hit
from weightspace.search._results import SearchResult as SearchResult
from weightspace.search._text import Aligner as Aligner
from weightspace.search._text import CLIPAligner as CLIPAligner
from weightspace.search._text import LabelAligner as LabelAligner

__all__ = [
    "DEFAULT_CONSE_TOP",
    "DEFAULT_DISTANCE",
    "DEFAULT_K",
    "DISTANCES",
    "SELECTIONS",
    "Aligner",
    "BlockedMatrix",
    "CLIPAligner",
    "CollaborativeProbing",
    "Completion",
    "ConSEAligner",
    "Gallery",
    "Hit",
    "LabelAligner",
    "Responses",
    "SearchResult",
    "Searched",
    "build_gallery",
    "collaborative_probe",
    "complete_matrix",
    "conse_embeddings",
    "default_aligner",
    "discrepancy",
    "logit_descriptors",
    "model_descriptors",
    "normalize_descriptors",
    "open_gallery",
    "probes_fingerprint",
    "randomized_svd",
    "search_blocks",
    "select_probes",
    "to_blocks",
]

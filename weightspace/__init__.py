"""weightspace: learning on the weights of neural networks, in JAX.

Subpackages: ``nets`` (architectures), ``zoo`` (populations of models and their storage),
``data`` (datasets and probe sets), ``probing`` (the vmapped probe engine), ``search``
(ProbeLog), ``learn`` (weight datasets, the one encoder-training loop, the evaluation harness,
baselines), ``probegen`` (deep linear probe generators), ``lora`` (DSiRe, Spectral DeTuning),
``selection`` (transferability metrics, Model Spider), ``parallel`` and ``testing``.
"""

from weightspace._errors import ConfigError as ConfigError
from weightspace._errors import GuessWarning as GuessWarning
from weightspace._errors import InvalidValueError as InvalidValueError
from weightspace._errors import LoadError as LoadError
from weightspace._errors import ShapeError as ShapeError
from weightspace._errors import WeightspaceError as WeightspaceError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "GuessWarning",
    "InvalidValueError",
    "LoadError",
    "ShapeError",
    "WeightspaceError",
    "__version__",
]

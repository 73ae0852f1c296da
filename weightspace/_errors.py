"""The one exception family of weightspace.

Every public entry point raises a subclass of :class:`WeightspaceError` with a message that names
the file, tensor or argument at fault and what was expected versus found.
"""

from __future__ import annotations


class WeightspaceError(Exception):
    """Base class of every error weightspace raises on purpose."""


class ShapeError(WeightspaceError, ValueError):
    """A tensor or array has the wrong shape or dtype."""


class LoadError(WeightspaceError, OSError):
    """A file is missing, truncated, not safetensors, or lacks a tensor."""


class InvalidValueError(WeightspaceError, ValueError):
    """An argument or tensor holds a bad value (NaN/Inf, out of range, unknown name...)."""


class ConfigError(WeightspaceError, ValueError):
    """An architecture, recipe or hyper-parameter table is malformed."""


class GuessWarning(UserWarning):
    """weightspace had to guess something a file did not say (e.g. an activation from a plain
    ``state_dict``). Turn it into an error with ``strict=True``, or say it (``activation=``, ``arch=``)."""

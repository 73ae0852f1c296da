"""The user cache directory (built zoos, converted checkpoints, datasets downloaded online)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The root of weightspace's cache, by the conventions of the ecosystem (not created).

    In order: ``$WEIGHTSPACE_CACHE``; else ``$XDG_CACHE_HOME/weightspace`` (the XDG base
    directory spec: only an absolute ``XDG_CACHE_HOME`` counts); else ``~/.cache/weightspace``.
    Empty variables count as unset. (``make`` puts JAX's compilation cache at ``<root>/jax``.)

    Example:
        >>> import os
        >>> old = os.environ.pop("WEIGHTSPACE_CACHE", None)
        >>> os.environ["XDG_CACHE_HOME"] = "/tmp/xdg"
        >>> str(cache_root())
        '/tmp/xdg/weightspace'
        >>> del os.environ["XDG_CACHE_HOME"]
        >>> if old is not None: os.environ["WEIGHTSPACE_CACHE"] = old
    """
    explicit = os.environ.get("WEIGHTSPACE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "weightspace"
    return Path.home() / ".cache" / "weightspace"


def cache_dir(*parts: str) -> Path:
    """:func:`cache_root` joined with ``parts``; created.

    Example:
        >>> cache_dir("zoos").name
        'zoos'
    """
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path

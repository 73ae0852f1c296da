"""The user cache directory (built zoos, converted checkpoints, datasets downloaded online)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$WEIGHTSPACE_CACHE`` (default ``~/.cache/weightspace``) joined with ``parts``; created.

    Example:
        >>> cache_dir("zoos").name
        'zoos'
    """
    root = Path(os.environ.get("WEIGHTSPACE_CACHE", Path.home() / ".cache" / "weightspace"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path

"""Class-prompt embeddings in the MiniLM text space (the zero-shot task's targets)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from weightspace._errors import InvalidValueError

TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image showing a {}.")
"""Prompt templates, averaged per class (prompt ensembling)."""


@functools.cache
def _encoder() -> Any:
    from weightspace.nets import load_minilm

    return load_minilm()


def class_embeddings(
    names: Sequence[str], *, encoder: Any | None = None, templates: Sequence[str] = TEMPLATES
) -> np.ndarray:
    """Unit text embeddings ``[classes, d]`` of class names: the mean of the unit embeddings of every
    template filled with the name, re-normalised.

    Args:
        names: class names (e.g. :data:`~weightspace.probex.POOL_CLASSES`).
        encoder: anything with ``encode(texts) -> [n, d]``; default all-MiniLM-L6-v2
            (:func:`weightspace.nets.load_minilm`, loaded once).
        templates: prompt templates, each with one ``{}``.

    Example:
        >>> import numpy as np
        >>> e = class_embeddings(["Sandal", "Sneaker", "digit 3"])
        >>> e.shape, np.linalg.norm(e, axis=1).round(4).tolist()
        ((3, 384), [1.0, 1.0, 1.0])
    """
    names = list(names)
    if not names or any(not isinstance(n, str) or not n.strip() for n in names):
        raise InvalidValueError(f"class names must be non-empty strings, got {names[:5]}")
    if not templates or any("{}" not in t for t in templates):
        raise InvalidValueError(f"templates must each contain '{{}}', got {templates!r}")
    enc = _encoder() if encoder is None else encoder
    prompts = [t.format(n) for n in names for t in templates]
    e = np.asarray(enc.encode(prompts), np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    e = e.reshape(len(names), len(templates), -1).mean(1)
    return (e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)).astype(np.float32)

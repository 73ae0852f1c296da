"""Text queries: an ``Aligner`` turns texts into descriptors over a gallery's ordered probes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from jaxtyping import Float

from weightspace._errors import ConfigError, InvalidValueError, ShapeError

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def check_texts(texts: str | Sequence[str]) -> list[str]:
    """A non-empty list of non-empty strings (raises :class:`~weightspace.InvalidValueError` otherwise)."""
    if isinstance(texts, str):
        texts = [texts]
    out = list(texts)
    if not out:
        raise InvalidValueError("no text query given")
    for t in out:
        if not isinstance(t, str) or not t.strip():
            raise InvalidValueError(f"text queries must be non-empty strings, got {t!r}")
    return out


@runtime_checkable
class Aligner(Protocol):
    """Maps texts to (unnormalised) descriptors over an ordered probe set.

    ``describe(texts, probes)`` returns ``[len(texts), len(probes)]``: how much each probe looks
    like each text. The gallery z-scores it like a logit and searches with it.
    """

    def describe(self, texts: Sequence[str], probes: Any) -> Float[np.ndarray, "texts probes"]: ...


def _unit(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x, np.float32)
    if a.ndim != 2:
        raise ShapeError(f"{what} must be [n, dim], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InvalidValueError(f"{what} holds NaN/Inf")
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _embed_prompts(encode: Callable[[list[str]], Any], names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """Mean of the unit embeddings of every template filled with each name, re-normalised (prompt ensembling)."""
    prompts = [t.format(n) for n in names for t in templates]
    e = _unit(encode(prompts), "prompt embeddings").reshape(len(names), len(templates), -1).mean(1)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


class LabelAligner:
    """The offline default: in-distribution probes with labels + any text encoder.

    The descriptor of text ``t`` on probe ``i`` is the cosine similarity between ``t`` and the
    prompt of probe ``i``'s label (``"a photo of a {label}."``):

    .. math:: c_i = \\cos(\\mathrm{txt}(t), \\mathrm{txt}(\\mathrm{prompt}(y_i)))

    so a concept the gallery never names ("footwear") still ranks the probes of related labels
    (sandal, sneaker, ankle boot) highest.

    Args:
        encoder: any object with ``encode(texts) -> [n, d]`` (e.g. :func:`weightspace.nets.load_minilm`).
        templates: prompt templates with one ``{}`` for the label (averaged).

    Example:
        >>> import numpy as np
        >>> from weightspace.data import ProbeSet
        >>> class Bag:  # a toy bag-of-letters encoder
        ...     def encode(self, texts):
        ...         return np.array([[t.lower().count(c) for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts], float)
        >>> probes = ProbeSet(name="toy", data=np.zeros((3, 2), np.float32), provenance="toy",
        ...                   labels=np.array([0, 1, 0], np.int32), label_names=("cat", "dog"))
        >>> d = LabelAligner(Bag(), templates=("{}",)).describe(["dog"], probes)
        >>> d.argmax(1).tolist(), d.shape
        ([1], (1, 3))
    """

    def __init__(self, encoder: Any, *, templates: Sequence[str] = DEFAULT_TEMPLATES) -> None:
        if not callable(getattr(encoder, "encode", None)):
            raise ConfigError(f"LabelAligner needs an encoder with .encode(texts), got {type(encoder).__name__}")
        if not templates or any("{}" not in t for t in templates):
            raise ConfigError(f"templates must each contain '{{}}', got {templates!r}")
        self.encoder = encoder
        self.templates = tuple(templates)
        self._labels: dict[tuple[str, ...], np.ndarray] = {}

    def describe(self, texts: Sequence[str], probes: Any) -> Float[np.ndarray, "texts probes"]:
        texts = check_texts(texts)
        labels, names = getattr(probes, "labels", None), getattr(probes, "label_names", None)
        if labels is None or names is None:
            raise ConfigError(
                f"probe set {getattr(probes, 'name', '?')!r} has no labels: text search with LabelAligner needs "
                "in-distribution probes (e.g. make_probes('fashion-mnist', n)); or use a CLIPAligner"
            )
        names = tuple(names)
        if names not in self._labels:
            self._labels[names] = _embed_prompts(lambda t: self.encoder.encode(t), names, self.templates)
        lab = self._labels[names]
        txt = _unit(self.encoder.encode(texts), "text embeddings")
        sim = txt @ lab.T  # [texts, classes]
        return np.ascontiguousarray(sim[:, np.asarray(labels)])


class CLIPAligner:
    """Text-to-probe similarity through an aligned image/text model pair (CLIP), as in the paper.

    Every probe is embedded once with ``image_embed`` (cached per probe set); a text's descriptor
    is the cosine similarity of its prompt embedding(s) to each probe embedding.

    Args:
        image_embed: ``images [n, H, W, C] in [0, 1] -> [n, d]`` (the image tower with its own
            preprocessing).
        text_embed: ``list[str] -> [n, d]`` (the text tower, tokenisation included).
        templates: prompt templates with one ``{}`` for the text (averaged).

    Example:
        >>> import numpy as np
        >>> from weightspace.data import ProbeSet
        >>> img = lambda x: x.reshape(len(x), -1)[:, :2]                 # toy "towers" in 2-D
        >>> txt = lambda t: np.array([[1.0, 0.0] if "red" in s else [0.0, 1.0] for s in t])
        >>> probes = ProbeSet(name="p", data=np.eye(2, dtype=np.float32).reshape(2, 1, 2, 1), provenance="toy")
        >>> CLIPAligner(img, txt, templates=("{}",)).describe(["red"], probes).round(3).tolist()
        [[1.0, 0.0]]
    """

    def __init__(
        self,
        image_embed: Callable[[np.ndarray], Any],
        text_embed: Callable[[list[str]], Any],
        *,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
    ) -> None:
        if not callable(image_embed) or not callable(text_embed):
            raise ConfigError("CLIPAligner needs callables image_embed(images) and text_embed(texts)")
        if not templates or any("{}" not in t for t in templates):
            raise ConfigError(f"templates must each contain '{{}}', got {templates!r}")
        self.image_embed, self.text_embed = image_embed, text_embed
        self.templates = tuple(templates)
        self._images: dict[str, np.ndarray] = {}

    @classmethod
    def from_clip(cls, model: Any, *, templates: Sequence[str] = DEFAULT_TEMPLATES) -> CLIPAligner:
        """The aligner of a :class:`weightspace.nets.CLIPModel` (e.g. from :func:`weightspace.nets.load_clip`)."""
        return cls(model.embed_images, model.embed_texts, templates=templates)

    def probe_embeddings(self, probes: Any) -> np.ndarray:
        """Unit image embeddings of the probes ``[probes, d]`` (computed once per probe set)."""
        from weightspace.search._gallery import probes_fingerprint

        fp = probes_fingerprint(probes)
        if fp not in self._images:
            data = np.asarray(getattr(probes, "data", probes), np.float32)
            self._images[fp] = _unit(self.image_embed(data), "probe image embeddings")
        return self._images[fp]

    def describe(self, texts: Sequence[str], probes: Any) -> Float[np.ndarray, "texts probes"]:
        texts = check_texts(texts)
        img = self.probe_embeddings(probes)
        txt = _embed_prompts(lambda t: self.text_embed(t), texts, self.templates)
        if txt.shape[1] != img.shape[1]:
            raise ShapeError(f"text embeddings have dim {txt.shape[1]}, image embeddings {img.shape[1]}")
        return np.ascontiguousarray(txt @ img.T)

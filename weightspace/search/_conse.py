"""Open-vocabulary text search on unlabelled probes: ConSE through a real ImageNet classifier.

No aligned image/text model (CLIP) loads offline, but an ImageNet classifier (EfficientNet-Lite0)
and a sentence encoder (MiniLM) do. ConSE (Norouzi et al. 2014) composes them: a probe's image is
mapped into the text space as the probability-weighted mean of the text embeddings of its top-T
predicted class names, so any text can be compared with any probe image.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

from weightspace._cache import cache_dir
from weightspace._errors import ConfigError, InvalidValueError, LoadError, ShapeError
from weightspace.search._text import DEFAULT_TEMPLATES, _unit, check_texts

DEFAULT_CONSE_TOP = 10
"""T, the number of top classes a probe's ConSE embedding mixes (Norouzi et al.'s best setting)."""

_CACHE_VERSION = "1"


def conse_embeddings(
    logits: Float[np.ndarray, "probes classes"],
    class_embeddings: Float[np.ndarray, "classes dim"],
    *,
    top: int = DEFAULT_CONSE_TOP,
) -> Float[np.ndarray, "probes dim"]:
    """ConSE: each probe as the probability-weighted mean of its top-``top`` class embeddings (unit rows).

    .. math:: p_i = \\mathrm{softmax}(\\ell_i), \\qquad
              e_i = \\frac{\\sum_{c \\in \\mathrm{top}_T(p_i)} p_{ic}\\, w_c}
                         {\\lVert \\sum_{c \\in \\mathrm{top}_T(p_i)} p_{ic}\\, w_c \\rVert}

    where :math:`w_c` is the unit text embedding of class :math:`c`'s name. (Norouzi et al.
    divide by :math:`\\sum_t p_{it}`; the unit normalisation used for cosines absorbs it.)

    Args:
        logits: ``[probes, classes]`` classifier logits of every probe.
        class_embeddings: ``[classes, dim]`` text embeddings of the class names (normalised here).
        top: T, the classes mixed per probe (``1 <= top <= classes``; ``classes`` = all, weighted).

    Returns:
        ``[probes, dim]`` float32 unit vectors in the text space.

    Example:
        >>> import numpy as np
        >>> w = np.eye(3, dtype=np.float32)                        # three orthogonal class "names"
        >>> e = conse_embeddings(np.array([[5.0, 5.0, -9.0]]), w, top=2)
        >>> e.round(3).tolist()                                    # halfway between classes 0 and 1
        [[0.707, 0.707, 0.0]]

    References:
        Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic Embeddings",
        ICLR 2014 (arXiv 1312.5650).
    """
    lg = np.asarray(logits, np.float64)
    w = _unit(class_embeddings, "class embeddings").astype(np.float64)
    if lg.ndim != 2 or lg.shape[1] != w.shape[0]:
        raise ShapeError(
            f"logits have shape {lg.shape}; expected [probes, {w.shape[0]}] (one logit per class embedding)"
        )
    if not np.isfinite(lg).all():
        raise InvalidValueError(f"{int((~np.isfinite(lg)).sum())} NaN/Inf values in the classifier logits")
    if not isinstance(top, int | np.integer) or isinstance(top, bool) or not 1 <= top <= w.shape[0]:
        raise ConfigError(f"top must be an int in [1, {w.shape[0]}], got {top!r}")
    p = np.exp(lg - lg.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    if top < p.shape[1]:  # zero all but each row's top-T probabilities
        cut = np.argpartition(-p, top - 1, axis=1)[:, :top]
        keep = np.zeros_like(p)
        np.put_along_axis(keep, cut, np.take_along_axis(p, cut, 1), 1)
        p = keep
    e = p @ w
    return (e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _probe_images(probes: Any) -> tuple[np.ndarray, str, str]:
    """The probe images ``[n, H, W, C]`` (C in 1, 3), their fingerprint and name; a clear error otherwise."""
    from weightspace.search._gallery import as_probe_set, probes_fingerprint

    p = as_probe_set(probes)
    if p.data.ndim != 4 or p.data.shape[-1] not in (1, 3):
        raise ShapeError(
            f"ConSEAligner embeds image probes [n, H, W, C] with C in (1, 3); probe set {p.name!r} "
            f"has shape {p.data.shape}"
        )
    return p.data, probes_fingerprint(p), p.name


def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
        h.update(b"\0")
    return h.hexdigest()


class ConSEAligner:
    """Text queries on ANY image probes, offline: ConSE through EfficientNet-Lite0 into MiniLM's space.

    Every probe is classified by a real ImageNet-1k classifier (EfficientNet-Lite0, run through
    the probe engine, which resizes the probes to 224x224 and repeats gray channels) and mapped
    into the text space as the probability-weighted mean of the embeddings of its top-T class
    names (:func:`conse_embeddings`). A text's descriptor is its cosine to every probe's
    embedding (the gallery then z-scores it like a logit):

    .. math:: c_i = \\cos(\\mathrm{txt}(t), e_i)

    It needs no probe labels, so ``gallery.search_text("dog", ConSEAligner())`` works on a gallery
    built on natural-image probes, for words in no label set. It is only as good as the classifier's
    reading of the probes: tiny gray probes (28x28 upsampled) are far from ImageNet photos.

    Class names are prompt-ensembled like the queries (``"a photo of a {}."``); with ``synonyms``
    every comma-separated synonym of a name (``"tabby, tabby cat"``) is a prompt of its own.
    Probe logits (the expensive part) and class-name embeddings are cached in memory and, with
    ``cache=True``, on disk under ``cache_dir("conse")``, keyed by the probe set's fingerprint and
    the models' weights, so a second ``weightspace search query`` on the same gallery costs one text
    encoding.

    Args:
        encoder: text encoder with ``encode(texts) -> [n, d]`` (default: :func:`weightspace.nets.load_minilm`).
        classifier: a one-model :class:`~weightspace.zoo.Zoo` whose outputs are classes (default:
            :func:`weightspace.zoo.load_efficientnet_lite0`).
        top: T, the classes mixed per probe (default :data:`DEFAULT_CONSE_TOP`).
        class_names: one name per classifier output (default: the full WordNet lemmas of ImageNet
            for the default classifier, else the classifier's ``meta`` class names).
        synonyms: split class names on ``","`` into synonyms and average their prompts.
        templates: prompt templates with one ``{}`` (averaged), for class names and queries alike.
        probe_chunk: probes per classifier call (default: from the probe engine's memory budget).
        cache: keep probe logits and class embeddings on disk.
        progress: progress bar while probing (``None``: for long jobs).

    Example:
        >>> from weightspace.data import make_probes
        >>> from weightspace.search import ConSEAligner
        >>> probes = make_probes("natural", 4, shape=(32, 32, 3))
        >>> d = ConSEAligner().describe(["a cat", "a rocket"], probes)    # doctest: +SKIP
        >>> d.shape                                                       # doctest: +SKIP
        (2, 4)

    References:
        Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic Embeddings", ICLR 2014;
        Kahana et al., "Can this Model Also Recognize Dogs? Zero-Shot Model Search from Weights", 2025.
    """

    def __init__(
        self,
        encoder: Any = None,
        classifier: Any = None,
        *,
        top: int = DEFAULT_CONSE_TOP,
        class_names: Sequence[str] | None = None,
        synonyms: bool = True,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        probe_chunk: int | None = None,
        cache: bool = True,
        progress: bool | None = None,
    ) -> None:
        if encoder is not None and not callable(getattr(encoder, "encode", None)):
            raise ConfigError(f"ConSEAligner needs a text encoder with .encode(texts), got {type(encoder).__name__}")
        if classifier is not None:
            from weightspace.zoo import Zoo

            if not isinstance(classifier, Zoo) or len(classifier) != 1:
                raise ConfigError(
                    "ConSEAligner's classifier must be a one-model Zoo (e.g. load_efficientnet_lite0()), "
                    f"got {type(classifier).__name__}"
                    + (f" of {len(classifier)} models" if isinstance(classifier, Zoo) else "")
                )
        if not isinstance(top, int | np.integer) or isinstance(top, bool) or top < 1:
            raise ConfigError(f"top must be a positive int, got {top!r}")
        if not templates or any("{}" not in t for t in templates):
            raise ConfigError(f"templates must each contain '{{}}', got {templates!r}")
        if class_names is not None:
            class_names = [str(n) for n in class_names]
            if not class_names or any(not n.strip() for n in class_names):
                raise ConfigError("class_names must be non-empty strings")
        self._encoder = encoder
        self._classifier = classifier
        self.top = int(top)
        self._names = class_names
        self.synonyms = bool(synonyms)
        self.templates = tuple(templates)
        self.probe_chunk = probe_chunk
        self.cache = bool(cache)
        self.progress = progress
        self._logits: dict[str, np.ndarray] = {}
        self._class_emb: np.ndarray | None = None
        self._classifier_key: str | None = None

    # ---- the two models, loaded on first use ------------------------------------------------
    @property
    def encoder(self) -> Any:
        """The text encoder (MiniLM unless one was given)."""
        if self._encoder is None:
            from weightspace.nets import load_minilm

            self._encoder = load_minilm()
        return self._encoder

    @property
    def classifier(self) -> Any:
        """The image classifier, a one-model zoo (EfficientNet-Lite0 unless one was given)."""
        if self._classifier is None:
            from weightspace.zoo import load_efficientnet_lite0

            self._classifier = load_efficientnet_lite0()
        return self._classifier

    @property
    def class_names(self) -> list[str]:
        """One name per classifier output (synonyms still comma-joined)."""
        if self._names is None:
            if self._classifier is None:  # the default: ImageNet-1k with every WordNet lemma
                from weightspace.nets import imagenet_classes

                self._names = imagenet_classes(full=True)
            else:
                names = self._classifier.classes(0)
                if names is None:
                    raise ConfigError(
                        f"classifier {self._classifier.name!r} has no class names in its meta; pass class_names="
                    )
                self._names = [str(n) for n in names]
        return self._names

    def _classifier_fingerprint(self) -> str:
        """What identifies the classifier's function: its checkpoint bytes (default) or parameters."""
        if self._classifier_key is None:
            if self._classifier is None:
                from weightspace.nets._pretrained import _sha256, efficientnet_lite0_checkpoint

                self._classifier_key = _sha("efficientnet-lite0", _sha256(efficientnet_lite0_checkpoint()))
            else:
                h = hashlib.sha256(self._classifier.arch.signature.encode())
                for k in sorted(self._classifier.params):
                    h.update(k.encode())
                    h.update(np.ascontiguousarray(np.asarray(self._classifier.params[k], np.float32)).tobytes())
                self._classifier_key = h.hexdigest()
        return self._classifier_key

    def _cached(self, kind: str, key: str, compute: Callable[[], np.ndarray], meta: dict[str, str]) -> np.ndarray:
        if not self.cache:
            return compute()
        from weightspace._safetensors import read_safetensors, write_safetensors

        path = cache_dir("conse") / f"{kind}-{key[:32]}.safetensors"
        if path.is_file():
            try:
                tensors, m = read_safetensors(path)
                if m.get("key") == key and "value" in tensors:
                    return np.asarray(tensors["value"], np.float32)
            except (LoadError, OSError, ValueError):
                pass  # a corrupt or foreign cache file is recomputed, never trusted
        value = np.ascontiguousarray(compute(), np.float32)
        write_safetensors(path, {"value": value}, {**meta, "key": key, "version": _CACHE_VERSION})
        return value

    # ---- the ConSE pieces ---------------------------------------------------------------------
    def probe_logits(self, probes: Any) -> Float[np.ndarray, "probes classes"]:
        """The classifier's logits on every probe ``[probes, classes]`` (computed once per probe set)."""
        data, fp, name = _probe_images(probes)
        if fp not in self._logits:
            key = _sha("logits", _CACHE_VERSION, fp, self._classifier_fingerprint())

            def compute() -> np.ndarray:
                from weightspace.probing import probe

                return np.asarray(
                    probe(self.classifier, data, probe_chunk=self.probe_chunk, progress=self.progress)[0], np.float32
                )

            logits = self._cached("logits", key, compute, {"probes": name, "probes_fingerprint": fp})
            n_cls = len(self.class_names)
            if logits.shape != (len(data), n_cls):
                raise ShapeError(
                    f"classifier logits on {name!r} have shape {logits.shape}, expected "
                    f"{(len(data), n_cls)} (one class name per output)"
                )
            self._logits[fp] = logits
        return self._logits[fp]

    def _encode_names(self, names: Sequence[str], *, split: bool) -> np.ndarray:
        """Unit embedding per name: the mean of its (synonyms x templates) prompt embeddings."""
        groups = [([s.strip() for s in n.split(",") if s.strip()] or [n]) if split else [n] for n in names]
        prompts = [t.format(s) for g in groups for s in g for t in self.templates]
        emb = _unit(self.encoder.encode(prompts), "prompt embeddings")
        if emb.shape[0] != len(prompts):
            raise ShapeError(f"text encoder returned {emb.shape[0]} embeddings for {len(prompts)} prompts")
        bounds = np.cumsum([0] + [len(g) * len(self.templates) for g in groups])
        out = np.stack([emb[a:b].mean(0) for a, b in itertools.pairwise(bounds)])
        return _unit(out, "class-name embeddings")

    def class_embeddings(self) -> Float[np.ndarray, "classes dim"]:
        """Unit text embeddings of the class names ``[classes, dim]`` (computed once)."""
        if self._class_emb is None:
            names = self.class_names
            enc = self.encoder
            # the encoder's identity: its output on a fixed text (any change of weights changes it)
            canary = np.asarray(enc.encode(["ConSE cache canary: a photo of a dog."]), np.float32)
            key = _sha("classes", _CACHE_VERSION, names, self.templates, self.synonyms, canary.round(5).tobytes())
            self._class_emb = self._cached(
                "classes", key, lambda: self._encode_names(names, split=self.synonyms), {"classes": str(len(names))}
            )
        return self._class_emb

    def probe_embeddings(self, probes: Any) -> Float[np.ndarray, "probes dim"]:
        """ConSE embeddings of the probes ``[probes, dim]`` (unit rows) in the text space."""
        return conse_embeddings(
            self.probe_logits(probes), self.class_embeddings(), top=min(self.top, len(self.class_names))
        )

    def describe(self, texts: Sequence[str], probes: Any) -> Float[np.ndarray, "texts probes"]:
        """Cosine of each text's prompt embedding to each probe's ConSE embedding ``[texts, probes]``."""
        texts = check_texts(texts)
        img = self.probe_embeddings(probes)
        txt = self._encode_names(texts, split=False)  # a query is one concept, commas and all
        if txt.shape[1] != img.shape[1]:
            raise ShapeError(f"text embeddings have dim {txt.shape[1]}, ConSE probe embeddings {img.shape[1]}")
        return np.ascontiguousarray((txt @ img.T).astype(np.float32))

    def __repr__(self) -> str:
        clf = "efficientnet-lite0" if self._classifier is None else self._classifier.name
        return f"ConSEAligner(classifier={clf!r}, top={self.top}, templates={self.templates!r})"


def _labelled(probes: Any) -> bool:
    return getattr(probes, "labels", None) is not None and getattr(probes, "label_names", None) is not None


def default_aligner(probes: Any) -> Any:
    """The offline aligner for a probe set: :class:`LabelAligner` (MiniLM) when the probes carry labels,
    else :class:`ConSEAligner` (EfficientNet-Lite0 + MiniLM, loaded on first use).

    Example:
        >>> from weightspace.data import make_probes
        >>> type(default_aligner(make_probes("natural", 2, shape=(8, 8, 1)))).__name__
        'ConSEAligner'
    """
    return _cli_aligner("auto", probes)


def _cli_aligner(kind: str, probes: Any, *, top: int | None = None, clip: str | None = None) -> Any:
    """The aligner that ``weightspace search query --text`` asks for with ``--aligner``/``--conse-top``/``--clip``."""
    if clip is not None:
        from weightspace.nets import load_clip
        from weightspace.search._text import CLIPAligner

        return CLIPAligner.from_clip(load_clip(clip))
    if kind not in ("auto", "label", "conse"):
        raise ConfigError(f"unknown aligner {kind!r}; expected auto, label or conse")
    if kind == "label" or (kind == "auto" and _labelled(probes)):
        from weightspace.nets import load_minilm
        from weightspace.search._text import LabelAligner

        return LabelAligner(load_minilm())
    return ConSEAligner(top=top if top is not None else DEFAULT_CONSE_TOP)

"""Embedding galleries: model embeddings stored in the ONE on-disk gallery format of weightspace.search.

An embedding gallery is a ProbeLog gallery (``weightspace.search.build_gallery``) in which every
model has one "logit" whose descriptor is its L2-normalised embedding: the probe axis is the
embedding axis. Its probe file records the embedding axis and a fingerprint of the encoder
(``data[i] = [i, code]``), so embeddings of another encoder cannot be appended to it by mistake.
Stored as float32 without z-scoring; searched over all dimensions with L2 distance, which on unit
vectors ranks exactly as cosine similarity.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from weightspace._errors import ConfigError, InvalidValueError


def encoder_fingerprint(encoder: Any) -> str:
    """sha256 of an encoder's config and parameter values."""
    from flax import nnx

    h = hashlib.sha256(repr(getattr(encoder, "config", {})).encode())
    for path, v in sorted(nnx.to_flat_state(nnx.state(encoder, nnx.Param)), key=lambda kv: str(kv[0])):
        h.update(str(path).encode())
        h.update(np.ascontiguousarray(np.asarray(v[...] if hasattr(v, "__getitem__") else v, np.float32)).tobytes())
    return h.hexdigest()


def embedding_axis(dim: int, fingerprint: str, *, source: str = "") -> Any:
    """The probe set of an embedding gallery: one 'probe' per embedding dimension, tagged by the encoder."""
    from weightspace.data import ProbeSet

    code = float(int(fingerprint[:6], 16))  # 24 bits: exact in float32
    data = np.stack([np.arange(dim, dtype=np.float32), np.full(dim, code, np.float32)], 1)
    return ProbeSet(
        name=f"embedding-{fingerprint[:12]}",
        data=data,
        provenance=f"embedding axis of encoder sha256 {fingerprint} {source}".strip(),
    )


def _task_name(meta_row: dict[str, Any]) -> str | None:
    if meta_row.get("classes"):
        return "+".join(str(c) for c in meta_row["classes"])
    if meta_row.get("label_name") is not None:
        return str(meta_row["label_name"])
    return None


def embed_gallery(
    encoder: Any,
    source: Any,
    out: str | os.PathLike[str],
    *,
    chunk: int = 256,
    source_name: str = "",
    models_per_shard: int | None = None,
) -> Any:
    """Embed every model of a Zoo / Collection and store the embeddings as a gallery (new or appended).

    Args:
        encoder: a trained encoder (see :func:`load_encoder`).
        source: a Zoo, a Collection or a sequence of them.
        out: the gallery directory; an existing embedding gallery of the same encoder is appended to.
        chunk: models embedded per call.
        source_name: recorded in the probe file's provenance.

    Returns:
        The opened :class:`weightspace.search.Gallery`.

    Example:
        >>> import jax, tempfile
        >>> from flax import nnx
        >>> from weightspace.nets import SIREN
        >>> from weightspace.zoo import Zoo
        >>> from weightspace.equivariant import GraphEncoder
        >>> enc = GraphEncoder(taps=(1,), width=4, rounds=1, embed_dim=8, max_inputs=2, max_outputs=1,
        ...                    rngs=nnx.Rngs(0))
        >>> g = embed_gallery(enc, Zoo.init(SIREN(hidden=(6, 6)), 5, key=jax.random.key(0), name="inr"),
        ...                   tempfile.mkdtemp())
        >>> len(g), g.num_probes
        (5, 8)
        >>> [h.model_id for h in neighbours(g, "inr-000002", top=2)][0] != "inr-000002"
        True
    """
    from weightspace.equivariant._embed import embed_zoo
    from weightspace.equivariant._layout import _zoos_of
    from weightspace.search import Responses, build_gallery

    zoos = _zoos_of(source)
    fp = encoder_fingerprint(encoder)
    items = []
    for z in zoos:
        emb, ids = embed_zoo(encoder, z, chunk=chunk)
        if not np.isfinite(emb).all():
            raise InvalidValueError(f"zoo {z.name!r}: the encoder produced NaN/Inf embeddings")
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        items.append(
            Responses(
                z.name,
                emb[:, :, None].astype(np.float32),
                ids,
                classes=[[_task_name(z.row(i)) or ""] for i in range(len(z))],
            )
        )
    probes = embedding_axis(items[0].values.shape[1], fp, source=source_name)
    return build_gallery(items, probes, out, dtype="float32", normalize=False, models_per_shard=models_per_shard)


def neighbours(gallery: Any, model_id: str, *, top: int = 10, zoo: str | None = None) -> list[Any]:
    """The ``top`` models nearest to a gallery model (cosine on its stored embedding), itself excluded."""
    from weightspace.search import Gallery, open_gallery

    g = gallery if isinstance(gallery, Gallery) else open_gallery(gallery)
    if not g.probes.name.startswith("embedding-") or g.normalize:
        raise ConfigError(
            f"{g.path} is a ProbeLog gallery, not an embedding gallery (`weightspace encoder embed` makes those)"
        )
    res = g.search_logit((model_id, 0), zoo=zoo, top=top, selection="all", distance="l2", k=g.num_probes)
    return list(res.hits)

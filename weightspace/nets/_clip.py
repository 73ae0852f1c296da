"""CLIP image and text towers in pure JAX, loading Hugging Face ``CLIPModel`` safetensors.

Tensor names are those of ``transformers.CLIPModel.state_dict()`` (``vision_model.*``,
``text_model.*``, ``visual_projection.weight``, ``text_projection.weight``, ``logit_scale``) in
PyTorch layouts. Both towers are pre-LayerNorm transformers; the layer stack runs as one
``lax.scan`` over per-layer tensors stacked on axis 0 (one compiled layer body).
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
from weightspace.nets._base import resize_images
from weightspace.nets._minilm import _bucket, _check_texts, layer_norm

_ACTS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CLIPTowerConfig:
    """One tower (text or vision) of CLIP: a pre-LN transformer.

    ``image_size``/``patch_size``/``num_channels`` matter for the vision tower only;
    ``vocab_size``/``max_position``/``eos_token_id`` for the text tower only.
    """

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    vocab_size: int = 49408
    max_position: int = 77
    eos_token_id: int = 2
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.hidden_act not in _ACTS:
            raise ConfigError(f"unsupported hidden_act {self.hidden_act!r}; known: {sorted(_ACTS)}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} not divisible by patch_size {self.patch_size}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class CLIPConfig:
    """Static description of a CLIP model (hashable: a static ``jit`` argument).

    Example:
        >>> cfg = CLIPConfig.from_hf({"projection_dim": 16,
        ...     "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        ...                     "num_attention_heads": 4, "vocab_size": 100, "max_position_embeddings": 16},
        ...     "vision_config": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
        ...                       "num_attention_heads": 4, "image_size": 32, "patch_size": 8}})
        >>> cfg.param_shapes()["vision_model.embeddings.position_embedding.weight"]
        (17, 48)
    """

    text: CLIPTowerConfig
    vision: CLIPTowerConfig
    projection_dim: int = 512

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> CLIPConfig:
        """From a Hugging Face ``CLIPModel`` ``config.json`` dict (defaults as ``transformers``)."""

        def tower(d: Mapping[str, Any], *, vision: bool) -> CLIPTowerConfig:
            common: dict[str, Any] = dict(
                hidden_size=int(d.get("hidden_size", 768 if vision else 512)),
                intermediate_size=int(d.get("intermediate_size", 3072 if vision else 2048)),
                num_layers=int(d.get("num_hidden_layers", 12)),
                num_heads=int(d.get("num_attention_heads", 12 if vision else 8)),
                hidden_act=str(d.get("hidden_act", "quick_gelu")),
                layer_norm_eps=float(d.get("layer_norm_eps", 1e-5)),
            )
            if vision:
                return CLIPTowerConfig(
                    **common,
                    image_size=int(d.get("image_size", 224)),
                    patch_size=int(d.get("patch_size", 32)),
                    num_channels=int(d.get("num_channels", 3)),
                )
            return CLIPTowerConfig(
                **common,
                vocab_size=int(d.get("vocab_size", 49408)),
                max_position=int(d.get("max_position_embeddings", 77)),
                eos_token_id=int(d.get("eos_token_id", 2)),
            )

        if not isinstance(cfg.get("text_config", {}), Mapping) or not isinstance(cfg.get("vision_config", {}), Mapping):
            raise ConfigError("CLIP config: text_config and vision_config must be objects")
        return cls(
            text=tower(cfg.get("text_config") or {}, vision=False),
            vision=tower(cfg.get("vision_config") or {}, vision=True),
            projection_dim=int(cfg.get("projection_dim", 512)),
        )

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every ``CLIPModel`` tensor the towers read."""
        t, v, p = self.text, self.vision, self.projection_dim
        out: dict[str, tuple[int, ...]] = {
            "text_model.embeddings.token_embedding.weight": (t.vocab_size, t.hidden_size),
            "text_model.embeddings.position_embedding.weight": (t.max_position, t.hidden_size),
        }
        out.update(_layer_shapes("text_model.encoder", t))
        out["text_model.final_layer_norm.weight"] = (t.hidden_size,)
        out["text_model.final_layer_norm.bias"] = (t.hidden_size,)
        out["vision_model.embeddings.class_embedding"] = (v.hidden_size,)
        out["vision_model.embeddings.patch_embedding.weight"] = (
            v.hidden_size,
            v.num_channels,
            v.patch_size,
            v.patch_size,
        )
        out["vision_model.embeddings.position_embedding.weight"] = (v.num_patches + 1, v.hidden_size)
        out["vision_model.pre_layrnorm.weight"] = (v.hidden_size,)  # sic: the HF name
        out["vision_model.pre_layrnorm.bias"] = (v.hidden_size,)
        out.update(_layer_shapes("vision_model.encoder", v))
        out["vision_model.post_layernorm.weight"] = (v.hidden_size,)
        out["vision_model.post_layernorm.bias"] = (v.hidden_size,)
        out["visual_projection.weight"] = (p, v.hidden_size)
        out["text_projection.weight"] = (p, t.hidden_size)
        out["logit_scale"] = ()
        return out


_LAYER_PARTS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "layer_norm1",
    "mlp.fc1",
    "mlp.fc2",
    "layer_norm2",
)


def _layer_shapes(prefix: str, c: CLIPTowerConfig) -> dict[str, tuple[int, ...]]:
    d, f = c.hidden_size, c.intermediate_size
    dims = {
        "self_attn.q_proj": (d, d),
        "self_attn.k_proj": (d, d),
        "self_attn.v_proj": (d, d),
        "self_attn.out_proj": (d, d),
        "layer_norm1": (d,),
        "mlp.fc1": (f, d),
        "mlp.fc2": (d, f),
        "layer_norm2": (d,),
    }
    out: dict[str, tuple[int, ...]] = {}
    for i in range(c.num_layers):
        for part in _LAYER_PARTS:
            out[f"{prefix}.layers.{i}.{part}.weight"] = dims[part]
            out[f"{prefix}.layers.{i}.{part}.bias"] = (dims[part][0],)
    return out


def _stack_layers(prefix: str, c: CLIPTowerConfig, params: Mapping[str, Array]) -> dict[str, Array]:
    return {
        f"{part}.{wb}": jnp.stack(
            [jnp.asarray(params[f"{prefix}.layers.{i}.{part}.{wb}"]) for i in range(c.num_layers)]
        )
        for part in _LAYER_PARTS
        for wb in ("weight", "bias")
    }


def _lin(p: Mapping[str, Array], name: str, x: Array) -> Array:
    return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]


def _encoder(c: CLIPTowerConfig, layers: Mapping[str, Array], x: Array, bias: Array) -> Array:
    """Pre-LN transformer layers: ``x += attn(LN1 x); x += mlp(LN2 x)`` scanned over layers."""
    b, t, d = x.shape
    h = c.num_heads
    act = _ACTS[c.hidden_act]
    scale = 1.0 / math.sqrt(d // h)

    def layer(x: Array, p: Mapping[str, Array]) -> tuple[Array, None]:
        y = layer_norm(x, p["layer_norm1.weight"], p["layer_norm1.bias"], c.layer_norm_eps)
        q, k, v = (_lin(p, f"self_attn.{n}_proj", y).reshape(b, t, h, d // h) for n in ("q", "k", "v"))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale + bias
        ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(b, t, d)
        x = x + _lin(p, "self_attn.out_proj", ctx)
        y = layer_norm(x, p["layer_norm2.weight"], p["layer_norm2.bias"], c.layer_norm_eps)
        return x + _lin(p, "mlp.fc2", act(_lin(p, "mlp.fc1", y))), None

    x, _ = jax.lax.scan(layer, x, layers)
    return x


def clip_image_features(
    config: CLIPConfig, params: Mapping[str, Array], images: Float[Array, "batch h w c"]
) -> Float[Array, "batch proj"]:
    """Projected image features (``CLIPModel.get_image_features``), not normalised.

    Images are channels-last in ``[0, 1]`` at ``config.vision.image_size``; they are normalised
    inside with the CLIP mean/std. Patches are embedded by a stride-``patch`` conv written as a
    matmul; the pooled output is ``post_layernorm`` of the class token.

    .. math:: f = W_v\\,\\mathrm{LN_{post}}\\big(\\mathrm{Enc}(\\mathrm{LN_{pre}}([c; P x] + E_{pos}))_0\\big)

    Args:
        config: the static :class:`CLIPConfig`.
        params: ``CLIPModel`` tensors by name.
        images: ``[batch, S, S, C]`` in ``[0, 1]``.

    Returns:
        ``[batch, projection_dim]`` features.

    Example:
        >>> cfg = CLIPConfig(text=CLIPTowerConfig(hidden_size=8, intermediate_size=16, num_layers=1,
        ...     num_heads=2, vocab_size=10, max_position=5),
        ...     vision=CLIPTowerConfig(hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2,
        ...     image_size=8, patch_size=4), projection_dim=4)
        >>> import functools
        >>> p = {k: jnp.full(s, 0.1) for k, s in cfg.param_shapes().items()}
        >>> jax.eval_shape(functools.partial(clip_image_features, cfg), p, jnp.zeros((2, 8, 8, 3))).shape
        (2, 4)
    """
    return _image_features(config, params, _stack_layers("vision_model.encoder", config.vision, params), images)


def _image_features(
    config: CLIPConfig, params: Mapping[str, Array], layers: Mapping[str, Array], images: Array
) -> Array:
    v = config.vision
    b = images.shape[0]
    mean, std = jnp.asarray(CLIP_MEAN[: v.num_channels]), jnp.asarray(CLIP_STD[: v.num_channels])
    x = (images - mean) / std
    g, ps = v.image_size // v.patch_size, v.patch_size
    patches = x.reshape(b, g, ps, g, ps, v.num_channels).transpose(0, 1, 3, 5, 2, 4).reshape(b, g * g, -1)
    w = params["vision_model.embeddings.patch_embedding.weight"].reshape(v.hidden_size, -1)  # (C, kh, kw) order
    x = patches @ w.T
    cls = jnp.broadcast_to(params["vision_model.embeddings.class_embedding"], (b, 1, v.hidden_size))
    x = jnp.concatenate([cls, x], axis=1) + params["vision_model.embeddings.position_embedding.weight"][None]
    x = layer_norm(
        x, params["vision_model.pre_layrnorm.weight"], params["vision_model.pre_layrnorm.bias"], v.layer_norm_eps
    )
    x = _encoder(v, layers, x, jnp.zeros((), x.dtype))
    pooled = layer_norm(
        x[:, 0],
        params["vision_model.post_layernorm.weight"],
        params["vision_model.post_layernorm.bias"],
        v.layer_norm_eps,
    )
    return pooled @ params["visual_projection.weight"].T


def clip_text_features(
    config: CLIPConfig,
    params: Mapping[str, Array],
    input_ids: Int[Array, "batch tokens"],
    attention_mask: Int[Array, "batch tokens"] | None = None,
) -> Float[Array, "batch proj"]:
    """Projected text features (``CLIPModel.get_text_features``), not normalised.

    Causal self-attention plus the padding mask; the pooled token is the end-of-text token: the
    largest id when ``eos_token_id == 2`` (the original CLIP configs), else the first
    ``eos_token_id`` (as ``transformers``).

    Args:
        config: the static :class:`CLIPConfig`.
        params: ``CLIPModel`` tensors by name.
        input_ids: ``[batch, tokens]`` token ids (``tokens <= max_position``).
        attention_mask: 1 for real tokens, 0 for padding (default: all ones).

    Returns:
        ``[batch, projection_dim]`` features.
    """
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    layers = _stack_layers("text_model.encoder", config.text, params)
    return _text_features(config, params, layers, input_ids, attention_mask)


def _text_features(
    config: CLIPConfig,
    params: Mapping[str, Array],
    layers: Mapping[str, Array],
    input_ids: Array,
    attention_mask: Array,
) -> Array:
    t = config.text
    b, n = input_ids.shape
    x = (
        params["text_model.embeddings.token_embedding.weight"][input_ids]
        + params["text_model.embeddings.position_embedding.weight"][:n][None]
    )
    allowed = jnp.tril(jnp.ones((n, n), bool))[None, None] & (attention_mask[:, None, None, :] > 0)
    bias = jnp.where(allowed, 0.0, jnp.finfo(x.dtype).min).astype(x.dtype)
    x = _encoder(t, layers, x, bias)
    x = layer_norm(
        x, params["text_model.final_layer_norm.weight"], params["text_model.final_layer_norm.bias"], t.layer_norm_eps
    )
    ids = input_ids.astype(jnp.int32)
    eos = jnp.argmax(ids, axis=-1) if t.eos_token_id == 2 else jnp.argmax(ids == t.eos_token_id, axis=-1)
    pooled = x[jnp.arange(b), eos]
    return pooled @ params["text_projection.weight"].T


def _normalize(x: Array) -> Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnums=0)
def _image_embed_jit(
    config: CLIPConfig, params: Mapping[str, Array], layers: Mapping[str, Array], images: Array
) -> Array:
    return _normalize(_image_features(config, params, layers, images))


@functools.partial(jax.jit, static_argnums=0)
def _text_embed_jit(
    config: CLIPConfig, params: Mapping[str, Array], layers: Mapping[str, Array], ids: Array, mask: Array
) -> Array:
    return _normalize(_text_features(config, params, layers, ids, mask))


class CLIPModel:
    """A CLIP model in JAX: unit-norm image and text embeddings in a shared space.

    Attributes:
        config: the :class:`CLIPConfig`.
        params: ``CLIPModel`` tensor name -> ``jax.Array``.
        tokenizer: a ``tokenizers.Tokenizer`` (from ``tokenizer.json``) or ``None``.

    Example:
        >>> import jax.numpy as jnp
        >>> cfg = CLIPConfig(text=CLIPTowerConfig(hidden_size=8, intermediate_size=16, num_layers=1,
        ...     num_heads=2, vocab_size=10, max_position=5),
        ...     vision=CLIPTowerConfig(hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2,
        ...     image_size=8, patch_size=4), projection_dim=4)
        >>> shapes = cfg.param_shapes()
        >>> model = CLIPModel({k: np.linspace(-1, 1, math.prod(s)).reshape(s) for k, s in shapes.items()}, cfg)
        >>> model.embed_images(np.zeros((3, 16, 16, 1))).shape  # probes are resized and made RGB
        (3, 4)
        >>> model.embed_token_ids(np.array([[1, 4, 9, 0]]), np.array([[1, 1, 1, 0]])).shape
        (1, 4)
    """

    def __init__(
        self,
        params: Mapping[str, Any],
        config: CLIPConfig,
        tokenizer: Any = None,
        *,
        batch_size: int = 64,
        source: str = "",
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        where = source or "CLIP params"
        expected = config.param_shapes()
        missing = [k for k in expected if k not in params]
        if missing:
            raise LoadError(f"{where}: missing CLIP tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        for k, shape in expected.items():
            if tuple(np.shape(params[k])) != shape:
                raise ShapeError(f"{where}: tensor {k!r} has shape {tuple(np.shape(params[k]))}, expected {shape}")
        self.config = config
        self.params: dict[str, Array] = {k: jnp.asarray(params[k], jnp.float32) for k in expected}
        # per-layer tensors stacked once for the scanned encoders (not on every call)
        self._vision_layers = _stack_layers("vision_model.encoder", config.vision, self.params)
        self._text_layers = _stack_layers("text_model.encoder", config.text, self.params)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.source = source

    @property
    def dim(self) -> int:
        """Width of the shared embedding space (``projection_dim``)."""
        return self.config.projection_dim

    @property
    def logit_scale(self) -> float:
        """``exp(logit_scale)``: the temperature CLIP multiplies cosine similarities by."""
        return float(jnp.exp(self.params["logit_scale"]))

    def adapt(self, images: Float[Array, "n h w c"]) -> Float[Array, "n S S C"]:
        """Resize ``[n, H, W, C]`` probes in ``[0, 1]`` to the vision tower's input (antialiased)."""
        v = self.config.vision
        return resize_images(images, (v.image_size, v.image_size, v.num_channels))

    def embed_images(self, images: Any, *, batch_size: int | None = None) -> np.ndarray:
        """Unit-norm image embeddings ``[n, dim]`` of channels-last images in ``[0, 1]``."""
        images = np.asarray(images, np.float32)
        if images.ndim != 4:
            raise ShapeError(f"embed_images expects [n, H, W, C] images, got shape {images.shape}")
        bs = self.batch_size if batch_size is None else int(batch_size)
        out = np.zeros((images.shape[0], self.dim), np.float32)
        for s in range(0, images.shape[0], bs):
            chunk = self.adapt(images[s : s + bs])
            rows = _bucket(chunk.shape[0], 1, bs)  # few compiled shapes
            chunk = jnp.pad(chunk, ((0, rows - chunk.shape[0]), (0, 0), (0, 0), (0, 0)))
            emb = _image_embed_jit(self.config, self.params, self._vision_layers, chunk)
            out[s : s + bs] = np.asarray(emb)[: min(bs, len(out) - s)]
        return out

    def embed_token_ids(self, input_ids: Any, attention_mask: Any = None) -> np.ndarray:
        """Unit-norm text embeddings ``[n, dim]`` from token ids ``[n, tokens]`` (and a padding mask)."""
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ShapeError(f"input_ids must be an integer [n, tokens] array, got {ids.dtype} {ids.shape}")
        t = self.config.text
        if ids.shape[1] > t.max_position:
            raise ShapeError(f"{ids.shape[1]} tokens exceed the text tower's {t.max_position} positions")
        if ids.size and (ids.min() < 0 or ids.max() >= t.vocab_size):
            raise InvalidValueError(f"token ids must be in [0, {t.vocab_size}), got [{ids.min()}, {ids.max()}]")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise ShapeError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
        out = np.zeros((ids.shape[0], self.dim), np.float32)
        bs = self.batch_size
        for s in range(0, ids.shape[0], bs):
            bi, bm = ids[s : s + bs], mask[s : s + bs]
            rows = _bucket(bi.shape[0], 1, bs)
            bi = np.pad(bi, ((0, rows - bi.shape[0]), (0, 0)))
            bm = np.pad(bm, ((0, rows - bm.shape[0]), (0, 0)), constant_values=1)
            emb = _text_embed_jit(
                self.config, self.params, self._text_layers, jnp.asarray(bi, jnp.int32), jnp.asarray(bm, jnp.int32)
            )
            out[s : s + bs] = np.asarray(emb)[: min(bs, len(out) - s)]
        return out

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm text embeddings ``[n, dim]``; needs the model directory's ``tokenizer.json``."""
        texts = _check_texts(texts)
        if self.tokenizer is None:
            raise LoadError(f"{self.source or 'this CLIP model'} has no tokenizer.json; use embed_token_ids")
        n_pos = self.config.text.max_position
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=n_pos)
        encs = self.tokenizer.encode_batch(texts)
        length = max((len(e.ids) for e in encs), default=1)
        ids = np.zeros((len(texts), length), np.int64)
        mask = np.zeros((len(texts), length), np.int64)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        return self.embed_token_ids(ids, mask) if texts else np.zeros((0, self.dim), np.float32)

    def similarity(self, image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
        """CLIP logits ``exp(logit_scale) * image_emb @ text_emb.T`` (``logits_per_image``)."""
        return self.logit_scale * np.asarray(image_emb) @ np.asarray(text_emb).T

    def __repr__(self) -> str:
        return f"CLIPModel(dim={self.dim}, image_size={self.config.vision.image_size}, source={self.source!r})"


def load_clip(path: str | Path, *, batch_size: int = 64) -> CLIPModel:
    """Load a Hugging Face CLIP directory (``config.json`` + ``model.safetensors`` [+ ``tokenizer.json``]).

    No CLIP weights ship offline; point this at a directory saved by
    ``transformers.CLIPModel.save_pretrained`` or downloaded from the Hub.

    Args:
        path: the model directory (or a ``.safetensors`` file next to its ``config.json``).
        batch_size: images/texts per forward pass.

    Returns:
        A :class:`CLIPModel`.

    Example:
        >>> load_clip("/nonexistent")
        Traceback (most recent call last):
        ...
        weightspace._errors.LoadError: /nonexistent: missing config.json (expected a Hugging Face CLIP directory)
    """
    p = Path(path)
    root, weights = (p.parent, p) if p.suffix == ".safetensors" else (p, p / "model.safetensors")
    cfg_file = root / "config.json"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise LoadError(f"{root}: missing {f.name} (expected a Hugging Face CLIP directory)")
    try:
        config = CLIPConfig.from_hf(json.loads(cfg_file.read_text()))
    except json.JSONDecodeError as e:
        raise LoadError(f"{cfg_file}: not valid JSON ({e})") from e
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise LoadError(f"{weights}: cannot read safetensors ({e})") from e
    tokenizer = None
    if (root / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    return CLIPModel(tensors, config, tokenizer, batch_size=batch_size, source=str(weights))

"""CLIP towers in JAX against transformers' PyTorch CLIPModel built from a small random config."""

from __future__ import annotations

import json

import numpy as np
import pytest

from weightspace import InvalidValueError, LoadError, ShapeError
from weightspace.nets import CLIPModel, clip_image_features, clip_text_features, load_clip
from weightspace.nets._clip import CLIP_MEAN, CLIP_STD
from weightspace.testing import assert_tree_allclose

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.torch

IMAGE, VOCAB, CTX = 30, 99, 16


_MODELS: dict = {}


def _make(eos: int, tmp_path_factory):
    """(torch model, its save_pretrained directory, eos id) for a tiny random CLIP."""
    if eos not in _MODELS:
        torch.manual_seed(eos)
        cfg = transformers.CLIPConfig(
            text_config=dict(
                vocab_size=VOCAB,
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=CTX,
                eos_token_id=eos,
            ),
            vision_config=dict(
                hidden_size=40,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=IMAGE,
                patch_size=6,
            ),
            projection_dim=24,
        )
        model = transformers.CLIPModel(cfg).eval()
        path = tmp_path_factory.mktemp(f"clip{eos}")
        model.save_pretrained(path)  # config.json + model.safetensors (the state_dict)
        _MODELS[eos] = (model, path, eos)
    return _MODELS[eos]


@pytest.fixture(scope="module", params=[2, 7], ids=["legacy-eos-argmax", "eos-token-7"])
def pair(request, tmp_path_factory):
    return _make(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _make(7, tmp_path_factory)


def _inputs(eos: int):
    rng = np.random.default_rng(eos)
    images = rng.random((5, IMAGE, IMAGE, 3), dtype=np.float32)
    ids = rng.integers(3, VOCAB - 1, (4, 9))
    ids[:, 5] = VOCAB - 1 if eos == 2 else eos  # end-of-text token (legacy configs take the largest id)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0  # right padding after the end-of-text token
    mask[2, 7:] = 0
    return images, ids, mask


def _pixel_values(images: np.ndarray):
    x = (images - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def test_towers_match_transformers(pair) -> None:
    model, path, eos = pair
    ours = load_clip(path)
    images, ids, mask = _inputs(eos)
    with torch.no_grad():
        ref_img = model.get_image_features(pixel_values=_pixel_values(images)).numpy()
        ref_txt = model.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        out = model(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), pixel_values=_pixel_values(images)
        )
    assert_tree_allclose(clip_image_features(ours.config, ours.params, images), ref_img)
    assert_tree_allclose(clip_text_features(ours.config, ours.params, ids, mask), ref_txt.numpy())
    img_emb, txt_emb = ours.embed_images(images), ours.embed_token_ids(ids, mask)
    assert_tree_allclose(img_emb, out.image_embeds.numpy())
    assert_tree_allclose(txt_emb, out.text_embeds.numpy())
    # logits are cosine similarities times exp(logit_scale) ~ 14.3: scale the tolerance with it
    assert_tree_allclose(ours.similarity(img_emb, txt_emb), out.logits_per_image.numpy(), scale=ours.logit_scale)


def test_batching_and_adapt(tiny) -> None:
    _, path, eos = tiny
    ours = load_clip(path, batch_size=4)
    images, ids, mask = _inputs(eos)
    full = load_clip(path).embed_images(images)
    assert_tree_allclose(ours.embed_images(images), full)  # 2 batches of 4, the last padded
    ours.batch_size = 3
    assert_tree_allclose(ours.embed_token_ids(ids, mask), load_clip(path).embed_token_ids(ids, mask))
    gray = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    emb = ours.embed_images(gray)  # probes of another size and 1 channel are adapted
    assert emb.shape == (3, 24)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_embed_texts_with_tokenizer(tiny, tmp_path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    _, path, eos = tiny
    for f in ("config.json", "model.safetensors"):
        (tmp_path / f).write_bytes((path / f).read_bytes())
    end = VOCAB - 1 if eos == 2 else eos
    vocab = {"[UNK]": 0, "a": 3, "photo": 4, "of": 5, "sandal": 6, "shirt": 8, "<eos>": end}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", end)])
    tok.save(str(tmp_path / "tokenizer.json"))
    ours = load_clip(tmp_path)
    got = ours.embed_texts(["a photo of a sandal", "shirt"])
    ids = np.array([[3, 4, 5, 3, 6, end], [8, end, 0, 0, 0, 0]])
    mask = (np.arange(6) < np.array([[6], [2]])).astype(np.int64)
    assert_tree_allclose(got, ours.embed_token_ids(ids, mask))
    assert ours.embed_texts([]).shape == (0, 24)


def test_bad_input(tiny, tmp_path) -> None:
    model, path, _ = tiny
    ours = load_clip(path / "model.safetensors")  # a weights file next to its config.json also works
    with pytest.raises(LoadError, match="tokenizer"):
        ours.embed_texts(["sandal"])
    with pytest.raises(InvalidValueError, match="token ids"):
        ours.embed_token_ids(np.array([[1, VOCAB]]))
    with pytest.raises(ShapeError, match="positions"):
        ours.embed_token_ids(np.ones((1, CTX + 1), np.int64))
    with pytest.raises(ShapeError, match=r"\[n, H, W, C\]"):
        ours.embed_images(np.zeros((IMAGE, IMAGE, 3)))
    with pytest.raises(LoadError, match=r"config\.json"):
        load_clip(tmp_path)
    params = {k: v.numpy() for k, v in model.state_dict().items()}
    del params["text_projection.weight"]
    with pytest.raises(LoadError, match=r"text_projection\.weight"):
        CLIPModel(params, ours.config)
    params["text_projection.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ShapeError, match=r"text_projection\.weight"):
        CLIPModel(params, ours.config)
    (tmp_path / "config.json").write_text(json.dumps({"projection_dim": 24}))
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(LoadError, match="safetensors"):
        load_clip(tmp_path)

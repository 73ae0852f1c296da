"""The probe engine and the apply_many formulations against a per-model loop of ``arch.apply``."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from weightspace import ConfigError, InvalidValueError, ShapeError
from weightspace.nets import CNN, MLP, SIREN, coordinate_grid
from weightspace.nets._standard import fast_sin
from weightspace.parallel import make_mesh, shard_models
from weightspace.probing import activation_bytes, chunk_sizes, probe, probe_collection, probe_kernel
from weightspace.testing import assert_no_recompile, assert_tree_allclose
from weightspace.zoo import Collection, Zoo

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def _fashion(n: int) -> np.ndarray:
    """``n`` real Fashion-MNIST test images ``[n, 28, 28, 1]`` in [0, 1] (IDX file)."""
    if not FMNIST.exists():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    with gzip.open(FMNIST) as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16)
    return (raw[: n * 784].reshape(n, 28, 28, 1) / 255.0).astype(np.float32)


ARCHS = {
    "mlp": MLP(in_features=16, hidden=(32, 24), out_features=5),
    "mlp-image": MLP(
        in_features=196,
        hidden=(32,),
        out_features=10,
        image_shape=(14, 14, 1),
        input_mean=0.3,
        input_std=0.35,
        activation="tanh",
    ),
    "cnn": CNN(image_shape=(28, 28, 1), channels=(8, 8, 8), strides=2, input_mean=0.29, input_std=0.35),
    "cnn-dense": CNN(image_shape=(12, 12, 3), channels=(4, 6), strides=1, padding=0, dense=(7,), out_features=3),
    "siren": SIREN(hidden=(32, 32), w0=30.0),
}


def _probes(name: str, n: int) -> np.ndarray:
    arch = ARCHS[name]
    if name == "siren":
        return np.asarray(coordinate_grid(28, 28))[:n]
    if name in ("cnn", "mlp-image"):
        return _fashion(n)  # real images; MLP-image adapts (resizes) them to 14x14
    return np.random.default_rng(1).normal(size=(n, *arch.input_shape)).astype(np.float32)


@functools.cache
def _zoo(name: str, n: int) -> Zoo:
    return Zoo.init(ARCHS[name], n, key=jax.random.key(7), name=name).to_numpy()


def _loop(zoo: Zoo, x: np.ndarray) -> np.ndarray:
    """The oracle: one model at a time, ``arch.apply`` on the adapted probes."""
    xa = zoo.arch.adapt(jnp.asarray(x))
    one = jax.jit(zoo.arch.apply)  # compiled once; the loop over models stays in Python
    return np.stack([np.asarray(one(zoo.model(i), xa)) for i in range(len(zoo))])


@pytest.mark.parametrize(
    ("name", "formulation", "group"),
    [
        ("mlp", "vmap", None),
        ("mlp", "einsum", None),
        ("mlp", "scan", None),
        ("mlp", "scan", 2),
        ("mlp-image", "einsum", None),
        ("mlp-image", "auto", None),
        pytest.param("cnn", "vmap", None, marks=pytest.mark.slow),
        ("cnn", "einsum", None),
        ("cnn", "scan", 3),
        ("cnn", "im2col", None),
        pytest.param("cnn-dense", "einsum", None, marks=pytest.mark.slow),
        ("cnn-dense", "im2col", 2),
        ("siren", "vmap", None),
        ("siren", "einsum", None),
        ("siren", "scan", 2),
        ("siren", "im2col", None),
    ],
    ids=[
        "mlp-vmap",
        "mlp-einsum",
        "mlp-scan",
        "mlp-scan-g2",
        "mlp-image-einsum",
        "mlp-image-auto",
        "cnn-vmap",
        "cnn-einsum",
        "cnn-scan-g3",
        "cnn-im2col",
        "cnn-dense-einsum",
        "cnn-dense-im2col-g2",
        "siren-vmap",
        "siren-einsum",
        "siren-scan-g2",
        "siren-im2col",
    ],
)
def test_formulations_equal_per_model_loop(name: str, formulation: str, group: int | None) -> None:
    zoo = _zoo(name, 6)
    x = _probes(name, 40)
    fn = jax.jit(lambda p, xa: zoo.arch.apply_many(p, xa, formulation=formulation, group=group))
    got = fn(zoo.params, zoo.arch.adapt(jnp.asarray(x)))
    assert got.shape == (6, 40, zoo.arch.num_outputs)
    assert_tree_allclose(np.asarray(got), _loop(zoo, x))


def test_siren_exact_and_fast_sin_agree() -> None:
    zoo = _zoo("siren", 4)
    x = jnp.asarray(_probes("siren", 100))
    for sin in ("fast", "exact"):
        for form in ("einsum", "scan"):
            got = zoo.arch.apply_many(zoo.params, x, formulation=form, sin=sin)
            assert_tree_allclose(np.asarray(got), _loop(zoo, np.asarray(x)))
    with pytest.raises(ConfigError, match="sin"):
        zoo.arch.apply_many(zoo.params, x, sin="taylor")


def test_unknown_formulation_and_bad_batch_raise() -> None:
    zoo = _zoo("mlp", 2)
    with pytest.raises(ConfigError, match="formulation"):
        zoo.arch.apply_many(zoo.params, jnp.ones((3, 16)), formulation="fft")
    with pytest.raises(ShapeError, match="expected a batch"):
        zoo.arch.apply_many(zoo.params, jnp.ones((3, 15)), formulation="scan")


def test_fast_sin_accuracy() -> None:
    x = np.random.default_rng(0).uniform(-2.0e4, 2.0e4, 200_000).astype(np.float32)
    x[:5] = [0.0, np.pi, -np.pi / 2, 1e-30, 100 * np.pi]
    err = np.abs(np.asarray(fast_sin(jnp.asarray(x)), np.float64) - np.sin(x.astype(np.float64)))
    assert err.max() < 2 * np.finfo(np.float32).eps


@pytest.mark.parametrize("name", ["mlp", "cnn", "siren"], ids=["mlp", "cnn", "siren"])
@pytest.mark.parametrize("chunks", [(None, None), (2, 7)], ids=["unchunked", "chunks-2x7"])
def test_probe_equals_loop(name: str, chunks: tuple[int | None, int | None]) -> None:
    zoo, x = _zoo(name, 5), _probes(name, 30)
    got = probe(zoo, x, model_chunk=chunks[0], probe_chunk=chunks[1], mesh=False)
    assert got.dtype == np.float32 and got.shape == (5, 30, zoo.arch.num_outputs)
    assert_tree_allclose(got, _loop(zoo, x))


@pytest.mark.parametrize(
    "name",
    ["mlp", pytest.param("cnn", marks=pytest.mark.slow), pytest.param("siren", marks=pytest.mark.slow)],
    ids=["mlp", "cnn", "siren"],
)
def test_sharded_equals_unsharded(name: str) -> None:
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    zoo, x = _zoo(name, 11), _probes(name, 20)  # 11 models: padded to 16 over 8 devices
    ref = probe(zoo, x, mesh=False)
    assert_tree_allclose(probe(zoo, x), ref)  # auto mesh over all devices
    if name == "mlp":
        assert_tree_allclose(probe(zoo, x, mesh=make_mesh(), model_chunk=8, probe_chunk=9), ref)
        half = jax.make_mesh((2, 4), ("data", "models"))
        assert_tree_allclose(probe(zoo, x, mesh=half, model_chunk=4), ref)


def test_sharded_kernel_output_is_split_over_models() -> None:
    zoo, mesh = _zoo("mlp", 8), make_mesh()
    params = shard_models(zoo.params, mesh)
    x = jax.device_put(jnp.ones((3, 16)), NamedSharding(mesh, PartitionSpec()))
    out = probe_kernel(params, x, arch=zoo.arch, mesh=mesh)
    assert out.sharding.spec[0] == "models"
    assert len({s.device for s in out.addressable_shards}) == 8


def test_no_recompile_on_second_call() -> None:
    zoo, x = _zoo("mlp", 9), _probes("mlp", 25)
    a = probe(zoo, x, model_chunk=4, probe_chunk=10, mesh=False)  # pads the last chunks
    other = Zoo.init(zoo.arch, 9, key=jax.random.key(99))
    with assert_no_recompile(probe_kernel):
        b = probe(other, x * 2, model_chunk=4, probe_chunk=10, mesh=False)
    assert not np.allclose(a, b)
    assert_tree_allclose(b, _loop(other, x * 2))


def test_memmap_output_and_atomicity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zoo, x = _zoo("cnn", 5), _probes("cnn", 12)
    path = tmp_path / "r.npy"
    got = probe(zoo, x, out=path, model_chunk=2, probe_chunk=5, mesh=False)
    assert isinstance(got, np.memmap) and not got.flags.writeable
    assert_tree_allclose(np.load(path), _loop(zoo, x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.npy"]

    import weightspace.probing._probe as engine

    def boom(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(engine, "_store", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        probe(zoo, x, out=tmp_path / "s.npy", mesh=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.npy"]  # nothing half-written


@dataclasses.dataclass(frozen=True)
class _Probes:
    name: str
    data: np.ndarray
    provenance: str = "test"


def test_probe_set_objects_and_collections(tmp_path: Path) -> None:
    images = _fashion(16)
    cnn = _zoo("cnn", 3)
    mlp = Zoo.init(ARCHS["mlp-image"], 4, key=jax.random.key(3), name="mlpimg")
    coll = Collection([cnn, mlp])
    res = probe_collection(coll, _Probes("fmnist", images), mesh=False)
    assert [r.shape for r in res] == [(3, 16, 10), (4, 16, 10)]
    for zoo, r in zip(coll, res, strict=True):
        assert_tree_allclose(r, _loop(zoo, images))
    on_disk = probe_collection(coll, images, out=tmp_path, mesh=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000-cnn.npy", "001-mlpimg.npy"]
    assert_tree_allclose(list(map(np.asarray, on_disk)), res)


def test_rgb_probes_are_adapted() -> None:
    rgb = np.random.default_rng(0).random((6, 20, 20, 3), np.float32)
    zoo = _zoo("cnn", 3)  # 28x28 gray: resize + luminance
    assert_tree_allclose(probe(zoo, rgb, mesh=False), _loop(zoo, rgb))


def test_bad_inputs_raise() -> None:
    zoo = _zoo("mlp", 2)
    x = np.ones((4, 16), np.float32)
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(InvalidValueError, match="1 NaN/Inf"):
        probe(zoo, bad)
    with pytest.raises(ShapeError, match="do not fit"):
        probe(zoo, np.ones((4, 15), np.float32))
    with pytest.raises(ShapeError, match="at least one probe"):
        probe(zoo, np.ones((0, 16), np.float32))
    with pytest.raises(ShapeError, match="floats"):
        probe(zoo, np.ones((4, 16), np.int32))
    with pytest.raises(InvalidValueError, match="model_chunk"):
        probe(zoo, x, model_chunk=0)
    with pytest.raises(ConfigError, match="Mesh"):
        probe(zoo, x, mesh="cpu")
    with pytest.raises(ConfigError, match="'models' axis"):
        probe(zoo, x, mesh=jax.make_mesh((8,), ("data",)))
    with pytest.raises(ConfigError, match=r"\.npy"):
        probe(zoo, x, out="r.txt")
    with pytest.raises(InvalidValueError, match="memory_budget"):
        chunk_sizes(zoo.arch, 2, 4, memory_budget=0)


def test_chunk_sizes_respect_budget() -> None:
    arch = ARCHS["cnn"]
    act, pbytes = activation_bytes(arch), 4 * arch.num_params()
    assert act >= 4 * 14 * 14 * 8  # at least the first feature map of one probe
    budget = 2**22
    for devices in (1, 8):
        mc, pc = chunk_sizes(arch, 1000, 500, devices=devices, memory_budget=budget)
        assert mc % devices == 0 and 1 <= pc <= 500
        assert (mc // devices) * (pbytes + act * pc) <= budget or mc == devices
    mc, pc = chunk_sizes(arch, 3, 10, memory_budget=2**30)
    assert (mc, pc) == (3, 10)  # everything in one chunk when it fits
    mc, _ = chunk_sizes(arch, 1001, 10, memory_budget=(pbytes + act * 10) * 500)
    assert mc == 334  # balanced: 3 chunks of 334, not 500 + 500 + 1


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    zoo, x = _zoo("mlp", 4), _probes("mlp", 8)
    probe(zoo, x, model_chunk=2, progress=True, mesh=False)
    assert "probing mlp" in capsys.readouterr().err
    probe(zoo, x, model_chunk=2, progress=False, mesh=False)
    assert capsys.readouterr().err == ""


def test_cli_probe(tmp_path: Path) -> None:
    from weightspace.cli import main
    from weightspace.zoo import save_zoo

    zoo = _zoo("cnn", 3)
    save_zoo(zoo, tmp_path / "zoo.safetensors")
    np.save(tmp_path / "p.npy", _fashion(10))
    out = tmp_path / "resp.npy"
    rc = main(
        [
            "probe",
            str(tmp_path / "zoo.safetensors"),
            "--probes",
            str(tmp_path / "p.npy"),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert_tree_allclose(np.load(out), _loop(zoo, _fashion(10)))
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["probes"]["name"] == "p" and side["shape"] == [3, 10, 10] and side["model_ids"] == zoo.ids
    assert (
        main(["probe", str(tmp_path / "zoo.safetensors"), "--probes", str(tmp_path / "nope.npy"), "--out", str(out)])
        == 2
    )


@pytest.mark.slow
def test_cli_probe_named_probe_set(tmp_path: Path) -> None:
    pytest.importorskip("weightspace.data", reason="weightspace.data is not available yet")
    from weightspace.cli import main
    from weightspace.data import make_probes
    from weightspace.zoo import save_zoo

    zoo = _zoo("cnn", 2)
    save_zoo(zoo, tmp_path / "zoo.safetensors")
    out = tmp_path / "resp.npy"
    assert (
        main(
            [
                "probe",
                str(tmp_path / "zoo.safetensors"),
                "--probes",
                "uniform",
                "--n",
                "6",
                "--seed",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    ps = make_probes("uniform", 6, seed=3)
    assert_tree_allclose(np.load(out), _loop(zoo, ps.data))
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["probes"]["provenance"] == ps.provenance

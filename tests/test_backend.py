"""Per-program XLA compile options: accepted where known, dropped with a warning where not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from weightspace import _backend as backend

HELPERS = [
    ("memory_bound_cpu_options", "_INDIVIDUAL_DOTS", ()),
    ("training_cpu_options", "_WIDE_VECTORS", ()),
    ("small_heaps_cpu_options", "_SMALL_HEAPS", (4 << 20,)),
]
IDS = ["memory_bound", "training", "small_heaps"]


@pytest.mark.parametrize(("helper", "constant", "args"), HELPERS, ids=IDS)
def test_options_compile_and_keep_results(helper: str, constant: str, args: tuple) -> None:
    opts = getattr(backend, helper)(*args)
    assert opts == getattr(backend, constant)  # this suite runs on CPU
    x = jnp.linspace(-2.0, 2.0, 37)
    f = jax.jit(lambda x: jnp.tanh(x) * x + 1.0, compiler_options=dict(opts))
    assert jnp.allclose(f(x), jnp.tanh(x) * x + 1.0, atol=1e-6)


@pytest.mark.parametrize(("helper", "constant", "args"), HELPERS, ids=IDS)
def test_an_unknown_option_is_dropped_with_a_warning(helper: str, constant: str, args: tuple, monkeypatch) -> None:
    monkeypatch.setattr(backend, constant, (("xla_cpu_no_such_option_in_any_xla", 1),))
    backend._accepts.cache_clear()  # it warns once per option set
    with pytest.warns(RuntimeWarning, match="xla_cpu_no_such_option_in_any_xla"):
        assert getattr(backend, helper)(*args) == ()


def test_small_heaps_only_for_small_buffers() -> None:
    assert backend.small_heaps_cpu_options(backend._SMALL_BUFFER_BYTES) == backend._SMALL_HEAPS
    assert backend.small_heaps_cpu_options(backend._SMALL_BUFFER_BYTES + 1) == ()


def test_fit_passes_compiler_options_to_its_step() -> None:
    import numpy as np
    from flax import nnx

    from weightspace.learn import TrainConfig, fit

    x = np.random.default_rng(0).standard_normal((32, 3)).astype(np.float32)
    data = {"x": x, "y": x @ np.array([1.0, -2.0, 0.5], np.float32)}

    def mse(model, batch, key):
        return jnp.mean((model(batch["x"])[:, 0] - batch["y"]) ** 2), {}

    cfg = TrainConfig(steps=20, batch_size=8, learning_rate=0.05)
    runs = []
    for opts in (None, dict(backend.small_heaps_cpu_options(1 << 20))):
        model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
        fit(model, mse, data, config=cfg, compiler_options=opts, progress=False)
        runs.append(np.asarray(model.kernel[...]))
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-6, atol=1e-7)
    with pytest.raises(Exception, match="xla_cpu_no_such_option_in_any_xla"):
        fit(
            nnx.Linear(3, 1, rngs=nnx.Rngs(0)),
            mse,
            data,
            config=cfg,
            progress=False,
            compiler_options={"xla_cpu_no_such_option_in_any_xla": 1},
        )


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 4, 1)], ids=["channels", "one-feature"])
@pytest.mark.parametrize("cpu", [True, False], ids=["cpu", "other-backend"])
def test_custom_gradients_equal_autodiff(shape: tuple[int, ...], cpu: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """channel_mix / lifted_mix: the CPU custom VJPs give autodiff's gradients; elsewhere they are plain math."""
    monkeypatch.setattr(backend, "on_cpu", lambda: cpu)
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape)
    k = jax.random.normal(kk, (shape[-1], 6))
    g = jax.random.normal(kg, (*shape[:-1], 6))

    def plain(x, k):
        return jnp.sum((x @ k) * g)

    def tuned(x, k):
        return jnp.sum(backend.lifted_mix(x, k) * g)

    want = jax.grad(plain, argnums=(0, 1))(x, k)
    got = jax.grad(tuned, argnums=(0, 1))(x, k)
    for a, b in zip(got, want, strict=True):
        assert jnp.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_formulation_choices_follow_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [backend.default_formulation(k) for k in ("mlp", "siren", "cnn")] == ["scan", "scan", "im2col"]
    assert backend.use_fast_sin()
    monkeypatch.setattr(backend, "on_cpu", lambda: False)
    assert [backend.default_formulation(k) for k in ("mlp", "siren", "cnn")] == ["einsum", "einsum", "vmap"]
    assert not backend.use_fast_sin() and backend.init_cpu_options() == ()

"""Per-program XLA compile options: accepted where known, dropped with a warning where not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from weightspace import _xla

HELPERS = [("memory_bound_cpu_options", "_INDIVIDUAL_DOTS"), ("training_cpu_options", "_WIDE_VECTORS")]


@pytest.mark.parametrize(("helper", "constant"), HELPERS, ids=["memory_bound", "training"])
def test_options_compile_and_keep_results(helper: str, constant: str) -> None:
    getattr(_xla, helper).cache_clear()
    opts = getattr(_xla, helper)()
    assert opts == getattr(_xla, constant)  # this suite runs on CPU
    x = jnp.linspace(-2.0, 2.0, 37)
    f = jax.jit(lambda x: jnp.tanh(x) * x + 1.0, compiler_options=dict(opts))
    assert jnp.allclose(f(x), jnp.tanh(x) * x + 1.0, atol=1e-6)


@pytest.mark.parametrize(("helper", "constant"), HELPERS, ids=["memory_bound", "training"])
def test_an_unknown_option_is_dropped_with_a_warning(helper: str, constant: str, monkeypatch) -> None:
    monkeypatch.setattr(_xla, constant, (("xla_cpu_no_such_option_in_any_xla", 1),))
    fn = getattr(_xla, helper)
    fn.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="xla_cpu_no_such_option_in_any_xla"):
            assert fn() == ()
    finally:
        fn.cache_clear()

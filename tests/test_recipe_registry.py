"""One recipe registry for zoos and LoRA zoos: register_recipe, save/load hooks, layering, the CLI."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from weightspace import ConfigError, InvalidValueError
from weightspace.cli import main
from weightspace.nets import MLP
from weightspace.zoo import RECIPES, Zoo, build_recipe, load_zoo, recipe_path, register_recipe

PKG = Path(__file__).resolve().parents[1] / "weightspace"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WEIGHTSPACE_CACHE", str(tmp_path / "cache"))
    yield
    for name in [n for n in RECIPES if n.startswith("toy-")]:
        del RECIPES[name]  # drop the toy recipes a test registered (fmnist-lora stays once imported)


@dataclasses.dataclass(frozen=True)
class Points:
    """A result type that is neither a Zoo nor a Collection (as a LoRAZoo is)."""

    x: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def check_finite(self) -> None:
        if not np.isfinite(self.x).all():
            raise InvalidValueError("points hold NaN")


def _save_points(p: Points, directory: Path) -> list[str]:
    np.save(directory / "points.npy", p.x)
    return ["points.npy"]


def _load_points(directory: Path, files: list[str]) -> Points:
    return Points(np.load(directory / files[0]))


def _register_points(calls: list[tuple[int, int]], *, nan: bool = False, name: str = "toy-points"):
    def build(size: int, seed: int, progress: bool | None) -> Points:
        calls.append((size, seed))
        x = np.random.default_rng(seed).normal(size=(size, 3))
        if nan:
            x[0, 0] = np.nan
        return Points(x)

    return register_recipe(
        name,
        build,
        description="random points",
        default_size=5,
        tiny_size=2,
        returns="Points",
        save=_save_points,
        load=_load_points,
        version=3,
    )


def test_custom_type_is_cached_through_its_hooks():
    calls: list[tuple[int, int]] = []
    r = _register_points(calls)
    assert RECIPES["toy-points"] is r and r.version == 3
    a = build_recipe("toy-points", size=4, seed=1)
    path = recipe_path("toy-points", size=4, seed=1)
    assert path.name == "toy-points-n4-s1-v3"  # the recipe's own version is part of the cache key
    manifest = json.loads((path / "recipe.json").read_text())
    assert manifest["files"] == ["points.npy"] and manifest["returns"] == "Points" and manifest["version"] == 3
    b = build_recipe("toy-points", size=4, seed=1)  # from the cache: the build function is not called again
    assert calls == [(4, 1)] and isinstance(b, Points)
    np.testing.assert_array_equal(a.x, b.x)
    c = build_recipe("toy-points", seed=1, cache=False)  # default size, no cache read or written
    assert len(c) == 5 and calls[-1] == (5, 1) and not recipe_path("toy-points", seed=1).exists()


def test_non_finite_results_are_never_cached():
    _register_points([], nan=True, name="toy-nan")
    with pytest.raises(InvalidValueError, match="NaN"):
        build_recipe("toy-nan", size=2)
    assert not recipe_path("toy-nan", size=2).exists()


def test_zoo_recipe_registered_from_outside_uses_the_zoo_format():
    def build(size: int, seed: int, progress: bool | None) -> Zoo:
        return Zoo.init(MLP(in_features=2, hidden=(4,)), size, key=jax.random.key(seed), name="toy-mlps")

    register_recipe("toy-mlps", build, description="random MLPs", default_size=8, tiny_size=2)
    zoo = build_recipe("toy-mlps", size=3)
    path = recipe_path("toy-mlps", size=3)
    assert path.name.endswith("-v1") and (path / "part-00.safetensors").is_file()
    again = build_recipe("toy-mlps", size=3)
    assert isinstance(again, Zoo) and again.ids == zoo.ids
    np.testing.assert_array_equal(
        np.asarray(again.params["layers.0.weight"]), np.asarray(zoo.params["layers.0.weight"])
    )


def test_register_recipe_validates():
    def build(size, seed, progress):
        return None

    with pytest.raises(ConfigError, match="save= and load= hooks"):
        register_recipe("toy-bad", build, description="", default_size=2, tiny_size=1, returns="Points")
    with pytest.raises(ConfigError, match="tiny_size must be a positive int"):
        register_recipe("toy-bad", build, description="", default_size=2, tiny_size=0)
    with pytest.raises(ConfigError, match="recipe name"):
        register_recipe("a/b", build, description="", default_size=2, tiny_size=1)
    with pytest.raises(ConfigError, match=r"already registered by weightspace\.zoo\._recipes"):
        register_recipe("digits-hub", build, description="", default_size=2, tiny_size=1)
    assert "toy-bad" not in RECIPES and RECIPES["digits-hub"].returns == "Collection"
    # registering again from the same function (a module reload) replaces the recipe
    register_recipe("toy-same", build, description="one", default_size=2, tiny_size=1)
    register_recipe("toy-same", build, description="two", default_size=2, tiny_size=1)
    assert RECIPES["toy-same"].description == "two"


def test_unknown_recipe_names_the_known_ones_and_the_lora_import():
    msg = r"unknown recipe 'nope'; known recipes: .*digits-hub.*import weightspace\.lora"
    with pytest.raises(ConfigError, match=msg):
        build_recipe("nope")


def _imports(path: Path) -> set[str]:
    mods: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module)
    return mods


@pytest.mark.parametrize(
    ("lower", "higher"), [("nets", "zoo"), ("nets", "lora"), ("zoo", "lora")], ids=["nets-zoo", "nets-lora", "zoo-lora"]
)
def test_lower_layers_never_import_higher_ones(lower, higher):
    for f in sorted((PKG / lower).glob("*.py")):
        bad = {m for m in _imports(f) if m == f"weightspace.{higher}" or m.startswith(f"weightspace.{higher}.")}
        assert not bad, f"{f.name} imports {bad}"


def test_fmnist_lora_registers_on_import_of_weightspace_lora():
    code = (
        "import sys\n"
        "from weightspace import ConfigError\n"
        "from weightspace.zoo import RECIPES, build_recipe\n"
        "assert 'fmnist-lora' not in RECIPES and not any(m.startswith('weightspace.lora') for m in sys.modules)\n"
        "try:\n"
        "    build_recipe('fmnist-lora')\n"
        "except ConfigError as e:\n"
        "    assert 'import weightspace.lora' in str(e) and 'digits-hub' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no ConfigError')\n"
        "import weightspace.lora\n"
        "r = RECIPES['fmnist-lora']\n"
        "assert (r.returns, r.default_size, r.tiny_size) == ('LoRAZoo', 40, 2), r\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_fmnist_lora_hooks_round_trip_a_lora_zoo(tmp_path):
    from weightspace.lora import LoRA, LoRAZoo, autoencoder

    rng = np.random.default_rng(0)
    arch = autoencoder()
    base = {k: rng.normal(size=s).astype(np.float32) * 0.05 for k, s in arch.param_shapes().items()}
    ad = {
        "layers.1.weight": LoRA.of(
            rng.normal(size=(2, 4, 128)).astype(np.float32),
            rng.normal(size=(2, 32, 4)).astype(np.float32),
            np.float32(4.0),
        )
    }
    zoo = LoRAZoo(arch, base, ad, {"concept": ["a", "b"], "n_images": [1, 10]}, "fmnist-lora")
    r = RECIPES["fmnist-lora"]
    files = r.save(zoo, tmp_path)
    got = r.load(tmp_path, files)
    assert files == ["lora-zoo.safetensors"] and got.meta == zoo.meta and len(got) == 2
    np.testing.assert_array_equal(np.asarray(got.adapter["layers.1.weight"].B), np.asarray(ad["layers.1.weight"].B))
    zoo.check_finite()
    bad = LoRAZoo(arch, {**base, "layers.0.bias": np.full_like(base["layers.0.bias"], np.nan)}, ad, zoo.meta)
    with pytest.raises(InvalidValueError, match=r"base\.layers\.0\.bias"):
        bad.check_finite()


def test_cli_lists_and_builds_registered_recipes(tmp_path, capsys):
    assert main(["zoo", "recipes", "--json"]) == 0  # the command imports weightspace.lora first
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["fmnist-lora"]["returns"] == "LoRAZoo" and listed["fmnist-lora"]["tiny_size"] == 2
    assert {"digits-hub", "fmnist-inr"} <= set(listed) and set(listed) == set(RECIPES)
    assert main(["zoo", "recipes"]) == 0
    assert "fmnist-lora" in capsys.readouterr().out

    _register_points([])
    out = tmp_path / "points"
    assert main(["zoo", "build", "toy-points", "--size", "3", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["returns"] == "Points" and summary["models"] == 3 and summary["architectures"] == 1
    assert summary["cache"] == str(recipe_path("toy-points", size=3))
    assert np.load(out / "points.npy").shape == (3, 3)

    def build(size, seed, progress):
        return Zoo.init(MLP(in_features=2, hidden=(4,)), size, key=jax.random.key(seed), name="toy-mlps")

    register_recipe("toy-mlps", build, description="random MLPs", default_size=8, tiny_size=2)
    f = tmp_path / "mlps.safetensors"
    assert main(["zoo", "build", "toy-mlps", "--size", "2", "--out", str(f), "--no-cache", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"] == 2 and len(load_zoo(f)) == 2
    assert main(["zoo", "build", "no-such-recipe"]) == 2
    assert "import weightspace.lora" in capsys.readouterr().err

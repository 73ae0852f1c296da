"""The command line starts no JAX backend for help or an argument error (design.md: `--help` on a
GPU machine must not take device memory), and imports stay free of module-level arrays."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

COMMANDS = [
    ["--help"],
    ["zoo", "--help"],
    ["zoo", "build", "--help"],
    ["probe", "--help"],
    ["probe", "run", "--help"],
    ["search", "--help"],
    ["search", "index", "--help"],
    ["search", "query", "--help"],
    ["selection", "rank", "--help"],
    ["probex", "--help"],
    ["probegen", "train", "--help"],
    ["encoder", "train", "--help"],
    ["lora", "--help"],
]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JAX_PLATFORMS": "nonexistent"}  # any backend start fails loudly
    code = "import sys; from weightspace.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_help_starts_no_backend(args: list[str]) -> None:
    r = _run(args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout


def test_argument_error_starts_no_backend() -> None:
    r = _run(["zoo", "build", "--no-such-flag"])
    assert r.returncode == 2
    assert "Unable to initialize backend" not in r.stderr
    assert "error:" in r.stderr


OLD_SPELLINGS = [
    (["index", "--help"], "weightspace search index"),
    (["rank", "--help"], "weightspace selection rank"),
    (["train-encoder", "--help"], "weightspace encoder train"),
    (["embed", "--help"], "weightspace encoder embed"),
    (["neighbours", "--help"], "weightspace encoder neighbours"),
]


@pytest.mark.parametrize(("args", "now"), OLD_SPELLINGS, ids=[a[0] for a, _ in OLD_SPELLINGS])
def test_old_spellings_still_work_and_name_the_new_one(args: list[str], now: str) -> None:
    r = _run(args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"is now `{now}`" in r.stderr
    assert "usage: weightspace " + now.split(" ", 1)[1] in r.stdout


def test_areas_without_a_verb_in_their_old_spelling() -> None:
    from weightspace.cli import _area_verbs, build_parser, new_spelling

    verbs = _area_verbs(build_parser())
    assert verbs["search"] == {"index", "query"} and verbs["probe"] == {"run"}
    assert new_spelling(["search", "g/", "--text", "dog"], verbs)[0] == ["search", "query", "g/", "--text", "dog"]
    assert new_spelling(["probe", "z.safetensors", "--probes", "natural"], verbs)[0][:2] == ["probe", "run"]
    for current in (["search", "query", "g/"], ["search", "--help"], ["probe", "run", "z"], ["zoo", "info", "z"]):
        assert new_spelling(current, verbs) == (current, None)

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
    ["index", "--help"],
    ["search", "--help"],
    ["probex", "--help"],
    ["probegen", "train", "--help"],
    ["train-encoder", "--help"],
    ["rank", "--help"],
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

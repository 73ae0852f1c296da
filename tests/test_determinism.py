"""The suite collects the same tests, with the same ids, in every process (pytest-xdist requires it).

Two guards: a static scan (every ``parametrize`` names its ids explicitly; generated gzip bytes carry no
timestamp) and a dynamic one (two separate collections, started seconds apart, with different hash
seeds and temp dirs, must list identical node ids in identical order).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = sorted((ROOT / "tests").glob("test_*.py"))
# Ids that betray a value which changes from run to run: object addresses, temp paths, raw bytes.
SUSPICIOUS_ID = re.compile(r"0x[0-9a-f]{6,}|/tmp/|pytest-of-|\\x[0-9a-f]{2}|object at ")


def _calls(tree: ast.AST, dotted: str) -> list[ast.Call]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(dotted):
            out.append(node)
    return out


def _missing_ids(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for call in _calls(tree, "mark.parametrize"):
        if not any(k.arg == "ids" for k in call.keywords):
            bad.append(f"{path.name}:{call.lineno}")
    return bad


def _gzip_without_mtime(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    calls = _calls(tree, "gzip.compress")
    return [f"{path.name}:{c.lineno}" for c in calls if not any(k.arg == "mtime" for k in c.keywords)]


def test_every_parametrize_has_explicit_ids():
    bad = [loc for f in TEST_FILES for loc in _missing_ids(f)]
    assert not bad, f"parametrize without ids= (ids must not depend on the values' repr): {bad}"


def test_generated_gzip_bytes_have_no_timestamp():
    files = TEST_FILES + sorted((ROOT / "weightspace").rglob("*.py"))
    bad = [loc for f in files for loc in _gzip_without_mtime(f)]
    assert not bad, f"gzip.compress without mtime=0 writes the current time into the bytes: {bad}"


def test_the_scan_catches_a_bad_file(tmp_path):
    # The guard itself can fail: a parametrize with bytes made by gzip at collection time.
    f = tmp_path / "test_bad.py"
    f.write_text("import gzip, pytest\n@pytest.mark.parametrize('p', [gzip.compress(b'x')])\ndef test(p): pass\n")
    assert _missing_ids(f) == ["test_bad.py:2"]
    assert _gzip_without_mtime(f) == ["test_bad.py:2"]


def _collect(hash_seed: str, basetemp: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            f"--basetemp={basetemp}",
            "tests",
            "weightspace",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _ids(proc: subprocess.Popen) -> list[str]:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return [line for line in out.splitlines() if "::" in line]


def test_two_collections_seconds_apart_agree(tmp_path):
    first = _collect("1", tmp_path / "a")
    time.sleep(2.5)  # gzip headers, time-stamped names and the like change with the second
    second = _collect("2", tmp_path / "b")
    a, b = _ids(first), _ids(second)
    assert len(a) > 100
    assert a == b, sorted(set(a) ^ set(b))[:20]
    suspicious = [i for i in a if SUSPICIOUS_ID.search(i)]
    assert not suspicious, suspicious[:20]

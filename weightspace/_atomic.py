"""All-or-nothing outputs: files and directories are written under a temporary name next to their
target and renamed into place, so a reader never sees a half-written one.

Temporary names carry the writing process's id (``.NAME.PID.RANDOM.tmp``). A process killed with
``kill -9`` cannot clean up after itself, so every later write of the same target first removes the
temporaries of processes that no longer run: a killed command leaves debris only until it (or any
command writing the same path) runs again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_SUFFIX = ".tmp"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _prefix(path: Path) -> str:
    return f".{path.name}."


def sweep_stale(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of ``path`` left by processes that no longer run; returns them.

    Example:
        >>> import pathlib, tempfile
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / ".x.txt.999999999.abc.tmp").write_text("debris of a killed writer")
        >>> [p.name for p in sweep_stale(d / "x.txt")], sorted(p.name for p in d.iterdir())
        (['.x.txt.999999999.abc.tmp'], [])
    """
    path = Path(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    prefix = _prefix(path)
    for p in path.parent.iterdir():
        name = p.name
        if not (name.startswith(prefix) and name.endswith(_SUFFIX)):
            continue
        pid_text = name[len(prefix) :].split(".", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        with contextlib.suppress(FileNotFoundError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        removed.append(p)
    return removed


def _temp_name(path: Path) -> str:
    return f"{_prefix(path)}{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched, so a reader
    never sees a half-written file. Temporaries of killed earlier writers are removed first.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_path(d / "x.txt") as tmp:
        ...     _ = tmp.write_text("hello")
        >>> (d / "x.txt").read_text(), [p.name for p in d.iterdir()]
        ('hello', ['x.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_name(path), suffix=_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``path``; on success it replaces ``path``.

    An existing ``path`` (file or directory) is replaced only once the new one is complete: it is
    renamed aside, the new directory renamed into place, then the old one removed. On any
    exception the temporary directory is removed and ``path`` is left as it was.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_dir(d / "out") as tmp:
        ...     _ = (tmp / "a.txt").write_text("new")
        >>> [p.name for p in (d / "out").iterdir()], [p.name for p in d.iterdir()]
        (['a.txt'], ['out'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_name(path), suffix=_SUFFIX, dir=path.parent))
    try:
        yield tmp
        if path.exists() or path.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=_temp_name(path), suffix=_SUFFIX, dir=path.parent))
            os.replace(path, old / "old")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

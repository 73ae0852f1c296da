"""Resuming population training: finished chunks on disk, and a scope that makes every
:func:`~weightspace.train.fit_population` call in it resumable (how a killed ``zoo build`` resumes)."""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from weightspace.train._checkpoint import check_resume

PyTree = Any


class _DoneChunks:
    """Finished chunks of a :func:`fit_population` run on disk: one ``done-NNNNN.safetensors``
    file of results per chunk (a plain safetensors write, milliseconds, where an orbax checkpoint
    per chunk cost more than training a small chunk), so a resumed run trains none of them again.
    A chunk's own orbax checkpoint (``chunk-NNNNN``, mid-chunk) is removed once it is done."""

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.root, self.fp = root, fingerprint
        self.pending: list[tuple[int, PyTree, np.ndarray, np.ndarray, dict[int, PyTree]]] = []

    def load(self, like: PyTree, snaps: Sequence[int]) -> dict[int, tuple[PyTree, np.ndarray, np.ndarray, dict]]:
        from weightspace._safetensors import read_safetensors

        out: dict[int, tuple[PyTree, np.ndarray, np.ndarray, dict]] = {}
        if not self.root.is_dir():
            return out
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(like)]
        treedef = jax.tree_util.tree_structure(like)
        for f in sorted(self.root.glob("done-*.safetensors")):
            tensors, meta = read_safetensors(f)
            check_resume({"fingerprint": meta.get("fingerprint")}, {"fingerprint": self.fp}, str(f))
            sizes = json.loads(meta["sizes"])
            ends = np.cumsum([0, *sizes.values()])
            for c, a, b in zip(sizes, ends[:-1], ends[1:], strict=True):
                out[int(c)] = (
                    _rows(tensors, "params", paths, treedef, int(a), int(b)),
                    tensors["losses"][a:b],
                    tensors["updates"][a:b],
                    {s: _rows(tensors, f"snap{s}", paths, treedef, int(a), int(b)) for s in snaps},
                )
        return out

    def add(
        self,
        c: int,
        params: PyTree,
        losses: np.ndarray,
        updates: np.ndarray,
        snaps: dict[int, PyTree],
    ) -> None:
        self.pending.append((c, params, losses, updates, snaps))
        self.flush()

    def flush(self) -> None:

        from weightspace._safetensors import write_safetensors

        if not self.pending:
            return
        tensors: dict[str, np.ndarray] = {}

        def put(prefix: str, trees: list[PyTree]) -> None:
            names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(trees[0])]
            leaves = [jax.tree_util.tree_leaves(t) for t in trees]
            for j, name in enumerate(names):
                tensors[f"{prefix}{name}"] = np.concatenate([np.asarray(ls[j]) for ls in leaves])

        put("params", [e[1] for e in self.pending])
        tensors["losses"] = np.concatenate([e[2] for e in self.pending])
        tensors["updates"] = np.concatenate([e[3] for e in self.pending])
        for s in self.pending[0][4]:
            put(f"snap{s}", [e[4][s] for e in self.pending])
        first, last = self.pending[0][0], self.pending[-1][0]
        sizes = {str(e[0]): len(e[2]) for e in self.pending}
        meta = {"fingerprint": self.fp, "sizes": json.dumps(sizes)}
        name = f"done-{first:05d}" + (f"-{last:05d}" if last != first else "")
        write_safetensors(self.root / f"{name}.safetensors", tensors, meta)
        for e in self.pending:  # their in-flight checkpoints are superseded
            shutil.rmtree(self.root / f"chunk-{e[0]:05d}", ignore_errors=True)
        self.pending = []


def _rows(tensors: Mapping[str, np.ndarray], prefix: str, paths: list[str], treedef: Any, a: int, b: int) -> PyTree:
    return jax.tree_util.tree_unflatten(treedef, [tensors[f"{prefix}{p}"][a:b] for p in paths])


class _ResumeScope:
    def __init__(self, root: Path, seconds: float) -> None:
        self.root, self.seconds, self.calls = root, seconds, 0

    def next_dir(self) -> Path:
        d = self.root / f"fit-{self.calls:03d}"
        self.calls += 1
        return d


_RESUME: contextvars.ContextVar[_ResumeScope | None] = contextvars.ContextVar("weightspace_resume", default=None)


@contextlib.contextmanager
def resumable(root: str | os.PathLike[str], *, checkpoint_seconds: float = 30.0) -> Iterator[Path]:
    """Make every :func:`fit_population` call inside the block resumable, without passing it a
    checkpoint directory: call ``i`` (in order) checkpoints to ``root/fit-{i:03d}``, at most every
    ``checkpoint_seconds`` per chunk and at the end of every chunk. Run the same deterministic
    code again after a kill and each call resumes from its checkpoint (a call whose data or
    settings changed refuses the checkpoint with a :class:`~weightspace.ConfigError`).

    ``weightspace.zoo.build_recipe`` runs every recipe in one, so a killed build resumes.

    Example:
        >>> import tempfile, numpy as np, jax, jax.numpy as jnp
        >>> from weightspace.train import fit_population, resumable
        >>> def loss(p, batch, key):
        ...     return jnp.mean((p["w"] * batch["x"] - batch["y"]) ** 2)
        >>> data = {"x": np.ones(4, np.float32), "y": 2 * np.ones(4, np.float32)}
        >>> with resumable(tempfile.mkdtemp()) as root:
        ...     r = fit_population(loss, {"w": np.zeros(3, np.float32)}, data, key=jax.random.key(0), steps=50)
        >>> sorted(p.name for p in root.iterdir())
        ['fit-000']
    """
    scope = _ResumeScope(Path(root), float(checkpoint_seconds))
    token = _RESUME.set(scope)
    try:
        yield scope.root
    finally:
        _RESUME.reset(token)

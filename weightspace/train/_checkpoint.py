"""ONE orbax checkpointer for every training loop, one resume check, and NNX modules on disk.

:class:`Checkpointer` keeps the latest steps of a run in a directory: per step, a pytree of host
arrays and a JSON record. :func:`~weightspace.train.fit` and
:func:`~weightspace.train.fit_population` both write through it, and both refuse to resume a run
whose identity (settings, data fingerprint) differs, with :func:`check_resume`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from weightspace._atomic import atomic_path
from weightspace._errors import ConfigError, LoadError

PathLike = str | os.PathLike[str]
_MODULE_FORMAT = "weightspace.learn.module/1"


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_host(leaves: list[Any]) -> dict[str, np.ndarray]:
    """Flat leaves as ``{"a00000": array, ...}`` host copies (typed keys as their key data)."""
    out = {}
    for i, x in enumerate(leaves):
        # A copy: on CPU device_get may alias the device buffer, which the next (donating) step
        # overwrites while orbax is still writing it.
        out[f"a{i:05d}"] = np.array(jax.device_get(jax.random.key_data(x) if _is_key(x) else x), copy=True)
    return out


def from_host(saved: Mapping[str, Any], like: list[Any], paths: list[str], where: str) -> list[Any]:
    """The inverse of :func:`to_host`, checked against the leaves ``like`` (named by ``paths``)."""
    if len(saved) != len(like):
        raise ConfigError(
            f"{where}: the checkpoint holds {len(saved)} arrays, this model and optimizer have "
            f"{len(like)}; it was written for a different model or optimizer"
        )
    out = []
    for i, (x, p) in enumerate(zip(like, paths, strict=True)):
        v = np.asarray(saved[f"a{i:05d}"])
        want = jax.random.key_data(x).shape if _is_key(x) else np.shape(x)
        if v.shape != tuple(want):
            raise ConfigError(
                f"{where}: array {p} is {list(v.shape)} in the checkpoint but {list(want)} in the model being trained"
            )
        out.append(
            jax.random.wrap_key_data(jnp.asarray(v), impl=jax.random.key_impl(x))
            if _is_key(x)
            else jnp.asarray(v, dtype=x.dtype)
        )
    return out


def check_resume(
    saved: Mapping[str, Any], current: Mapping[str, Any], where: str, *, may_differ: Iterable[str] = ()
) -> None:
    """Refuse to resume a run whose identity differs from this call's.

    Args:
        saved: the identity recorded in the checkpoint (settings, a data fingerprint, ...).
        current: this call's identity.
        where: the checkpoint, for the message.
        may_differ: keys that may change between a run and its resumption (e.g. the step count).

    Raises:
        ConfigError: naming every differing key with both values.

    Example:
        >>> check_resume({"lr": 0.1, "steps": 10}, {"lr": 0.1, "steps": 20}, "ckpt/", may_differ=["steps"])
        >>> check_resume({"lr": 0.1}, {"lr": 0.2}, "ckpt/")
        Traceback (most recent call last):
        ...
        weightspace._errors.ConfigError: ckpt/: cannot resume: the checkpoint belongs to a different training run ...
    """
    skip = set(may_differ)
    diff = sorted(k for k in {*saved, *current} if k not in skip and saved.get(k) != current.get(k))
    if diff:
        raise ConfigError(
            f"{where}: cannot resume: the checkpoint belongs to a different training run (it was trained with "
            f"{ {k: saved.get(k) for k in diff} }, this call asks for { {k: current.get(k) for k in diff} }); "
            f"use a fresh checkpoint directory or the same settings"
        )


class Checkpointer:
    """An orbax ``CheckpointManager`` of one run: per step, a pytree of arrays and a JSON record.

    Writes are atomic (orbax finalises a step directory only when complete) and synchronous; the
    ``keep`` latest steps are kept.

    Example:
        >>> import tempfile, numpy as np
        >>> from weightspace.train import Checkpointer
        >>> with Checkpointer(tempfile.mkdtemp()) as ckpt:
        ...     ckpt.save(3, {"w": np.arange(4.0)}, {"note": "demo"})
        ...     step = ckpt.latest()
        ...     back = ckpt.arrays(step, {"w": np.zeros(4)})
        >>> step, back["w"].tolist(), ckpt.meta(3)["note"]
        (3, [0.0, 1.0, 2.0, 3.0], 'demo')
    """

    def __init__(self, directory: PathLike, *, keep: int = 2) -> None:
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.dir = Path(directory).absolute()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manager = ocp.CheckpointManager(
            self.dir,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True),
            item_names=("arrays", "meta"),
        )

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def latest(self) -> int | None:
        """The latest complete step, or ``None``."""
        return self.manager.latest_step()

    def save(self, step: int, arrays: Any, meta: Mapping[str, Any]) -> None:
        """Write ``arrays`` (a pytree of host arrays) and ``meta`` (JSON) as ``step``."""
        a = self._ocp.args
        self.manager.save(
            step, args=a.Composite(arrays=a.StandardSave(arrays), meta=a.JsonSave(dict(meta))), force=True
        )
        self.manager.wait_until_finished()

    def meta(self, step: int) -> dict[str, Any]:
        """The JSON record of ``step``."""
        a = self._ocp.args
        return self.manager.restore(step, args=a.Composite(meta=a.JsonRestore()))["meta"]

    def arrays(self, step: int, like: Any) -> Any:
        """The arrays of ``step``, restored to the structure, shapes and dtypes of ``like``.

        Raises:
            ConfigError: the checkpoint does not match ``like``.
        """
        a = self._ocp.args
        target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype), like)
        try:
            return self.manager.restore(step, args=a.Composite(arrays=a.StandardRestore(target)))["arrays"]
        except (ValueError, KeyError) as e:
            raise ConfigError(f"{self.dir}: checkpoint {step} does not match the model being trained ({e})") from e

    def close(self) -> None:
        self.manager.close()


# ---- NNX modules on disk -----------------------------------------------------------------------
def _flat_state(module: nnx.Module) -> tuple[dict[str, Any], nnx.GraphDef[Any], Any]:
    graphdef, state = nnx.split(module)
    flat = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(state)}
    return flat, graphdef, state


def save_module(module: nnx.Module, path: PathLike, *, config: Mapping[str, Any]) -> Path:
    """Save an NNX module's state (orbax) with the config that rebuilds it (``config.json``).

    Args:
        module: the module.
        path: a directory (created); an existing save there is replaced.
        config: JSON-serialisable settings that :func:`load_module`'s ``build`` turns back into
            an identical (untrained) module.

    Returns:
        The directory.

    Example:
        >>> import tempfile, pathlib
        >>> from flax import nnx
        >>> from weightspace.train import load_module, save_module
        >>> lin = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        >>> p = save_module(lin, pathlib.Path(tempfile.mkdtemp()) / "lin", config={"d_in": 3, "d_out": 2})
        >>> back = load_module(p, lambda c: nnx.Linear(c["d_in"], c["d_out"], rngs=nnx.Rngs(1)))
        >>> bool((back.kernel[...] == lin.kernel[...]).all())
        True
    """
    import orbax.checkpoint as ocp

    if not isinstance(module, nnx.Module):
        raise ConfigError(f"save_module: expected a flax.nnx.Module, got {type(module).__name__}")
    try:
        cfg_text = json.dumps({"format": _MODULE_FORMAT, "config": dict(config)}, indent=1, sort_keys=True)
    except TypeError as e:
        raise ConfigError(f"save_module: config must be JSON-serialisable ({e})") from e
    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    flat, _, _ = _flat_state(module)
    arrays = to_host(list(flat.values()))
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path / "state", arrays, force=True)
    with atomic_path(path / "config.json") as tmp:
        tmp.write_text(cfg_text)
    with atomic_path(path / "names.json") as tmp:
        tmp.write_text(json.dumps(list(flat)))
    return path


def load_module(path: PathLike, build: Callable[[dict[str, Any]], nnx.Module]) -> nnx.Module:
    """Rebuild a module saved by :func:`save_module`: ``build(config)``, then its saved state.

    Raises:
        LoadError: ``path`` is not a saved module.
        ConfigError: the saved state's arrays or shapes differ from what ``build`` makes.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    cfg_file, names_file = path / "config.json", path / "names.json"
    if not cfg_file.is_file() or not names_file.is_file() or not (path / "state").exists():
        raise LoadError(f"{path} is not a saved weightspace module (needs config.json, names.json, state/)")
    try:
        cfg = json.loads(cfg_file.read_text())
        names = json.loads(names_file.read_text())
    except json.JSONDecodeError as e:
        raise LoadError(f"{path}: malformed config.json/names.json ({e})") from e
    if not isinstance(cfg, dict) or cfg.get("format") != _MODULE_FORMAT or not isinstance(cfg.get("config"), dict):
        found = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise LoadError(f"{cfg_file}: not a weightspace module config (found {found!r})")
    module = build(cfg["config"])
    if not isinstance(module, nnx.Module):
        raise ConfigError(f"load_module: build returned {type(module).__name__}, not an nnx.Module")
    flat, graphdef, state = _flat_state(module)
    if list(flat) != names:
        missing, extra = sorted(set(flat) - set(names)), sorted(set(names) - set(flat))
        raise ConfigError(
            f"{path}: the saved module does not match what build(config) makes: arrays missing from "
            f"the checkpoint {missing[:6]}, unexpected arrays {extra[:6]}"
        )
    with ocp.StandardCheckpointer() as ckpt:
        saved = ckpt.restore(path / "state")
    leaves = from_host(saved, list(flat.values()), names, str(path))
    _, treedef = jax.tree_util.tree_flatten(state)
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves))

"""Download models from a Hugging Face-style hub (or read local repo directories)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from weightspace._errors import LoadError
from weightspace.nets import Architecture
from weightspace.zoo._declared import CONFIG_FILES
from weightspace.zoo._io import load_model
from weightspace.zoo._zoo import Collection, Zoo

Fetch = Callable[..., str]


def _default_fetch(repo_id: str, filename: str, *, revision: str | None, cache_dir: str | None) -> str:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dev/text dependency
        raise LoadError("downloading from a hub needs `pip install huggingface_hub`") from e
    try:
        return hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir)
    except Exception as e:  # the hub client raises many types; name the repo either way
        raise LoadError(f"hub repo {repo_id!r}: could not get {filename!r} ({type(e).__name__}: {e})") from e


def load_hub(
    repo_ids: Sequence[str],
    *,
    filename: str = "model.safetensors",
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    arch: Architecture | None = None,
    fetch: Fetch | None = None,
    activation: str | None = None,
    strict: bool = False,
) -> Collection:
    """Fetch one safetensors file per hub repo and bucket the models into a Collection.

    Each entry of ``repo_ids`` is a hub repo id (downloaded with ``huggingface_hub``, cached)
    or a local directory laid out like a repo (read in place: works offline). The model id
    in the metadata is the repo id. The architecture comes from ``arch``, the file header, the
    repo's ``config.json``/``preprocessor_config.json`` (fetched too when the repo has them), the
    file's metadata, or is inferred from a plain PyTorch ``state_dict`` (see
    :func:`~weightspace.zoo.load_model`; ``activation``/``strict`` as there).

    Example:
        >>> import jax, tempfile, pathlib
        >>> from weightspace.nets import MLP
        >>> from weightspace.zoo import save_model, load_hub
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> arch = MLP(in_features=4, hidden=(8,), out_features=2)
        >>> for i in range(2):
        ...     _ = save_model(root / f"user{i}" / "model.safetensors", arch, arch.init(jax.random.key(i)))
        >>> load_hub([str(root / "user0"), str(root / "user1")]).num_models
        2
    """
    fetch = fetch or _default_fetch
    coll = Collection()
    cache = str(cache_dir) if cache_dir is not None else None
    for rid in repo_ids:
        local = Path(rid)
        if local.is_dir():
            path = local / filename
            if not path.exists():
                raise LoadError(f"local repo {rid!r} has no {filename!r}")
        else:
            path = Path(fetch(rid, filename, revision=revision, cache_dir=cache))
            if arch is None:
                # configs land next to the weights in the hub cache, where load_model reads them
                for cfg in CONFIG_FILES:
                    try:
                        fetch(rid, cfg, revision=revision, cache_dir=cache)
                    except LoadError:  # most repos have no preprocessor config; a missing one is no error
                        pass
        a, params, meta = load_model(path, arch=arch, activation=activation, strict=strict)
        meta["id"] = rid.replace("/", "--") if not local.is_dir() else local.name
        meta.setdefault("source", rid)
        zoo = Zoo.stack(a, [params], [meta], name="hub")
        zoo.check_finite()
        coll.add(zoo)
    if not coll.num_models:
        raise LoadError("load_hub: no repos given")
    return coll

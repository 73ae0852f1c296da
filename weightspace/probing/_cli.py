"""``weightspace probe ZOO --probes NAME --out FILE``: responses of a zoo to a probe set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from weightspace._atomic import atomic_path
from weightspace._errors import ConfigError, LoadError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "probe",
        help="probe every model of a zoo with a probe set",
        description="Write the [models, probes, outputs] float32 responses of a zoo to FILE (.npy, streamed "
        "through a memory map, or .safetensors under the name 'responses') and a FILE.json sidecar with the "
        "probe set's name and provenance and the model ids.",
    )
    p.add_argument("zoo", help="zoo file or directory (see `weightspace zoo info`)")
    p.add_argument("--probes", required=True,
                   help="probe kind for weightspace.data.make_probes (natural, dead-leaves, uniform, fashion-mnist, "
                   "mnist-5k, digits) or a .npy file of probes [n, ...]")
    p.add_argument("--n", type=int, default=1000, help="number of probes to make (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="probe seed (default 0)")
    p.add_argument("--out", required=True, help="output .npy or .safetensors file")
    p.add_argument("--model-chunk", type=int, default=None, help="models per kernel call (default: from memory)")
    p.add_argument("--probe-chunk", type=int, default=None, help="probes per kernel call (default: from memory)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_probe)


def _load_probes(spec: str, n: int, seed: int) -> tuple[Any, dict[str, Any]]:
    path = Path(spec)
    if path.suffix == ".npy":
        if not path.is_file():
            raise LoadError(f"probe file {str(path)!r} does not exist")
        try:
            data = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise LoadError(f"probe file {str(path)!r} is not a plain .npy array: {e}") from e
        return data, {"name": path.stem, "provenance": f"file {path.resolve()}", "n": int(data.shape[0])}
    try:
        from weightspace.data import make_probes
    except ImportError as e:
        raise ConfigError(f"named probe sets need weightspace.data ({e}); pass a .npy file instead") from e
    ps = make_probes(spec, n, seed=seed)
    return ps, {"name": ps.name, "provenance": ps.provenance, "n": int(ps.data.shape[0]), "seed": seed,
                "kind": spec}


def _probe(args: argparse.Namespace) -> int:
    from weightspace.probing._probe import probe
    from weightspace.zoo import load_zoo

    out = Path(args.out)
    if out.suffix not in (".npy", ".safetensors"):
        raise ConfigError(f"--out must end in .npy or .safetensors, got {args.out!r}")
    zoo = load_zoo(args.zoo)
    probes, info = _load_probes(args.probes, args.n, args.seed)
    progress = False if args.no_progress else None
    kw: dict[str, Any] = {"model_chunk": args.model_chunk, "probe_chunk": args.probe_chunk, "progress": progress}
    if out.suffix == ".npy":
        resp = probe(zoo, probes, out=out, **kw)
    else:
        from weightspace._safetensors import write_safetensors

        resp = probe(zoo, probes, **kw)
        write_safetensors(out, {"responses": resp}, {"probes": json.dumps(info)})
    sidecar = {
        "zoo": str(args.zoo),
        "zoo_name": zoo.name,
        "architecture": zoo.arch.to_config(),
        "shape": list(resp.shape),
        "dtype": "float32",
        "probes": info,
        "model_ids": zoo.ids,
    }
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=1))
    print(f"wrote {out} {tuple(resp.shape)} and {out.with_suffix('.json')}")
    return 0

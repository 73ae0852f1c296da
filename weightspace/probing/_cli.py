"""``weightspace probe run ZOO --probes NAME --out FILE``: responses of a zoo to a probe set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from weightspace._atomic import atomic_path
from weightspace._errors import ConfigError, LoadError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from weightspace._argtypes import non_negative_int, positive_int

    area = sub.add_parser("probe", help="the probe engine: responses of every model of a zoo to a probe set")
    psub = area.add_subparsers(dest="probe_command", metavar="VERB")
    area.set_defaults(func=lambda a: area.print_help() or 0)
    p = psub.add_parser(
        "run",
        help="probe every model of a zoo with a probe set",
        description="Write the [models, probes, outputs] float32 responses of a zoo to FILE (.npy, streamed "
        "through a memory map, or .safetensors under the name 'responses') and a FILE.json sidecar with the "
        "probe set's name and provenance and the model ids. A ZOO holding several architectures (a hub) needs a "
        ".safetensors FILE: one tensor 'responses.NNN' per zoo, listed in the sidecar's 'zoos'.",
    )
    from weightspace.zoo._cli import ZOO_HELP, add_zoo_options

    p.add_argument("zoo", help=ZOO_HELP)
    p.add_argument(
        "--probes",
        required=True,
        help="probe kind for weightspace.data.make_probes (natural, dead-leaves, uniform, fashion-mnist, "
        "mnist-5k, digits) or a .npy file of probes [n, ...]",
    )
    p.add_argument("--n", type=positive_int, default=1000, help="number of probes to make (default 1000)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="probe seed (default 0)")
    p.add_argument(
        "--shape",
        default="28x28x1",
        help="shape of each named probe: HxWxC for images (default 28x28x1), e.g. 2 for uniform coordinates",
    )
    p.add_argument("--out", required=True, help="output .npy or .safetensors file")
    p.add_argument(
        "--model-chunk", type=positive_int, default=None, help="models per kernel call (default: from memory)"
    )
    p.add_argument(
        "--probe-chunk", type=positive_int, default=None, help="probes per kernel call (default: from memory)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    add_zoo_options(p)
    p.set_defaults(func=_probe)


def _load_probes(spec: str, n: int, seed: int, shape: str = "28x28x1") -> tuple[Any, dict[str, Any]]:
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
    try:
        dims = tuple(int(d) for d in shape.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--shape must look like 28x28x1 (or 2), got {shape!r}") from None
    ps = make_probes(spec, n, seed=seed, shape=dims)
    return ps, {
        "name": ps.name,
        "provenance": ps.provenance,
        "n": int(ps.data.shape[0]),
        "seed": seed,
        "kind": spec,
        "shape": list(dims),
    }


def _probe(args: argparse.Namespace) -> int:
    from weightspace.probing._probe import probe
    from weightspace.zoo._cli import load_zoo_specs

    out = Path(args.out)
    if out.suffix not in (".npy", ".safetensors"):
        raise ConfigError(f"--out must end in .npy or .safetensors, got {args.out!r}")
    progress = False if args.no_progress else None
    zoos = load_zoo_specs([args.zoo], args, progress=progress)
    if len(zoos) > 1 and out.suffix == ".npy":
        kinds = "; ".join(f"{z.name!r}: {len(z)} x {z.arch.num_outputs} outputs" for z in zoos[:4])
        raise ConfigError(
            f"{args.zoo} holds {len(zoos)} zoos of different architectures ({kinds}"
            f"{'; ...' if len(zoos) > 4 else ''}); a .npy holds one array: use --out FILE.safetensors "
            "(one 'responses.NNN' tensor per zoo)"
        )
    probes, info = _load_probes(args.probes, args.n, args.seed, args.shape)
    kw: dict[str, Any] = {"model_chunk": args.model_chunk, "probe_chunk": args.probe_chunk, "progress": progress}
    parts = []
    if out.suffix == ".npy":
        resps = [probe(zoos[0], probes, out=out, finite=True, **kw)]
    else:
        from weightspace._safetensors import write_safetensors

        resps = [np.asarray(probe(z, probes, finite=True, **kw)) for z in zoos]
        names = ["responses"] if len(zoos) == 1 else [f"responses.{i:03d}" for i in range(len(zoos))]
        write_safetensors(out, dict(zip(names, resps, strict=True)), {"probes": json.dumps(info)})
    for i, (zoo, resp) in enumerate(zip(zoos, resps, strict=True)):
        parts.append(
            {
                "tensor": "responses" if len(zoos) == 1 else f"responses.{i:03d}",
                "zoo_name": zoo.name,
                "architecture": zoo.arch.to_config(),
                "shape": list(resp.shape),
                "model_ids": zoo.ids,
                "classes": zoo.meta.get("classes"),
            }
        )
    sidecar: dict[str, Any] = {"zoo": str(args.zoo), "dtype": "float32", "probes": info}
    if len(parts) == 1:  # one zoo: its fields at the top level
        sidecar.update({k: v for k, v in parts[0].items() if k != "tensor"})
    else:
        sidecar["zoos"] = parts
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=1))
    if args.json:
        print(
            json.dumps(
                {"out": str(out), "sidecar": str(out.with_suffix(".json")), "shapes": [p["shape"] for p in parts]}
            )
        )
        return 0
    shapes = ", ".join(str(tuple(r.shape)) for r in resps)
    print(f"wrote {out} {shapes} and {out.with_suffix('.json')}")
    return 0

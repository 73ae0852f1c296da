"""``weightspace zoo ...`` subcommands."""

from __future__ import annotations

import argparse
import json

from weightspace.zoo._io import load_zoo, read_header


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    zoo = sub.add_parser("zoo", help="inspect and build model zoos")
    zsub = zoo.add_subparsers(dest="zoo_command", metavar="SUBCOMMAND")
    info = zsub.add_parser("info", help="summarise a zoo file or directory")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=_info)
    zoo.set_defaults(func=lambda a: zoo.print_help() or 0)


def _info(args: argparse.Namespace) -> int:
    header = read_header(args.path)
    zoo = load_zoo(args.path, check_finite=False)
    summary = {
        "path": args.path,
        "name": zoo.name,
        "models": len(zoo),
        "architecture": zoo.arch.to_config(),
        "params_per_model": zoo.arch.num_params(),
        "format": header.get("format"),
        "meta_columns": sorted(zoo.meta),
    }
    for col in ("test_acc", "train_acc"):
        if col in zoo.meta and all(v is not None for v in zoo.meta[col]):
            vals = sorted(float(v) for v in zoo.meta[col])
            summary[col] = {"min": vals[0], "median": vals[len(vals) // 2], "max": vals[-1]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for k, v in summary.items():
            print(f"{k:>18}: {v}")
    return 0

"""``weightspace data ...`` subcommands."""

from __future__ import annotations

import argparse
import json

import numpy as np

from weightspace._errors import WeightspaceError
from weightspace.data._datasets import DATASETS, load_dataset
from weightspace.data._probes import PROBE_KINDS


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    data = sub.add_parser("data", help="datasets and probe sets")
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    info = dsub.add_parser("info", help="load each dataset and summarise it (or say how to install it)")
    info.add_argument("names", nargs="*", metavar="NAME", help=f"any of {DATASETS} (default: all)")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=_info)
    data.set_defaults(func=lambda a: data.print_help() or 0)


def _info(args: argparse.Namespace) -> int:
    """Summarise datasets; exit status 2 if any fails to load (its error is printed)."""
    summary: dict[str, dict] = {}
    failed = False
    for name in args.names or DATASETS:
        try:
            train, test = load_dataset(name, "train"), load_dataset(name, "test")
        except WeightspaceError as e:
            summary[name] = {"error": str(e)}
            failed = True
            continue
        summary[name] = {
            "train": len(train),
            "test": len(test),
            "image_shape": list(train.images.shape[1:]),
            "classes": list(train.class_names),
            "train_per_class": np.bincount(train.labels).tolist(),
            "provenance": train.provenance,
        }
    if args.json:
        print(json.dumps({"datasets": summary, "probe_kinds": list(PROBE_KINDS)}, indent=2))
    else:
        for name, s in summary.items():
            print(f"{name}:")
            for k, v in s.items():
                print(f"  {k:>16}: {v}")
        print(f"probe kinds: {', '.join(PROBE_KINDS)}")
    return 2 if failed else 0

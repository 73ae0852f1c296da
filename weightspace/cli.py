"""The ``weightspace`` command. Each subpackage contributes its subcommands via ``register``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from weightspace._errors import WeightspaceError

# Modules exposing ``register(subparsers)``; order is the order of ``weightspace --help``.
_COMMAND_MODULES = [
    "weightspace._demo",
    "weightspace.zoo._cli",
    "weightspace.probing._cli",
    "weightspace.data._cli",
    "weightspace.search._cli",
    "weightspace.lora._cli",
    "weightspace.selection._cli",
]

# Packages above ``zoo`` that register zoo recipes when imported (``weightspace.zoo.register_recipe``);
# the command imports them so ``weightspace zoo recipes`` / ``zoo build NAME`` see every recipe.
_RECIPE_PACKAGES = ["weightspace.lora"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightspace",
        description="Learning on the weights of neural networks: build zoos, probe them, search them.",
    )
    from weightspace import __version__

    parser.add_argument("--version", action="version", version=f"weightspace {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _RECIPE_PACKAGES:
        importlib.import_module(name)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except WeightspaceError as e:
        print(f"weightspace: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("weightspace: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``weightspace`` command. Each subpackage contributes its subcommands via ``register``."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

from weightspace._errors import GuessWarning, WeightspaceError

# Modules exposing ``register(subparsers)``; order is the order of ``weightspace --help``.
_COMMAND_MODULES = [
    "weightspace._demo",
    "weightspace.zoo._cli",
    "weightspace.probing._cli",
    "weightspace.data._cli",
    "weightspace.search._cli",
    "weightspace.lora._cli",
    "weightspace.selection._cli",
    "weightspace.probex._cli",
    "weightspace.probegen._cli",
    "weightspace.equivariant._cli",
]

# Packages above ``zoo`` that register zoo recipes when imported (``weightspace.zoo.register_recipe``);
# the command imports them so ``weightspace zoo recipes`` / ``zoo build NAME`` see every recipe.
_RECIPE_PACKAGES = ["weightspace.lora", "weightspace.probex"]


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


def _show_warning(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
    """weightspace's own warnings (e.g. a guessed activation) as one line a user reads; others as usual."""
    if issubclass(category, GuessWarning):
        print(f"weightspace: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except WeightspaceError as e:
        print(f"weightspace: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("weightspace: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``weightspace`` command: one grammar, ``weightspace AREA VERB``. Each subpackage contributes
its area via ``register``; the spellings of earlier versions still work and print the new one."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

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


# Spellings of earlier versions -> (area, verb); they keep working and print the new spelling.
_OLD_COMMANDS = {
    "train-encoder": ("encoder", "train"),
    "embed": ("encoder", "embed"),
    "neighbours": ("encoder", "neighbours"),
    "index": ("search", "index"),
    "rank": ("selection", "rank"),
}
# Areas whose old spelling had no verb: `probe ZOO` is `probe run ZOO`, `search GALLERY` is `search query GALLERY`.
_OLD_DEFAULT_VERBS = {"probe": "run", "search": "query"}


def _area_verbs(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """Every area's verbs, read off the parser (so the aliases cannot drift from the commands)."""
    out: dict[str, set[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for area, sub in action.choices.items():
                for a in sub._actions:
                    if isinstance(a, argparse._SubParsersAction):
                        out[area] = set(a.choices)
    return out


def new_spelling(argv: Sequence[str], verbs: dict[str, set[str]]) -> tuple[list[str], str | None]:
    """``argv`` in the ``AREA VERB`` grammar, and a note naming the new spelling when it was an old one.

    Example:
        >>> new_spelling(["index", "hub/", "--probes", "natural"], {"search": {"index", "query"}})[0]
        ['search', 'index', 'hub/', '--probes', 'natural']
        >>> argv, note = new_spelling(["search", "gallery/", "--text", "dog"], {"search": {"index", "query"}})
        >>> argv
        ['search', 'query', 'gallery/', '--text', 'dog']
        >>> note
        'weightspace: note: `weightspace search` is now `weightspace search query`'
    """
    argv = list(argv)
    if not argv:
        return argv, None
    head, rest = argv[0], argv[1:]
    if head in _OLD_COMMANDS:
        new = [*_OLD_COMMANDS[head], *rest]
    elif head in _OLD_DEFAULT_VERBS and rest and rest[0] not in verbs.get(head, set()) | {"-h", "--help"}:
        new = [head, _OLD_DEFAULT_VERBS[head], *rest]
    else:
        return argv, None
    return new, f"weightspace: note: `weightspace {head}` is now `weightspace {' '.join(new[:2])}`"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``weightspace AREA VERB: error: ... (see --help)``);
    every sub-command's parser is one too (``add_subparsers`` makes its parsers of this class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="weightspace",
        description="Learning on the weights of neural networks: build zoos, probe them, search them.",
    )
    from weightspace import __version__

    parser.add_argument("--version", action="version", version=f"weightspace {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (anywhere on the command line)"
    )
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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _os_error(e: OSError) -> str:
    """An OS error as the path and the cause (``PermissionError: [Errno 13] ...`` reads as neither)."""
    where = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    cause = e.strerror or type(e).__name__
    return f"{where}: {cause}" if where else _one_line(str(e)) or cause


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``weightspace`` command; returns its exit code.

    Exit codes: 0 success; 2 bad input (a usage error, a ``weightspace`` error naming the file,
    tensor or argument at fault, or a file-system error naming the path); 1 a bug (any other
    exception: one line, and ``--debug`` for the traceback to report); 130 interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    argv, note = new_spelling(argv, _area_verbs(parser))
    if note:
        print(note, file=sys.stderr)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed): the exit code, as a return
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("weightspace: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        if isinstance(e, WeightspaceError):
            print(f"weightspace: error: {_one_line(str(e))}", file=sys.stderr)
            return 2
        if isinstance(e, OSError):
            print(f"weightspace: error: {_os_error(e)}", file=sys.stderr)
            return 2
        print(
            f"weightspace: internal error: {type(e).__name__}: {_one_line(str(e))[:500]} "
            "(a bug: re-run with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

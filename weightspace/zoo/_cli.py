"""``weightspace zoo ...`` subcommands."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from weightspace._argtypes import non_negative_int, positive_int
from weightspace._atomic import atomic_dir
from weightspace.zoo._io import read_header

ZOO_HELP = (
    "a zoo: a packed zoo file, a model file, a directory (a recipe's cache or `zoo build --out` directory, "
    "a zoo directory, a downloaded hub of model files), or a recipe name (with --size/--recipe-seed)"
)


def add_zoo_options(p: argparse.ArgumentParser, *, recipes: bool = True) -> None:
    """The options of every command that reads zoos: how recipes are named and files are read."""
    if recipes:
        p.add_argument(
            "--size",
            type=positive_int,
            default=None,
            help="models of a recipe named as ZOO (as in `zoo build --size`; default: full size)",
        )
        p.add_argument(
            "--recipe-seed",
            type=non_negative_int,
            default=0,
            help="seed of a recipe named as ZOO (as in `zoo build --seed`; default 0)",
        )
    p.add_argument(
        "--activation",
        default=None,
        help="activation of plain state_dict files that declare none (instead of guessing relu)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse to guess what a plain state_dict does not declare (an error, not a warning)",
    )


def load_zoo_specs(specs: list[str], args: argparse.Namespace, *, progress: bool | None = None) -> list[Any]:
    """The zoos of every spec: a path :func:`~weightspace.zoo.load_collection` reads, or a recipe name
    (built or read from the cache for ``--size``/``--recipe-seed``)."""
    from weightspace._errors import ConfigError, InvalidValueError
    from weightspace.zoo._io import load_collection
    from weightspace.zoo._recipes import RECIPES, build_recipe
    from weightspace.zoo._zoo import Collection, Zoo

    out: list[Any] = []
    for spec in specs:
        if Path(spec).exists():
            out.extend(
                load_collection(
                    [spec], activation=getattr(args, "activation", None), strict=getattr(args, "strict", False)
                ).zoos
            )
            continue
        if spec not in RECIPES:
            looks_like_path = any(c in spec for c in "/\\") or spec.endswith(".safetensors")
            raise InvalidValueError(
                f"{spec!r} is "
                + (
                    "no such file or directory"
                    if looks_like_path
                    else f"neither a zoo file/directory nor a known recipe (known: {', '.join(sorted(RECIPES))})"
                )
            )
        try:
            built = build_recipe(
                spec, size=getattr(args, "size", None), seed=getattr(args, "recipe_seed", 0), progress=progress
            )
        except ConfigError as e:
            raise InvalidValueError(f"recipe {spec!r}: {e}") from None
        if not isinstance(built, Zoo | Collection):
            as_zoos = RECIPES[spec].as_zoos
            if as_zoos is None:
                raise InvalidValueError(
                    f"recipe {spec!r} returns a {type(built).__name__}, which has no models to probe"
                )
            built = as_zoos(built)
        out.extend([built] if isinstance(built, Zoo) else built.zoos)
    return out


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    zoo = sub.add_parser("zoo", help="inspect and build model zoos")
    zsub = zoo.add_subparsers(dest="zoo_command", metavar="SUBCOMMAND")
    info = zsub.add_parser("info", help="summarise a zoo file or directory")
    info.add_argument("path", help=ZOO_HELP)
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_zoo_options(info)
    info.set_defaults(func=_info)
    build = zsub.add_parser("build", help="build (or load from the cache) a named zoo recipe")
    build.add_argument("name", help="recipe name (see `weightspace zoo recipes`)")
    build.add_argument("--size", type=positive_int, default=None, help="number of models/images (default: full size)")
    build.add_argument("--seed", type=non_negative_int, default=0, help="recipe seed (default 0)")
    build.add_argument(
        "--out",
        default=None,
        help="also write the result here: a .safetensors file for a zoo, "
        "a directory of zoo files for a collection (or of a recipe's own files, e.g. a LoRA zoo)",
    )
    build.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    build.add_argument("--json", action="store_true", help="print a machine-readable summary")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=_build)
    recipes = zsub.add_parser("recipes", help="list the named zoo recipes")
    recipes.add_argument("--json", action="store_true", help="print machine-readable JSON")
    recipes.set_defaults(func=_recipes)
    zoo.set_defaults(func=lambda a: zoo.print_help() or 0)


def _info(args: argparse.Namespace) -> int:
    header = read_header(args.path) if Path(args.path).exists() else {"format": "recipe name"}
    zoos = load_zoo_specs([args.path], args)
    parts = []
    for zoo in zoos:
        part: dict[str, Any] = {
            "name": zoo.name,
            "models": len(zoo),
            "architecture": zoo.arch.to_config(),
            "params_per_model": zoo.arch.num_params(),
            "meta_columns": sorted(zoo.meta),
        }
        for col in ("test_acc", "train_acc"):
            if col in zoo.meta and all(v is not None for v in zoo.meta[col]):
                vals = sorted(float(v) for v in zoo.meta[col])
                part[col] = {"min": vals[0], "median": vals[len(vals) // 2], "max": vals[-1]}
        parts.append(part)
    summary: dict[str, Any] = {
        "path": args.path,
        "format": header.get("format"),
        "models": sum(p["models"] for p in parts),
    }
    if len(parts) == 1:
        summary.update(parts[0])
    else:
        summary["zoos"] = parts
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for k, v in summary.items():
            if k == "zoos":
                for i, p in enumerate(v):
                    print(f"{'zoo ' + str(i):>18}: {p['name']} {p['models']} models, {p['architecture']}")
            else:
                print(f"{k:>18}: {v}")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from weightspace.zoo._recipes import RECIPES

    rows = [
        {
            "name": r.name,
            "returns": r.returns,
            "default_size": r.default_size,
            "tiny_size": r.tiny_size,
            "description": r.description,
        }
        for r in RECIPES.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(
                f"{r['name']:<16} {r['returns']:<10} size {r['default_size']:>5} (tiny {r['tiny_size']})  "
                f"{r['description']}"
            )
    return 0


def _check_out(out: Path, *, zoo_file: bool) -> None:
    """Refuse an ``--out`` that would replace something that is not an earlier build's output
    (checked before building, so nothing is trained for an output that cannot be written)."""
    from weightspace._errors import ConfigError, WeightspaceError
    from weightspace.zoo._io import PACKED_FORMAT

    if not out.exists():
        if out.parent.exists() and not out.parent.is_dir():
            raise ConfigError(f"--out {out}: its parent {out.parent} is a file, not a directory")
        return
    if zoo_file:
        if out.is_dir():
            raise ConfigError(
                f"--out {out} is a directory; this recipe writes one zoo file (e.g. {out}/zoo.safetensors)"
            )
        try:
            fmt = read_header(out).get("format")
        except WeightspaceError:
            fmt = None
        if fmt != PACKED_FORMAT:
            raise ConfigError(f"--out {out} exists and is not a packed zoo; choose a new path or remove it")
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} exists and is a file; this recipe writes a directory")
    if any(out.iterdir()) and not (out / "recipe.json").exists():
        raise ConfigError(
            f"--out {out} is a non-empty directory that holds no earlier build (no recipe.json); "
            "choose a new or empty directory"
        )


def _build(args: argparse.Namespace) -> int:
    from weightspace.zoo._io import save_zoo
    from weightspace.zoo._recipes import RECIPES, build_recipe, recipe_path, save_recipe_result
    from weightspace.zoo._zoo import Collection, Zoo

    recipe = RECIPES.get(args.name)
    if args.out and recipe is not None:
        _check_out(Path(args.out), zoo_file=recipe.returns == "Zoo")
    t0 = time.perf_counter()
    progress = False if args.no_progress else None
    result = build_recipe(args.name, size=args.size, seed=args.seed, progress=progress, cache=not args.no_cache)
    seconds = time.perf_counter() - t0
    recipe = RECIPES[args.name]
    size = recipe.default_size if args.size is None else args.size
    # a registered recipe may return another type (e.g. a LoRAZoo): summarised by len() only
    zoo_like = isinstance(result, Zoo | Collection)
    zoos = [result] if isinstance(result, Zoo) else result.zoos if isinstance(result, Collection) else []
    written = None
    if args.out:
        out = Path(args.out)
        if isinstance(result, Zoo):
            written = str(save_zoo(result, out))
        else:  # a recipe directory, as in the cache: the parts (or the save hook's files) + recipe.json
            manifest = {
                "recipe": args.name,
                "size": size,
                "seed": args.seed,
                "version": recipe.version,
                "returns": recipe.returns,
            }
            with atomic_dir(out) as tmp:  # all or nothing: an existing --out is replaced only when complete
                save_recipe_result(recipe, result, tmp, manifest)
            written = str(out)
    accs = [float(a) for z in zoos for a in z.meta.get("test_acc", []) if a is not None]
    summary = {
        "recipe": args.name,
        "returns": type(result).__name__,
        "models": sum(len(z) for z in zoos) if zoo_like else len(result),
        "architectures": len(zoos) if zoo_like else 1,
        "seconds": round(seconds, 2),
        "cache": None if args.no_cache else str(recipe_path(args.name, size=args.size, seed=args.seed)),
        "out": written,
    }
    if accs:
        a = sorted(accs)
        summary["test_acc"] = {"min": a[0], "median": a[len(a) // 2], "max": a[-1]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for k, v in summary.items():
            print(f"{k:>14}: {v}")
    return 0

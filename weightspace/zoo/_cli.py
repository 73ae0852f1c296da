"""``weightspace zoo ...`` subcommands."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from weightspace.zoo._io import load_zoo, read_header


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    zoo = sub.add_parser("zoo", help="inspect and build model zoos")
    zsub = zoo.add_subparsers(dest="zoo_command", metavar="SUBCOMMAND")
    info = zsub.add_parser("info", help="summarise a zoo file or directory")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=_info)
    build = zsub.add_parser("build", help="build (or load from the cache) a named zoo recipe")
    build.add_argument("name", help="recipe name (see `weightspace zoo recipes`)")
    build.add_argument("--size", type=int, default=None, help="number of models/images (default: full size)")
    build.add_argument("--seed", type=int, default=0, help="recipe seed (default 0)")
    build.add_argument("--out", default=None, help="also write the result here: a .safetensors file for a zoo, "
                       "a directory of zoo files for a collection (or of a recipe's own files, e.g. a LoRA zoo)")
    build.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    build.add_argument("--json", action="store_true", help="print a machine-readable summary")
    build.set_defaults(func=_build)
    recipes = zsub.add_parser("recipes", help="list the named zoo recipes")
    recipes.add_argument("--json", action="store_true", help="print machine-readable JSON")
    recipes.set_defaults(func=_recipes)
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


def _recipes(args: argparse.Namespace) -> int:
    from weightspace.zoo._recipes import RECIPES

    rows = [{"name": r.name, "returns": r.returns, "default_size": r.default_size, "tiny_size": r.tiny_size,
             "description": r.description} for r in RECIPES.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:<16} {r['returns']:<10} size {r['default_size']:>5} (tiny {r['tiny_size']})  "
                  f"{r['description']}")
    return 0


def _build(args: argparse.Namespace) -> int:
    from weightspace.zoo._io import save_zoo
    from weightspace.zoo._recipes import RECIPES, _save_zoos, build_recipe, recipe_path
    from weightspace.zoo._zoo import Collection, Zoo

    t0 = time.perf_counter()
    result = build_recipe(args.name, size=args.size, seed=args.seed, progress=None, cache=not args.no_cache)
    seconds = time.perf_counter() - t0
    recipe = RECIPES[args.name]
    # a registered recipe may return another type (e.g. a LoRAZoo): summarised by len() only
    zoo_like = isinstance(result, Zoo | Collection)
    zoos = [result] if isinstance(result, Zoo) else result.zoos if isinstance(result, Collection) else []
    written = None
    if args.out:
        out = Path(args.out)
        if isinstance(result, Zoo):
            written = str(save_zoo(result, out))
        else:  # a directory: one zoo file per part, or the files of the recipe's own save hook
            out.mkdir(parents=True, exist_ok=True)
            save = recipe.save if recipe.save is not None else _save_zoos
            save(result, out)
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

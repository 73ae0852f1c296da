"""``weightspace probex ...``: ``train`` experts (one per tree + a router), ``predict`` with them, ``layers`` sweep."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from weightspace._argtypes import positive_int
from weightspace._atomic import atomic_dir
from weightspace._errors import InvalidValueError, LoadError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    px = sub.add_parser("probex", help="ProbeX: probing experts that read one layer of each model (one per tree)")
    psub = px.add_subparsers(dest="probex_command", metavar="SUBCOMMAND")

    tr = psub.add_parser("train", help="train one ProbeX expert per model tree and a router; write them to --out")
    _source_args(tr)
    tr.add_argument(
        "--layer",
        required=True,
        metavar="NAME",
        help="the layer to read: one name for every tree, or TREE=NAME,TREE=NAME (see `probex layers`)",
    )
    tr.add_argument(
        "--readout",
        "--task",
        dest="readout",
        choices=["classes", "zero-shot"],
        default="classes",
        help="classes: a logit per class; zero-shot: cosines to class-prompt embeddings (--task: its old name)",
    )
    tr.add_argument("--out", required=True, metavar="DIR", help="directory to write (replaced atomically)")
    tr.add_argument(
        "--held-out",
        default="",
        metavar="C1,C2",
        help="zero-shot: classes kept out of training (comma-separated names)",
    )
    tr.add_argument("--members", type=positive_int, default=1, help="seeds trained at once in one vmapped program")
    tr.add_argument("--steps", type=positive_int, default=None, help="training steps (default 600, early stopping)")
    tr.add_argument("--r-u", type=positive_int, default=128)
    tr.add_argument("--r-v", type=positive_int, default=128)
    tr.add_argument("--r-t", type=positive_int, default=512)
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(func=_train)

    pr = psub.add_parser("predict", help="predict the training classes of models with trained experts")
    pr.add_argument("experts", metavar="DIR", help="a directory written by `probex train`")
    pr.add_argument(
        "source",
        metavar="ZOO_OR_MODEL",
        help="a model .safetensors file, a zoo file/directory, an fmnist-trees build, or a recipe name",
    )
    pr.add_argument("--size", type=positive_int, default=None, help="recipe size when SOURCE is a recipe name")
    pr.add_argument(
        "--classes",
        default=None,
        metavar="C1,C2",
        help="zero-shot: candidate classes (default: the training + held-out classes)",
    )
    pr.add_argument("--top-k", type=positive_int, default=5)
    pr.add_argument("--limit", type=positive_int, default=20, help="print at most this many models (text output)")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=_predict)

    ly = psub.add_parser("layers", help="per-layer sweep: one small expert per layer, best layer on validation")
    _source_args(ly)
    ly.add_argument("--tree", default=None, help="only this tree")
    ly.add_argument("--steps", type=positive_int, default=300)
    ly.add_argument("--r", type=positive_int, default=32, help="r_U = r_V of the small experts (r_T = 4 r)")
    ly.add_argument("--json", action="store_true")
    ly.set_defaults(func=_layers)
    px.set_defaults(func=lambda a: px.print_help() or 0)


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "zoo",
        metavar="ZOO",
        help="a recipe name (e.g. fmnist-trees), an fmnist-trees build directory, or a zoo file/directory",
    )
    p.add_argument("--size", type=positive_int, default=None, help="recipe size when ZOO is a recipe name")


def load_source(spec: str, *, size: int | None = None) -> dict[str, Any]:
    """``tree -> Zoo`` from a recipe name, an ``fmnist-trees`` directory, a zoo file/dir or a model file."""
    from weightspace.probex._recipe import ModelTrees, load_trees, trees_from
    from weightspace.zoo import RECIPES, build_recipe, load_zoo

    path = Path(spec)
    if not path.exists() and spec in RECIPES:
        obj = build_recipe(spec, size=size)
        if not isinstance(obj, ModelTrees) and not hasattr(obj, "params"):
            from weightspace.zoo import Collection

            if isinstance(obj, Collection):
                return {z.name if len(obj) == 1 else f"{z.name}/{i}": z for i, z in enumerate(obj)}
            raise InvalidValueError(f"recipe {spec!r} returns {type(obj).__name__}, not zoos ProbeX can read")
        return dict(trees_from(obj))
    if not path.exists():
        raise LoadError(f"{spec}: no such file or directory, and not a recipe name ({', '.join(sorted(RECIPES))})")
    if path.is_dir() and ((path / "recipe.json").exists() or (path / "model-trees.json").exists()):
        return dict(trees_from(load_trees(path)))
    return dict(trees_from(load_zoo(path)))


def _class_names(trees: dict[str, Any]) -> list[str]:
    from weightspace.probex._recipe import POOL_CLASSES

    seen = set()
    for z in trees.values():
        if "classes" not in z.meta:
            raise LoadError(f"zoo {z.name!r} has no 'classes' column (the labels ProbeX learns)")
        for row in z.meta["classes"]:
            seen.update([row] if isinstance(row, str) else [c for c in (row or []) if c is not None])
    return list(POOL_CLASSES) if seen <= set(POOL_CLASSES) else sorted(seen)


def _layer_arg(text: str) -> str | dict[str, str]:
    if "=" not in text:
        return text
    out = {}
    for part in text.split(","):
        t, _, name = part.partition("=")
        if not t or not name:
            raise InvalidValueError(f"--layer {text!r}: expected NAME or TREE=NAME,TREE=NAME")
        out[t.strip()] = name.strip()
    return out


def _train(args: argparse.Namespace) -> int:
    from weightspace.probex._experts import DEFAULT_TRAIN
    from weightspace.probex._model import ProbeXConfig
    from weightspace.probex._trees import train_trees

    trees = load_source(args.zoo, size=args.size)
    names = _class_names(trees)
    held = [c.strip() for c in args.held_out.split(",") if c.strip()]
    bad = [c for c in held if c not in names]
    if bad:
        raise InvalidValueError(f"--held-out classes {bad} are not among the classes {names}")
    train_config = DEFAULT_TRAIN.replace(steps=args.steps) if args.steps else DEFAULT_TRAIN
    out = Path(args.out)
    experts, splits = train_trees(
        trees,
        layer=_layer_arg(args.layer),
        class_names=names,
        config=ProbeXConfig(r_u=args.r_u, r_v=args.r_v, r_t=args.r_t, readout=args.readout),
        held_out=held,
        members=args.members,
        train_config=train_config,
        progress=False if args.no_progress else None,
    )
    experts.info["splits"] = {
        t: {k: getattr(s, k).tolist() for k in ("train", "val", "test")} for t, s in splits.items()
    }
    experts.info["source"] = args.zoo
    with atomic_dir(out) as tmp:  # all or nothing: an existing --out is replaced only when complete
        experts.save(tmp)
    summary = {
        "out": str(out),
        "readout": args.readout,
        "trees": {
            t: {
                "layer": e.layer,
                "shape": [e.spec.d_h, e.spec.d_w],
                "train_models": e.info["train_models"],
                "best_val_map": e.info["best_val_map"],
                "steps": e.info["steps_done"],
            }
            for t, e in experts.experts.items()
        },
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"wrote {out} ({args.readout}, {len(experts.experts)} expert(s){', router' if experts.router else ''})")
        for t, s in summary["trees"].items():
            v = s["best_val_map"]
            print(
                f"  {t:<14} layer {s['layer']:<18} {s['shape']}  train models {s['train_models']:>4}  val mAP {v:.3f}"
                if v is not None
                else ""
            )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from weightspace.probex._trees import TreeExperts
    from weightspace.zoo import load_model

    experts = TreeExperts.load(args.experts)
    src = Path(args.source)
    if src.is_file() and src.suffix == ".safetensors" and _is_single_model(src):
        _, params, meta = load_model(src)
        groups = {"model": ({k: np.asarray(v)[None] for k, v in params.items()}, [str(meta.get("id", src.stem))])}
    else:
        groups = {
            t: ({k: np.asarray(v) for k, v in z.params.items()}, z.ids)
            for t, z in load_source(args.source, size=args.size).items()
        }
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    rows = []
    for params, ids in groups.values():
        rows += experts.predict(params, ids, class_names=classes, top_k=args.top_k)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows[: args.limit]:
        top = sorted(r["scores"].items(), key=lambda kv: -kv[1])[: args.top_k]
        print(
            f"{r['id']:<34} tree {r['tree']:<12} predicted {r['predicted']}  "
            f"top: {', '.join(f'{c} {s:.2f}' for c, s in top)}"
        )
    if len(rows) > args.limit:
        print(f"... {len(rows) - args.limit} more (use --json for all)")
    return 0


def _is_single_model(path: Path) -> bool:
    from weightspace.zoo import read_header

    return read_header(path).get("format") != "zoo/1"


def _layers(args: argparse.Namespace) -> int:
    from weightspace.probex._experts import SWEEP_TRAIN
    from weightspace.probex._model import ProbeXConfig
    from weightspace.probex._trees import layer_sweep

    trees = load_source(args.zoo, size=args.size)
    if args.tree is not None:
        if args.tree not in trees:
            raise InvalidValueError(f"no tree {args.tree!r}; trees: {sorted(trees)}")
        trees = {args.tree: trees[args.tree]}
    names = _class_names(trees)
    out = {}
    for t, z in trees.items():
        out[t] = layer_sweep(
            z,
            class_names=names,
            config=ProbeXConfig(r_u=args.r, r_v=args.r, r_t=4 * args.r),
            train_config=SWEEP_TRAIN.replace(steps=args.steps),
        )
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for t, rows in out.items():
        print(f"tree {t}")
        for r in rows:
            mark = "  <- best (validation)" if r["best"] else ""
            print(
                f"  {r['layer']:<18} {r['shape']!s:<11} val mAP {r['val_map']:.3f}  test mAP {r['test_map']:.3f}  "
                f"exact {r['test_exact']:.3f}{mark}"
            )
    return 0

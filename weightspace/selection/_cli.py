"""``weightspace selection rank``: rank the models of a zoo for a target dataset with every metric."""

from __future__ import annotations

import argparse
import json

import numpy as np

from weightspace._errors import InvalidValueError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from weightspace._argtypes import non_negative_int

    area = sub.add_parser("selection", help="model selection: rank a zoo's models for a target task")
    ssub = area.add_subparsers(dest="selection_command", metavar="VERB")
    area.set_defaults(func=lambda a: area.print_help() or 0)
    p = ssub.add_parser("rank", help="rank the models of a zoo for a target task with transferability metrics")
    from weightspace.zoo._cli import ZOO_HELP, add_zoo_options

    p.add_argument(
        "--models", required=True, metavar="ZOO", help=ZOO_HELP + " (all its architectures are ranked together)"
    )
    p.add_argument("--task", required=True, metavar="DATA", help="target dataset: fashion-mnist, mnist-5k or digits")
    p.add_argument("--split", default="train", help="dataset split (train, test, all)")
    p.add_argument(
        "--limit", type=non_negative_int, default=2000, help="use this many examples (seeded random subset; 0 = all)"
    )
    p.add_argument("--metrics", nargs="+", default=None, help="metrics to compute (default: all but OTCE)")
    p.add_argument("--sort-by", default=None, help="metric that orders the table (default: logme, else the first)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the subset and of N-LEEP's mixture")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_zoo_options(p)
    p.set_defaults(func=_rank)


def _rank(args: argparse.Namespace) -> int:
    import jax

    from weightspace.data import load_dataset
    from weightspace.selection._features import extract_features
    from weightspace.selection._score import FEATURE_METRICS, PROB_METRICS, score_all
    from weightspace.zoo._cli import load_zoo_specs

    metrics = args.metrics or [*FEATURE_METRICS, *PROB_METRICS]
    if "otce" in metrics:
        raise InvalidValueError("otce needs the models' source data; use weightspace.selection.otce from Python")
    sort_by = args.sort_by or ("logme" if "logme" in metrics else metrics[0])
    if sort_by not in metrics:
        raise InvalidValueError(f"--sort-by {sort_by!r} is not among the computed metrics {metrics}")
    zoos = load_zoo_specs([args.models], args, progress=False if args.no_progress else None)
    ds = load_dataset(args.task, args.split)
    idx = np.arange(len(ds))
    if args.limit and args.limit < len(ds):
        idx = np.sort(np.random.default_rng(args.seed).choice(len(ds), args.limit, replace=False))
    images, labels = ds.images[idx], ds.labels[idx]
    # one architecture at a time (feature sizes differ); every model's scores land in one table
    parts = []
    for zoo in zoos:
        feats, probs = extract_features(zoo, images)
        parts.append(score_all(feats, labels, probs=probs, metrics=metrics, key=jax.random.key(args.seed)))
    scores = {m: np.concatenate([np.asarray(p[m]) for p in parts]) for m in metrics}
    ids = [i for z in zoos for i in z.ids]
    name = zoos[0].name if len(zoos) == 1 else args.models
    order = np.argsort(-scores[sort_by], kind="stable")
    rows = [{"rank": r + 1, "id": ids[i], **{m: float(scores[m][i]) for m in metrics}} for r, i in enumerate(order)]
    if args.json:
        print(
            json.dumps(
                {
                    "zoo": name,
                    "task": args.task,
                    "split": args.split,
                    "examples": len(idx),
                    "sort_by": sort_by,
                    "ranking": rows,
                },
                indent=2,
            )
        )
        return 0
    print(
        f"{len(ids)} models of {name!r} on {args.task}/{args.split} ({len(idx)} examples), "
        f"sorted by {sort_by} (higher = more transferable)"
    )
    width = max(len("id"), *(len(r["id"]) for r in rows))
    print(f"{'rank':>4}  {'id':<{width}}  " + "  ".join(f"{m:>19}" for m in metrics))
    for r in rows:
        print(f"{r['rank']:>4}  {r['id']:<{width}}  " + "  ".join(f"{r[m]:>19.6g}" for m in metrics))
    return 0

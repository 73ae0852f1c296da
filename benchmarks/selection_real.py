"""A real, local model-selection benchmark: which source model should be fine-tuned for a target task?

1. Source zoo: 11 MLPs (28x28 -> 128 -> 64 -> 10) pre-trained with ``train_population`` on different
   sources: Fashion-MNIST, MNIST-5k and scikit-learn digits (upsampled to 28x28), on different class
   subsets, plus one untrained model.
2. Target tasks: 9 class subsets of the three datasets with few labels (``--n-train`` per task).
3. Ground truth: every (source model, target task) pair is actually fine-tuned (all layers, fresh
   head) in ONE ``fit_population`` call; test accuracy on the task's test split.
4. Every transferability metric scores every model on every task from features and probabilities
   extracted through the probe engine; Model Spider is evaluated leave-one-task-out (task tokens:
   class means of pixel-PCA features; re-ranking tokens: class means under each candidate).
5. Weighted tau (``scipy.stats.weightedtau(acc, score, rank=None)`` convention) per task and mean.

    .venv/bin/python benchmarks/selection_real.py [--quick]

Writes ``benchmarks/results/selection_real.{json,md}`` (``selection_real_quick`` with --quick).
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
import jax.numpy as jnp
import numpy as np

import weightspace.selection as S
from weightspace._atomic import atomic_path
from weightspace.data import Dataset, load_dataset
from weightspace.nets import MLP, resize_images
from weightspace.probing import probe
from weightspace.train import fit_population
from weightspace.zoo import ClassifierLoss, Zoo, concat, train_population

ARCH = MLP(in_features=784, hidden=(128, 64), out_features=10, image_shape=(28, 28, 1))
SOURCES = [  # (dataset, classes)
    ("fashion-mnist", list(range(10))),
    ("fashion-mnist", [0, 1, 2, 3, 4]),
    ("fashion-mnist", [5, 6, 7, 8, 9]),
    ("fashion-mnist", [0, 2, 4, 6]),
    ("fashion-mnist", [1, 3, 5, 7, 9]),
    ("mnist-5k", list(range(10))),
    ("mnist-5k", [0, 1, 2, 3, 4]),
    ("mnist-5k", [5, 6, 7, 8, 9]),
    ("digits", list(range(10))),
    ("digits", [0, 1, 2, 3, 4]),
]
TARGETS = [  # (dataset, classes)
    ("fashion-mnist", [0, 1, 2, 3]),
    ("fashion-mnist", [5, 7, 9]),
    ("fashion-mnist", [0, 2, 4, 6]),
    ("fashion-mnist", [1, 3, 8]),
    ("mnist-5k", [0, 1, 2, 3, 4]),
    ("mnist-5k", [5, 6, 7, 8, 9]),
    ("mnist-5k", [1, 7, 4, 9]),
    ("digits", list(range(10))),
    ("digits", [3, 5, 8, 9]),
]


def load(name: str, split: str) -> Dataset:
    ds = load_dataset(name, split)
    if ds.images.shape[1:3] == (28, 28):
        return ds
    img = np.clip(np.asarray(resize_images(ds.images, (28, 28, 1))), 0.0, 1.0).astype(np.float32)
    return Dataset(
        name=f"{ds.name}@28",
        images=img,
        labels=ds.labels,
        class_names=ds.class_names,
        provenance=ds.provenance + "; bilinear 28x28",
    )


def task_rows(ds: Dataset, classes: list[int], n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified random subset of the given classes: rows and labels in task order (0..C-1)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in classes:
        idx = np.nonzero(ds.labels == c)[0]
        rows.append(rng.choice(idx, min(len(idx), n // len(classes)) if n else len(idx), replace=False))
    rows = np.concatenate(rows)
    local = np.array([classes.index(int(v)) for v in ds.labels[rows]], np.int32)
    return rows, local


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and examples (smoke run)")
    ap.add_argument("--n-train", type=int, default=None, help="labelled examples per target task")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    q = args.quick
    pre_steps, ft_steps = (60, 30) if q else (400, 150)
    n_train = args.n_train or (60 if q else 240)
    n_test, spider_steps = (200, 40) if q else (1000, 300)
    key = jax.random.key(0)
    t_start = time.perf_counter()
    timings = {}

    # ---- 1. source zoo --------------------------------------------------------------------
    t0 = time.perf_counter()
    data = {n: (load(n, "train"), load(n, "test")) for n in ("fashion-mnist", "mnist-5k", "digits")}
    parts = []
    for name in data:
        plan_classes = [c for d, c in SOURCES if d == name]
        zoo = train_population(
            ARCH,
            data[name][0],
            {"classes": plan_classes, "steps": pre_steps, "learning_rate": 1e-3, "optimizer": "adam"},
            key=jax.random.fold_in(key, len(parts)),
            test=data[name][1],
            pad_outputs=True,
            name=name,
            id_prefix=f"src-{name}",
            progress=False,
        )
        parts.append(zoo.with_meta(source=[name] * len(zoo)))
    rand = Zoo.init(ARCH, 1, key=jax.random.fold_in(key, 99), name="random")
    rand = rand.with_meta(
        id=["src-random"],
        source=["none"],
        n_outputs=[10],
        classes=[[str(i) for i in range(10)]],
        class_indices=[list(range(10))],
        test_acc=[0.1],
    )
    src = concat([*parts, rand], name="sources")
    n_models = len(src)
    n_out = np.asarray(src.meta["n_outputs"], int)
    timings["pretrain_s"] = time.perf_counter() - t0
    print(
        f"{n_models} source models pre-trained in {timings['pretrain_s']:.0f}s; source test acc "
        f"{[round(float(a), 3) for a in src.meta['test_acc']]}",
        flush=True,
    )

    # ---- 2. target tasks ------------------------------------------------------------------
    tasks = []
    for t, (name, classes) in enumerate(TARGETS):
        tr, te = data[name]
        rows, y = task_rows(tr, classes, n_train, seed=t)
        trows, ty = task_rows(te, classes, n_test, seed=100 + t)
        tasks.append(
            {
                "name": f"{name}{classes}",
                "x": tr.images[rows],
                "y": y,
                "xt": te.images[trows],
                "yt": ty,
                "c": len(classes),
            }
        )

    # ---- 3. ground truth: fine-tune every (model, task) pair at once ------------------------
    t0 = time.perf_counter()
    xs = np.concatenate([t["x"] for t in tasks])
    ys = np.concatenate([t["y"] for t in tasks]).astype(np.int32)
    starts = np.cumsum([0] + [len(t["y"]) for t in tasks])
    pairs = [(m, t) for t in range(len(tasks)) for m in range(n_models)]
    heads = jax.vmap(lambda k: ARCH.init(k))(jax.random.split(jax.random.fold_in(key, 7), len(pairs)))
    params = {k: np.asarray(v)[[m for m, _ in pairs]] for k, v in src.params.items()}
    for k in ("layers.2.weight", "layers.2.bias"):  # fresh head for the target classes
        params[k] = np.asarray(heads[k])
    index = [np.arange(starts[t], starts[t + 1]) for _, t in pairs]
    model_data = {
        "label_map": jnp.tile(jnp.arange(10), (len(pairs), 1)),
        "n_out": jnp.asarray([tasks[t]["c"] for _, t in pairs]),
    }
    fit = fit_population(
        ClassifierLoss(ARCH, mask_outputs=True),
        params,
        {"x": xs, "y": ys},
        key=jax.random.fold_in(key, 8),
        steps=ft_steps,
        batch_size=64,
        index=index,
        hparams={"optimizer": "adam", "learning_rate": 1e-3},
        model_data=model_data,
        progress=False,
    )
    acc = np.zeros((len(tasks), n_models))
    for t, task in enumerate(tasks):
        sel = [i for i, (_, tt) in enumerate(pairs) if tt == t]
        p_t = {k: jnp.asarray(np.asarray(v)[sel]) for k, v in fit.params.items()}
        logits = np.asarray(ARCH.apply_many(p_t, jnp.asarray(task["xt"])))[..., : task["c"]]
        acc[t] = (logits.argmax(-1) == task["yt"][None]).mean(1)
    timings["finetune_s"] = time.perf_counter() - t0
    print(f"fine-tuned {len(pairs)} (model, task) pairs in {timings['finetune_s']:.0f}s", flush=True)

    # ---- 4. metrics -----------------------------------------------------------------------
    t0 = time.perf_counter()
    src_x, src_y = [], []
    for m in range(n_models):
        name = src.meta["source"][m]
        cls = src.meta["class_indices"][m] if name != "none" else list(range(10))
        ds = data[name if name != "none" else "fashion-mnist"][0]
        rows, y = task_rows(ds, list(cls), 300 - 300 % len(cls), seed=500 + m)
        rows, y = rows[:270], y[:270]  # same Ns for every model (divisible by 9, 10, 5 and 4-class splits)
        src_x.append(ds.images[rows])
        src_y.append(y)
    feat_zoo = Zoo(S.PenultimateFeatures(base=ARCH), src.params, src.meta, "features")
    src_feats = np.stack([np.asarray(probe(feat_zoo.select([m]), src_x[m]))[0] for m in range(n_models)])
    scores, specific = [], []
    for task in tasks:
        feats, probs = S.extract_features(src, task["x"])
        mask = np.arange(10)[None, None, :] < n_out[:, None, None]  # padded outputs were never trained
        probs = np.where(mask, probs, 0.0)
        probs = probs / probs.sum(-1, keepdims=True)
        scores.append(
            S.score_all(
                feats.astype(np.float64),
                task["y"],
                probs=probs.astype(np.float64),
                source_features=src_feats.astype(np.float64),
                source_labels=np.stack(src_y),
            )
        )
        specific.append([np.asarray(S.class_means(feats[m], task["y"])) for m in range(n_models)])
    timings["metrics_s"] = time.perf_counter() - t0

    # ---- 5. Model Spider, leave-one-task-out -------------------------------------------------
    t0 = time.perf_counter()
    allx = xs.reshape(len(xs), -1)
    mu = allx.mean(0)
    _, _, vt = np.linalg.svd(allx - mu, full_matrices=False)
    proj = vt[:64].T  # pixel PCA: a task representation that does not depend on any candidate
    task_means = [np.asarray(S.class_means((t["x"].reshape(len(t["x"]), -1) - mu) @ proj, t["y"])) for t in tasks]
    stack = S.stack_tasks(task_means, acc, specific=specific)
    cfg = S.SpiderConfig(num_models=n_models, task_dim=64, dim=64, heads=4, specific_dim=64)
    training = S.SPIDER_TRAIN.replace(steps=spider_steps, eval_every=spider_steps)
    spider = S.leave_one_task_out(stack, cfg, training)
    spider_rr = S.leave_one_task_out(stack, cfg, training, top_k=3)
    timings["spider_s"] = time.perf_counter() - t0

    # ---- 6. table -------------------------------------------------------------------------
    names = [t["name"] for t in tasks]
    table = {m: [S.weighted_tau(acc[t], scores[t][m]) for t in range(len(tasks))] for m in S.ALL_METRICS}
    table["model_spider"] = list(spider["per_task"])
    table["model_spider_rerank_top3"] = list(spider_rr["per_task"])
    means = {m: float(np.mean(v)) for m, v in table.items()}
    best_metric = max(S.ALL_METRICS, key=lambda m: means[m])
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join([os.path.relpath(__file__, Path.cwd()), *(argv or sys.argv[1:])]),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "jax": jax.__version__,
        "pretrain_steps": pre_steps,
        "finetune_steps": ft_steps,
        "n_train": n_train,
        "n_test": n_test,
        "spider_steps": spider_steps,
        "total_s": time.perf_counter() - t_start,
        **timings,
    }
    result = {
        "meta": meta,
        "tasks": names,
        "models": src.ids,
        "finetune_accuracy": acc.tolist(),
        "weighted_tau": table,
        "mean": means,
        "best_metric": best_metric,
    }
    out = Path(args.out)
    name = "selection_real_quick" if q else "selection_real"
    with atomic_path(out / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    md = [
        f"# Local model-selection benchmark ({'quick' if q else 'full'})",
        "",
        f"- date: {meta['date']}; command: `{meta['command']}`; machine: {meta['machine']} (shared)",
        f"- {n_models} source models x {len(tasks)} target tasks; fine-tuning: {ft_steps} Adam steps, "
        f"{n_train} labelled examples per task, accuracy on up to {n_test} test examples",
        f"- time: pre-train {timings['pretrain_s']:.0f}s, fine-tune {timings['finetune_s']:.0f}s, metrics "
        f"{timings['metrics_s']:.0f}s, Model Spider LOTO {timings['spider_s']:.0f}s",
        "",
        "Weighted Kendall tau between true fine-tuning accuracy and each score (higher is better):",
        "",
        "| method | " + " | ".join(names) + " | mean |",
        "|---" * (len(names) + 2) + "|",
    ]
    for m, v in table.items():
        md.append(f"| {m} | " + " | ".join(f"{x:.3f}" for x in v) + f" | **{means[m]:.3f}** |")
    md += ["", "Fine-tuning accuracy (rows: tasks, columns: " + ", ".join(src.ids) + "):", ""]
    for t, row in enumerate(acc):
        md.append(f"- {names[t]}: " + ", ".join(f"{a:.3f}" for a in row))
    md.append("")
    with atomic_path(out / f"{name}.md") as tmp:
        tmp.write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()

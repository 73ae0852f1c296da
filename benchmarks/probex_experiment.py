"""The ProbeX experiment: experts vs baselines per tree of `fmnist-trees`, zero-shot on held-out
classes, routing accuracy (incl. fresh fine-tunes), routed experts vs one expert for all trees,
downstream tasks on the representation, ProbeX on `fmnist-lora`; figures for docs/probex.md.

    python benchmarks/probex_experiment.py                  # default: fmnist-trees size 250, 3 seeds
    python benchmarks/probex_experiment.py --quick          # size 4 (tiny), 1 seed, few steps
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"


def _figures(out: dict, trees: dict, class_names: list[str], stem: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from weightspace.probex import zoo_layer

    files = []
    # per-layer curves (validation mAP of one small expert per layer)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for t, rows in out["sweep"].items():
        ax.plot(range(len(rows)), [r["val_map"] for r in rows], "o-", label=t)
        for i, r in enumerate(rows):
            if r["best"]:
                ax.plot([i], [r["val_map"]], "k*", ms=12)
    ax.set_xlabel("layer (input -> output)")
    ax.set_ylabel("validation mAP")
    ax.set_title("ProbeX per-layer sweep (star: chosen on validation)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    f = FIGURES / f"{stem}_layers.png"
    fig.savefig(f, dpi=110)
    plt.close(fig)
    files.append(str(f.relative_to(ROOT)))
    # 2-D map of the representations (one expert per tree, seed 0): PCA of e, by tree and by class
    embs, tree_of, digit_share = [], [], []
    for t, zoo in trees.items():
        e = out["experts"][t]
        x = zoo_layer(zoo, e.layer)
        emb = e.represent(x)[0]
        emb = (emb - emb.mean(0)) / (emb.std(0) + 1e-8)
        u, s, _ = np.linalg.svd(emb - emb.mean(0), full_matrices=False)
        embs.append(u[:, :2] * s[:2] / np.sqrt(len(emb)))
        tree_of += [t] * len(zoo)
        digit_share += [np.mean([c.startswith("digit") for c in row if c is not None]) for row in zoo.meta["classes"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    offsets = {t: 6.0 * i for i, t in enumerate(trees)}
    xy = np.concatenate([emb + np.array([offsets[t], 0.0]) for t, emb in zip(trees, embs, strict=True)])
    tree_arr = np.array(tree_of)
    for t in trees:
        m = tree_arr == t
        axes[0].scatter(xy[m, 0], xy[m, 1], s=6, label=t)
    axes[0].set_title("ProbeX representations (PCA per tree expert), by tree")
    axes[0].legend(fontsize=8, markerscale=3)
    sc = axes[1].scatter(xy[:, 0], xy[:, 1], s=6, c=digit_share, cmap="coolwarm")
    axes[1].set_title("by class content: share of digit classes")
    fig.colorbar(sc, ax=axes[1])
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    f = FIGURES / f"{stem}_map.png"
    fig.savefig(f, dpi=110)
    plt.close(fig)
    files.append(str(f.relative_to(ROOT)))
    return files


def _cell(rows: list[dict], method: str, metric: str) -> str:
    v = [r["value"] for r in rows if r["method"] == method and r["metric"] == metric]
    return f"{np.mean(v):.3f} ± {np.std(v):.3f}" if v else "–"


def _compact(res: dict) -> list[str]:
    """Per-tree tables from the raw ResultsTable rows."""
    rows, trees = res["table"], [s["tree"] for s in res["trees"] if s["tree"] in res["layers"]]
    methods = [m for m in ("ProbeX", "flat-linear", "statnn-mlp", "flat-mlp") if any(r["method"] == m for r in rows)]
    out = [
        "### Which classes was it trained on (test mAP / exact-set accuracy)",
        "",
        "| tree | layer | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for t in trees:
        out.append(
            f"| {t} | `{res['layers'][t]}` | "
            + " | ".join(f"{_cell(rows, m, f'{t} mAP')} / {_cell(rows, m, f'{t} exact')}" for m in methods)
            + " |"
        )
    out += [
        "",
        "### Zero-shot on held-out classes (ProbeX zero-shot)",
        "",
        "| tree | zero-shot mAP | zero-shot acc (chance) | text->model P@1 | P@5 (chance) |",
        "|---|---|---|---|---|",
    ]
    for t in trees:
        m = "ProbeX zero-shot"
        out.append(
            f"| {t} | {_cell(rows, m, f'{t} zs_map')} | {_cell(rows, m, f'{t} zs_acc')} "
            f"({_cell(rows, m, f'{t} zs_acc_chance')[:5]}) | {_cell(rows, m, f'{t} ret_p1')} | "
            f"{_cell(rows, m, f'{t} ret_p5')} ({_cell(rows, m, f'{t} ret_chance')[:5]}) |"
        )
    out += [
        "",
        "### Downstream on the representation e (ProbeX classes experts)",
        "",
        "| tree | k-NN per-class accuracy | one-class AUC (Mahalanobis, Ledoit-Wolf) |",
        "|---|---|---|",
    ]
    for t in trees:
        out.append(
            f"| {t} | {_cell(rows, 'ProbeX e: k-NN', f'{t} class acc')} | "
            f"{_cell(rows, 'ProbeX e: one-class', f'{t} AUC')} |"
        )
    if any(r["method"].startswith("all trees") for r in rows):
        out += ["", "### All trees: routed experts vs one expert", "", "| method | mAP | exact |", "|---|---|---|"]
        for m in ("all trees: routed experts", "all trees: one expert"):
            out.append(f"| {m} | {_cell(rows, m, 'mAP')} | {_cell(rows, m, 'exact')} |")
    if any("fmnist-lora" in r["method"] for r in rows):
        out += ["", "### fmnist-lora", "", "| method | metric | value |", "|---|---|---|"]
        for m in dict.fromkeys(r["method"] for r in rows if "fmnist-lora" in r["method"]):
            for k in dict.fromkeys(r["metric"] for r in rows if r["method"] == m):
                out.append(f"| {m} | {k} | {_cell(rows, m, k)} |")
    return out


def _markdown(res: dict) -> str:
    lines = [
        f"# ProbeX experiment ({res['name']})",
        "",
        f"- date: {res['date']}",
        f"- machine: {res['machine']}; load average at start {res['load_start']}, at end {res['load_end']}"
        + (" (a SHARED, heavily loaded machine)" if res["load_start"][0] > (os.cpu_count() or 1) else ""),
        f"- command: `{res['command']}` ({res['seconds']:.0f} s)",
        f"- zoo: `fmnist-trees` size {res['size']} per tree, {res['models']} models used (build summary below), "
        f"splits 70/15/15 per tree (seed 0); fresh fine-tunes for routing: seed-1 build of size {res['fresh_size']}",
        f"- ProbeX widths {res['widths']}, training {res['train']}; {res['seeds']} seeds (one vmapped ensemble "
        "per expert); baselines from `weightspace.learn` with seeds 0..2",
        f"- held-out classes (never in any zero-shot training label): {res['held_out']}",
        "",
        "## Trees",
        "",
        "| tree | models | arch | pre-training | base test acc | fine-tune test acc (mean / min) | layer (val) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in res["trees"]:
        lines.append(
            f"| {s['tree']} | {s['models']} | {s['arch']} | {s['pretrain']} | {s['base_test_acc']:.3f} | "
            f"{s['test_acc_mean']:.3f} / {s['test_acc_min']:.3f} | `{res['layers'].get(s['tree'], '-')}` |"
        )
    lines += [
        "",
        "## Results (test split, mean ± std over seeds)",
        "",
        *_compact(res),
        "",
        "### Full table",
        "",
        res["table_md"],
        "",
        "## Per-layer sweep (validation mAP of one small expert per layer; best marked)",
        "",
    ]
    for t, rows in res["sweep"].items():
        lines.append(
            f"- **{t}**: "
            + ", ".join(
                f"`{r['layer']}` {r['shape']} val {r['val_map']:.3f} / test {r['test_map']:.3f}"
                + (" **(best)**" if r["best"] else "")
                for r in rows
            )
        )
    lines += ["", "## Routing accuracy", ""]
    for k, v in res["routing"].items():
        lines.append(f"- {k}: " + ", ".join(f"{t} {a:.3f}" for t, a in v.items()))
    if res.get("lora"):
        lines += [
            "",
            "## fmnist-lora (layer = scale * B @ A)",
            "",
            f"- layer sweep: {res['lora']['sweep']}",
            f"- chosen layer: `{res['lora']['layer']}`",
        ]
    if res.get("figures"):
        lines += ["", "## Figures", ""] + [f"- `{f}`" for f in res["figures"]]
    return "\n".join(lines) + "\n"


def _work(stem: str) -> Path:
    from weightspace._cache import cache_dir

    return cache_dir("probex-experiment") / stem


def _save_part(stem: str, part: str, data: dict) -> None:
    from weightspace._atomic import atomic_path

    with atomic_path(_work(stem) / f"{part}.json") as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--part",
        default="all",
        choices=["all", "trees", "cross", "lora", "report"],
        help="run one part (parts can run in parallel processes; `report` merges them)",
    )
    ap.add_argument("--trees", default=None, help="--part trees: comma-separated trees (default all)")
    ap.add_argument("--size", type=int, default=None, help="fmnist-trees size per tree (default 250; quick 4)")
    ap.add_argument("--fresh-size", type=int, default=None, help="seed-1 fresh fine-tunes per tree (default 20)")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--models", type=int, default=None, help="use the first N models of every tree (default all)")
    ap.add_argument("--steps", type=int, default=None, help="max expert training steps (early stopping on val)")
    ap.add_argument("--r", type=int, default=32, help="r_U = r_V (r_T = 4 r)")
    ap.add_argument("--lora-size", type=int, default=4, help="fmnist-lora concepts (0: skip)")
    ap.add_argument("--baselines", default="flat-linear,statnn-mlp,flat-mlp")
    ap.add_argument(
        "--zoo-dir",
        default=None,
        help="read the trees from <tree>.safetensors files here instead of building the recipe "
        "(e.g. the partial directory of a build in progress)",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    size = args.size or (4 if args.quick else 250)
    fresh_size = args.fresh_size or (4 if args.quick else 20)
    seeds = args.seeds or (1 if args.quick else 3)
    steps = args.steps or (30 if args.quick else 600)
    load_start = [round(v, 2) for v in os.getloadavg()]
    sys.path.insert(0, str(ROOT))
    import weightspace.lora  # noqa: F401  (registers fmnist-lora)
    import weightspace.probex as px
    from weightspace.learn import ResultsTable
    from weightspace.probex._experiment import HELD_OUT, run_cross, run_lora, run_trees
    from weightspace.zoo import build_recipe

    stem = Path(args.out or ("probex_experiment_quick" if args.quick else "probex_experiment")).name
    t_start = time.perf_counter()
    if args.zoo_dir:
        from weightspace.zoo import load_zoo

        chosen = args.trees.split(",") if args.trees else list(px.TREES)
        built = px.ModelTrees({t: load_zoo(Path(args.zoo_dir) / f"{t}.safetensors") for t in chosen})
    else:
        built = build_recipe("fmnist-trees", size=size, progress=True)
    trees = dict(px.trees_from(built))
    if args.models:
        trees = {t: z.select(np.arange(min(args.models, len(z)))) for t, z in trees.items()}
    config = px.ProbeXConfig(r_u=args.r, r_v=args.r, r_t=4 * args.r)
    widths = {"r_u": config.r_u, "r_v": config.r_v, "r_t": config.r_t}
    train = px.DEFAULT_TRAIN.replace(steps=steps, eval_every=max(10, steps // 12))
    sweep_train = px.SWEEP_TRAIN.replace(steps=max(20, steps // 2), eval_every=max(10, steps // 12))
    names = list(px.POOL_CLASSES)
    settings = {
        "size": size,
        "fresh_size": fresh_size,
        "seeds": seeds,
        "widths": widths,
        "train": train.to_dict(),
        "models_per_tree": args.models,
    }
    parts = ["trees", "cross", "lora", "report"] if args.part == "all" else [args.part]
    for part in parts:
        t0 = time.perf_counter()
        if part == "trees":
            chosen = args.trees.split(",") if args.trees else list(trees)
            saved: set[str] = set()

            def save(out: dict, chosen: list[str] = chosen, t0: float = t0, saved: set[str] = saved) -> None:
                for t, e in out["experts"].items():
                    if t not in saved:
                        e.save(_work(stem) / "experts" / t)
                        saved.add(t)
                _save_part(
                    stem,
                    "trees-" + "-".join(chosen),
                    {
                        "rows": out["table"].rows,
                        "sweep": out["sweep"],
                        "layers": out["layers"],
                        "zero_shot": out["zero_shot"],
                        "timings": out["timings"],
                        "settings": settings,
                        "seconds": time.perf_counter() - t0,
                        "load": [round(v, 2) for v in os.getloadavg()],
                    },
                )

            out = run_trees(
                {t: trees[t] for t in chosen},
                class_names=names,
                seeds=seeds,
                config=config,
                train_config=train,
                sweep_train_config=sweep_train,
                cross=False,
                on_stage=save,
                baselines=[b for b in args.baselines.split(",") if b],
            )
            save(out)
        elif part == "cross":
            fresh = build_recipe("fmnist-trees", size=fresh_size, seed=1, progress=True)
            experts = {t: px.Expert.load(_work(stem) / "experts" / t) for t in trees}
            out = run_cross(
                trees,
                experts,
                class_names=names,
                seeds=seeds,
                config=config,
                train_config=train,
                fresh=dict(px.trees_from(fresh)),
            )
            _save_part(
                stem,
                "cross",
                {
                    "rows": out["table"].rows,
                    "routing": out["routing"],
                    "timings": out["timings"],
                    "seconds": time.perf_counter() - t0,
                },
            )
        elif part == "lora" and args.lora_size:
            lz = build_recipe("fmnist-lora", size=args.lora_size, progress=True)
            out = run_lora(lz, seeds=seeds, config=config, train_config=train, sweep_train_config=sweep_train)
            _save_part(
                stem,
                "lora",
                {
                    "rows": out["table"].rows,
                    "sweep": out["sweep"],
                    "layer": out["layer"],
                    "models": len(lz),
                    "seconds": time.perf_counter() - t0,
                },
            )
        elif part == "report":
            data = {f.stem: json.loads(f.read_text()) for f in sorted(_work(stem).glob("*.json"))}
            rows, sweep, layers, zs, timings = [], {}, {}, {}, {}
            for k, d in data.items():
                rows += d["rows"]
                sweep.update(d.get("sweep", {}) if k.startswith("trees") else {})
                layers.update(d.get("layers", {}))
                zs.update(d.get("zero_shot", {}))
                timings.update(d.get("timings", {}))
            experts = {
                t: px.Expert.load(_work(stem) / "experts" / t) for t in trees if (_work(stem) / "experts" / t).exists()
            }
            FIGURES.mkdir(parents=True, exist_ok=True)
            figs = _figures({"sweep": sweep, "experts": experts}, {t: trees[t] for t in experts}, names, stem)
            res = {
                "name": stem,
                "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": f"{platform.node()}, {os.cpu_count()} cpus, python {platform.python_version()}",
                "command": "python benchmarks/probex_experiment.py "
                + " ".join(argv if argv is not None else sys.argv[1:]),
                "load_start": load_start,
                "load_end": [round(v, 2) for v in os.getloadavg()],
                "seconds": sum(d.get("seconds", 0.0) for d in data.values()),
                **next((d["settings"] for d in data.values() if "settings" in d), settings),
                "models": sum(len(z) for z in trees.values()),
                "held_out": list(HELD_OUT),
                "trees": built.summary(),
                "layers": layers,
                "sweep": sweep,
                "routing": data.get("cross", {}).get("routing", {}),
                "zero_shot": zs,
                "timings": timings,
                "table": rows,
                "table_md": ResultsTable(rows).to_markdown(),
                "figures": figs,
                "lora": None if "lora" not in data else {k: data["lora"][k] for k in ("sweep", "layer", "models")},
                "parts": {k: {"seconds": d.get("seconds"), "load": d.get("load")} for k, d in data.items()},
            }
            path = RESULTS / stem
            path.parent.mkdir(parents=True, exist_ok=True)
            from weightspace._atomic import atomic_path

            with atomic_path(path.with_suffix(".json")) as tmp:
                tmp.write_text(json.dumps(res, indent=1, default=str))
            with atomic_path(path.with_suffix(".md")) as tmp:
                tmp.write_text(_markdown(res))
            print(_markdown(res))
        print(f"[{part}] {time.perf_counter() - t0:.0f} s (total {time.perf_counter() - t_start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Population training vs a PyTorch loop training the same models one after another; recipe builds.

Cases (Adam, batch 128, same data and steps on both sides):
  * ``mlp-small``: 1000 MLPs 64-16-16-10 on scikit-learn digits (64-d inputs);
  * ``mlp-fmnist``: 200 MLPs 784-128-128-10 on Fashion-MNIST;
  * ``cnn-fmnist``: 200 Small CNNs (3 conv 16ch stride 2, GAP, dense 10) on Fashion-MNIST, JAX with
    the im2col formulation that :func:`weightspace.zoo.train_population` uses and with ``vmap``
    over ``lax.conv`` (the naive way).

JAX runs :func:`weightspace.zoo.fit_population` (one ``jit(vmap(scan))`` program); the first call's
extra time over a warm call is reported as compile time (no persistent compilation cache). PyTorch
trains each model in a plain Python loop; its per-model time is measured on ``--torch-models``
models and multiplied by the population size (the models are independent and cost the same).
Then every recipe is built at ``--recipe-size`` and its build time and accuracy spread recorded.

    .venv/bin/python benchmarks/training.py            # full run
    .venv/bin/python benchmarks/training.py --quick    # smoke run (small populations, few steps)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from weightspace.data import load_dataset
from weightspace.nets import CNN, MLP
from weightspace.zoo import RECIPES, ClassifierLoss, Zoo, build_recipe, fit_population, init_population

RESULTS = Path(__file__).parent / "results"


def _jax_run(arch, images, labels, *, models, steps, seed, im2col=True):
    """One timed population run (compile included on the first call for these shapes)."""
    data = {"x": images, "y": labels}
    md = {"label_map": np.tile(np.arange(10, dtype=np.int32), (models, 1))}
    loss = ClassifierLoss(arch) if im2col else _ApplyLoss(arch)
    params = init_population(arch, np.arange(models), key=jax.random.key(seed))
    jax.block_until_ready(params)
    t0 = time.perf_counter()
    res = fit_population(loss, params, data, key=jax.random.key(100 + seed), steps=steps, batch_size=128,
                         hparams={"optimizer": "adam", "learning_rate": 1e-3}, model_data=md,
                         segment_steps=steps, progress=False)
    jax.block_until_ready(jax.tree.leaves(res.params))
    return time.perf_counter() - t0, float(np.nanmedian(res.losses[:, -10:]))


class _ApplyLoss(ClassifierLoss):
    """Cross-entropy through ``arch.apply`` (``vmap`` over ``lax.conv``): the naive formulation."""

    def logits(self, params, x, key, model_data):
        return self.arch.apply(params, x)


def _torch_case(kind, images, labels, *, models, steps, threads):
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    if kind == "cnn":
        x_all = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    else:
        x_all = torch.from_numpy(images.reshape(len(images), -1))
    y_all = torch.from_numpy(labels.astype(np.int64))
    n = len(y_all)

    def make():
        if kind == "mlp-small":
            return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))
        if kind == "mlp-fmnist":
            return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
        return nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU(),
                             nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(16, 10))

    g = torch.Generator().manual_seed(0)
    last = []
    t0 = time.perf_counter()
    for m in range(models):
        torch.manual_seed(m)
        net = make()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(steps):
            idx = torch.randint(0, n, (128,), generator=g)
            loss = nn.functional.cross_entropy(net(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        last.append(loss.item())
    return {"per_model_s": (time.perf_counter() - t0) / models, "final_loss_median": float(np.median(last))}


def _recipe_row(name, size):
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["WEIGHTSPACE_CACHE"] = tmp
        t0 = time.perf_counter()
        result = build_recipe(name, size=size, seed=0, progress=False, cache=False)
        seconds = time.perf_counter() - t0
    zoos = [result] if isinstance(result, Zoo) else result.zoos
    row = {"recipe": name, "size": size, "models": sum(len(z) for z in zoos), "build_s": seconds}
    col = "psnr" if name.endswith("inr") else "test_acc"
    vals = np.array([v for z in zoos for v, f in zip(z.meta[col], z.meta.get("final", [True] * len(z)), strict=True)
                     if f], np.float64)
    q = np.percentile(vals, [0, 10, 50, 90, 100])
    row[col] = dict(zip(["min", "p10", "median", "p90", "max"], [round(float(v), 4) for v in q], strict=True))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small populations, few steps, tiny recipes")
    ap.add_argument("--steps", type=int, default=None, help="training steps per model (default 100; quick 20)")
    ap.add_argument("--repeats", type=int, default=None, help="warm JAX repeats (median; default 2; quick 1)")
    ap.add_argument("--torch-models", type=int, default=None, help="models the PyTorch loop trains (default 20)")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--recipe-size", type=int, default=50, help="models per classifier recipe build (quick: tiny)")
    ap.add_argument("--inr-size", type=int, default=200, help="images per INR recipe build (quick: tiny)")
    ap.add_argument("--cases", default="mlp-small,mlp-fmnist,cnn-fmnist,recipes")
    ap.add_argument("--cnn-steps", type=int, default=None, help="steps of the CNN case (default: --steps)")
    ap.add_argument("--name", default="training", help="results file stem")
    ap.add_argument("--merge", default=None, help="also include the cases/recipes of results/<MERGE>.json")
    args = ap.parse_args(argv)
    steps = args.steps or (20 if args.quick else 100)
    repeats = args.repeats or (1 if args.quick else 3)
    torch_models = args.torch_models or (3 if args.quick else 20)
    cases = args.cases.split(",")

    digits = load_dataset("digits", "all")
    fm = load_dataset("fashion-mnist", "train")
    specs = {
        "mlp-small": (MLP(in_features=64, hidden=(16, 16), image_shape=(8, 8, 1)), digits, 100 if args.quick else 1000),
        "mlp-fmnist": (MLP(in_features=784, hidden=(128, 128), image_shape=(28, 28, 1)), fm, 20 if args.quick else 200),
        "cnn-fmnist": (CNN(image_shape=(28, 28, 1), channels=(16, 16, 16), strides=2), fm, 20 if args.quick else 200),
    }
    out = {"machine": f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
                      f"load {os.getloadavg()[0]:.1f})",
           "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "command": " ".join([Path(sys.executable).name, *sys.argv]), "jax": jax.__version__,
           "steps": steps, "batch": 128, "optimizer": "adam lr 1e-3", "cases": [], "recipes": []}
    for case in [c for c in cases if c in specs]:
        arch, ds, models = specs[case]
        n_steps = (args.cnn_steps or steps) if case == "cnn-fmnist" else steps
        images, labels = np.ascontiguousarray(ds.images), np.ascontiguousarray(ds.labels)
        kind = case if case != "cnn-fmnist" else "cnn"
        tm = min(torch_models, models)
        _torch_case(kind, images, labels, models=1, steps=2, threads=args.torch_threads)  # warm-up (lazy init)
        first, _ = _jax_run(arch, images, labels, models=models, steps=n_steps, seed=0)
        # JAX and PyTorch alternate, so both see the same machine load; the ratio of each round is kept.
        rounds = []
        for r in range(repeats):
            jt, jloss = _jax_run(arch, images, labels, models=models, steps=n_steps, seed=r + 1)
            tt = _torch_case(kind, images, labels, models=tm, steps=n_steps, threads=args.torch_threads)
            rounds.append({"jax_s": jt, "torch_s": tt["per_model_s"] * models, "jax_loss": jloss,
                           "torch_loss": tt["final_loss_median"]})
        jax_s = statistics.median(r["jax_s"] for r in rounds)
        row = {"case": case, "models": models, "steps": n_steps, "arch": arch.to_config(),
               "jax": {"first_call_s": first, "steady_s": jax_s, "compile_s": max(first - jax_s, 0.0),
                       "final_loss_median": rounds[-1]["jax_loss"]},
               "torch": {"total_s": statistics.median(r["torch_s"] for r in rounds), "models_timed": tm,
                         "threads": args.torch_threads, "final_loss_median": rounds[-1]["torch_loss"]},
               "speedup": statistics.median(r["torch_s"] / r["jax_s"] for r in rounds), "rounds": rounds}
        if case == "cnn-fmnist":
            # The naive formulation is ~10x slower: timed on a few models, reported per model-step.
            lm = min(models, 10)
            _jax_run(arch, images, labels, models=lm, steps=n_steps, seed=0, im2col=False)
            lt, _ = _jax_run(arch, images, labels, models=lm, steps=n_steps, seed=1, im2col=False)
            it, _ = _jax_run(arch, images, labels, models=lm, steps=n_steps, seed=1)
            row["lax_conv_vs_im2col"] = {"models": lm, "lax_conv_s": lt, "im2col_s": it, "slowdown": lt / it}
        print(json.dumps(row), flush=True)
        out["cases"].append(row)
    if "recipes" in cases:
        for name, r in RECIPES.items():
            size = r.tiny_size if args.quick else (args.inr_size if name.endswith("inr") else args.recipe_size)
            row = _recipe_row(name, size)
            print(json.dumps(row), flush=True)
            out["recipes"].append(row)
    if args.merge:
        other = json.loads((RESULTS / f"{args.merge}.json").read_text())
        out["cases"] += other["cases"]
        out["recipes"] += other["recipes"]
        out["merged"] = {"from": args.merge, "command": other["command"], "date": other["date"],
                         "machine": other["machine"]}
    _write(out, args.name)
    return 0


def _write(out, stem):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    lines = [f"# Population training benchmark ({stem})", "",
             f"- machine: {out['machine']}", f"- date: {out['date']}", f"- command: `{out['command']}`",
             f"- jax {out['jax']}; {out['steps']} steps, batch {out['batch']}, {out['optimizer']}", "",
             "| case | models | JAX steady (s) | JAX compile (s) | PyTorch loop (s, extrapolated) | speedup |",
             "|---|---|---|---|---|---|"]
    for r in out["cases"]:
        lines.append(f"| {r['case']} ({r['steps']} steps) | {r['models']} | {r['jax']['steady_s']:.2f} | "
                     f"{r['jax']['compile_s']:.2f} | {r['torch']['total_s']:.2f} ({r['torch']['models_timed']} timed, "
                     f"{r['torch']['threads']} thread) | {r['speedup']:.2f}x |")
    for r in out["cases"]:
        if "lax_conv_vs_im2col" in r:
            c = r["lax_conv_vs_im2col"]
            lines += ["", f"CNN formulation ({c['models']} models): vmap over lax.conv {c['lax_conv_s']:.2f} s vs "
                      f"im2col {c['im2col_s']:.2f} s ({c['slowdown']:.1f}x slower)."]
    if out.get("merged"):
        m = out["merged"]
        lines += ["", f"Recipe rows from `{m['command']}` ({m['date']}, {m['machine']})."]
    if out["recipes"]:
        lines += ["", "| recipe | size | models | build (s) | held-out metric (min / p10 / median / p90 / max) |",
                  "|---|---|---|---|---|"]
        for r in out["recipes"]:
            col = "psnr" if "psnr" in r else "test_acc"
            q = r[col]
            lines.append(f"| {r['recipe']} | {r['size']} | {r['models']} | {r['build_s']:.1f} | {col}: {q['min']} / "
                         f"{q['p10']} / {q['median']} / {q['p90']} / {q['max']} |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())

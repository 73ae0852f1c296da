"""Population training vs a PyTorch loop training the same models one after another, against the
machine's own peak; recipe builds (INRs/s, CNN runs/s, hub models/s).

Cases (Adam, same data and steps on both sides):
  * ``mlp-small``: 1000 MLPs 64-16-16-10 on scikit-learn digits (64-d inputs), batch 128;
  * ``mlp-fmnist``: 200 MLPs 784-128-128-10 on Fashion-MNIST, batch 128;
  * ``cnn-fmnist``: 200 Small CNNs (3 conv 16ch stride 2, GAP, dense 10) on Fashion-MNIST, batch
    128, JAX with the im2col formulation that :func:`weightspace.zoo.train_population` uses and
    with ``vmap`` over ``lax.conv`` (the naive way);
  * ``siren``: 1000 SIRENs 2-32-32-1 (w0 30) each fitting one Fashion-MNIST image (all 784 pixels
    per step, lr 1e-3), as the INR recipes train them (their chunk size, no early stopping).

Useful work is the forward + backward FLOPs of the models (3 x ``arch.flops_per_example()`` per
example); its rate is reported against the peak of a jitted 2048^3 float32 matmul measured at the
start and the end of the same run (the larger of the two).

JAX runs :func:`weightspace.zoo.fit_population` (one ``jit(vmap(scan))`` program); the first call's
extra time over a warm call is reported as compile time (no persistent compilation cache). PyTorch
trains each model in a plain Python loop; its per-model time is measured on ``--torch-models``
models and multiplied by the population size (the models are independent and cost the same).
Then every recipe is built at ``--recipe-size`` and its build time and accuracy spread recorded.

``--torch-device`` picks where the PyTorch loop runs (``auto``: CUDA when torch sees a GPU and JAX
runs on one). On CUDA the data moves to the GPU once, batches are drawn on the GPU and the clock is
read after ``torch.cuda.synchronize()``. When JAX runs on a GPU the populations grow (10000 digits
MLPs, 1000 Fashion-MNIST MLPs, 1000 Small CNNs: the CPU sizes take milliseconds there) and results
go to ``results/training_gpu.{json,md}`` unless ``--name`` says otherwise. A case that fails is
recorded with its error and the run goes on; results are rewritten after every case.

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

from weightspace._atomic import atomic_path
from weightspace.data import load_dataset
from weightspace.nets import CNN, MLP, SIREN
from weightspace.zoo import RECIPES, ClassifierLoss, Zoo, build_recipe, fit_population, init_population

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _device

RESULTS = Path(__file__).parent / "results"
# population sizes per case: (CPU, GPU backend, --quick)
SIZES = {
    "mlp-small": (1000, 10000, 100),
    "mlp-fmnist": (200, 1000, 20),
    "cnn-fmnist": (200, 1000, 20),
    "siren": (1000, 10000, 64),
}


def _peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The machine's float32 matmul rate: best of ``repeats`` jitted ``n^3`` products (GFLOP/s)."""
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _useful_flops(arch, batch: int) -> float:
    """Forward + backward FLOPs of one model-step: 3 x the forward FLOPs of ``batch`` examples."""
    return 3.0 * arch.flops_per_example() * batch


def _siren_jax_run(arch, images, *, models, steps, seed):
    """SIRENs fitting one image each, as the INR recipes train them (without early stopping)."""
    from weightspace._backend import population_chunk
    from weightspace.nets import coordinate_grid
    from weightspace.zoo._recipes import _INRLoss

    coords = np.asarray(coordinate_grid(28, 28))
    target = np.asarray(images[:models]).reshape(models, 784, 1)
    params = init_population(arch, np.arange(models), key=jax.random.key(seed))
    jax.block_until_ready(params)
    t0 = time.perf_counter()
    res = fit_population(
        _INRLoss(arch),
        params,
        {"unused": np.zeros((1,), np.float32)},
        key=jax.random.key(100 + seed),
        steps=steps,
        batch_size=1,
        hparams={"optimizer": "adam", "learning_rate": 1e-3},
        model_data={"target": target},
        shared={"coords": coords},
        model_chunk=population_chunk(cpu=16, accelerator=1024),
        progress=False,
    )
    jax.block_until_ready(jax.tree.leaves(res.params))
    return time.perf_counter() - t0, float(np.nanmedian(res.losses[:, -10:]))


def _torch_siren(images, *, models, steps, device):
    """PyTorch SIRENs fitting one image each, one after another (full image per step, Adam 1e-3)."""
    import torch
    from torch import nn

    class Siren(nn.Module):
        def __init__(self):
            super().__init__()
            self.l0, self.l1, self.l2 = nn.Linear(2, 32), nn.Linear(32, 32), nn.Linear(32, 1)

        def forward(self, x):
            return self.l2(torch.sin(30.0 * self.l1(torch.sin(30.0 * self.l0(x)))))

    g = np.linspace(-1.0, 1.0, 28, dtype=np.float32)
    coords = torch.from_numpy(np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)).to(device)
    targets = torch.from_numpy(np.asarray(images[:models], np.float32).reshape(models, 784, 1)).to(device)
    return _torch_loop(Siren, lambda net, m: torch.mean((net(coords) - targets[m]) ** 2), models, steps, device)


def _torch_loop(make, loss_of, models, steps, device):
    """Train ``models`` PyTorch models one after another (Adam 1e-3; ``loss_of(net, m)`` is one
    step's loss of model ``m``); seconds per model and the median final loss."""
    import torch

    last = []
    _device.sync(device)
    t0 = time.perf_counter()
    for m in range(models):
        torch.manual_seed(m)
        net = make().to(device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(steps):
            loss = loss_of(net, m)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        last.append(loss.detach())
    _device.sync(device)
    seconds = time.perf_counter() - t0
    return {"per_model_s": seconds / models, "final_loss_median": float(torch.stack(last).median().cpu())}


def _jax_run(arch, data, *, models, steps, seed, im2col=True):
    """One timed population run (compile included on the first call for these shapes).

    ``data`` (``{"x", "y"}``) already lives on the JAX device, as the PyTorch loop's tensors do.
    """
    md = {"label_map": np.tile(np.arange(10, dtype=np.int32), (models, 1))}
    loss = ClassifierLoss(arch) if im2col else _ApplyLoss(arch)
    params = init_population(arch, np.arange(models), key=jax.random.key(seed))
    jax.block_until_ready(params)
    t0 = time.perf_counter()
    res = fit_population(
        loss,
        params,
        data,
        key=jax.random.key(100 + seed),
        steps=steps,
        batch_size=128,
        hparams={"optimizer": "adam", "learning_rate": 1e-3},
        model_data=md,
        segment_steps=steps,
        progress=False,
    )
    jax.block_until_ready(jax.tree.leaves(res.params))
    return time.perf_counter() - t0, float(np.nanmedian(res.losses[:, -10:]))


class _ApplyLoss(ClassifierLoss):
    """Cross-entropy through ``arch.apply`` (``vmap`` over ``lax.conv``): the naive formulation."""

    def logits(self, params, x, key, model_data):
        return self.arch.apply(params, x)


def _torch_data(kind, images, labels, device):
    """The training set as torch tensors on ``device`` (moved once per case)."""
    import torch

    if kind == "cnn":
        x_all = torch.from_numpy(np.array(images.transpose(0, 3, 1, 2), np.float32, order="C"))
    else:
        x_all = torch.from_numpy(np.array(images.reshape(len(images), -1), np.float32, order="C"))
    y_all = torch.from_numpy(labels.astype(np.int64))
    return x_all.to(device), y_all.to(device)


def _torch_case(kind, x_all, y_all, *, models, steps, device):
    """Train ``models`` PyTorch models one after another; seconds per model and the median final loss."""
    import torch
    from torch import nn

    n = len(y_all)

    def make():
        if kind == "mlp-small":
            return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))
        if kind == "mlp-fmnist":
            return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, 2, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 10),
        )

    g = torch.Generator(device=device).manual_seed(0)

    def loss_of(net, m):
        idx = torch.randint(0, n, (128,), generator=g, device=device)  # sampled where the data lives
        return nn.functional.cross_entropy(net(x_all[idx]), y_all[idx])

    return _torch_loop(make, loss_of, models, steps, device)


def _case_row(case, arch, ds, *, models, steps, repeats, torch_models, device):
    import torch

    images, labels = np.ascontiguousarray(ds.images), np.ascontiguousarray(ds.labels)
    tm = min(torch_models, models)
    if case == "siren":
        batch = 784  # every pixel of the image, every step

        def jax_run(seed):
            return _siren_jax_run(arch, images, models=models, steps=steps, seed=seed)

        def torch_run(n, s):
            return _torch_siren(images, models=n, steps=s, device=device)
    else:
        batch = 128
        data = jax.device_put({"x": images, "y": labels})
        kind = case if case != "cnn-fmnist" else "cnn"
        x_t, y_t = _torch_data(kind, images, labels, device)

        def jax_run(seed):
            return _jax_run(arch, data, models=models, steps=steps, seed=seed)

        def torch_run(n, s):
            return _torch_case(kind, x_t, y_t, models=n, steps=s, device=device)

    torch_run(1, 2)  # warm-up (lazy init, CUDA context)
    first, _ = jax_run(0)
    print(f"  {case}: JAX first call {first:.2f} s", flush=True)
    # JAX and PyTorch alternate, so both see the same machine load; the ratio of each round is kept.
    rounds = []
    for r in range(repeats):
        jt, jloss = jax_run(r + 1)
        tt = torch_run(tm, steps)
        rounds.append(
            {
                "jax_s": jt,
                "torch_s": tt["per_model_s"] * models,
                "jax_loss": jloss,
                "torch_loss": tt["final_loss_median"],
            }
        )
        print(f"  {case} round {r}: JAX {jt:.3f} s, PyTorch {tt['per_model_s']:.4f} s/model", flush=True)
    jax_s = statistics.median(r["jax_s"] for r in rounds)
    torch_s = statistics.median(r["torch_s"] for r in rounds)
    gflop = models * steps * _useful_flops(arch, batch) / 1e9
    row = {
        "case": case,
        "models": models,
        "steps": steps,
        "batch": batch,
        "useful_gflop": gflop,
        "jax_gflops": gflop / jax_s,
        "torch_gflops": gflop / torch_s,
        "arch": arch.to_config(),
        "jax": {
            "first_call_s": first,
            "steady_s": jax_s,
            "compile_s": max(first - jax_s, 0.0),
            "final_loss_median": rounds[-1]["jax_loss"],
        },
        "torch": {
            "total_s": torch_s,
            "models_timed": tm,
            "device": device,
            "threads": torch.get_num_threads() if device == "cpu" else None,
            "final_loss_median": rounds[-1]["torch_loss"],
        },
        "speedup": statistics.median(r["torch_s"] / r["jax_s"] for r in rounds),
        "rounds": rounds,
    }
    if case == "cnn-fmnist":
        # The naive formulation is ~10x slower: timed on a few models, reported per model-step.
        try:
            lm = min(models, 10)
            _jax_run(arch, data, models=lm, steps=steps, seed=0, im2col=False)
            lt, _ = _jax_run(arch, data, models=lm, steps=steps, seed=1, im2col=False)
            _jax_run(arch, data, models=lm, steps=steps, seed=0)
            it, _ = _jax_run(arch, data, models=lm, steps=steps, seed=1)
            row["lax_conv_vs_im2col"] = {"models": lm, "lax_conv_s": lt, "im2col_s": it, "slowdown": lt / it}
        except Exception as exc:
            row["lax_conv_vs_im2col"] = {"error": _device.error_text(exc)}
    return row


def _recipe_row(name, size):
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["WEIGHTSPACE_CACHE"] = tmp
        t0 = time.perf_counter()
        result = build_recipe(name, size=size, seed=0, progress=False, cache=False)
        seconds = time.perf_counter() - t0
    zoos = [result] if isinstance(result, Zoo) else result.zoos
    n_models = sum(len(z) for z in zoos)
    row = {"recipe": name, "size": size, "models": n_models, "build_s": seconds, "models_per_s": n_models / seconds}
    col = "psnr" if name.endswith("inr") else "test_acc"
    vals = np.array(
        [v for z in zoos for v, f in zip(z.meta[col], z.meta.get("final", [True] * len(z)), strict=True) if f],
        np.float64,
    )
    q = np.percentile(vals, [0, 10, 50, 90, 100])
    row[col] = dict(zip(["min", "p10", "median", "p90", "max"], [round(float(v), 4) for v in q], strict=True))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small populations, few steps, tiny recipes")
    ap.add_argument("--steps", type=int, default=None, help="training steps per model (default 100; quick 20)")
    ap.add_argument("--repeats", type=int, default=None, help="warm JAX repeats (median; default 3; quick 1)")
    ap.add_argument(
        "--models",
        type=int,
        default=None,
        help="population size of every case (default: per case, larger when JAX runs on a GPU)",
    )
    ap.add_argument("--torch-models", type=int, default=None, help="models the PyTorch loop trains (default 20)")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads on the CPU (default 1)")
    _device.add_torch_device_argument(ap)
    _device.add_matmul_precision_argument(ap)
    ap.add_argument("--recipe-size", type=int, default=50, help="models per classifier recipe build (quick: tiny)")
    ap.add_argument("--inr-size", type=int, default=200, help="images per INR recipe build (quick: tiny)")
    ap.add_argument("--cases", default="mlp-small,mlp-fmnist,cnn-fmnist,siren,recipes")
    ap.add_argument("--cnn-steps", type=int, default=None, help="steps of the CNN case (default: --steps)")
    ap.add_argument(
        "--name",
        default=None,
        help="results file stem (default training, +_gpu on a GPU backend, +_quick with --quick)",
    )
    ap.add_argument("--merge", default=None, help="also include the cases/recipes of results/<MERGE>.json")
    args = ap.parse_args(argv)
    steps = args.steps or (20 if args.quick else 100)
    repeats = args.repeats or (1 if args.quick else 3)
    torch_models = args.torch_models or (3 if args.quick else 20)
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in (*SIZES, "recipes")]
    if unknown:
        print(f"unknown cases {unknown} skipped; known: {[*SIZES, 'recipes']}", file=sys.stderr, flush=True)
    devices = _device.jax_info()  # initialises JAX before torch loads its CUDA libraries
    gpu = devices["jax_backend"] == "gpu"
    device = _device.resolve_torch_device(args.torch_device)
    import torch

    if device == "cpu":
        torch.set_num_threads(args.torch_threads)
    _device.set_matmul_precision(args.matmul_precision, device)
    devices.update(_device.jax_info())
    devices.update(_device.torch_info(device, args.torch_threads if device == "cpu" else None))
    stem = args.name or _device.default_stem("training", quick=args.quick, gpu=gpu)
    print(f"training benchmark -> results/{stem}: {_device.describe(devices)}", flush=True)

    archs = {  # datasets load inside each case's try: a missing one fails that case only
        "mlp-small": (MLP(in_features=64, hidden=(16, 16), image_shape=(8, 8, 1)), ("digits", "all")),
        "mlp-fmnist": (MLP(in_features=784, hidden=(128, 128), image_shape=(28, 28, 1)), ("fashion-mnist", "train")),
        "cnn-fmnist": (CNN(image_shape=(28, 28, 1), channels=(16, 16, 16), strides=2), ("fashion-mnist", "train")),
        "siren": (SIREN(hidden=(32, 32), w0=30.0), ("fashion-mnist", "train")),
    }
    peak_start = _peak_gflops()
    print(f"float32 matmul peak at the start: {peak_start:.0f} GFLOP/s", flush=True)
    out = {
        "machine": f"{platform.node()} ({_device.cpu_name()}, {os.cpu_count()} cpus, load {_device.loadavg():.1f})",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "jax": jax.__version__,
        "devices": devices,
        "steps": steps,
        "batch": 128,
        "optimizer": "adam lr 1e-3",
        "peak_gflops": {"start": peak_start},
        "cases": [],
        "recipes": [],
    }
    for case in [c for c in cases if c in archs]:
        arch, ds = archs[case]
        cpu_n, gpu_n, quick_n = SIZES[case]
        models = args.models or (quick_n if args.quick else gpu_n if gpu else cpu_n)
        n_steps = (args.cnn_steps or steps) if case == "cnn-fmnist" else steps
        print(f"case {case}: {models} models, {n_steps} steps", flush=True)
        t0 = time.perf_counter()
        try:
            row = _case_row(
                case,
                arch,
                load_dataset(*ds),
                models=models,
                steps=n_steps,
                repeats=repeats,
                torch_models=torch_models,
                device=device,
            )
        except Exception as exc:
            row = {"case": case, "models": models, "steps": n_steps, "error": _device.error_text(exc)}
        row["wall_s"] = time.perf_counter() - t0
        print(json.dumps(row), flush=True)
        out["cases"].append(row)
        _write(out, stem)
    if "recipes" in cases:
        for name, r in RECIPES.items():
            size = r.tiny_size if args.quick else (args.inr_size if name.endswith("inr") else args.recipe_size)
            try:
                row = _recipe_row(name, size)
            except Exception as exc:
                row = {"recipe": name, "size": size, "error": _device.error_text(exc)}
            print(json.dumps(row), flush=True)
            out["recipes"].append(row)
            _write(out, stem)
    out["peak_gflops"]["end"] = _peak_gflops()
    if args.merge:
        other = json.loads((RESULTS / f"{args.merge}.json").read_text())
        out["cases"] += other["cases"]
        out["recipes"] += other["recipes"]
        out["merged"] = {
            "from": args.merge,
            "command": other["command"],
            "date": other["date"],
            "machine": other["machine"],
        }
    _write(out, stem)
    print(f"wrote {RESULTS / stem}.json and .md", flush=True)
    return 0


def _torch_where(t):
    if t.get("device", "cpu") == "cuda":
        return "CUDA"
    return f"{t.get('threads')} CPU thread(s)"


def _write(out, stem):
    """Write ``results/<stem>.{json,md}`` (called after every case, so a cut-off run keeps what it measured)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_path(RESULTS / f"{stem}.json") as tmp:
        tmp.write_text(json.dumps(out, indent=1))
    lines = [
        f"# Population training benchmark ({stem})",
        "",
        f"- machine: {out['machine']}",
        f"- date: {out['date']}",
        f"- command: `{out['command']}`",
    ]
    if out.get("devices"):
        lines.append(f"- devices: {_device.describe(out['devices'])}")
    lines += [
        f"- jax {out['jax']}; {out['steps']} steps, batch {out['batch']}, {out['optimizer']}; JAX times include "
        "copying the trained parameters back to the host, the PyTorch models stay where they trained",
    ]
    pk = out.get("peak_gflops", {})
    peak = max(pk.values()) if pk else None
    if peak:
        lines.append(
            f"- float32 matmul peak (jitted 2048^3, best of 5), same run: start {pk.get('start', 0):.0f}, end "
            f"{pk.get('end', float('nan')):.0f} GFLOP/s; the fractions use the larger"
        )
    lines += [
        "",
        "| case | models | JAX steady (s) | JAX compile (s) | PyTorch loop (s, extrapolated) | speedup | "
        "JAX useful GFLOP/s (% of peak) | PyTorch GFLOP/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in out["cases"]:
        if "error" in r:
            lines.append(f"| {r['case']} ({r['steps']} steps) | {r['models']} | failed: {r['error'][:200]} | | | | | |")
            continue
        frac = f" ({100 * r['jax_gflops'] / peak:.1f}%)" if peak and "jax_gflops" in r else ""
        lines.append(
            f"| {r['case']} ({r['steps']} steps, batch {r.get('batch', 128)}) | {r['models']} | "
            f"{r['jax']['steady_s']:.2f} | {r['jax']['compile_s']:.2f} | {r['torch']['total_s']:.2f} "
            f"({r['torch']['models_timed']} timed, {_torch_where(r['torch'])}) | {r['speedup']:.2f}x | "
            f"{r.get('jax_gflops', float('nan')):.1f}{frac} | {r.get('torch_gflops', float('nan')):.1f} |"
        )
    for r in out["cases"]:
        c = r.get("lax_conv_vs_im2col")
        if c and "error" in c:
            lines += ["", f"CNN formulation comparison failed: {c['error'][:200]}"]
        elif c:
            lines += [
                "",
                f"CNN formulation ({c['models']} models): vmap over lax.conv {c['lax_conv_s']:.2f} s vs "
                f"im2col {c['im2col_s']:.2f} s ({c['slowdown']:.1f}x slower).",
            ]
    if out.get("merged"):
        m = out["merged"]
        lines += ["", f"Recipe rows from `{m['command']}` ({m['date']}, {m['machine']})."]
    if out["recipes"]:
        lines += [
            "",
            "| recipe | size | models | build (s) | models/s | held-out metric (min / p10 / median / p90 / max) |",
            "|---|---|---|---|---|---|",
        ]
        for r in out["recipes"]:
            if "error" in r:
                lines.append(f"| {r['recipe']} | {r['size']} | | failed: {r['error'][:200]} | | |")
                continue
            col = "psnr" if "psnr" in r else "test_acc"
            q = r[col]
            lines.append(
                f"| {r['recipe']} | {r['size']} | {r['models']} | {r['build_s']:.1f} | "
                f"{r.get('models_per_s', r['models'] / r['build_s']):.1f} | {col}: {q['min']} / "
                f"{q['p10']} / {q['median']} / {q['p90']} / {q['max']} |"
            )
    with atomic_path(RESULTS / f"{stem}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())

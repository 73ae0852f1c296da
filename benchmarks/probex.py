"""ProbeX training throughput: weightspace (JAX, `weightspace.learn.fit`) vs a PyTorch implementation
of the same module, same batch, steps and optimiser, in the same run.

The PyTorch module is the authors' `ProbeXClassification` (probes ``[d_W, r_U]``, shared projection
``[d_H, r_V]``, ReLU, one linear on the flattened ``[r_U * r_V]`` responses, a head), trained with
AdamW (lr 1e-3, weight decay 1e-5) on BCE, batches of 128 models drawn as shuffled epochs; the JAX
side is `weightspace.probex.train_expert` (the library path: `learn.fit`, the same optimiser and
loss). Compile time (the first step) is reported apart; steady-state times are medians over
repeats. Inputs are one layer of real `fmnist-trees` models when that build is cached, else a
Gaussian stand-in of the same shape (the speed does not depend on the values).

    python benchmarks/probex.py            # full: 60 steps x 3 repeats, paper widths 128/128/512
    python benchmarks/probex.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _device  # noqa: E402


def _layer(n: int, d_h: int, d_w: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Real layers (fmnist-trees mlp-fmnist layers.1.weight [64, 128]) when cached, else Gaussian."""
    try:
        import weightspace.probex as px
        from weightspace.zoo import build_recipe, recipe_path

        if (d_h, d_w) == (64, 128) and (recipe_path("fmnist-trees", size=250) / "recipe.json").exists():
            zoo = build_recipe("fmnist-trees", size=250)["mlp-fmnist"]
            x = px.zoo_layer(zoo, "layers.1.weight")
            y = px.zoo_targets(zoo, px.POOL_CLASSES)
            reps = -(-n // len(x))
            return np.tile(x, (reps, 1, 1))[:n], np.tile(y, (reps, 1))[:n], "fmnist-trees mlp-fmnist layers.1.weight"
    except Exception:
        pass
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(n, d_h, d_w)) * 0.1).astype(np.float32)
    y = (rng.random((n, 20)) < 0.25).astype(np.float32)
    return x, y, "Gaussian stand-in"


def bench_jax(x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> dict:
    from weightspace.probex import DEFAULT_TRAIN, ProbeXConfig, train_expert

    names = [f"c{i}" for i in range(y.shape[1])]
    runs = []
    for _ in range(args.repeats):
        _, rep = train_expert(
            x,
            y,
            class_names=names,
            train_idx=np.arange(len(x)),
            config=ProbeXConfig(r_u=args.r_u, r_v=args.r_v, r_t=args.r_t),
            train_config=DEFAULT_TRAIN.replace(
                steps=args.steps, batch_size=args.batch, patience=None, eval_every=args.steps
            ),
            progress=False,
        )
        runs.append((rep.compile_seconds, rep.seconds))
    steady = statistics.median(r[1] for r in runs) / (args.steps - 1)
    return {
        "compile_s": statistics.median(r[0] for r in runs),
        "step_s": steady,
        "steps_per_s": 1 / steady,
        "models_per_s": args.batch / steady,
        "repeats": [list(r) for r in runs],
    }


def bench_torch(x: np.ndarray, y: np.ndarray, args: argparse.Namespace, device: str) -> dict:
    import torch
    from torch import nn

    torch.manual_seed(0)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    class ProbeXTorch(nn.Module):
        def __init__(self, d_h: int, d_w: int, n_out: int) -> None:
            super().__init__()
            self.probes = nn.Linear(args.r_u, d_w, bias=False)  # weight [d_W, r_U], as the authors'
            self.proj = nn.Linear(d_h, args.r_v, bias=False)
            self.encoder = nn.Linear(args.r_u * args.r_v, args.r_t)
            self.head = nn.Linear(args.r_t, n_out)

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            z = w @ self.probes.weight  # [b, d_h, r_u]
            h = torch.relu(self.proj(z.transpose(1, 2)))  # [b, r_u, r_v]
            return self.head(self.encoder(h.reshape(h.shape[0], -1)))

    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    n = len(x)
    per_epoch = n // args.batch
    runs = []
    for r in range(args.repeats):
        model = ProbeXTorch(x.shape[1], x.shape[2], y.shape[1]).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
        lossf = nn.BCEWithLogitsLoss()
        g = torch.Generator().manual_seed(r)
        perm = torch.randperm(n, generator=g)
        times = []
        for step in range(args.steps):
            if step % per_epoch == 0:
                perm = torch.randperm(n, generator=g)
            idx = perm[(step % per_epoch) * args.batch : (step % per_epoch + 1) * args.batch].to(device)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = lossf(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            _device.sync(device)
            times.append(time.perf_counter() - t0)
        runs.append((times[0], sum(times[1:])))
    steady = statistics.median(r[1] for r in runs) / (args.steps - 1)
    return {
        "first_step_s": statistics.median(r[0] for r in runs),
        "step_s": steady,
        "steps_per_s": 1 / steady,
        "models_per_s": args.batch / steady,
        "repeats": [list(r) for r in runs],
    }


def _markdown(res: dict) -> str:
    j, t = res["jax"], res["torch"]
    c = res["config"]
    lines = [
        f"# ProbeX training throughput ({res['name']})",
        "",
        f"- date: {res['date']}",
        f"- machine: {res['machine']}; load average at start {res['load_start']}, at end {res['load_end']}"
        + (
            " (a SHARED, loaded machine: absolute times are inflated, the ratio is the number to read)"
            if res["load_start"][0] > (os.cpu_count() or 1)
            else ""
        ),
        f"- command: `{res['command']}`",
        f"- devices: {_device.describe(res['devices'])}",
        f"- module: d_H x d_W = {c['d_h']} x {c['d_w']} ({res['inputs']}), r_U = {c['r_u']}, r_V = {c['r_v']}, "
        f"r_T = {c['r_t']}, 20 classes (BCE); AdamW lr 1e-3 wd 1e-5; batch {c['batch']}, {c['steps']} steps, "
        f"{c['models']} training models; medians of {c['repeats']} repeats",
        "",
        "| implementation | compile / first step (s) | steady step (ms) | steps/s | models/s |",
        "|---|---|---|---|---|",
        f"| weightspace (JAX, learn.fit) | {j['compile_s']:.2f} | {1e3 * j['step_s']:.1f} | {j['steps_per_s']:.1f} "
        f"| {j['models_per_s']:.0f} |",
        f"| PyTorch (same module, eager) | {t['first_step_s']:.2f} | {1e3 * t['step_s']:.1f} | "
        f"{t['steps_per_s']:.1f} | {t['models_per_s']:.0f} |",
        "",
        f"**Speed-up (steady state, JAX vs PyTorch): {t['step_s'] / j['step_s']:.2f}x** (target >= 2x on CPU).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--models", type=int, default=512)
    ap.add_argument("--d-h", type=int, default=64)
    ap.add_argument("--d-w", type=int, default=128)
    ap.add_argument("--r-u", type=int, default=128)
    ap.add_argument("--r-v", type=int, default=128)
    ap.add_argument("--r-t", type=int, default=512)
    ap.add_argument("--torch-threads", type=int, default=None, help="default: torch's own (all cores)")
    _device.add_torch_device_argument(ap, reference="the PyTorch module")
    ap.add_argument("--out", default=None, help="results path without extension (default results/probex[_quick|_gpu])")
    args = ap.parse_args(argv)
    args.steps = args.steps or (10 if args.quick else 60)
    args.repeats = args.repeats or (1 if args.quick else 3)
    load_start = [round(v, 2) for v in os.getloadavg()]
    sys.path.insert(0, str(ROOT))
    devices = _device.jax_info()
    device = _device.resolve_torch_device(args.torch_device)
    devices.update(_device.torch_info(device, args.torch_threads))
    gpu = devices["jax_backend"] == "gpu"
    out = Path(args.out or RESULTS / _device.default_stem("probex", quick=args.quick, gpu=gpu))
    x, y, inputs = _layer(args.models, args.d_h, args.d_w)
    print(f"probex benchmark -> {out}: {_device.describe(devices)}; inputs {inputs}", flush=True)
    j = bench_jax(x, y, args)
    print(f"jax: {j}", flush=True)
    t = bench_torch(x, y, args, device)
    print(f"torch: {t}", flush=True)
    res = {
        "name": out.name,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} {_device.cpu_name()}, {os.cpu_count()} cpus, python {platform.python_version()}",
        "command": "python benchmarks/probex.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "devices": devices,
        "load_start": load_start,
        "load_end": [round(v, 2) for v in os.getloadavg()],
        "inputs": inputs,
        "config": {
            "d_h": args.d_h,
            "d_w": args.d_w,
            "r_u": args.r_u,
            "r_v": args.r_v,
            "r_t": args.r_t,
            "batch": args.batch,
            "steps": args.steps,
            "repeats": args.repeats,
            "models": args.models,
        },
        "jax": j,
        "torch": t,
        "speedup": t["step_s"] / j["step_s"],
    }
    from weightspace._atomic import atomic_path

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(res, indent=1, default=str))
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(_markdown(res))
    print(_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Probing throughput: weightspace.probing.probe vs a PyTorch per-model loop, next to the matmul peak.

Cases (issue 2, Performance): (a) MLP 64-128-128-10, 1000 models, 1000 probes; (b) Small CNN
(3 conv 16ch stride 2, GAP, dense 10) on 28x28x1 Fashion-MNIST images, 1000 models, 256 probes;
(c) SIREN 2-32-32-1, 10000 models, 784 coordinates; (d) probe-starved SIREN and MLP, 64 probes.
Every case reports compile time separately, steady-state medians over repeats (JAX and PyTorch
runs interleaved so machine load hits both alike), models/s, GFLOP/s, the ratio to the loop, and
the throughput of every ``apply_many`` formulation of the architecture on a slice of the zoo.

    python benchmarks/probing.py            # full run (a few minutes)
    python benchmarks/probing.py --quick    # smoke run: 10x fewer models, 2 repeats
    python benchmarks/probing.py --threads 1  # pin JAX and PyTorch to one core (robust on a busy box)
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from weightspace.nets import CNN, MLP, SIREN, Architecture, coordinate_grid
from weightspace.probing import chunk_sizes, probe
from weightspace.zoo import Zoo

RESULTS = Path(__file__).parent / "results"
FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def fashion_images(n: int) -> np.ndarray:
    with gzip.open(FMNIST) as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16)
    return (raw[: n * 784].reshape(n, 28, 28, 1) / 255.0).astype(np.float32)


def cases(quick: bool) -> list[dict[str, Any]]:
    k = 10 if quick else 1
    mlp = MLP(in_features=64, hidden=(128, 128), out_features=10)
    cnn = CNN(image_shape=(28, 28, 1), channels=(16, 16, 16), strides=2, input_mean=0.29, input_std=0.35)
    siren = SIREN(hidden=(32, 32), w0=30.0)
    rng = np.random.default_rng(0)
    grid = np.asarray(coordinate_grid(28, 28))
    return [
        {"name": "a-mlp", "arch": mlp, "models": 1000 // k, "probes": rng.random((1000, 64), np.float32),
         "target": 1.3},
        {"name": "b-cnn", "arch": cnn, "models": 1000 // k, "probes": fashion_images(256), "target": 1.0},
        {"name": "c-siren", "arch": siren, "models": 10000 // k, "probes": grid, "target": 1.5},
        {"name": "d-siren-64", "arch": siren, "models": 10000 // k, "probes": grid[rng.choice(784, 64, replace=False)],
         "target": 3.0},
        {"name": "d-mlp-64", "arch": mlp, "models": 1000 // k, "probes": rng.random((64, 64), np.float32),
         "target": 3.0},
    ]


# ---- the PyTorch reference: one model at a time ---------------------------------------------
def torch_loop(arch: Architecture, zoo: Zoo, x: np.ndarray) -> Callable[[], np.ndarray] | None:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    models = [{k: torch.from_numpy(np.array(v[i], np.float32)) for k, v in zoo.params.items()}
              for i in range(len(zoo))]
    n_out = arch.num_outputs
    if isinstance(arch, CNN):
        xt = torch.from_numpy(np.ascontiguousarray(((x - arch.input_mean) / arch.input_std).transpose(0, 3, 1, 2)))

        def forward(p: dict[str, Any]) -> Any:
            h = xt
            for i in range(len(arch.channels)):
                h = torch.relu(F.conv2d(h, p[f"convs.{i}.weight"], p[f"convs.{i}.bias"], stride=arch.strides,
                                        padding=arch.padding))
            return F.linear(h.mean(dim=(2, 3)), p["head.weight"], p["head.bias"])
    elif isinstance(arch, SIREN):
        xt, n = torch.from_numpy(np.array(x)), len(arch.widths) - 1

        def forward(p: dict[str, Any]) -> Any:
            h = xt
            for i in range(n):
                h = F.linear(h, p[f"layers.{i}.weight"], p[f"layers.{i}.bias"])
                if i < n - 1:
                    h = torch.sin(arch.w0 * h)
            return h
    else:
        xt, n = torch.from_numpy(np.array(x)), len(arch.widths) - 1

        def forward(p: dict[str, Any]) -> Any:
            h = xt
            for i in range(n):
                h = F.linear(h, p[f"layers.{i}.weight"], p[f"layers.{i}.bias"])
                if i < n - 1:
                    h = torch.relu(h)
            return h

    def run() -> np.ndarray:
        out = np.empty((len(models), x.shape[0], n_out), np.float32)
        with torch.inference_mode():
            for i, p in enumerate(models):
                out[i] = forward(p).numpy()
        return out

    return run


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a = jnp.asarray(np.random.default_rng(0).random((n, n), np.float32))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    return 2 * n**3 / min(timed(lambda: f(a)) for _ in range(repeats)) / 1e9


def run_case(case: dict[str, Any], repeats: int, threads: int) -> dict[str, Any]:
    arch, m, x = case["arch"], case["models"], case["probes"]
    zoo = Zoo.init(arch, m, key=jax.random.key(0)).to_numpy()
    n_p = x.shape[0]
    gflop = arch.flops_per_example() * m * n_p / 1e9
    mc, pc = chunk_sizes(arch, m, n_p)
    call = lambda: probe(zoo, x, mesh=False, progress=False)
    first = timed(call)
    loop = torch_loop(arch, zoo, np.asarray(arch.adapt(jnp.asarray(x))))
    jax_t, torch_t = [], []
    for _ in range(repeats):  # interleaved: both see the same machine load
        jax_t.append(timed(call))
        if loop is not None:
            torch_t.append(timed(loop))
    jt = statistics.median(jax_t)
    row: dict[str, Any] = {
        "case": case["name"], "arch": arch.to_config(), "models": m, "probes": n_p, "gflop": round(gflop, 3),
        "chunks": [mc, pc], "compile_s": round(max(first - jt, 0.0), 3), "jax_s": round(jt, 4),
        "jax_models_per_s": round(m / jt, 1), "jax_gflops": round(gflop / jt, 2), "target_ratio": case["target"],
    }
    if loop is not None:
        tt = statistics.median(torch_t)
        diff = float(np.max(np.abs(call() - loop())))
        row.update(torch_s=round(tt, 4), torch_models_per_s=round(m / tt, 1), torch_gflops=round(gflop / tt, 2),
                   ratio=round(tt / jt, 3), max_abs_diff_vs_torch=diff, meets_target=bool(tt / jt >= case["target"]))
    # every formulation on a slice of the zoo (kernel only, one chunk, no host copies)
    sub = max(1, min(m, mc, m // 4))
    params = {k: jnp.asarray(v[:sub]) for k, v in zoo.params.items()}
    xa = arch.adapt(jnp.asarray(x))
    forms = {}
    names = ["vmap", "einsum", "scan", "auto"] + (["im2col"] if isinstance(arch, CNN) else [])
    for form in names:
        f = jax.jit(lambda p, xx, form=form: arch.apply_many(p, xx, formulation=form))
        c = timed(lambda f=f: f(params, xa))
        t = statistics.median(timed(lambda f=f: f(params, xa)) for _ in range(max(2, repeats)))
        forms[form] = {"compile_s": round(max(c - t, 0.0), 3), "models_per_s": round(sub / t, 1),
                       "gflops": round(gflop * sub / m / t, 2)}
    row["formulations"] = {"models": sub, **forms}
    return row


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "machine_cores": os.cpu_count(), "jax": jax.__version__,
            "backend": jax.default_backend(), "devices": jax.device_count(), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10x fewer models, 2 repeats (smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="steady-state repeats (default 5; quick 2)")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--out", default=str(RESULTS / "probing"), help="results path without suffix")
    ap.add_argument("--threads", type=int, default=None,
                    help="pin the process to this many cores (JAX and PyTorch alike; default: all)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    cores = sorted(os.sched_getaffinity(0))
    if args.threads is not None:  # before JAX starts its CPU client, so its thread pool sees the pinning
        os.sched_setaffinity(0, cores[: max(1, args.threads)])
    threads = len(os.sched_getaffinity(0))
    try:
        import torch

        torch.set_num_threads(threads)  # JAX's CPU client uses every core the process may run on
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
        print("torch not installed: the PyTorch loop is skipped", file=sys.stderr)
    load_before = os.getloadavg()
    peak = matmul_peak()
    rows = []
    wanted = None if args.cases is None else set(args.cases.split(","))
    for case in cases(args.quick):
        if wanted is not None and case["name"] not in wanted:
            continue
        row = run_case(case, repeats, threads)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("arch", "formulations")}), flush=True)
    load_after = os.getloadavg()
    result = {
        "benchmark": "probing", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(), "torch": torch_version, "threads": threads, "quick": args.quick,
        "repeats": repeats, "matmul_peak_gflops": round(peak, 1),
        "loadavg_before": [round(v, 2) for v in load_before], "loadavg_after": [round(v, 2) for v in load_after],
        "busy": max(load_before[0], load_after[0]) > 0.5 * threads, "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Probing benchmark", "",
        f"- date: {r['date']}; command: `{r['command']}`",
        f"- machine: {m['cpu']}, process pinned to {m['cores']} of {m['machine_cores']} cores, "
        f"backend {m['backend']} ({m['devices']} device(s)), "
        f"jax {m['jax']}, torch {r['torch']} with {r['threads']} threads (matching JAX)",
        f"- matmul peak (JAX, 2048^3 float32): {r['matmul_peak_gflops']} GFLOP/s",
        f"- load average before/after: {r['loadavg_before'][0]} / {r['loadavg_after'][0]} -> "
        + ("**machine busy** (shared by other jobs): absolute times are noisy, compare the ratios (JAX and "
           "PyTorch runs are interleaved)" if r["busy"] else "machine idle"),
        f"- steady state: median of {r['repeats']} runs; compile = first call minus steady state", "",
        "| case | models | probes | JAX models/s | JAX GFLOP/s | loop models/s | loop GFLOP/s | ratio | target | "
        "compile s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["results"]:
        lines.append(
            f"| {row['case']} | {row['models']} | {row['probes']} | {row['jax_models_per_s']} | {row['jax_gflops']} | "
            f"{row.get('torch_models_per_s', '-')} | {row.get('torch_gflops', '-')} | {row.get('ratio', '-')} | "
            f">= {row['target_ratio']} | {row['compile_s']} |"
        )
    lines += ["", "Formulations (`apply_many(formulation=...)`, kernel only, on a slice of each zoo; models/s):", "",
              "| case | slice | vmap | einsum | scan | im2col | auto |", "|---|---|---|---|---|---|---|"]
    for row in r["results"]:
        f = row["formulations"]
        cell = lambda k, f=f: str(f[k]["models_per_s"]) if k in f else "-"
        lines.append(f"| {row['case']} | {f['models']} | {cell('vmap')} | {cell('einsum')} | {cell('scan')} | "
                     f"{cell('im2col')} | {cell('auto')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

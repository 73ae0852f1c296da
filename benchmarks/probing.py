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

``--torch-device`` picks where the PyTorch loop runs (``auto``: CUDA when torch sees a GPU and JAX
runs on one). On CUDA the loop's parameters and probes move to the GPU once, its time is measured on
``--torch-models`` models (default 2000) and scaled to the zoo, and ``probe`` is also timed on a zoo
already on the device. On a GPU backend the cases also include larger zoos (10k MLPs, 10k CNNs,
100k SIRENs) and results go to ``results/probing_gpu``. A failed case is recorded with its error and
the run goes on; results are rewritten after every case.
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

from weightspace._atomic import atomic_path
from weightspace.nets import CNN, MLP, SIREN, Architecture, coordinate_grid
from weightspace.probing import chunk_sizes, probe
from weightspace.zoo import Zoo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _device

RESULTS = Path(__file__).parent / "results"
FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def fashion_images(n: int) -> np.ndarray:
    with gzip.open(FMNIST) as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16)
    return (raw[: n * 784].reshape(n, 28, 28, 1) / 255.0).astype(np.float32)


def cases(quick: bool) -> list[dict[str, Any]]:
    """The benchmark cases; ``gpu`` ones (larger zoos) run by default only when JAX runs on a GPU."""
    k = 10 if quick else 1
    mlp = MLP(in_features=64, hidden=(128, 128), out_features=10)
    cnn = CNN(image_shape=(28, 28, 1), channels=(16, 16, 16), strides=2, input_mean=0.29, input_std=0.35)
    siren = SIREN(hidden=(32, 32), w0=30.0)
    rng = np.random.default_rng(0)
    grid = np.asarray(coordinate_grid(28, 28))
    mlp_probes = rng.random((1000, 64), np.float32)
    cnn_probes = fashion_images(256)
    return [
        {"name": "a-mlp", "arch": mlp, "models": 1000 // k, "probes": mlp_probes, "target": 1.3},
        {"name": "b-cnn", "arch": cnn, "models": 1000 // k, "probes": cnn_probes, "target": 1.0},
        {"name": "c-siren", "arch": siren, "models": 10000 // k, "probes": grid, "target": 1.5},
        {
            "name": "d-siren-64",
            "arch": siren,
            "models": 10000 // k,
            "probes": grid[rng.choice(784, 64, replace=False)],
            "target": 3.0,
        },
        {
            "name": "d-mlp-64",
            "arch": mlp,
            "models": 1000 // k,
            "probes": rng.random((64, 64), np.float32),
            "target": 3.0,
        },
        # GPU-sized zoos: the CPU sizes above take milliseconds on an accelerator
        {"name": "a-mlp-10k", "arch": mlp, "models": 10000 // k, "probes": mlp_probes, "target": None, "gpu": True},
        {"name": "c-siren-100k", "arch": siren, "models": 100000 // k, "probes": grid, "target": None, "gpu": True},
        {"name": "b-cnn-10k", "arch": cnn, "models": 10000 // k, "probes": cnn_probes, "target": None, "gpu": True},
    ]


# ---- the PyTorch reference: one model at a time ---------------------------------------------
def torch_loop(
    arch: Architecture, zoo: Zoo, x: np.ndarray, device: str = "cpu", n_models: int | None = None
) -> Callable[[], np.ndarray] | None:
    """A per-model PyTorch forward loop over the first ``n_models`` models of ``zoo`` (default: all).

    Parameters and probes move to ``device`` once, before timing; each call runs every model and
    returns the host array ``[n_models, probes, outputs]`` (one copy back at the end on CUDA).
    """
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    n_models = len(zoo) if n_models is None else min(n_models, len(zoo))
    stacked = {k: torch.from_numpy(np.array(v[:n_models], np.float32)).to(device) for k, v in zoo.params.items()}
    models = [{k: v[i] for k, v in stacked.items()} for i in range(n_models)]  # views, contiguous
    n_out = arch.num_outputs
    if isinstance(arch, CNN):
        xt = torch.from_numpy(np.ascontiguousarray(((x - arch.input_mean) / arch.input_std).transpose(0, 3, 1, 2)))
        xt = xt.to(device)

        def forward(p: dict[str, Any]) -> Any:
            h = xt
            for i in range(len(arch.channels)):
                h = torch.relu(
                    F.conv2d(h, p[f"convs.{i}.weight"], p[f"convs.{i}.bias"], stride=arch.strides, padding=arch.padding)
                )
            return F.linear(h.mean(dim=(2, 3)), p["head.weight"], p["head.bias"])
    else:  # MLP or SIREN: linear layers with relu or sin(w0 * .) between them
        xt, n = torch.from_numpy(np.array(x)).to(device), len(arch.widths) - 1
        act = (lambda h: torch.sin(arch.w0 * h)) if isinstance(arch, SIREN) else torch.relu

        def forward(p: dict[str, Any]) -> Any:
            h = xt
            for i in range(n):
                h = F.linear(h, p[f"layers.{i}.weight"], p[f"layers.{i}.bias"])
                if i < n - 1:
                    h = act(h)
            return h

    if device == "cpu":

        def run() -> np.ndarray:
            out = np.empty((n_models, x.shape[0], n_out), np.float32)
            with torch.inference_mode():
                for i, p in enumerate(models):
                    out[i] = forward(p).numpy()
            return out
    else:

        def run() -> np.ndarray:
            with torch.inference_mode():
                out = torch.empty((n_models, x.shape[0], n_out), dtype=torch.float32, device=device)
                for i, p in enumerate(models):
                    out[i] = forward(p)
                res = out.cpu().numpy()
            _device.sync(device)
            return res

    return run


def timed(fn: Callable[[], Any], device: str = "cpu") -> float:
    """Seconds of one call, after JAX's results are ready and queued CUDA work is done."""
    _device.sync(device)
    t = time.perf_counter()
    jax.block_until_ready(fn())
    _device.sync(device)
    return time.perf_counter() - t


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a = jnp.asarray(np.random.default_rng(0).random((n, n), np.float32))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    return 2 * n**3 / min(timed(lambda: f(a)) for _ in range(repeats)) / 1e9


def run_case(
    case: dict[str, Any], repeats: int, device: str = "cpu", torch_models: int | None = None, formulations: bool = True
) -> dict[str, Any]:
    arch, m, x = case["arch"], case["models"], case["probes"]
    zoo = Zoo.init(arch, m, key=jax.random.key(0)).to_numpy()
    n_p = x.shape[0]
    gflop = arch.flops_per_example() * m * n_p / 1e9
    mc, pc = chunk_sizes(arch, m, n_p)
    call = lambda: probe(zoo, x, mesh=False, progress=False)
    first = timed(call)
    tm = m if torch_models is None else min(torch_models, m)
    loop = torch_loop(arch, zoo, np.asarray(arch.adapt(jnp.asarray(x))), device, tm)
    if loop is not None and device != "cpu":
        loop()  # warm-up: lazy CUDA initialisation (kernels, cuBLAS/cuDNN handles)
    # on an accelerator also time probe() on parameters already on the device, as the PyTorch loop's are
    resident = None
    if jax.default_backend() != "cpu":
        dev_zoo = Zoo(arch, {k: jax.device_put(v) for k, v in zoo.params.items()}, {}, "resident")
        resident = lambda: probe(dev_zoo, x, mesh=False, progress=False)
        timed(resident)
    jax_t, torch_t, res_t = [], [], []
    for _ in range(repeats):  # interleaved: both see the same machine load
        jax_t.append(timed(call))
        if resident is not None:
            res_t.append(timed(resident))
        if loop is not None:
            torch_t.append(timed(loop, device) * m / tm)  # extrapolated: the models are independent
    jt = statistics.median(jax_t)
    row: dict[str, Any] = {
        "case": case["name"],
        "arch": arch.to_config(),
        "models": m,
        "probes": n_p,
        "gflop": round(gflop, 3),
        "chunks": [mc, pc],
        "compile_s": round(max(first - jt, 0.0), 3),
        "jax_s": round(jt, 4),
        "jax_models_per_s": round(m / jt, 1),
        "jax_gflops": round(gflop / jt, 2),
        "target_ratio": case["target"],
    }
    if res_t:
        rt = statistics.median(res_t)
        row.update(jax_resident_s=round(rt, 4), jax_resident_models_per_s=round(m / rt, 1))
    if loop is not None:
        tt = statistics.median(torch_t)
        diff = float(np.max(np.abs(call()[:tm] - loop())))
        row.update(
            torch_s=round(tt, 4),
            torch_models_timed=tm,
            torch_models_per_s=round(m / tt, 1),
            torch_gflops=round(gflop / tt, 2),
            ratio=round(tt / jt, 3),
            max_abs_diff_vs_torch=diff,
        )
        if res_t:
            row["ratio_resident"] = round(tt / statistics.median(res_t), 3)
        if case["target"] is not None:
            row["meets_target"] = bool(tt / jt >= case["target"])
    if formulations:
        row["formulations"] = _formulations(arch, zoo, x, m, mc, gflop, repeats)
    return row


def _formulations(
    arch: Architecture, zoo: Zoo, x: np.ndarray, m: int, mc: int, gflop: float, repeats: int
) -> dict[str, Any]:
    """Every ``apply_many`` formulation on a slice of the zoo (kernel only, one chunk, no host copies)."""
    sub = max(1, min(m, mc, m // 4))
    params = {k: jnp.asarray(v[:sub]) for k, v in zoo.params.items()}
    xa = arch.adapt(jnp.asarray(x))
    forms: dict[str, Any] = {}
    names = ["vmap", "einsum", "scan", "auto"] + (["im2col"] if isinstance(arch, CNN) else [])
    for form in names:
        try:
            f = jax.jit(lambda p, xx, form=form: arch.apply_many(p, xx, formulation=form))
            c = timed(lambda f=f: f(params, xa))
            t = statistics.median(timed(lambda f=f: f(params, xa)) for _ in range(max(2, repeats)))
            forms[form] = {
                "compile_s": round(max(c - t, 0.0), 3),
                "models_per_s": round(sub / t, 1),
                "gflops": round(gflop * sub / m / t, 2),
            }
        except Exception as exc:  # a formulation that fails (e.g. out of memory) is recorded
            forms[form] = {"error": _device.error_text(exc)}
    return {"models": sub, **forms}


def machine() -> dict[str, Any]:
    return {
        "cpu": _device.cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "machine_cores": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10x fewer models, 2 repeats (smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="steady-state repeats (default 5; quick 2)")
    ap.add_argument(
        "--cases",
        default=None,
        help="comma-separated case names (default: all CPU cases, plus the GPU-sized ones on a GPU)",
    )
    ap.add_argument(
        "--out",
        default=None,
        help="results path without suffix (default results/probing, +_gpu on a GPU, +_quick if --quick)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="pin the process to this many cores (JAX and PyTorch alike; default: all)",
    )
    _device.add_torch_device_argument(ap)
    ap.add_argument(
        "--torch-models",
        type=int,
        default=None,
        help="models the PyTorch loop runs, its time scaled to the zoo (default: all on the CPU, 2000 on CUDA)",
    )
    _device.add_matmul_precision_argument(ap)
    ap.add_argument("--no-formulations", action="store_true", help="skip the per-formulation timings")
    args = ap.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    cores = sorted(os.sched_getaffinity(0))
    if args.threads is not None:  # before JAX starts its CPU client, so its thread pool sees the pinning
        os.sched_setaffinity(0, cores[: max(1, args.threads)])
    threads = len(os.sched_getaffinity(0))
    devices = _device.jax_info()  # JAX first: it then loads the CUDA libraries it was built against
    gpu = devices["jax_backend"] == "gpu"
    device = _device.resolve_torch_device(args.torch_device)
    try:
        import torch

        if device == "cpu":
            torch.set_num_threads(threads)  # JAX's CPU client uses every core the process may run on
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
        print("torch not installed: the PyTorch loop is skipped", file=sys.stderr)
    _device.set_matmul_precision(args.matmul_precision, device)
    devices.update(_device.jax_info())
    devices.update(_device.torch_info(device, threads if device == "cpu" else None))
    torch_models = args.torch_models or (2000 if device == "cuda" else None)
    out = Path(args.out or RESULTS / _device.default_stem("probing", quick=args.quick, gpu=gpu))
    print(f"probing benchmark -> {out}: {_device.describe(devices)}", flush=True)
    load_before = os.getloadavg()
    peak_n = 8192 if gpu else 2048
    peak = matmul_peak(peak_n)
    rows = []
    all_cases = cases(args.quick)
    wanted = None if args.cases is None else set(args.cases.split(","))
    if wanted is not None and wanted - {c["name"] for c in all_cases}:
        print(f"unknown cases {sorted(wanted - {c['name'] for c in all_cases})} skipped", file=sys.stderr)
    result: dict[str, Any] = {}
    for case in all_cases:
        if (wanted is None and case.get("gpu") and not gpu) or (wanted is not None and case["name"] not in wanted):
            continue
        t0 = time.perf_counter()
        try:
            row = run_case(case, repeats, device, torch_models, formulations=not args.no_formulations)
        except Exception as exc:  # a failed case is recorded and the run goes on
            row = {
                "case": case["name"],
                "models": case["models"],
                "probes": int(case["probes"].shape[0]),
                "error": _device.error_text(exc),
            }
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("arch", "formulations")}), flush=True)
        load_after = os.getloadavg()
        result = {
            "benchmark": "probing",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine(),
            "devices": devices,
            "torch": torch_version,
            "threads": threads,
            "torch_device": device,
            "quick": args.quick,
            "repeats": repeats,
            "matmul_peak_gflops": round(peak, 1),
            "matmul_peak_n": peak_n,
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in load_after],
            "busy": max(load_before[0], load_after[0]) > 0.5 * threads,
            "results": rows,
        }
        _write(out, result)  # after every case: a run cut off keeps what it measured
    if result:
        print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


def _write(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    cuda = r.get("torch_device") == "cuda"
    torch_where = (
        f"torch {r['torch']} on CUDA" if cuda else f"torch {r['torch']} with {r['threads']} threads (matching JAX)"
    )
    lines = [
        "# Probing benchmark",
        "",
        f"- date: {r['date']}; command: `{r['command']}`",
        f"- machine: {m['cpu']}, process pinned to {m['cores']} of {m['machine_cores']} cores, "
        f"backend {m['backend']} ({m['devices']} device(s)), jax {m['jax']}, {torch_where}",
    ]
    if r.get("devices"):
        lines.append(f"- devices: {_device.describe(r['devices'])}")
    lines += [
        f"- matmul peak (JAX, {r.get('matmul_peak_n', 2048)}^3 float32, precision "
        f"{(r.get('devices') or {}).get('jax_default_matmul_precision', 'default')}): "
        f"{r['matmul_peak_gflops']} GFLOP/s",
        f"- load average before/after: {r['loadavg_before'][0]} / {r['loadavg_after'][0]} -> "
        + (
            "**machine busy** (shared by other jobs): absolute times are noisy, compare the ratios (JAX and "
            "PyTorch runs are interleaved)"
            if r["busy"]
            else "machine idle"
        ),
        f"- steady state: median of {r['repeats']} runs; compile = first call minus steady state; JAX probes a "
        "host zoo (parameters copied to the device inside the timing, responses copied back)",
    ]
    if cuda:
        lines.append(
            "- PyTorch loop: parameters and probes moved to the GPU once before timing, responses copied "
            "back once per run; timed on the first `loop timed` models and scaled to the zoo. "
            "`JAX resident`: probe() on parameters already on the GPU, as the loop's are"
        )
    lines += [
        "",
        "| case | models | probes | JAX models/s | JAX GFLOP/s | JAX resident models/s | loop models/s (timed) | "
        "loop GFLOP/s | ratio | ratio resident | target | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["results"]:
        if "error" in row:
            lines.append(
                f"| {row['case']} | {row['models']} | {row['probes']} | failed: {row['error'][:200]} | | | | | | | | |"
            )
            continue
        target = "-" if row.get("target_ratio") is None else f">= {row['target_ratio']}"
        timed_n = f" ({row['torch_models_timed']})" if "torch_models_timed" in row else ""
        lines.append(
            f"| {row['case']} | {row['models']} | {row['probes']} | {row['jax_models_per_s']} | {row['jax_gflops']} | "
            f"{row.get('jax_resident_models_per_s', '-')} | {row.get('torch_models_per_s', '-')}{timed_n} | "
            f"{row.get('torch_gflops', '-')} | {row.get('ratio', '-')} | {row.get('ratio_resident', '-')} | "
            f"{target} | {row['compile_s']} |"
        )
    lines += [
        "",
        "Formulations (`apply_many(formulation=...)`, kernel only, on a slice of each zoo; models/s):",
        "",
        "| case | slice | vmap | einsum | scan | im2col | auto |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["results"]:
        f = row.get("formulations")
        if not f:
            continue

        def cell(k: str, f: dict[str, Any] = f) -> str:
            if k not in f:
                return "-"
            return str(f[k]["models_per_s"]) if "models_per_s" in f[k] else "failed"

        lines.append(
            f"| {row['case']} | {f['models']} | {cell('vmap')} | {cell('einsum')} | {cell('scan')} | "
            f"{cell('im2col')} | {cell('auto')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

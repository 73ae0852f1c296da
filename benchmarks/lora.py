"""LoRA forensics benchmarks: Spectral DeTuning speed/accuracy and DSiRe on the fmnist-lora zoo.

Sections (``--only`` picks some; results merge into benchmarks/results/lora.{json,md}):

* ``speed``: 24 synthetic 768x768 layers, 5 LoRAs of rank 16, 300 iterations. The reference is
  a straightforward PyTorch port of the authors' code (Python loop over layers and LoRAs,
  ``torch.svd_lowrank(q=rank)``, their IncreaseRankOnPlateau scheduler), one thread; ours is
  :func:`weightspace.lora.spectral_detune` (one jit program for all layers). Both run pinned to
  one core (on shared CPUs XLA's thread pool otherwise collapses). Compile time is reported
  apart from steady-state time (median of repeats).
* ``loras``: final weight error vs the number of LoRAs (1-10) and error vs iterations (figure
  docs/figures/lora_detune_error.png) on synthetic 768x768 layers.
* ``dsire``: DSiRe vs baselines (norm-only, best single tensor, linear regression on spectra)
  per size range on the fmnist-lora recipe, mean +- std over 10 concept splits.
* ``functional``: Spectral DeTuning on the real fmnist-lora zoo: weight error and test loss of the
  recovered base vs the true base and vs the mean of the fine-tunes, by number of LoRAs.

Usage: ``python benchmarks/lora.py [--quick] [--only speed,loras,dsire,functional]``
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _device  # noqa: E402  (imports nothing heavy: JAX starts after the pinning below)

RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"


def _pin() -> str:
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})
    return f"pinned to cpu {cpus[-1]} of {cpus}"


class _TorchSched:
    """The authors' IncreaseRankOnPlateau (patience 15 with a strict '>' test, factor 2, forced
    end rank at half the iterations), as the reference implementation runs it."""

    def __init__(self, n_iters: int, end_rank: int, start_rank: int = 1, patience: int = 15) -> None:
        self.force = n_iters - n_iters * 0.5
        self.rank, self.end, self.best, self.bad, self.epoch, self.patience = (
            start_rank,
            end_rank,
            float("inf"),
            0,
            0,
            patience,
        )

    def step(self, loss: float) -> None:
        self.epoch += 1
        if self.epoch < self.force:
            if loss < self.best:
                self.best, self.bad = loss, 0
            else:
                self.bad += 1
            if self.bad > self.patience:
                self.rank, self.bad = min(self.rank * 2, self.end), 0
        else:
            self.rank = self.end


def torch_detune(wp_layers, n_iters: int, rank: int, device: str = "cpu"):
    import numpy as np
    import torch

    out = []
    for wp in wp_layers:  # Python loop over layers, as the reference code
        w_primes = [torch.from_numpy(np.array(x)).to(device) for x in wp]
        sched = _TorchSched(n_iters, rank)
        w_star = torch.mean(torch.stack(w_primes), 0)
        for _ in range(n_iters):
            ms = [w - w_star for w in w_primes]
            for i in range(len(ms)):
                u, s, v = torch.svd_lowrank(ms[i], q=sched.rank)
                ms[i] = (u @ torch.diag_embed(s)) @ v.T
            w_star = torch.mean(torch.stack([w - m for w, m in zip(w_primes, ms, strict=True)]), 0)
            loss = torch.mean(
                torch.stack([torch.mean((w - (w_star + m)) ** 2) for w, m in zip(w_primes, ms, strict=True)])
            ).item()
            sched.step(loss)
        out.append(w_star.cpu().numpy())
    return out


def _devices(args: argparse.Namespace) -> tuple[str, dict]:
    """The PyTorch device of this run and the JAX/torch device description (JAX initialised first)."""
    device = _device.resolve_torch_device(args.torch_device)
    _device.set_matmul_precision(args.matmul_precision, device)
    info = {**_device.jax_info(), **_device.torch_info(device, 1 if device == "cpu" else None)}
    return device, info


def bench_speed(args: argparse.Namespace) -> dict:
    import jax
    import numpy as np

    from weightspace.lora import spectral_detune, synthetic_finetunes

    device, info = _devices(args)
    import torch

    if device == "cpu":
        torch.set_num_threads(1)
    layers, iters = (2, 300) if args.quick else (24, 300)
    w, wp = synthetic_finetunes(jax.random.key(0), layers=layers, shape=(768, 768), n_loras=5, rank=16)
    res: dict = {"layers": layers, "shape": [768, 768], "n_loras": 5, "rank": 16, "iters": iters, "devices": info}
    print(f"[speed] {_device.describe(info)}", flush=True)

    t0 = time.perf_counter()
    first = spectral_detune(wp, rank=16, n_iters=iters)
    res["jax_first_call_s"] = time.perf_counter() - t0
    print(f"[speed] JAX first call {res['jax_first_call_s']:.1f} s", flush=True)
    steady = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = spectral_detune(wp, rank=16, n_iters=iters)
        steady.append(time.perf_counter() - t0)
    res["jax_steady_s"] = statistics.median(steady)
    res["jax_steady_all_s"] = steady
    res["jax_compile_s"] = res["jax_first_call_s"] - res["jax_steady_s"]
    res["jax_reduced_layers"] = int(out.reduced.sum())
    res["jax_final_mse"] = float(((out.weights - w) ** 2).mean())
    res["jax_repeat_max_abs_diff"] = float(np.max(np.abs(first.weights - out.weights)))

    # the reference handles layers one after another, identically, so on a shared machine its time
    # may be measured on the first --torch-layers layers and scaled (both numbers are recorded)
    default_layers = 4 if device == "cuda" else layers
    nt = min(args.torch_layers or default_layers, layers)
    torch_detune(wp[:1], 3, 16, device)  # warm-up: lazy CUDA initialisation (cuSOLVER/cuBLAS handles)
    _device.sync(device)
    t0 = time.perf_counter()
    ref = torch_detune(wp[:nt], iters, 16, device)
    _device.sync(device)
    res["torch_device"] = device
    res["torch_layers_measured"] = nt
    res["torch_measured_s"] = time.perf_counter() - t0
    res["torch_s"] = res["torch_measured_s"] * layers / nt
    res["torch_final_mse"] = float(((np.stack(ref) - w[:nt]) ** 2).mean())
    res["jax_final_mse_same_layers"] = float(((out.weights[:nt] - w[:nt]) ** 2).mean())
    res["mean_of_finetunes_mse"] = float(((wp.mean(1) - w) ** 2).mean())
    res["speedup_steady"] = res["torch_s"] / res["jax_steady_s"]
    res["speedup_incl_compile"] = res["torch_s"] / res["jax_first_call_s"]
    return res


def bench_unreduced(args: argparse.Namespace) -> dict:
    """The unreduced program (warm-started randomized SVD on the full matrices): what a plain batched port gets."""
    import jax

    from weightspace.lora import spectral_detune, synthetic_finetunes

    _, info = _devices(args)
    n_un, iters = (1 if args.quick else 4), 300
    w, wp = synthetic_finetunes(jax.random.key(0), layers=n_un, shape=(768, 768), n_loras=5, rank=16)
    t0 = time.perf_counter()
    un = spectral_detune(wp, rank=16, n_iters=iters, reduce=False, svd="randomized")
    first_un = time.perf_counter() - t0
    t0 = time.perf_counter()
    un = spectral_detune(wp, rank=16, n_iters=iters, reduce=False, svd="randomized")
    return {
        "layers": n_un,
        "iters": iters,
        "first_call_s": first_un,
        "steady_s": time.perf_counter() - t0,
        "final_mse": float(((un.weights - w) ** 2).mean()),
        "devices": info,
    }


def bench_loras(args: argparse.Namespace) -> dict:
    import jax
    import numpy as np

    from weightspace.lora import spectral_detune, synthetic_finetunes

    layers, iters = (2, 300) if args.quick else (4, 300)
    ks = [1, 2, 3, 5, 10] if args.quick else list(range(1, 11))
    out: dict = {"layers": layers, "shape": [768, 768], "rank": 16, "iters": iters, "by_n_loras": {}}
    curves = {}
    w, wp_all = synthetic_finetunes(jax.random.key(1), layers=layers, shape=(768, 768), n_loras=max(ks), rank=16)
    for k in ks:
        r = spectral_detune(wp_all[:, :k], rank=16, n_iters=iters, reference=w)
        out["by_n_loras"][k] = {
            "final_mse": float(r.error[:, -1].mean()),
            "mean_of_finetunes_mse": float(((wp_all[:, :k].mean(1) - w) ** 2).mean()),
            "rank_estimate": r.rank_estimate.tolist(),
        }
        curves[k] = r.error.mean(0)
    # an over-estimated rank (true rank 16, final rank 32) is reported and barely helps
    r = spectral_detune(wp_all[:, :5], rank=32, n_iters=iters, reference=w)
    out["overestimated_rank_32"] = {"final_mse": float(r.error[:, -1].mean()), "warnings": list(r.warnings)}
    out["w_mean_square"] = float((w**2).mean())
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        FIGURES.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
        for k, c in curves.items():
            ax[0].semilogy(np.maximum(c, 1e-20), label=f"K={k}")
        ax[0].set_xlabel("iteration")
        ax[0].set_ylabel("MSE to the true weights")
        ax[0].set_title("Spectral DeTuning, 768x768, LoRA rank 16")
        ax[0].legend(fontsize=7, ncol=2)
        kk = list(out["by_n_loras"])
        ax[1].semilogy(kk, [out["by_n_loras"][k]["final_mse"] for k in kk], "o-", label="Spectral DeTuning")
        ax[1].semilogy(
            kk, [out["by_n_loras"][k]["mean_of_finetunes_mse"] for k in kk], "s--", label="mean of fine-tunes"
        )
        ax[1].set_xlabel("number of LoRAs K")
        ax[1].set_ylabel(f"final MSE ({iters} iterations)")
        ax[1].legend()
        fig.tight_layout()
        fig.savefig(FIGURES / "lora_detune_error.png", dpi=110)
        out["figure"] = "docs/figures/lora_detune_error.png"
    except ImportError:
        out["figure"] = None
    return out


def _lora_zoo(args: argparse.Namespace):
    import weightspace.lora  # noqa: F401  (registers the fmnist-lora recipe)
    from weightspace.zoo import build_recipe

    return build_recipe("fmnist-lora", size=8 if args.quick else 40, progress=False)


def bench_dsire(args: argparse.Namespace) -> dict:
    import numpy as np

    from weightspace.lora import SUBSETS, evaluate_size_recovery, lora_features

    t0 = time.perf_counter()
    zoo = _lora_zoo(args)
    out: dict = {"zoo_models": len(zoo), "zoo_seconds": time.perf_counter() - t0, "subsets": {}}
    n_concepts = len(set(zoo.meta["concept"]))
    n_train = min(15, n_concepts - 1) if not args.quick else n_concepts // 2
    out["concepts"], out["n_train_concepts"], out["splits"] = n_concepts, n_train, 10
    md = [
        "## DSiRe on fmnist-lora (mean +- std over 10 concept splits)",
        "",
        f"{len(zoo)} LoRAs (rank 8) of a Fashion-MNIST autoencoder, {n_concepts} concepts; each split "
        f"trains on {n_train} concepts and tests on the others. Accuracy and MAPE in %, MAE in images.",
        "",
        "| subset | sizes | method | accuracy | MAE | MAPE |",
        "|---|---|---|---|---|---|",
    ]
    for subset, sizes in SUBSETS.items():
        sub = zoo.where(subset=subset)
        rows = sub.rows()
        feats = lora_features(rows.adapter)
        out["subsets"][subset] = {}
        for method in ("dsire", "norm", "best-tensor", "linear"):
            r = evaluate_size_recovery(
                feats, rows.labels, rows.concepts, method=method, n_splits=10, n_train_concepts=n_train, seed=0
            )
            out["subsets"][subset][method] = {"mean": r["mean"], "std": r["std"]}
            m, sd = r["mean"], r["std"]
            md.append(
                f"| {subset} | {','.join(map(str, sizes))} | {method} | {m['accuracy']:.1f} +- "
                f"{sd['accuracy']:.1f} | {m['mae']:.2f} +- {sd['mae']:.2f} | {m['mape']:.1f} +- "
                f"{sd['mape']:.1f} |"
            )
        out["subsets"][subset]["chance_accuracy"] = float(100 / len(sizes))
    fl, ni = np.asarray(zoo.meta["final_loss"]), np.asarray(zoo.meta["n_images"])
    out["final_loss_by_size"] = {int(n): float(fl[ni == n].mean()) for n in np.unique(ni)}
    out["markdown"] = md
    return out


def bench_functional(args: argparse.Namespace) -> dict:
    import numpy as np

    from weightspace.data import load_dataset
    from weightspace.lora import reconstruction_loss, spectral_detune

    zoo = _lora_zoo(args)
    merged = zoo.merged()
    test = load_dataset("fashion-mnist", "test").images
    true_loss = float(reconstruction_loss({k: v[None] for k, v in zoo.base.items()}, test)[0])
    rng = np.random.default_rng(0)
    ks = [1, 2, 3, 5, 10] if args.quick else list(range(1, 11))
    draws = 1 if args.quick else 3
    names = list(zoo.adapter)
    out: dict = {"true_base_test_mse": true_loss, "rank": 8, "iters": 300, "draws": draws, "by_k": {}}
    ft_loss = reconstruction_loss({k: np.asarray(v) for k, v in merged.params.items()}, test)
    out["finetune_test_mse_mean"] = float(ft_loss.mean())
    curves = {}
    for k in ks:
        rec_l, mean_l, w_err, mean_err = [], [], [], []
        for _ in range(draws):
            pick = rng.choice(len(zoo), k, replace=False)
            rec = dict(zoo.base)
            avg = dict(zoo.base)
            errs, curve = [], 0
            for name in names:
                wp = np.asarray(merged.params[name])[pick]
                r = spectral_detune(wp, rank=8, n_iters=300, reference=np.asarray(zoo.base[name]))
                rec[name] = r.weights
                avg[name] = wp.mean(0)
                errs.append(float(((r.weights - zoo.base[name]) ** 2).mean()))
                mean_err.append(float(((avg[name] - zoo.base[name]) ** 2).mean()))
                curve = curve + r.error[0] / len(names)
            curves.setdefault(k, curve)
            w_err.append(float(np.mean(errs)))
            both = reconstruction_loss({n: np.stack([rec[n], avg[n]]) for n in rec}, test)
            rec_l.append(float(both[0]))
            mean_l.append(float(both[1]))
        out["by_k"][k] = {
            "recovered_test_mse": float(np.mean(rec_l)),
            "mean_of_finetunes_test_mse": float(np.mean(mean_l)),
            "recovered_weight_mse": float(np.mean(w_err)),
            "mean_weight_mse": float(np.mean(mean_err)),
        }
    md = [
        "## Spectral DeTuning on the real fmnist-lora zoo",
        "",
        f"K LoRA fine-tunes (rank 8, random concepts and sizes) of the base autoencoder; all 4 weight matrices "
        f"recovered, rank 8, 300 iterations, mean of {draws} random draws. Test = reconstruction MSE on the "
        f"10000 Fashion-MNIST test images. True base: {true_loss:.5f}; the fine-tunes themselves: "
        f"{out['finetune_test_mse_mean']:.5f} on average.",
        "",
        "| K | recovered weight MSE | mean-of-fine-tunes weight MSE | recovered test MSE | "
        "mean-of-fine-tunes test MSE |",
        "|---|---|---|---|---|",
    ]
    for k, v in out["by_k"].items():
        md.append(
            f"| {k} | {v['recovered_weight_mse']:.3g} | {v['mean_weight_mse']:.3g} | "
            f"{v['recovered_test_mse']:.5f} | {v['mean_of_finetunes_test_mse']:.5f} |"
        )
    out["markdown"] = md
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        FIGURES.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for k, c in curves.items():
            ax.semilogy(np.maximum(c, 1e-20), label=f"K={k}")
        ax.set_xlabel("iteration")
        ax.set_ylabel("weight MSE to the true base")
        ax.set_title("fmnist-lora autoencoder, rank 8")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(FIGURES / "lora_detune_fmnist.png", dpi=110)
        md += ["", "![recovery error vs iterations on fmnist-lora](../../docs/figures/lora_detune_fmnist.png)"]
    except ImportError:
        pass
    return out


SECTIONS = {
    "speed": bench_speed,
    "unreduced": bench_unreduced,
    "loras": bench_loras,
    "dsire": bench_dsire,
    "functional": bench_functional,
}


def _speed_markdown(s: dict, u: dict | None) -> list[str]:
    info = s.get("devices") or {}
    gpu = info.get("jax_backend") == "gpu" or info.get("torch_device") == "cuda"
    where = f"{_device.describe(info)}." if gpu else "one core each."
    star = " *" if s.get("torch_layers_measured", s["layers"]) < s["layers"] else ""
    lines = [
        "## Spectral DeTuning speed (vs the PyTorch reference loop, same run)",
        "",
        f"{s['layers']} layers of {s['shape'][0]}x{s['shape'][1]}, {s['n_loras']} LoRAs of rank "
        f"{s['rank']}, {s['iters']} iterations, {where}",
        "",
        "| implementation | time (s) | final MSE to true W |",
        "|---|---|---|",
        f"| PyTorch reference (loop, svd_lowrank, {s.get('torch_device', 'cpu')}){star} | {s['torch_s']:.1f} | "
        f"{s['torch_final_mse']:.3g} |",
        f"| weightspace, steady state (median of {len(s['jax_steady_all_s'])}) | {s['jax_steady_s']:.2f} | "
        f"{s['jax_final_mse']:.3g} |",
        f"| weightspace, first call (incl. compile {s['jax_compile_s']:.1f} s) | {s['jax_first_call_s']:.2f} | |",
        f"| mean of the fine-tunes | | {s['mean_of_finetunes_mse']:.3g} |",
        "",
        f"Speed-up: **{s['speedup_steady']:.1f}x** steady state, {s['speedup_incl_compile']:.1f}x "
        "including compilation.",
    ]
    if star:
        lines += [
            "",
            f"\\* measured on {s['torch_layers_measured']} layers ({s['torch_measured_s']:.1f} s) and "
            f"scaled to {s['layers']} (the reference loops over identical layers); its MSE is over those "
            f"layers, where ours is {s['jax_final_mse_same_layers']:.3g}.",
        ]
    if u and "error" not in u:
        lines += [
            "",
            f"Without the exact subspace reduction (warm-started randomized SVD, {u['layers']} layers): "
            f"{u['steady_s']:.1f} s steady ({u['steady_s'] / u['layers'] * s['layers']:.0f} s "
            f"extrapolated to {s['layers']} layers), final MSE {u['final_mse']:.3g}.",
        ]
    return [*lines, ""]


def _markdown(results: dict) -> str:
    lines = [
        "# LoRA forensics benchmarks",
        "",
        f"- machine: {results['machine']}",
        f"- date: {results['date']}",
        f"- command: `{results['command']}`",
    ]
    if results.get("devices"):
        lines.append(f"- devices: {_device.describe(results['devices'])}")
    if (results.get("devices") or {}).get("jax_backend", "cpu") == "cpu":
        lines.append(
            "- the 2-core VM was shared with other jobs (load average 10-28 during these runs): absolute "
            "times are inflated and noisy; compare the ratios measured within one run"
        )
    lines.append("")
    for key, r in results.items():
        if key in SECTIONS and isinstance(r, dict) and "error" in r:
            lines += [f"## {key}: failed", "", f"`{r['error'][:500]}`", ""]
    s = results.get("speed")
    if s and "error" not in s:
        u = results.get("unreduced") or s.get("jax_unreduced_randomized")  # older runs nested it in speed
        lines += _speed_markdown(s, u)
    elif results.get("unreduced") and "error" not in results["unreduced"]:
        u = results["unreduced"]
        lines += [
            "## Spectral DeTuning without the subspace reduction",
            "",
            f"{u['layers']} layers, warm-started randomized SVD: {u['steady_s']:.1f} s steady, first call "
            f"{u['first_call_s']:.1f} s, final MSE {u['final_mse']:.3g}.",
            "",
        ]
    lo = results.get("loras")
    if lo and "error" not in lo:
        lines += [
            "## Weight error vs number of LoRAs (synthetic 768x768, rank 16)",
            "",
            f"{lo['layers']} layers, {lo['iters']} iterations; mean square of W = {lo['w_mean_square']:.3g}.",
            "",
            "| K | Spectral DeTuning MSE | mean of fine-tunes MSE | estimated LoRA rank |",
            "|---|---|---|---|",
        ]
        for k, v in lo["by_n_loras"].items():
            lines.append(
                f"| {k} | {v['final_mse']:.3g} | {v['mean_of_finetunes_mse']:.3g} | {sorted(set(v['rank_estimate']))} |"
            )
        o = lo["overestimated_rank_32"]
        lines += [
            "",
            f"Over-estimated final rank 32 (true 16, K=5): MSE {o['final_mse']:.3g}; reported: "
            f"{'; '.join(o['warnings'])}",
            "",
        ]
        if lo.get("figure"):
            lines += [f"![error vs iterations](../../{lo['figure']})", ""]
    for key in ("dsire", "functional"):
        if results.get(key) and "error" not in results[key] and results[key].get("markdown"):
            lines += results[key]["markdown"] + [""]
    lines += ["## Runs", ""]
    for key in SECTIONS:
        r = results.get(key, {}).get("run")
        if r:
            lines.append(f"- `{key}`: {r['date']}, {r['seconds']:.0f} s, `{r['command']}` on {r['machine']}")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {list(SECTIONS)}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--torch-layers",
        type=int,
        default=None,
        help="time the PyTorch reference on this many layers and scale to all (default: all on the CPU, 4 on CUDA)",
    )
    _device.add_torch_device_argument(ap, reference="the PyTorch reference")
    _device.add_matmul_precision_argument(ap, default="highest")
    ap.add_argument(
        "--no-pin", action="store_true", help="do not pin to one core (never pinned on a machine with an NVIDIA GPU)"
    )
    ap.add_argument(
        "--out",
        default=None,
        help="results path without extension (default results/lora, +_gpu on a GPU, +_quick if --quick)",
    )
    args = ap.parse_args(argv)
    names = args.only.split(",")
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; expected some of {list(SECTIONS)}")
    # pinning must precede JAX's start (its CPU thread pool reads the affinity); a GPU box is not pinned
    gpu_box = Path("/dev/nvidiactl").exists()
    pin = "not pinned" if args.no_pin or gpu_box else _pin()
    sys.path.insert(0, str(ROOT))
    _, devices = _devices(args)
    gpu = devices["jax_backend"] == "gpu"
    out = Path(args.out or RESULTS / _device.default_stem("lora", quick=args.quick, gpu=gpu))
    print(f"lora benchmark -> {out}: {_device.describe(devices)}", flush=True)
    run = {
        "machine": f"{platform.node()} {_device.cpu_name()}, "
        f"{os.cpu_count()} cpus ({pin}), python {platform.python_version()}",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/lora.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "devices": devices,
    }
    from weightspace._atomic import atomic_path

    for name in names:
        t0 = time.perf_counter()
        try:
            section = SECTIONS[name](args)
        except Exception as exc:  # a failed section is recorded and the run goes on
            section = {"error": _device.error_text(exc)}
        section["run"] = {**run, "seconds": time.perf_counter() - t0}
        print(
            f"[{name}] done in {time.perf_counter() - t0:.1f} s: {json.dumps(section, default=str)[:600]}", flush=True
        )
        # re-read: another run may have written other sections meanwhile; only ours are replaced
        results = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
        results.update(run)
        results[name] = section
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(results, indent=1, default=str))
        with atomic_path(out.with_suffix(".md")) as tmp:
            tmp.write_text(_markdown(results))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

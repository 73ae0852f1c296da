"""ProbeGen training throughput (models/s through the frozen zoo) vs a PyTorch reference, same batch and steps.

The JAX side is ``weightspace.probegen.train_probegen`` (``learn.fit``: one jitted step; the
probes go through every model of the batch with the probe engine's kernel, ``apply_models``).
The PyTorch reference does what the authors' code does: the same generator and predictor as
``torch.nn`` modules, and a Python loop over the batch's models, each run with
``torch.func.functional_call`` on the probes; Adam; backward through the frozen models.
Throughput = models per second of steady-state training (the first, compiling, step apart).
A second part runs the same training sharded over 8 fake CPU devices (``--shard``, in a
subprocess) and checks it equals the unsharded run.

    python benchmarks/probegen.py            # full: 300 steps, 3 repeats
    python benchmarks/probegen.py --quick    # smoke: 40 steps, 2 repeats
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _device

RESULTS = Path(__file__).parent / "results"
BATCH = 32
N_PROBES = 64


SHARED_NOTE = " — SHARED and loaded: absolute times are pessimistic, ratios are measured in the same run"


def _zoo(case: str, log: list[str]) -> Any:
    """The real recipe zoo when it is in the cache (else a freshly initialised zoo of the same architecture:
    throughput does not depend on the weights' values)."""
    import jax

    from weightspace.nets import CNN, SIREN
    from weightspace.zoo import Zoo, build_recipe, recipe_path

    name, size = ("mnist-inr", 300) if case == "siren" else ("fmnist-cnn-zoo", 48)
    if (recipe_path(name, size=size) / "recipe.json").exists():
        z = build_recipe(name, size=size)
        if case == "cnn":
            z = max(z.zoos, key=len)  # one architecture (the larger of the relu / tanh zoos)
        log.append(f"{case}: real zoo {name} (size {size}), {len(z)} models")
        return z
    arch = (
        SIREN()
        if case == "siren"
        else CNN(image_shape=(28, 28, 1), channels=(16, 16, 16), strides=2, input_mean=0.286, input_std=0.353)
    )
    z = Zoo.init(arch, 256, key=jax.random.key(0), name=case)
    log.append(f"{case}: {name} not cached; 256 freshly initialised models of the same architecture")
    return z


def _targets(zoo: Any, case: str) -> Any:
    if case == "siren" and "label" in zoo.meta:
        return zoo.with_meta(y=zoo.meta["label"])
    if "test_acc" in zoo.meta:
        return zoo.with_meta(y=zoo.meta["test_acc"])
    rng = np.random.default_rng(0)
    return zoo.with_meta(y=(rng.integers(0, 10, len(zoo)) if case == "siren" else rng.random(len(zoo))).tolist())


def jax_run(case: str, steps: int, repeats: int, mesh: Any = None) -> dict[str, Any]:
    from weightspace.probegen import DEFAULT_TRAIN, ProbeGenConfig, train_probegen, weight_dataset

    log: list[str] = []
    zoo = _targets(_zoo(case, log), case)
    task = "classify" if case == "siren" else "rank"
    ds = weight_dataset(zoo, task=task, target="y", fractions=(0.8, 0.1, 0.1))
    times, compiles, losses = [], [], None
    config = ProbeGenConfig(task=task, n_probes=N_PROBES)
    train = dataclasses.replace(DEFAULT_TRAIN, steps=steps, batch_size=BATCH, eval_every=steps)
    for _ in range(repeats):
        run = train_probegen(ds, config, train_config=train, mesh=mesh, progress=False)
        times.append(run.report.seconds)
        compiles.append(run.report.compile_seconds)
        losses = run.report.losses
    sec = statistics.median(times)
    return {
        "models_per_s": (steps - 1) * BATCH / sec,
        "step_ms": 1e3 * sec / (steps - 1),
        "seconds": times,
        "compile_s": compiles[0],
        "compile_s_cached": compiles[1:],
        "log": log,
        "losses": np.asarray(losses).tolist(),
        "train_models": len(ds.splits.train),
    }


def torch_run(case: str, steps: int, repeats: int, threads: int) -> dict[str, Any]:
    """The reference: per-model functional_call loop, as in the authors' implementation."""
    import torch
    from torch import nn
    from torch.func import functional_call

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    log: list[str] = []
    zoo = _targets(_zoo(case, log), case)
    arch = zoo.arch
    params = [{k: torch.tensor(np.asarray(v[i])) for k, v in zoo.params.items()} for i in range(len(zoo))]
    if case == "siren":

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                w = arch.widths
                self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in itertools.pairwise(w)])

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                for i, layer in enumerate(self.layers):
                    x = layer(x)
                    if i < len(self.layers) - 1:
                        x = torch.sin(arch.w0 * x)
                return x

        gen = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 2))
        n_out = int(max(zoo.meta["y"])) + 1
    else:

        class Net(nn.Module):  # type: ignore[no-redef]
            def __init__(self) -> None:
                super().__init__()
                cin, convs = arch.image_shape[2], []
                for c in arch.channels:
                    convs.append(nn.Conv2d(cin, c, arch.kernel_size, arch.strides, arch.padding))
                    cin = c
                self.convs = nn.ModuleList(convs)
                self.head = nn.Linear(cin, arch.out_features)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                x = (x - arch.input_mean) / arch.input_std
                act = torch.relu if arch.activation == "relu" else torch.tanh
                for conv in self.convs:
                    x = act(conv(x))
                return self.head(x.mean(dim=(2, 3)))

        class Gen(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.fc = nn.Linear(32, 32 * 7 * 7)
                self.d1 = nn.ConvTranspose2d(32, 16, 4, 2, 1)
                self.d2 = nn.ConvTranspose2d(16, 1, 4, 2, 1)

            def forward(self, z: torch.Tensor) -> torch.Tensor:
                return 0.5 * (torch.tanh(self.d2(self.d1(self.fc(z).view(-1, 32, 7, 7)))) + 1.0)

        gen = Gen()
        n_out = 1
    net = Net().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    dims = [N_PROBES * arch.num_outputs] + [256] * 5 + [n_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    pred = nn.Sequential(*layers)
    latents = nn.Parameter(torch.randn(N_PROBES, 32))
    opt = torch.optim.Adam([latents, *gen.parameters(), *pred.parameters()], lr=3e-4)
    y = np.asarray(zoo.meta["y"])
    rng = np.random.default_rng(0)

    def step() -> float:
        idx = rng.choice(len(params), BATCH, replace=False)
        probes = gen(latents)
        outs = [functional_call(net, params[m], (probes,)) for m in idx]  # the authors' loop over models
        feats = torch.stack(outs).reshape(BATCH, -1)
        out = pred(feats)
        if case == "siren":
            loss = nn.functional.cross_entropy(out, torch.as_tensor(y[idx], dtype=torch.long))
        else:
            loss = ((out[:, 0] - torch.as_tensor(y[idx], dtype=torch.float32)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    step()  # warm-up (allocations, one-time dispatch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps - 1):
            step()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {
        "models_per_s": (steps - 1) * BATCH / sec,
        "step_ms": 1e3 * sec / (steps - 1),
        "seconds": times,
        "threads": threads,
        "log": log,
    }


def shard_child(steps: int) -> dict[str, Any]:
    """In a process with 8 fake CPU devices: sharded training == unsharded training."""
    import jax

    from weightspace.parallel import make_mesh

    out: dict[str, Any] = {"devices": jax.device_count()}
    for case in ("siren", "cnn"):
        a = jax_run(case, steps, 1)
        b = jax_run(case, steps, 1, mesh=make_mesh())
        la, lb = np.asarray(a["losses"]), np.asarray(b["losses"])
        out[case] = {
            "unsharded_models_per_s": a["models_per_s"],
            "sharded_models_per_s": b["models_per_s"],
            "max_loss_diff": float(np.max(np.abs(la - lb))),
            "max_loss": float(np.max(np.abs(la))),
            "equal": bool(np.allclose(la, lb, rtol=1e-4, atol=1e-5)),
        }
    return out


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# ProbeGen training throughput ({r['name']})",
        "",
        f"- date: {r['date']}",
        f"- machine: {r['machine']} ({r['cores']} cores, load average {r['load']:.1f} "
        f"at start, {r['load_end']:.1f} at end){SHARED_NOTE if r['load'] > r['cores'] else ''}",
        f"- command: `{r['command']}`",
        f"- {r['devices']}",
        f"- batch {BATCH} models, {N_PROBES} probes, {r['steps']} steps per repeat, median of {r['repeats']} "
        "repeats; models/s = (steps - 1) x batch / steady seconds (first step = compile, reported apart)",
        "",
        "| zoo | JAX models/s | JAX ms/step | JAX compile (s) | PyTorch loop models/s | PyTorch ms/step | speedup "
        "| target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, target in (("siren", 3.0), ("cnn", 1.0)):
        c = r["cases"].get(case)
        if not c:
            continue
        j, t = c["jax"], c["torch"]
        sp = j["models_per_s"] / t["models_per_s"]
        lines.append(
            f"| {case} ({'SIREN 2-32-32-1' if case == 'siren' else 'Small CNN 3x16ch'}) | "
            f"{j['models_per_s']:.0f} | {j['step_ms']:.1f} | {j['compile_s']:.1f} | {t['models_per_s']:.0f} "
            f"({t['threads']} thread(s); all: {t.get('all_threads')}) | "
            f"{t['step_ms']:.1f} | {sp:.2f}x | >= {target:g}x {'met' if sp >= target else 'NOT met'} |"
        )
    for case in ("siren", "cnn"):
        for line in r["cases"].get(case, {}).get("jax", {}).get("log", []):
            lines.append(f"\n- {line}")
    s = r.get("shard")
    if s:
        lines += [
            "",
            f"## Sharded over {s.get('devices')} fake CPU devices (models axis) vs unsharded, same run",
            "",
            "| zoo | unsharded models/s | sharded models/s | max |loss diff| | equal |",
            "|---|---|---|---|---|",
        ]
        for case in ("siren", "cnn"):
            c = s.get(case)
            if c:
                lines.append(
                    f"| {case} | {c['unsharded_models_per_s']:.0f} | {c['sharded_models_per_s']:.0f} | "
                    f"{c['max_loss_diff']:.2g} (of {c['max_loss']:.3g}) | {c['equal']} |"
                )
        lines.append(
            "\n8 fake devices share the same physical cores: the sharded figure checks correctness and "
            "overhead, not a speed-up."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 steps, 2 repeats (smoke run)")
    ap.add_argument("--steps", type=int, default=None, help="steps per repeat (default 300; quick 40)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (default 3; quick 2)")
    ap.add_argument("--cases", default="siren,cnn", help="comma-separated: siren, cnn")
    ap.add_argument(
        "--threads",
        default=None,
        help="PyTorch thread counts to try, comma-separated; the fastest is the reference "
        "(default: 1 and the cores JAX sees)",
    )
    ap.add_argument("--no-shard", action="store_true", help="skip the 8-device sharded == unsharded run")
    ap.add_argument("--shard-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--name", default=None, help="results stem (default probegen[_quick])")
    args = ap.parse_args(argv)
    steps = args.steps or (40 if args.quick else 300)
    repeats = args.repeats or (2 if args.quick else 3)
    if args.shard_child:
        print(json.dumps(shard_child(steps)))
        return 0
    info = _device.jax_info()
    cores = len(os.sched_getaffinity(0))
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, cores})
    name = args.name or _device.default_stem("probegen", quick=args.quick, gpu=_device.is_gpu())
    r: dict[str, Any] = {
        **_device.run_header(name, "probegen.py", argv),
        "steps": steps,
        "repeats": repeats,
        "cases": {},
    }
    r["devices"] = _device.describe({**info, **_device.torch_info("cpu", max(threads))})
    for case in args.cases.split(","):
        print(f"{case}: JAX ...", flush=True)
        j = jax_run(case, steps, repeats)
        print(f"{case}: JAX {j['models_per_s']:.0f} models/s; PyTorch ...", flush=True)
        runs = [torch_run(case, steps, repeats, th) for th in threads]
        t = max(runs, key=lambda x: x["models_per_s"])  # the reference at its best thread count
        t["all_threads"] = {str(x["threads"]): x["models_per_s"] for x in runs}
        print(
            f"{case}: PyTorch {t['all_threads']} models/s -> {j['models_per_s'] / t['models_per_s']:.2f}x", flush=True
        )
        r["cases"][case] = {"jax": {k: v for k, v in j.items() if k != "losses"}, "torch": t}
    if not args.no_shard:
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run(
            [sys.executable, __file__, "--shard-child", "--steps", str(min(steps, 40))],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        try:
            r["shard"] = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            r["shard"] = {"error": proc.stderr[-2000:]}
    r["load_end"] = _device.loadavg()
    from weightspace._atomic import atomic_path

    RESULTS.mkdir(exist_ok=True)
    with atomic_path(RESULTS / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(r, indent=1))
    with atomic_path(RESULTS / f"{name}.md") as tmp:
        tmp.write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())

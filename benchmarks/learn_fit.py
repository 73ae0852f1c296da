"""Benchmark: ``weightspace.learn.fit`` against the usual hand-written training loops.

The job: train an MLP encoder (2 x 256 ReLU) that regresses a target from flattened weights
(``[models, D]``), AdamW, batch 64. Three ways, same data, same step count, in one run:

* ``fit``: the library loop (one jitted step, batch gathered on device, host sync only at
  evaluations);
* ``jax-loop``: the common hand-written JAX loop: a jitted step fed a NumPy batch from a host-side
  shuffled index, with ``float(loss)`` logged every step;
* ``torch``: the same model and loop in PyTorch (CPU), the reference most encoder code bases use.

Times are medians over repeats of the steady state (after a first, compiling run, reported apart).
Results: ``benchmarks/results/learn_fit{_quick}.{md,json}``.

    .venv/bin/python benchmarks/learn_fit.py            # D=4096, 4096 models, 300 steps, 5 repeats
    .venv/bin/python benchmarks/learn_fit.py --quick    # D=512, 512 models, 100 steps, 3 repeats
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from weightspace._atomic import atomic_path
from weightspace.learn import TrainConfig, fit

HIDDEN = 256


class Encoder(nnx.Module):
    def __init__(self, d: int, *, rngs: nnx.Rngs) -> None:
        self.l1 = nnx.Linear(d, HIDDEN, rngs=rngs)
        self.l2 = nnx.Linear(HIDDEN, HIDDEN, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.relu(self.l2(jax.nn.relu(self.l1(x)))))[:, 0]


def loss_fn(model: Encoder, batch: dict[str, jax.Array], key: jax.Array) -> tuple[jax.Array, dict]:
    return jnp.mean((model(batch["x"]) - batch["y"]) ** 2), {}


def run_fit(x: np.ndarray, y: np.ndarray, steps: int) -> float:
    model = Encoder(x.shape[1], rngs=nnx.Rngs(0))
    cfg = TrainConfig(steps=steps, batch_size=64, learning_rate=1e-3, weight_decay=1e-4, eval_every=steps)
    t = time.perf_counter()
    fit(model, loss_fn, {"x": x, "y": y}, config=cfg, progress=False)
    return time.perf_counter() - t


def run_jax_loop(x: np.ndarray, y: np.ndarray, steps: int) -> float:
    model = Encoder(x.shape[1], rngs=nnx.Rngs(0))
    tx = optax.adamw(1e-3, weight_decay=1e-4)
    graphdef, params = nnx.split(model)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, bx, by):
        def loss(p):
            return jnp.mean((nnx.merge(graphdef, p)(bx) - by) ** 2)

        val, g = jax.value_and_grad(loss)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, val

    rng = np.random.default_rng(0)
    t = time.perf_counter()
    perm, pos = rng.permutation(len(x)), 0
    for _ in range(steps):
        if pos + 64 > len(x):
            perm, pos = rng.permutation(len(x)), 0
        idx = perm[pos : pos + 64]
        pos += 64
        params, opt, val = step(params, opt, x[idx], y[idx])
        float(val)  # the usual per-step logging
    return time.perf_counter() - t


def run_torch(x: np.ndarray, y: np.ndarray, steps: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, 1),
    )
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    perm, pos = rng.permutation(len(x)), 0
    for _ in range(steps):
        if pos + 64 > len(x):
            perm, pos = rng.permutation(len(x)), 0
        idx = torch.from_numpy(perm[pos : pos + 64])
        pos += 64
        loss = torch.mean((net(xt[idx])[:, 0] - yt[idx]) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--models", type=int, default=None)
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    n = args.models or (512 if args.quick else 4096)
    d = args.dim or (512 if args.quick else 4096)
    steps = args.steps or (100 if args.quick else 300)
    repeats = args.repeats or (3 if args.quick else 5)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (x[:, :8].sum(1) / 3).astype(np.float32)
    rows = {}
    for name, fn in (("fit", run_fit), ("jax-loop", run_jax_loop), ("torch", run_torch)):
        first = fn(x, y, steps)
        if first is None:
            continue
        times = [fn(x, y, steps) for _ in range(repeats)]
        med = statistics.median(times)
        rows[name] = {
            "steady_s": med,
            "ms_per_step": 1e3 * med / steps,
            "first_call_s": first,
            "compile_s": max(first - med, 0.0),
        }
        print(f"{name:9s} {1e3 * med / steps:8.3f} ms/step  (first call {first:.2f} s)", flush=True)
    for r in rows.values():
        r["vs_fit"] = r["steady_s"] / rows["fit"]["steady_s"]
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, jax {jax.__version__} on {jax.devices()[0].platform}",
        "load_average": os.getloadavg(),
        "command": "python benchmarks/learn_fit.py" + (" --quick" if args.quick else ""),
        "sizes": {"models": n, "dim": d, "steps": steps, "batch": 64, "repeats": repeats},
    }
    name = "learn_fit_quick" if args.quick else "learn_fit"
    out = Path(__file__).resolve().parent / "results"
    with atomic_path(out / f"{name}.json") as tmp:
        tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        f"# learn.fit vs hand-written loops ({meta['date']})",
        "",
        f"Machine: {meta['machine']}; load average {tuple(round(v, 1) for v in meta['load_average'])}"
        " (a shared machine when this is above the core count).",
        f"Command: `{meta['command']}`; sizes {meta['sizes']}.",
        "",
        "| loop | ms/step (median) | time / fit's | first call (s) |",
        "|---|---|---|---|",
    ]
    for k, r in rows.items():
        lines.append(f"| {k} | {r['ms_per_step']:.3f} | {r['vs_fit']:.2f} | {r['first_call_s']:.2f} |")
    with atomic_path(out / f"{name}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

# ruff: noqa: B023  (closures are called inside the loop iteration that defines them)
"""Speed and scale of the equivariant encoders against the PyTorch reference (nfn's NP layers).

1. Encoding throughput (models/s) of the NP encoder (JAX, jit + vmap) vs the same-size NP stack
   built from ``nfn.layers.NPLinear`` (PyTorch, CPU), same batch, same run; plus the neuron-graph
   encoder (no PyTorch reference exists for it here).
2. Contrastive train step (forward + backward + Adam, two views per model, NT-Xent) JAX vs PyTorch.
3. FLOPs per model (XLA cost analysis, ``weightspace.learn.flops_per_model``).
4. Embedding a 10,000-model zoo from disk in chunks (peak RSS growth bounded by a chunk) and the
   same sharded over 8 fake CPU devices (``--devices 8``): sharded == unsharded.

Compile time is reported apart; steady-state times are medians over ``--repeats``.

    python benchmarks/equivariant.py --quick
    python benchmarks/equivariant.py --repeats 5 --devices 8
"""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":  # fake devices must be requested before JAX starts
    _dev = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), None)
    if _dev is None and "--devices" in sys.argv:
        _dev = sys.argv[sys.argv.index("--devices") + 1]
    if _dev and int(_dev) > 1:
        _flag = f"--xla_force_host_platform_device_count={int(_dev)} "
        os.environ["XLA_FLAGS"] = _flag + os.environ.get("XLA_FLAGS", "")

import datetime
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
from _device import cpu_name, loadavg

from weightspace.equivariant import GraphEncoder, NPEncoder, embed_zoo, features_of
from weightspace.equivariant._contrastive import ContrastiveModel, contrastive_loss, step_compiler_options
from weightspace.equivariant._embed import encode_fn
from weightspace.equivariant._layout import Layout
from weightspace.learn import flops_per_model
from weightspace.nets import MLP, SIREN
from weightspace.train import TrainState, compile_step, make_train_step, nnx_loss
from weightspace.zoo import Zoo, load_zoo, save_zoo

RESULTS = Path(__file__).parent / "results"
CASES = {
    "siren-2-32-32-1": SIREN(hidden=(32, 32)),
    "mlp-784-64-10": MLP(in_features=784, hidden=(64,), out_features=10),
}


def _two_view_loss(model, batch, key):
    """NT-Xent over two views of each model (the second: every float feature scaled by 1.01)."""
    x = batch["x"]
    x2 = jax.tree_util.tree_map(lambda a: a * 1.01 if a.dtype == jnp.float32 else a, x)
    z = jnp.concatenate([jax.vmap(model)(x), jax.vmap(model)(x2)])
    return contrastive_loss(z, batch["labels"], tau=0.1)


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds = compile + run, median steady seconds)."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return first, statistics.median(ts)


def torch_np_stack(arch, width: int, depth: int, embed: int):
    """The NP encoder of this library, layer for layer, built from nfn's PyTorch modules.

    ``NPEncoder(width, depth)`` is: per-layer RMS normalisation, a pointwise lift 1 -> width
    (``nfn.layers.Pointwise``), learned input positions (``LearnedPosEmbedding``), ``depth`` NP
    layers width -> width (``NPLinear``) each followed by GELU, whole-layer mean pooling
    (``NPPool``), LayerNorm, then the log-RMS per layer and a two-layer GELU head.
    """
    import torch
    from nfn.common import ArraySpec, NetworkSpec, WeightSpaceFeatures
    from nfn.layers import LearnedPosEmbedding, NPLinear, NPPool, Pointwise

    shapes = arch.param_shapes()
    n = len([k for k in shapes if k.endswith(".weight")])
    spec = NetworkSpec(
        [ArraySpec(shapes[f"layers.{i}.weight"]) for i in range(n)],
        [ArraySpec(shapes[f"layers.{i}.bias"]) for i in range(n)],
    )

    def gelu(t):
        return torch.nn.functional.gelu(t, approximate="tanh")  # jax.nn.gelu's default

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lift = Pointwise(spec, 1, width)
            self.pos = LearnedPosEmbedding(spec, width)
            self.layers = torch.nn.ModuleList([NPLinear(spec, width, width) for _ in range(depth)])
            self.pool = NPPool(spec)
            pooled = NPPool.get_num_outs(spec) * width
            self.norm = torch.nn.LayerNorm(pooled)
            self.head1 = torch.nn.Linear(pooled + n, 2 * embed)
            self.head2 = torch.nn.Linear(2 * embed, embed)

        def forward(self, x):
            rms = [w.square().mean((1, 2, 3)).add(1e-12).sqrt() for w in x.weights]
            x = WeightSpaceFeatures(
                tuple(w / r[:, None, None, None] for w, r in zip(x.weights, rms)),
                tuple(b / r[:, None, None] for b, r in zip(x.biases, rms)),
            )
            h = self.pos(self.lift(x))
            for layer in self.layers:
                h = layer(h).map(gelu)
            pooled = self.norm(torch.flatten(self.pool(h), 1))
            logs = torch.stack([r.log() for r in rms], -1)
            return self.head2(gelu(self.head1(torch.cat([pooled, logs], -1))))

    return Encoder(), spec


def torch_inputs(zoo: Zoo):
    import torch
    from nfn.common import WeightSpaceFeatures

    n = len([k for k in zoo.params if k.endswith(".weight")])
    ws = tuple(torch.from_numpy(np.array(zoo.params[f"layers.{i}.weight"]))[:, None] for i in range(n))
    bs = tuple(torch.from_numpy(np.array(zoo.params[f"layers.{i}.bias"]))[:, None] for i in range(n))
    return WeightSpaceFeatures(ws, bs)


def bench_speed(args: argparse.Namespace, out: dict) -> None:
    import torch

    torch.set_num_threads(args.torch_threads)
    rows = []
    for name, arch in CASES.items():
        if args.cases and name not in args.cases.split(","):
            continue
        zoo = Zoo.init(arch, args.batch, key=jax.random.key(0), name=name)
        f = features_of(zoo)
        np_enc = NPEncoder(
            taps=(1,),
            width=args.width,
            depth=args.depth,
            embed_dim=64,
            max_inputs=arch.widths[0],
            max_outputs=arch.widths[-1],
            rngs=nnx.Rngs(0),
        )
        gr_enc = GraphEncoder(
            taps=(1,),
            width=args.width,
            rounds=args.depth,
            embed_dim=64,
            max_inputs=arch.widths[0],
            max_outputs=arch.widths[-1],
            rngs=nnx.Rngs(0),
        )
        row = {"case": name, "batch": args.batch, "width": args.width, "depth": args.depth}
        for label, enc in (("np", np_enc), ("graph", gr_enc)):
            fn = encode_fn(enc)
            first, steady = timed(lambda fn=fn: fn(f), args.repeats)
            row[f"{label}_encode_s"], row[f"{label}_compile_s"] = steady, first - steady
            row[f"{label}_models_per_s"] = args.batch / steady
            gdef, state = nnx.split(enc)
            row[f"{label}_flops_per_model"] = flops_per_model(
                lambda s, x, gdef=gdef: jax.vmap(nnx.merge(gdef, s))(x), state, f, models=args.batch
            )
            # contrastive train step: two views (here: the same features + noise), NT-Xent, Adam,
            # through the public step compiled exactly as weightspace.train.fit compiles it (flat
            # donated leaves, fit's CPU options plus train_contrastive's per-encoder options)
            model = ContrastiveModel(enc, proj_dim=32, rngs=nnx.Rngs(1))
            g2, params, rest = nnx.split(model, nnx.Param, ...)
            tx = optax.adam(1e-3)
            step = make_train_step(nnx_loss(g2, _two_view_loss), tx, stateful=True)
            leaves, treedef = jax.tree_util.tree_flatten(TrainState(params, tx.init(params), rest))
            options = step_compiler_options(enc, [(Layout.of(arch), args.batch)])
            run = compile_step(step, treedef, compiler_options=tuple(sorted(options.items())))
            batch = {"x": f, "labels": jnp.concatenate([jnp.arange(args.batch)] * 2)}
            state_box = [leaves]

            def run_step(run=run, state_box=state_box, batch=batch):
                state_box[0], metrics = run(state_box[0], batch, None, np.int32(0), jax.random.key(0))
                return metrics["loss"]

            first, steady = timed(run_step, args.repeats)
            row[f"{label}_train_step_s"], row[f"{label}_train_compile_s"] = steady, first - steady
        # PyTorch reference (nfn NPLinear stack) for the NP encoder
        body, _ = torch_np_stack(arch, args.width, args.depth, 64)
        row["torch_np_params"] = sum(p.numel() for p in body.parameters())
        row["np_params"] = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(nnx.state(np_enc, nnx.Param)))
        x = torch_inputs(zoo)
        with torch.no_grad():
            body(x)
            ts = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                body(x)
                ts.append(time.perf_counter() - t)
        row["torch_np_encode_s"] = statistics.median(ts)
        row["torch_np_models_per_s"] = args.batch / row["torch_np_encode_s"]
        proj = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(64, 32))
        opt_t = torch.optim.Adam(list(body.parameters()) + list(proj.parameters()), lr=1e-3)
        lab = torch.cat([torch.arange(args.batch)] * 2)
        x2 = x.map(lambda a: a * 1.01)

        def torch_step() -> None:
            opt_t.zero_grad()
            z = torch.cat([proj(body(x)), proj(body(x2))])
            z = (z - z.mean(0)) / (z.std(0, unbiased=False) + 1e-6)  # as contrastive_loss(standardize=True)
            z = torch.nn.functional.normalize(z, dim=-1)
            sim = z @ z.T / 0.1
            eye = torch.eye(len(z), dtype=torch.bool)
            sim = sim.masked_fill(eye, -float("inf"))
            pos = (lab[:, None] == lab[None]) & ~eye
            logp = sim - torch.logsumexp(sim, -1, keepdim=True)
            loss = -(logp.masked_fill(~pos, 0).sum(-1) / pos.sum(-1)).mean()
            loss.backward()
            opt_t.step()

        torch_step()
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            torch_step()
            ts.append(time.perf_counter() - t)
        row["torch_np_train_step_s"] = statistics.median(ts)
        row["encode_speedup"] = row["torch_np_encode_s"] / row["np_encode_s"]
        row["train_speedup"] = row["torch_np_train_step_s"] / row["np_train_step_s"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    out["speed"] = rows


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_scale(args: argparse.Namespace, out: dict) -> None:
    n = args.zoo_models
    arch = SIREN(hidden=(32, 32))
    enc = NPEncoder(
        taps=(1,), width=args.width, depth=args.depth, embed_dim=64, max_inputs=2, max_outputs=1, rngs=nnx.Rngs(0)
    )
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "zoo.safetensors"
        # the zoo is written in pieces so this process never holds it whole either
        parts = []
        for lo in range(0, n, 2000):
            part = Zoo.init(arch, min(2000, n - lo), key=jax.random.fold_in(jax.random.key(0), lo))
            parts.append(part.with_meta(id=[f"m{lo + i:06d}" for i in range(len(part))]))
        from weightspace.zoo import concat

        save_zoo(concat(parts, name="scale"), path)
        del parts
        zoo = load_zoo(path)
        base = rss_mb()
        t = time.perf_counter()
        emb, ids = embed_zoo(enc, zoo, chunk=args.chunk)
        wall = time.perf_counter() - t
        res = {
            "models": n,
            "chunk": args.chunk,
            "seconds": wall,
            "models_per_s": n / wall,
            "peak_rss_growth_mb": rss_mb() - base,
            "zoo_file_mb": path.stat().st_size / 2**20,
            "devices": len(jax.devices()),
        }
        if len(jax.devices()) > 1:
            from weightspace.parallel import make_mesh

            t = time.perf_counter()
            emb_s, ids_s = embed_zoo(enc, zoo, chunk=args.chunk, mesh=make_mesh())
            res["sharded_seconds"] = time.perf_counter() - t
            res["sharded_equals_unsharded"] = bool(ids_s == ids and np.allclose(emb, emb_s, rtol=1e-5, atol=1e-6))
            res["sharded_max_abs_diff"] = float(np.max(np.abs(emb - emb_s)))
    print(json.dumps(res), flush=True)
    out["scale"] = res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64, help="models per encode call / train step")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--zoo-models", type=int, default=10_000)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--devices", type=int, default=1, help="fake CPU devices for the sharded run")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cases", default="", help=f"comma-separated subset of {list(CASES)}")
    ap.add_argument("--no-scale", action="store_true", help="skip the 10k-zoo part")
    ap.add_argument(
        "--speed-from",
        default=None,
        help="reuse the speed rows (JSON lines) an earlier run of this script printed; run only the scale part",
    )
    ap.add_argument("--name", default="equivariant")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.zoo_models, args.batch, args.name = 2, 2000, 32, args.name + "_quick"
    out: dict = {
        "args": vars(args),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {cpu_name()} ({os.cpu_count()} cpus)",
        "load_before": loadavg(),
        "jax": jax.__version__,
        "command": "python " + " ".join(sys.argv),
    }
    import torch

    out["torch"] = torch.__version__
    if args.speed_from:
        out["speed"] = [
            json.loads(line) for line in Path(args.speed_from).read_text().splitlines() if line.startswith('{"case"')
        ]
        out["speed_from"] = args.speed_from
    elif len(jax.devices()) > 1:
        # Fake CPU devices split XLA's thread pool: a one-device program runs ~20% slower in this
        # process (SIREN train step 45 -> 53 ms). The speed part runs in a one-device child process.
        import subprocess

        cmd = [
            sys.executable,
            __file__,
            "--no-scale",
            "--devices",
            "1",
            "--repeats",
            str(args.repeats),
            "--batch",
            str(args.batch),
            "--width",
            str(args.width),
            "--depth",
            str(args.depth),
            "--torch-threads",
            str(args.torch_threads),
            "--cases",
            args.cases,
        ]
        import re

        flags = re.sub(r"--xla_force_host_platform_device_count=\d+\s*", "", os.environ.get("XLA_FLAGS", ""))
        env = {**os.environ, "XLA_FLAGS": flags}
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        out["speed"] = [json.loads(line) for line in res.stdout.splitlines() if line.startswith('{"case"')]
        for row in out["speed"]:
            print(json.dumps(row), flush=True)
        out["speed_process"] = "a one-device child process"
    else:
        bench_speed(args, out)
    if args.no_scale:
        return 0
    bench_scale(args, out)
    out["load_after"] = loadavg()
    write(out)
    return 0


def write(out: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    a = out["args"]
    lines = [
        f"# Equivariant encoders: speed and scale ({a['name']})",
        "",
        f"- date: {out['date']}; machine: {out['machine']}; load average {out['load_before']:.1f} before, "
        f"{out['load_after']:.1f} after"
        + (
            " (the machine was shared with other jobs: times are noisy)"
            if max(out["load_before"], out["load_after"]) > (os.cpu_count() or 1) + 1
            else ""
        ),
        f"- command: `{out['command']}`"
        + (
            f" (speed rows printed by an earlier run of the same script on this "
            f"machine the same day, read from {out['speed_from']})"
            if out.get("speed_from")
            else ""
        ),
        f"- jax {out['jax']} (CPU), torch {out['torch']} CPU ({a['torch_threads']} threads); "
        f"{a['repeats']} repeats, medians; compile time apart"
        + (
            f"; speed measured in {out['speed_process']} (fake devices slow one-device programs)"
            if out.get("speed_process")
            else ""
        ),
        f"- encoder: width {a['width']}, {a['depth']} NP layers / message-passing rounds, embedding 64; "
        "PyTorch reference: the same encoder layer for layer from nfn modules (RMS normalisation, "
        "Pointwise 1->width lift, LearnedPosEmbedding, depth x NPLinear(width->width) + GELU, NPPool, "
        "LayerNorm, GELU head); parameters JAX vs PyTorch: "
        + ", ".join(
            f"{r['case']}: {r['np_params']} vs {r['torch_np_params']}" for r in out["speed"] if "torch_np_params" in r
        )
        + " (the JAX encoder ties its NP layers by layer role and keeps a hidden-to-hidden set that a "
        "network with one hidden layer does not use)",
        "",
        "| case | batch | NP JAX (models/s) | NP nfn/PyTorch (models/s) | encode speedup "
        "| NP JAX train step (ms) "
        "| nfn train step (ms) | train speedup | graph JAX (models/s) | graph train step (ms) | NP FLOPs/model "
        "| graph FLOPs/model | NP compile (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["speed"]:
        lines.append(
            f"| {r['case']} | {r['batch']} | {r['np_models_per_s']:.0f} | {r['torch_np_models_per_s']:.0f} | "
            f"{r['encode_speedup']:.2f}x | {1e3 * r['np_train_step_s']:.1f} | {1e3 * r['torch_np_train_step_s']:.1f} | "
            f"{r['train_speedup']:.2f}x | {r['graph_models_per_s']:.0f} | {1e3 * r['graph_train_step_s']:.1f} | "
            f"{r['np_flops_per_model']:.3g} | {r['graph_flops_per_model']:.3g} | {r['np_compile_s']:.1f} |"
        )
    s = out["scale"]
    lines += [
        "",
        f"## Embedding a {s['models']}-model SIREN zoo from disk",
        "",
        f"- chunk {s['chunk']} models: {s['seconds']:.1f} s ({s['models_per_s']:.0f} models/s), peak RSS growth "
        f"{s['peak_rss_growth_mb']:.0f} MB for a {s['zoo_file_mb']:.0f} MB zoo file",
    ]
    if "sharded_seconds" in s:
        lines.append(
            f"- sharded over {s['devices']} fake CPU devices: {s['sharded_seconds']:.1f} s; sharded == "
            f"unsharded: {s['sharded_equals_unsharded']} (max |diff| {s['sharded_max_abs_diff']:.2g})"
        )
    (RESULTS / f"{a['name']}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{a['name']}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())

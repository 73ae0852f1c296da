"""ProbeGen vs its baselines on the real zoos: INR classification (accuracy), generalization prediction (Kendall tau).

For each task (a recipe zoo, split by model with groups so fits of one image / checkpoints of one
run never straddle splits; validation picks the step, the test split is read once): ProbeGen
(deep linear generator), the non-linear generator ablation, vanilla learned probes, fixed probes
(uniform, grid / dead leaves, natural crops, in-distribution samples), StatNN (+ gradient boosting
or an MLP) and an MLP on the flattened weights, each over 3 seeds, in one
``weightspace.learn.ResultsTable`` per task with FLOPs per model (XLA cost analysis of the
compiled inference forward) and training time. ``--curve`` adds ProbeGen over the number of
probes. Learned probes are saved (``.npz``) for the figures of ``docs/probegen.md``.

    python benchmarks/probegen_tasks.py                       # the full table (see --help for sizes)
    python benchmarks/probegen_tasks.py --quick               # a smoke run: small zoos, 1 seed
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _device

RESULTS = Path(__file__).parent / "results"

TASKS = {  # recipe -> (probegen task, metric)
    "mnist-inr": ("classify", "accuracy"),
    "fmnist-inr": ("classify", "accuracy"),
    "fmnist-cnn-zoo": ("rank", "kendall_tau"),
}
INR_FIXED = ("uniform", "grid")
IMAGE_FIXED = ("uniform", "dead-leaves", "natural", "fashion-mnist")
EVAL_EVERY = 100  # steps between validations (--eval-every)


def methods(recipe: str) -> list[tuple[str, dict[str, Any]]]:
    fixed = INR_FIXED if recipe.endswith("-inr") else IMAGE_FIXED
    out: list[tuple[str, dict[str, Any]]] = [
        ("probegen", {"probes": "generator"}),
        ("probegen-nonlinear", {"probes": "generator", "nonlinear": True}),
    ]
    if recipe.endswith("-inr"):  # the paper's unbounded coordinate generator (ours ends in tanh)
        out.append(("probegen-unbounded", {"probes": "generator", "bounded": False}))
    out.append(("vanilla-probes", {"probes": "vanilla"}))
    out += [(f"fixed-{k}", {"probes": "fixed", "fixed": k}) for k in fixed]
    out += [(b, {"baseline": b}) for b in ("statnn-gbt", "statnn-mlp", "flat-mlp")]
    out += [("np-encoder", {"encoder": "np"}), ("graph-encoder", {"encoder": "graph"})]
    return out


ENCODER_WIDTH = 16  # equivariant encoders: channels, 2 layers / rounds, embedding 64 (benchmarks/equivariant.py)


def _score(task: str, pred: np.ndarray, y: np.ndarray) -> float:
    """The task's score of logits (classify) or values (rank)."""
    from weightspace.learn import Task

    t = Task(task)
    return t.score(pred if t.scaled else t.decode(pred), y)


def run_encoder(kind: str, source: Any, ds: Any, task: str, steps: int, seed: int) -> tuple[float, dict]:
    """The equivariant encoder (``np`` | ``graph``) + a linear head trained end to end on the task,
    on the same splits and with the same validation rule (best validation step) as ProbeGen."""
    from weightspace.equivariant import bucketize, build_encoder, encoder_config, train_supervised
    from weightspace.equivariant._embed import encode_fn
    from weightspace.learn import Task, TrainConfig, flops_per_model

    buckets = bucketize(source)
    if len(buckets) != 1 or len(buckets[0]) != len(ds):
        raise SystemExit(f"{kind}-encoder: expected the zoo in one bucket of {len(ds)} models")
    bucket = buckets[0]
    lay = bucket.layout
    cfg = encoder_config(
        {
            "kind": kind,
            "taps": sorted(set(lay.taps)),
            "width": ENCODER_WIDTH,
            "embed_dim": 64,
            "max_inputs": lay.widths[0],
            "max_outputs": lay.widths[-1],
        }
    )  # depth 2 / rounds 2: the configs' defaults
    enc = build_encoder(cfg, seed=seed)
    y = ds.targets["y"]
    config = TrainConfig(
        steps=steps,
        batch_size=32,
        learning_rate=1e-3,
        schedule="cosine",
        eval_every=EVAL_EVERY,
        seed=seed,
        grad_clip=1.0,
    )
    run = train_supervised(
        enc, bucket, y, task=task, train=ds.splits.train, val=ds.splits.val, train_config=config, progress=False
    )
    pred = run.predict(bucket.select(ds.splits.test))  # class ids (classify) or values (rank)
    value = Task(task).score(pred, y[ds.splits.test])
    import jax

    fn = encode_fn(run.model)
    batch = 32
    shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((batch, *a.shape[1:]), a.dtype), bucket.features)
    flops = flops_per_model(fn, shapes, models=batch)
    return value, {"flops": flops, "seconds": run.report.seconds, "best_step": float(run.report.best_step or 0)}


def probing_flops(run: Any, batch: int = 32) -> float:
    """FLOPs per model of inference: the (fixed, precomputed) probes through one model + the predictor.

    The generator runs once per trained model, not per model read, so it is not counted."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from weightspace.learn import flops_per_model
    from weightspace.probing import apply_models

    model = run.model
    arch = model.archs[0]
    probes = jnp.asarray(model.probes())
    graphdef, state = nnx.split(model)
    shapes = {k: jax.ShapeDtypeStruct((batch, *s), jnp.float32) for k, s in arch.param_shapes().items()}

    def fwd(params: Any) -> Any:
        m = nnx.merge(graphdef, state)
        r = apply_models(arch, params, probes, formulation="vmap")
        return m.predictor(r.reshape(batch, -1) / m.scale[...])

    return flops_per_model(fwd, shapes, models=batch)


def baseline_flops(name: str, ds: Any, n_out: int, batch: int = 32) -> float:
    """FLOPs per model of a baseline's forward: StatNN features (+ the MLP), or the MLP on flat weights.
    Gradient-boosted trees are comparisons, not FLOPs: statnn-gbt counts only its features."""
    import jax
    import jax.numpy as jnp

    from weightspace.learn import flops_per_model

    tensors = sorted(ds.inputs)
    shapes = {k: jax.ShapeDtypeStruct((batch, *ds.inputs[k].shape[1:]), jnp.float32) for k in tensors}

    def statnn(p: Any) -> Any:
        feats = []
        for k in tensors:
            v = p[k].reshape(batch, -1)
            q = jnp.quantile(v, jnp.asarray([0.0, 0.25, 0.5, 0.75, 1.0]), axis=1).T
            feats += [v.mean(1, keepdims=True), v.var(1, keepdims=True), q]
        return jnp.concatenate(feats, 1)

    def mlp(x: Any) -> Any:
        d = x.shape[1]
        for a, b in ((d, 256), (256, 256), (256, n_out)):
            x = x @ jnp.ones((a, b), jnp.float32) * 1e-3
            if b == 256:
                x = jax.nn.relu(x)
        return x

    if name == "statnn-gbt":
        return flops_per_model(statnn, shapes, models=batch)
    if name == "statnn-mlp":
        return flops_per_model(lambda p: mlp(statnn(p)), shapes, models=batch)
    return flops_per_model(
        lambda p: mlp(jnp.concatenate([p[k].reshape(batch, -1) for k in tensors], 1)), shapes, models=batch
    )


def run_task(
    recipe: str,
    size: int,
    seeds: list[int],
    steps: int,
    only: list[str] | None,
    probes_dir: Path,
    log: Any,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from weightspace.learn import ResultsTable, run_baseline
    from weightspace.probegen import DEFAULT_TRAIN, ProbeGenConfig, train_probegen, weight_dataset
    from weightspace.zoo import build_recipe

    task, metric = TASKS[recipe]
    t0 = time.perf_counter()
    zoo = build_recipe(recipe, size=size, seed=0, progress=False)
    ds = weight_dataset(zoo, task=task, seed=0)
    n_out = int(np.max(ds.targets["y"])) + 1 if task == "classify" else 1
    log(
        f"{recipe} (size {size}): {len(ds)} models, splits {list(ds.splits.sizes())}, built/loaded in "
        f"{time.perf_counter() - t0:.0f}s"
    )
    names = [m for m, _ in methods(recipe) if not only or m in only]
    keep = [r for r in (previous or {}).get("table", {}).get("rows", []) if r["method"] not in names]
    table = ResultsTable(keep)  # --update: rows of methods not rerun now come from the previous results
    y_te = ds.targets["y"][ds.splits.test]
    for name, spec in methods(recipe):
        if only and name not in only:
            continue
        for seed in seeds:
            t = time.perf_counter()
            if "encoder" in spec:
                value, extra = run_encoder(spec["encoder"], zoo, ds, task, steps, seed)
            elif "baseline" in spec:
                pred = run_baseline(spec["baseline"], ds, target="y", task=task, seed=seed)
                value = _score(task, pred, y_te)
                extra = {"flops": baseline_flops(spec["baseline"], ds, n_out), "seconds": time.perf_counter() - t}
            else:
                train = dataclasses.replace(DEFAULT_TRAIN, steps=steps, seed=seed, eval_every=EVAL_EVERY)
                run = train_probegen(ds, ProbeGenConfig(task=task, **spec), train_config=train, progress=False)
                value = run.test_score
                extra = {
                    "flops": probing_flops(run),
                    "seconds": run.report.seconds,
                    "best_step": float(run.report.best_step or 0),
                }
                if seed == seeds[0]:
                    np.savez(probes_dir / f"{recipe}-{name}.npz", probes=np.asarray(run.model.probes()))
            table.add(name, metric, value, seed=seed, **extra)
            log(f"  {name} seed {seed}: {metric} {value:.4f} ({time.perf_counter() - t:.0f}s)")
    order = [m for m, _ in methods(recipe)]
    table.rows.sort(key=lambda r: (order.index(r["method"]) if r["method"] in order else len(order), r["seed"]))
    return {
        "recipe": recipe,
        "size": size,
        "models": len(ds),
        "splits": list(ds.splits.sizes()),
        "metric": metric,
        "steps": steps,
        "table": json.loads(table.to_json()),
        "markdown": table.to_markdown(digits=3),
    }


def run_curve(recipe: str, size: int, seeds: list[int], steps: int, ns: list[int], log: Any) -> dict[str, Any]:
    from weightspace.learn import ResultsTable
    from weightspace.probegen import DEFAULT_TRAIN, ProbeGenConfig, train_probegen, weight_dataset
    from weightspace.zoo import build_recipe

    task, metric = TASKS[recipe]
    ds = weight_dataset(build_recipe(recipe, size=size, seed=0, progress=False), task=task, seed=0)
    table = ResultsTable()
    for n in ns:
        for seed in seeds:
            train = dataclasses.replace(DEFAULT_TRAIN, steps=steps, seed=seed, eval_every=EVAL_EVERY)
            run = train_probegen(ds, ProbeGenConfig(task=task, n_probes=n), train_config=train, progress=False)
            table.add(
                f"probegen n={n}",
                metric,
                run.test_score,
                seed=seed,
                flops=probing_flops(run),
                seconds=run.report.seconds,
            )
            log(f"  curve n={n} seed {seed}: {metric} {run.test_score:.4f}")
    return {
        "recipe": recipe,
        "size": size,
        "ns": ns,
        "table": json.loads(table.to_json()),
        "markdown": table.to_markdown(digits=3),
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# ProbeGen and baselines on real zoos ({r['name']})",
        "",
        f"- date: {r['date']}; machine: {r['machine']} ({r['cores']} cores, load average {r['load']:.1f} at start"
        f"{', SHARED with other jobs: times are pessimistic' if r['load'] > r['cores'] else ''})",
        f"- command: `{r['command']}`",
        f"- {r['steps']} steps (Adam 3e-4, cosine decay, batch 32 models, 64 probes, latent 32, predictor 6x256), "
        f"best validation step kept; seeds {r['seeds']} (training seed; the split is fixed, seed 0)",
        "- flops: per model read, XLA cost analysis of the compiled inference forward (probes through the model "
        "+ predictor; StatNN features + MLP; MLP on flat weights; statnn-gbt: features only, trees are not FLOPs); "
        "seconds: steady-state training time of one run",
        "",
    ]
    for t in r["tasks"]:
        lines += [
            f"## {t['recipe']} (size {t['size']}: {t['models']} models, train/val/test {t['splits']}; "
            f"{t.get('steps', r['steps'])} steps) — {t['metric']}",
            "",
            t["markdown"],
            "",
        ]
    if r.get("curve"):
        c = r["curve"]
        lines += [f"## Number of probes ({c['recipe']}, size {c['size']})", "", c["markdown"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small zoos, 1 seed, 200 steps")
    ap.add_argument("--tasks", default="mnist-inr,fmnist-inr,fmnist-cnn-zoo")
    ap.add_argument("--sizes", default="1000,300,48", help="recipe sizes, one per task")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--methods", default=None, help="comma-separated subset of methods")
    ap.add_argument("--eval-every", type=int, default=100, help="steps between validations (default 100)")
    ap.add_argument("--curve", default=None, help="probe counts for the curve on the first task, e.g. 4,16,64,128")
    ap.add_argument("--name", default=None)
    ap.add_argument(
        "--update",
        action="store_true",
        help="merge into the existing results NAME.json: rerun only --methods (and --curve), keep the rest",
    )
    args = ap.parse_args(argv)
    global EVAL_EVERY
    EVAL_EVERY = args.eval_every
    tasks = args.tasks.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes, seeds, steps = [min(s, 100) for s in sizes], [0], 200
    else:
        seeds, steps = list(range(args.seeds)), args.steps
    name = args.name or _device.default_stem("probegen_tasks", quick=args.quick, gpu=_device.is_gpu())
    RESULTS.mkdir(exist_ok=True)
    probes_dir = RESULTS / f"{name}_probes"
    probes_dir.mkdir(exist_ok=True)
    r: dict[str, Any] = {
        **_device.run_header(name, "probegen_tasks.py", argv),
        "steps": steps,
        "seeds": seeds,
        "tasks": [],
    }

    def log(msg: str) -> None:
        print(msg, flush=True)

    def write() -> None:
        from weightspace._atomic import atomic_path

        with atomic_path(RESULTS / f"{name}.json") as tmp:
            tmp.write_text(json.dumps(r, indent=1))
        with atomic_path(RESULTS / f"{name}.md") as tmp:
            tmp.write_text(markdown(r))

    old: dict[str, Any] = {}
    if args.update and (RESULTS / f"{name}.json").exists():
        old = json.loads((RESULTS / f"{name}.json").read_text())
        r["tasks"] = list(old.get("tasks", []))
        if old.get("curve"):
            r["curve"] = old["curve"]
        r["command"] = old.get("command", "") + " ; then " + r["command"]
    only = args.methods.split(",") if args.methods else None
    for recipe, size in zip(tasks, sizes, strict=True):
        prev = next((t for t in r["tasks"] if t["recipe"] == recipe), None)
        res = run_task(recipe, size, seeds, steps, only, probes_dir, log, prev if args.update else None)
        r["tasks"] = [t for t in r["tasks"] if t["recipe"] != recipe] + [res]
        write()
    if args.curve:
        r["curve"] = run_curve(tasks[0], sizes[0], seeds, steps, [int(n) for n in args.curve.split(",")], log)
        write()
    r["load_end"] = _device.loadavg()
    write()
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())

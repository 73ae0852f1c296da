"""Benchmark: transferability metrics in JAX vs the straightforward NumPy reference formulations.

Part 1 times each metric on one candidate model (default N=10,000 samples, D=1024 features,
C=100 target classes, Cs=1000 source classes) against the NumPy code the public reference
implementations use (thuml/LogME's fixed point with an SVD per call and a per-class Python loop;
tllib's H-score, regularized H-score and TransRate; thuml's LEEP/NCE; google-research's
PACTran and GBC; scikit-learn's PCA + GaussianMixture for N-LEEP; an N x N kernel LFC and a
NumPy Sinkhorn for OTCE). Part 2 scores 20 candidate models with every metric in ONE
``score_all`` call (jit(vmap) over models) against a per-model loop.

JAX figures are medians over repeats after a first (compiling) call, with ``block_until_ready``;
the compile time is reported separately (first call minus steady state). Results go to
``benchmarks/results/selection.{json,md}`` (``selection_gpu`` when JAX runs on a GPU, ``_quick`` for a
smoke run; ``--name`` overrides), rewritten after every metric; a metric that fails is recorded
with its error and the run goes on.

    .venv/bin/python benchmarks/selection.py            # full sizes
    .venv/bin/python benchmarks/selection.py --quick    # smoke run (small sizes)
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

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.special  # noqa: E402

import weightspace.selection as S  # noqa: E402
from weightspace._atomic import atomic_path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _device  # noqa: E402

# ---- NumPy reference formulations (what the public reference code does) ---------------------


def ref_logme(f, y):
    """thuml/LogME ``_fit_fixed_point``: truncated SVD per call, then a Python loop over classes."""
    n, d = f.shape
    u, s, vh = np.linalg.svd(f.T @ f)
    s = np.sqrt(s)
    u_times_sigma = f @ vh.T
    k = int(np.sum(s > 1e-10))
    s = s[:k].reshape(-1, 1)
    u = u_times_sigma[:, :k] / s.reshape(1, -1)
    sigma = s**2
    evs = []
    for i in range(int(y.max()) + 1):
        y_ = (y == i).astype(np.float64).reshape(-1, 1)
        x = u.T @ y_
        x2 = x**2
        res_x2 = (y_**2).sum() - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
            res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        ev = (
            d / 2.0 * np.log(alpha)
            + n / 2.0 * np.log(beta)
            - 0.5 * np.sum(np.log(alpha + beta * sigma))
            - beta / 2.0 * res2
            - alpha / 2.0 * m2
            - n / 2.0 * np.log(2 * np.pi)
        )
        evs.append(ev / n)
    return float(np.mean(evs))


def ref_leep(p, y):
    n, cs = p.shape
    joint = np.zeros((int(y.max()) + 1, cs))
    for i in range(joint.shape[0]):
        joint[i] = (p[y == i] / n).sum(0)
    pyz = (joint / joint.sum(0, keepdims=True)).T
    e = p @ pyz
    return float(np.mean(np.log(e[np.arange(n), y])))


def ref_nce(p, y):
    z = p.argmax(1)
    n = len(z)
    joint = np.zeros((int(y.max()) + 1, p.shape[1]))
    for s_, t_ in zip(z, y, strict=True):
        joint[t_, s_] += 1.0 / n
    pz = joint.sum(0, keepdims=True)
    mask = pz.ravel() != 0
    pyz = (joint[:, mask] / pz[:, mask]).T + 1e-20
    return float(-np.sum(np.sum(-pyz * np.log(pyz), axis=1) * pz.ravel()[mask]))


def _class_means_rows(f, y):
    g = np.zeros_like(f)
    for i in range(int(y.max()) + 1):
        g[y == i] = f[y == i].mean(0)
    return g


def ref_h_score(f, y):
    covf = np.cov(f, rowvar=False)
    covg = np.cov(_class_means_rows(f, y), rowvar=False)
    return float(np.trace(np.linalg.pinv(covf, rcond=1e-15) @ covg))


def ref_reg_h_score(f, y):
    from sklearn.covariance import LedoitWolf

    f = f - f.mean(0, keepdims=True)
    cov = LedoitWolf(assume_centered=False).fit(f)
    covg = np.cov(_class_means_rows(f, y), rowvar=False)
    return float(np.trace(np.linalg.pinv(cov.covariance_, rcond=1e-15) @ ((1 - cov.shrinkage_) * covg)))


def _coding_rate(f, eps=1e-4):
    n, d = f.shape
    return 0.5 * np.linalg.slogdet(np.eye(d) + f.T @ f / (n * eps))[1]


def ref_transrate(f, y, eps=1e-4):
    f = f - f.mean(0)
    k = int(y.max()) + 1
    return float(_coding_rate(f, eps) - sum(_coding_rate(f[y == i], eps) for i in range(k)) / k)


def ref_pactran(p, y, alpha=1.0):
    lab = np.eye(int(y.max()) + 1)[y]
    sts = lab.sum(0)[:, None]
    a0 = alpha * sts / sts.sum() + 1e-10
    qz, log_s = p, np.log(p + 1e-10)
    for _ in range(10):
        aw = a0 + lab.T @ qz
        logits = log_s + lab @ scipy.special.digamma(aw) - scipy.special.digamma(aw.sum(0))[None]
        log_qz = logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)
        qz = np.exp(log_qz)
    log_c0 = scipy.special.loggamma(a0.sum()) - scipy.special.loggamma(a0).sum()
    log_c = scipy.special.loggamma(aw.sum(0)) - scipy.special.loggamma(aw).sum(0)
    return float(np.sum(log_c0 - log_c - np.sum(qz * (log_qz - log_s), axis=0)) / lab.size)


def ref_gbc(f, y, pca_dim=64):
    from sklearn.decomposition import PCA

    f = PCA(n_components=min(pca_dim, *f.shape), svd_solver="full").fit_transform(f)
    classes = np.unique(y)
    stats = {c: (f[y == c].mean(0), np.maximum(f[y == c].var(0), 1e-4)) for c in classes}
    total = 0.0
    for c1 in classes:
        for c2 in classes:
            if c1 != c2:
                (m1, s1), (m2, s2) = stats[c1], stats[c2]
                avg = (s1 + s2) / 2
                db = np.sum((m1 - m2) ** 2 / avg) / 8 + 0.5 * (
                    np.sum(np.log(avg)) - 0.5 * np.sum(np.log(s1)) - 0.5 * np.sum(np.log(s2))
                )
                total += np.exp(-db)
    return -total


def ref_lfc(f, y):
    n = f.shape[0]
    h = np.eye(n) - 1.0 / n
    kf = h @ (f @ f.T) @ h
    ky = h @ np.where(y[:, None] == y[None, :], 1.0, -1.0) @ h
    return float(np.sum(kf * ky) / (np.linalg.norm(kf) * np.linalg.norm(ky)))


def ref_nleep(f, y):
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    z = PCA(n_components=0.8).fit_transform(f)
    k = int(y.max()) + 1
    post = GaussianMixture(k, covariance_type="diag", random_state=0).fit(z).predict_proba(z)
    return ref_leep(post, y)


def ref_otce(fs, ys, ft, yt, epsilon=0.05, iters=1000):
    cost = ((fs * fs).sum(1)[:, None] + (ft * ft).sum(1)[None, :] - 2 * fs @ ft.T).clip(0)
    a, b = np.full(len(fs), 1 / len(fs)), np.full(len(ft), 1 / len(ft))
    eps = epsilon * cost.mean()
    f_, g_ = np.zeros(len(a)), np.zeros(len(b))
    for _ in range(iters):  # log-domain: a plain kernel underflows at this epsilon
        f_ = eps * np.log(a) - eps * scipy.special.logsumexp((g_[None] - cost) / eps, axis=1)
        g_ = eps * np.log(b) - eps * scipy.special.logsumexp((f_[:, None] - cost) / eps, axis=0)
    plan = np.exp((f_[:, None] + g_[None] - cost) / eps)
    joint = np.eye(int(ys.max()) + 1)[ys].T @ plan @ np.eye(int(yt.max()) + 1)[yt]
    cond = joint / joint.sum(1, keepdims=True)
    return float(np.sum(joint[joint > 0] * np.log(cond[joint > 0])))


# ---- data and timing -----------------------------------------------------------------------


def make_task(seed, n, d, c, cs):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)
    f = rng.standard_normal((n, d)) + 0.5 * rng.standard_normal((c, d))[y]
    logits = 2.0 * rng.standard_normal((n, cs))
    logits[np.arange(n), y % cs] += 3.0
    return f, y, scipy.special.softmax(logits, axis=1)


SLOW = ("nleep", "otce")
_LOAD_AT_START = os.getloadavg()
SMALL = ("nleep", "lfc", "otce")  # run at n_small: N x N kernels / minutes-long mixtures at N = 10,000


def timed(fn, *args, repeats, block=True):
    t0 = time.perf_counter()
    out = fn(*args)
    if block:
        jax.block_until_ready(out)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args)
        if block:
            jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    steady = statistics.median(times) if times else first
    return out, steady, max(first - steady, 0.0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat (smoke run)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--only", nargs="+", default=None, help="time only these metrics in part 1 (and skip part 2)")
    ap.add_argument(
        "--name",
        default=None,
        help="results file stem (default selection, +_gpu on a GPU backend, +_quick with --quick, "
        "+_<metrics> with --only)",
    )
    args = ap.parse_args(argv)
    devices = _device.jax_info()
    print(f"selection benchmark: {_device.describe({**devices, 'torch': None})}", flush=True)
    if args.quick:
        n, d, c, cs, n_small, repeats = 1000, 128, 20, 100, 300, args.repeats or 1
        bn, bd, bc, bmodels = 300, 32, 5, 20
    else:
        n, d, c, cs, n_small, repeats = 10_000, 1024, 100, 1000, 2000, args.repeats or 2
        bn, bd, bc, bmodels = 1000, 256, 20, 20
    f, y, p = make_task(0, n, d, c, cs)
    n_ot = min(n_small, 500)  # NumPy's log-domain Sinkhorn: ~minutes per 1000 sweeps at 2000 x 2000
    fs_small, ys_small = f[n_ot : 2 * n_ot], (np.arange(n_ot) % 7)
    cases = {  # name: (numpy reference call, JAX call, size note)
        "logme": (lambda: ref_logme(f, y), lambda x: S.logme(x, y), f),
        "h_score": (lambda: ref_h_score(f, y), lambda x: S.h_score(x, y), f),
        "regularized_h_score": (lambda: ref_reg_h_score(f, y), lambda x: S.regularized_h_score(x, y), f),
        "transrate": (lambda: ref_transrate(f, y), lambda x: S.transrate(x, y), f),
        "gbc": (lambda: ref_gbc(f, y), lambda x: S.gbc(x, y), f),
        "nleep": (lambda: ref_nleep(f[:n_small], y[:n_small]), lambda x: S.nleep(x[:n_small], y[:n_small]), f),
        "leep": (lambda: ref_leep(p, y), lambda x: S.leep(x, y), p),
        "nce": (lambda: ref_nce(p, y), lambda x: S.nce(x, y), p),
        "pactran": (lambda: ref_pactran(p, y), lambda x: S.pactran(x, y), p),
        "lfc": (lambda: ref_lfc(f[:n_small], y[:n_small]), lambda x: S.lfc(x[:n_small], y[:n_small]), f),
        "otce": (
            lambda: ref_otce(fs_small, ys_small, f[:n_ot], y[:n_ot]),
            lambda x: S.otce(fs_small, ys_small, x[:n_ot], y[:n_ot]),
            f,
        ),
    }
    rows = []
    print(
        f"part 1: one model, N={n} D={d} C={c} Cs={cs} (N-LEEP, LFC: N={n_small}; OTCE: N={min(n_small, 500)}); "
        f"repeats={repeats}",
        flush=True,
    )
    for name, (ref, ours, data) in cases.items():
        if args.only and name not in args.only:
            continue
        try:
            r = 1 if name in SLOW else repeats  # minutes per call at full size: one steady-state call
            ref_val, ref_t, _ = timed(ref, repeats=max(1, r - 1), block=False)
            v64, t64, c64 = timed(ours, jnp.asarray(data, jnp.float64), repeats=r)
            v32, t32, c32 = timed(ours, jnp.asarray(data, jnp.float32), repeats=r)
        except Exception as exc:  # a failed metric is recorded and the run goes on
            rows.append({"metric": name, "error": _device.error_text(exc)})
            _write(args, rows, None, n, d, c, cs, n_small, repeats, argv, devices, quiet=True)
            continue
        rel = abs(float(v64) - ref_val) / max(abs(ref_val), 1e-300)
        row = {
            "metric": name,
            "n": n_ot if name == "otce" else n_small if name in SMALL else n,
            "numpy_s": ref_t,
            "jax_f64_s": t64,
            "jax_f64_compile_s": c64,
            "jax_f32_s": t32,
            "jax_f32_compile_s": c32,
            "speedup_f64": ref_t / t64,
            "speedup_f32": ref_t / t32,
            "value_numpy": ref_val,
            "value_jax_f64": float(v64),
            "value_jax_f32": float(v32),
            "rel_diff_f64": rel,
        }
        rows.append(row)
        print(
            f"  {name:20s} numpy {ref_t:8.3f}s  jax f64 {t64:8.3f}s (x{ref_t / t64:5.2f}, compile {c64:5.2f}s)  "
            f"f32 {t32:8.3f}s (x{ref_t / t32:5.2f})  rel.diff {rel:.1e}",
            flush=True,
        )
        _write(args, rows, None, n, d, c, cs, n_small, repeats, argv, devices, quiet=True)  # cut-off runs keep rows

    if args.only:
        return _write(args, rows, None, n, d, c, cs, n_small, repeats, argv, devices)
    print(f"part 2: {bmodels} models, N={bn} D={bd} C={bc}, every metric in one score_all call", flush=True)
    rng = np.random.default_rng(1)
    bf, by, bp = make_task(1, bn, bd, bc, 50)
    mix = np.linspace(0.0, 1.0, bmodels)[:, None, None]
    feats = mix * bf[None] + (1 - mix) * rng.standard_normal((bmodels, bn, bd))
    probs = scipy.special.softmax(np.log(bp)[None] * mix + rng.standard_normal((bmodels, bn, 50)), axis=-1)
    src = feats[:, : bn // 2] + 0.1
    ys = np.arange(bn // 2) % 5

    def batched():
        return S.score_all(feats, by, probs=probs, source_features=src, source_labels=ys)

    def loop():
        out = {}
        for i in range(bmodels):
            for m in S.ALL_METRICS:
                if m in S.PROB_METRICS:
                    v = getattr(S, m)(probs[i], by)
                elif m == "otce":
                    v = S.otce(src[i], ys, feats[i], by)
                else:
                    v = getattr(S, m)(feats[i], by)
                out.setdefault(m, []).append(float(v))
        return out

    try:
        out_b, tb, cb = timed(batched, repeats=min(repeats, 2), block=False)
        out_l, tl, cl = timed(loop, repeats=min(repeats, 2), block=False)
        agree = max(
            float(np.max(np.abs(out_b[m] - np.asarray(out_l[m])) / (np.abs(out_l[m]) + 1e-12))) for m in S.ALL_METRICS
        )
        batch = {
            "models": bmodels,
            "n": bn,
            "d": bd,
            "c": bc,
            "metrics": list(S.ALL_METRICS),
            "score_all_s": tb,
            "score_all_compile_s": cb,
            "per_model_loop_s": tl,
            "loop_compile_s": cl,
            "speedup": tl / tb,
            "max_rel_diff": agree,
        }
        print(
            f"  score_all {tb:.3f}s (compile {cb:.2f}s) vs per-model loop {tl:.3f}s: x{tl / tb:.2f}; "
            f"max rel diff {agree:.1e}",
            flush=True,
        )
    except Exception as exc:  # recorded; part 1 is kept
        batch = {"models": bmodels, "n": bn, "d": bd, "c": bc, "error": _device.error_text(exc)}
    return _write(args, rows, batch, n, d, c, cs, n_small, repeats, argv, devices)


def _write(args, rows, batch, n, d, c, cs, n_small, repeats, argv, devices=None, quiet=False):
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join([os.path.relpath(__file__, Path.cwd()), *(argv or sys.argv[1:])]),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average_at_start": _LOAD_AT_START,
        "load_average_at_end": os.getloadavg(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "quick": args.quick,
        "repeats": repeats,
        "devices": devices,
    }
    result = {"meta": meta, "single_model": rows, "batched": batch}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or _device.default_stem("selection", quick=args.quick, gpu=jax.default_backend() == "gpu")
    if args.only and not args.name:
        name += "_" + "_".join(args.only)
    with atomic_path(out / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    md = [
        f"# Transferability metrics benchmark ({'quick' if args.quick else 'full'})",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['machine']} "
        f"(shared; 1-min load average {meta['load_average_at_start'][0]:.1f} at start, "
        f"{meta['load_average_at_end'][0]:.1f} at end), backend {meta['backend']}, "
        f"jax {meta['jax']}",
        f"- JAX device: {(devices or {}).get('jax_device_kind')} "
        f"({(devices or {}).get('jax_backend')}); NumPy references on the host CPU ({os.cpu_count()} CPUs)",
        f"- medians over {repeats} repeats after a compiling first call; ratios are "
        "NumPy reference time / JAX time measured in the same run",
        "",
        f"## One model: N={n}, D={d}, C={c}, Cs={cs} (N-LEEP and LFC at N={n_small}, OTCE at N={min(n_small, 500)})",
        "",
        "| metric | NumPy ref (s) | JAX f64 (s) | speed-up f64 | JAX f32 (s) | speed-up f32 | compile f64 (s) "
        "| rel. diff f64 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            md.append(f"| {r['metric']} | failed: {r['error'][:200]} | | | | | | |")
            continue
        md.append(
            f"| {r['metric']} | {r['numpy_s']:.3f} | {r['jax_f64_s']:.3f} | {r['speedup_f64']:.2f}x | "
            f"{r['jax_f32_s']:.3f} | {r['speedup_f32']:.2f}x | {r['jax_f64_compile_s']:.2f} | "
            f"{r['rel_diff_f64']:.1e} |"
        )
    if batch is not None and "error" in batch:
        md += ["", f"## {batch['models']} models, one `score_all` call: failed: {batch['error'][:300]}"]
    elif batch is not None:
        b = batch
        md += [
            "",
            f"## {b['models']} models, every metric, one `score_all` call (N={b['n']}, D={b['d']}, C={b['c']}, f64)",
            "",
            "| score_all (s) | compile (s) | per-model loop of the public functions (s) | speed-up | max rel. diff |",
            "|---|---|---|---|---|",
            f"| {b['score_all_s']:.3f} | {b['score_all_compile_s']:.2f} | {b['per_model_loop_s']:.3f} | "
            f"{b['speedup']:.2f}x | {b['max_rel_diff']:.1e} |",
        ]
    md += [
        "",
        "Rel. diff: NumPy reference vs ours. N-LEEP's reference uses scikit-learn's k-means initialisation, "
        "ours a seeded random one, so their values differ by the mixture found (both are valid N-LEEPs).",
        "",
    ]
    with atomic_path(out / f"{name}.md") as tmp:
        tmp.write_text("\n".join(md))
    if not quiet:
        print(f"wrote {out / name}.json and .md")


if __name__ == "__main__":
    main()

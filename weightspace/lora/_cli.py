"""``weightspace lora ...`` subcommands: ``size`` (DSiRe) and ``detune`` (Spectral DeTuning)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from weightspace._argtypes import positive_int
from weightspace._errors import LoadError
from weightspace._safetensors import write_safetensors
from weightspace.lora._dsire import dsire_votes, fit_dsire, lora_features, vote
from weightspace.lora._io import LORA_ZOO_FORMAT, WISE_FORMAT, _header, load_lora_rows, read_lora_stack


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    lora = sub.add_parser("lora", help="LoRA forensics: dataset size recovery, pre-fine-tuning weight recovery")
    lsub = lora.add_subparsers(dest="lora_command", metavar="SUBCOMMAND")

    size = lsub.add_parser("size", help="predict the fine-tuning dataset size of LoRAs (DSiRe)")
    size.add_argument(
        "inputs",
        nargs="+",
        metavar="ZOO_OR_FILES",
        help="a LoRA-WiSE rows file (.safetensors/.npz), a LoRA zoo file, or LoRA adapter files",
    )
    size.add_argument(
        "--reference",
        required=True,
        metavar="REF",
        help="LoRA-WiSE rows (or LoRA zoo) file of reference LoRAs with known sizes (same layers, rank)",
    )
    size.add_argument("--top-k", type=positive_int, default=None, help="singular values per tensor (default: the rank)")
    size.add_argument("--json", action="store_true", help="print machine-readable JSON")
    size.set_defaults(func=_size)

    det = lsub.add_parser("detune", help="recover pre-fine-tuning weights from LoRA fine-tunes (Spectral DeTuning)")
    det.add_argument(
        "inputs",
        nargs="+",
        metavar="LORA_FILES",
        help="safetensors files of fine-tuned models (LoRA merged in), all with the same tensors",
    )
    det.add_argument("--rank", type=positive_int, required=True, help="the LoRA rank (final rank of the scheduler)")
    det.add_argument("--out", required=True, metavar="BASE.safetensors", help="where to write the recovered weights")
    det.add_argument("--iters", type=positive_int, default=300, help="iterations (default 300)")
    det.add_argument("--svd", default="auto", choices=["auto", "full", "randomized"])
    det.add_argument("--json", action="store_true", help="print the report as JSON")
    det.set_defaults(func=_detune)
    lora.set_defaults(func=lambda a: lora.print_help() or 0)


def _is_rows(path: Path) -> bool:
    if path.suffix == ".npz":
        return True
    return _header(path)[1].get("weightspace") in (WISE_FORMAT, LORA_ZOO_FORMAT)


def _size(args: argparse.Namespace) -> int:
    ref = load_lora_rows(args.reference)
    paths = [Path(p) for p in args.inputs]
    if len(paths) == 1 and _is_rows(paths[0]):
        rows = load_lora_rows(paths[0])
        adapter, ids = rows.adapter, [f"{paths[0].stem}[{i}]" for i in range(len(rows))]
    else:
        adapter, ids = read_lora_stack(paths), [p.stem for p in paths]
    missing = sorted(set(ref.adapter) ^ set(adapter))
    if missing:
        raise LoadError(f"the queries and the reference adapt different layers: {missing[:6]}")
    adapter = {k: adapter[k] for k in ref.adapter}
    ref_f = lora_features(ref.adapter, top_k=args.top_k)
    q_f = lora_features(adapter, top_k=ref_f.values.shape[-1])
    model = fit_dsire(ref_f, ref.labels)
    votes = dsire_votes(model, q_f)
    pred = vote(votes)
    out = [
        {"id": i, "size": int(p), "agreement": float((v == p).mean())} for i, p, v in zip(ids, pred, votes, strict=True)
    ]
    if args.json:
        print(
            json.dumps({"reference": str(args.reference), "reference_models": len(ref), "predictions": out}, indent=2)
        )
    else:
        for row in out:
            print(f"{row['id']}\tsize={row['size']}\tvotes={row['agreement']:.0%}")
    return 0


def _read_model(path: Path) -> dict[str, np.ndarray]:
    from weightspace.zoo import load_tensors

    names, _ = _header(path)
    return {k: v[0] for k, v in load_tensors([path], names, workers=4).items()}


def _detune(args: argparse.Namespace) -> int:
    from weightspace.lora._detune import detune_model

    paths = [Path(p) for p in args.inputs]
    if len(paths) < 2:
        raise LoadError("detune needs at least two fine-tuned model files")
    finetunes = [_read_model(p) for p in paths]
    params, report = detune_model(finetunes, rank=args.rank, n_iters=args.iters, svd=args.svd)
    meta: dict[str, Any] = {
        "weightspace": "detuned/1",
        "sources": [str(p) for p in paths],
        "rank": args.rank,
        "iters": args.iters,
    }
    write_safetensors(args.out, params, {k: json.dumps(v) for k, v in meta.items()})
    summary = {
        "out": str(args.out),
        "recovered": sorted(report["layers"]),
        "copied": report["copied"],
        "averaged": report["averaged"],
        "warnings": report["warnings"],
        "layers": report["layers"],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"wrote {args.out}: {len(report['layers'])} tensors recovered, {len(report['copied'])} copied, "
            f"{len(report['averaged'])} averaged"
        )
        for w in report["warnings"]:
            print(f"warning: {w}")
    return 0

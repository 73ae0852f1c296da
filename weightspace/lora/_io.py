"""LoRA files: PEFT and diffusers/kohya safetensors, LoWRA-Bench rows and LoRA-WiSE rows.

Namings read (``MOD`` is the adapted module; the adapter is keyed by ``MOD.weight``):

* PEFT: ``MOD.lora_A[.NAME].weight`` / ``MOD.lora_B[.NAME].weight`` (prefix
  ``base_model.model.`` stripped); alpha from the header written by :func:`save_lora`, else
  ``lora_alpha``/``alpha_pattern`` of an ``adapter_config.json`` next to the file.
* kohya: ``MOD.lora_down.weight`` / ``MOD.lora_up.weight`` and the scalar ``MOD.alpha``.
* diffusers (attention processors): ``MOD.lora.down.weight`` / ``MOD.lora.up.weight`` and
  ``MOD_lora.down.weight`` / ``MOD_lora.up.weight``.

Without any alpha the scaling is 1 (``alpha = r``), kohya's convention. Conv adapters
(``down [r, in, kh, kw]``, ``up [out, r, 1, 1]``) are flattened to ``[r, in*kh*kw]``/``[out, r]``.

Row files. The public benchmarks ship Hugging Face datasets (parquet); no parquet reader is a
dependency here, so the same rows are stored in safetensors, one tensor per (row, column) or
per column stacked over rows, with the scalar columns in the JSON header:

* LoWRA-Bench (``weightspace: "lowra-rows/1"``): per layer row ``r``, tensors
  ``{r}.pre_ft_weight`` and ``{r}.lora_{i}_A_weight``/``{r}.lora_{i}_B_weight``; header ``rows``:
  ``[{layer_model, layer_name, pre_ft_name, lora_{i}_name, lora_{i}_rank, lora_{i}_alpha}, ...]``.
* LoRA-WiSE (``weightspace: "lora-wise/1"``): one column per LoRA tensor (any naming above),
  stacked ``[rows, ...]``; header ``label`` (dataset sizes) and ``name`` (concepts) lists. The same
  columns in an ``.npz`` file (``label`` int array, ``name`` string array) are read too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from weightspace._errors import ConfigError, LoadError, ShapeError
from weightspace._safetensors import write_safetensors
from weightspace.lora._lora import Adapter, LoRA
from weightspace.zoo import load_tensors

LORA_FORMAT = "lora/1"
LOWRA_FORMAT = "lowra-rows/1"
WISE_FORMAT = "lora-wise/1"
LORA_ZOO_FORMAT = "lora-zoo/1"
NAMINGS = ("peft", "kohya")
_PATTERNS = [
    (re.compile(r"^(?P<mod>.+)\.lora_(?P<part>[AB])(?:\.[A-Za-z0-9_\-]+)?\.weight$"), {"A": "A", "B": "B"}),
    (re.compile(r"^(?P<mod>.+)\.lora_(?P<part>down|up)\.weight$"), {"down": "A", "up": "B"}),
    (re.compile(r"^(?P<mod>.+?)[._]lora\.(?P<part>down|up)\.weight$"), {"down": "A", "up": "B"}),
]
_ALPHA = re.compile(r"^(?P<mod>.+)\.alpha$")
_PEFT_PREFIX = "base_model.model."


def _header(path: Path) -> tuple[list[str], dict[str, str]]:
    if not path.exists():
        raise LoadError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="np") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise LoadError(f"{path}: not a readable safetensors file ({e})") from e


def parse_lora_names(names: Sequence[str], *, where: str = "state_dict") -> dict[str, dict[str, str]]:
    """Group tensor names into adapters: ``module -> {"A": name, "B": name[, "alpha": name]}``.

    Raises :class:`~weightspace.LoadError` when no LoRA tensor is found or an adapter lacks its
    A or B half.

    Example:
        >>> from weightspace.lora import parse_lora_names
        >>> parse_lora_names(["base_model.model.q.lora_A.weight", "base_model.model.q.lora_B.weight"])
        {'q': {'A': 'base_model.model.q.lora_A.weight', 'B': 'base_model.model.q.lora_B.weight'}}
    """
    groups: dict[str, dict[str, str]] = {}
    for name in names:
        for pat, parts in _PATTERNS:
            mt = pat.match(name)
            if mt:
                mod = mt.group("mod").removeprefix(_PEFT_PREFIX)
                half = parts[mt.group("part")]
                if half in groups.setdefault(mod, {}):
                    raise LoadError(
                        f"{where}: two tensors give the {half} half of {mod!r}: {groups[mod][half]!r} and {name!r}"
                    )
                groups[mod][half] = name
                break
    for name in names:
        mt = _ALPHA.match(name)
        if mt and mt.group("mod").removeprefix(_PEFT_PREFIX) in groups:
            groups[mt.group("mod").removeprefix(_PEFT_PREFIX)]["alpha"] = name
    if not groups:
        raise LoadError(
            f"{where}: no LoRA tensors (expected names like '*.lora_A.weight', '*.lora_down.weight' or "
            f"'*.lora.down.weight'; found {list(names)[:6]}...)"
        )
    for mod, g in groups.items():
        if "A" not in g or "B" not in g:
            have = "A (down)" if "A" in g else "B (up)"
            raise LoadError(f"{where}: adapter {mod!r} has only its {have} tensor {next(iter(g.values()))!r}")
    return groups


def _flatten_pair(a: np.ndarray, b: np.ndarray, mod: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``A [.., r, in(, kh, kw)]`` and ``B [.., out, r(, 1, 1)]`` -> ``[.., r, d_in]``, ``[.., out, r]``."""
    lead = a.ndim - 2 if a.ndim in (2, 3) else a.ndim - 4
    if a.ndim - lead == 4:
        a = a.reshape(*a.shape[: lead + 1], -1)
    if b.ndim - lead == 4:
        if b.shape[-2:] != (1, 1):
            raise ShapeError(
                f"{where}: {mod!r} up/B tensor has shape {list(b.shape)}; a conv LoRA up must be [out, r, 1, 1]"
            )
        b = b.reshape(b.shape[:-2])
    if a.ndim != lead + 2 or b.ndim != lead + 2:
        raise ShapeError(
            f"{where}: {mod!r} has A{list(a.shape)} and B{list(b.shape)}; expected A [r, d_in] and "
            "B [d_out, r] (or conv [r, in, kh, kw] / [out, r, 1, 1])"
        )
    if a.shape[-2] != b.shape[-1]:
        raise ShapeError(
            f"{where}: {mod!r}: rank mismatch: A (down) has rank {a.shape[-2]} (shape {list(a.shape)}) "
            f"but B (up) has rank {b.shape[-1]} (shape {list(b.shape)})"
        )
    return a, b


def _config_alpha(path: Path) -> tuple[float | None, dict[str, float]]:
    cfg = path.parent / "adapter_config.json"
    if not cfg.exists():
        return None, {}
    try:
        data = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise LoadError(f"{cfg}: not valid JSON ({e})") from e
    alpha = data.get("lora_alpha")
    return (float(alpha) if alpha is not None else None), {
        k: float(v) for k, v in (data.get("alpha_pattern") or {}).items()
    }


def _adapters_from(
    tensors: Mapping[str, np.ndarray], groups: Mapping[str, Mapping[str, str]], alphas: Any, where: str
) -> Adapter:
    out: Adapter = {}
    for mod, g in groups.items():
        a, b = _flatten_pair(np.asarray(tensors[g["A"]]), np.asarray(tensors[g["B"]]), mod, where)
        alpha = alphas(mod, g, a.shape[:-2])
        out[f"{mod}.weight"] = LoRA.of(a, b, alpha, name=f"{where}: {mod}")
    return out


def read_lora(path: str | os.PathLike[str], *, alpha: float | None = None) -> Adapter:
    """Read one LoRA adapter file (PEFT, kohya or diffusers naming; see module docs).

    Args:
        path: a ``.safetensors`` file (never a pickle).
        alpha: override every adapter's alpha (else: ``.alpha`` tensors, the weightspace header,
            ``adapter_config.json``, or ``r``).

    Returns:
        ``"{module}.weight" -> LoRA``.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from weightspace.lora import LoRA, read_lora, save_lora
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.safetensors"
        >>> _ = save_lora(p, {"q.weight": LoRA.of(np.ones((2, 6)), np.ones((4, 2)), alpha=8.0)}, naming="kohya")
        >>> lo = read_lora(p)["q.weight"]
        >>> lo.rank, float(lo.alpha)
        (2, 8.0)
    """
    file = Path(path)
    names, meta = _header(file)
    groups = parse_lora_names(names, where=str(file))
    wanted = [n for g in groups.values() for n in g.values()]
    tensors = {k: v[0] for k, v in load_tensors([file], wanted, workers=1).items()}
    header_alpha = json.loads(meta["alpha"]) if meta.get("weightspace") == LORA_FORMAT and "alpha" in meta else {}
    cfg_alpha, pattern = _config_alpha(file)

    def alphas(mod: str, g: Mapping[str, str], batch: tuple[int, ...]) -> Any:
        if alpha is not None:
            return alpha
        if "alpha" in g:
            return (
                np.asarray(tensors[g["alpha"]], np.float32).reshape(batch)
                if batch
                else float(np.asarray(tensors[g["alpha"]]).reshape(-1)[0])
            )
        if f"{mod}.weight" in header_alpha:
            return header_alpha[f"{mod}.weight"]
        for pat, v in pattern.items():
            if mod == pat or mod.endswith("." + pat):
                return v
        return cfg_alpha

    return _adapters_from(tensors, groups, alphas, str(file))


def read_lora_stack(files: Sequence[str | os.PathLike[str]], *, alpha: float | None = None) -> Adapter:
    """Read many adapter files with the same layout into one adapter stacked on a model axis.

    Only the LoRA tensors are read, in parallel (:func:`weightspace.zoo.load_tensors`); files whose
    ranks or shapes differ from the first file's raise :class:`~weightspace.ShapeError` naming both.
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise LoadError("read_lora_stack: no files given")
    names, _ = _header(paths[0])
    groups = parse_lora_names(names, where=str(paths[0]))
    wanted = [n for g in groups.values() for n in g.values()]
    stacked = load_tensors(paths, wanted)
    per_file_alpha = []
    for f in paths:
        _, m = _header(f)
        per_file_alpha.append(json.loads(m["alpha"]) if m.get("weightspace") == LORA_FORMAT and "alpha" in m else {})
    cfg_alpha, _ = _config_alpha(paths[0])

    def alphas(mod: str, g: Mapping[str, str], batch: tuple[int, ...]) -> Any:
        if alpha is not None:
            return alpha
        if "alpha" in g:
            return np.asarray(stacked[g["alpha"]], np.float32).reshape(batch)
        vals = [h.get(f"{mod}.weight", cfg_alpha) for h in per_file_alpha]
        if all(v is None for v in vals):
            return None
        if any(v is None for v in vals):
            bad = [str(f) for f, v in zip(paths, vals, strict=True) if v is None][:3]
            raise LoadError(f"adapter {mod!r}: files {bad} give no alpha but others do; pass alpha=")
        return np.asarray(vals, np.float32)

    return _adapters_from(stacked, groups, alphas, f"{paths[0]} (+{len(paths) - 1} files)")


def save_lora(
    path: str | os.PathLike[str],
    adapter: Mapping[str, LoRA],
    *,
    naming: str = "peft",
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write one adapter as safetensors (atomic), in PEFT or kohya naming.

    PEFT files get ``base_model.model.MOD.lora_A.weight``/``lora_B``; kohya files
    ``MOD.lora_down.weight``/``lora_up`` and ``MOD.alpha``. Both carry the alphas in the header
    (``{"weightspace": "lora/1", "alpha": {...}}``), so :func:`read_lora` round-trips them.
    """
    if naming not in NAMINGS:
        raise ConfigError(f"naming must be one of {NAMINGS}, got {naming!r}")
    tensors: dict[str, np.ndarray] = {}
    alphas: dict[str, float] = {}
    for key, lo in adapter.items():
        if lo.batch_shape:
            raise ShapeError(
                f"save_lora writes one model's adapter; {key!r} is stacked {list(lo.batch_shape)} "
                "(index it first: adapter[k][i])"
            )
        mod = key.removesuffix(".weight")
        a, b = np.asarray(lo.A), np.asarray(lo.B)
        alphas[key] = float(np.asarray(lo.alpha))
        if naming == "peft":
            tensors[f"{_PEFT_PREFIX}{mod}.lora_A.weight"] = a
            tensors[f"{_PEFT_PREFIX}{mod}.lora_B.weight"] = b
        else:
            tensors[f"{mod}.lora_down.weight"] = a
            tensors[f"{mod}.lora_up.weight"] = b
            tensors[f"{mod}.alpha"] = np.asarray(lo.alpha, np.float32).reshape(())
    meta = {"weightspace": LORA_FORMAT, "alpha": json.dumps(alphas), **dict(metadata or {})}
    path = Path(path)
    write_safetensors(path, tensors, meta)
    return path


# ---- LoWRA-Bench rows -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LowraRow:
    """One LoWRA-Bench row: a layer's pre-fine-tuning weight and ``K`` LoRAs of it.

    Attributes:
        layer_model, layer_name, pre_ft_name: identification columns.
        pre_ft_weight: ``[d_out, d_in]``.
        loras: ``K`` adapters (each ``LoRA`` carries its rank and alpha).
        lora_names: the ``lora_{i}_name`` column.
    """

    layer_model: str
    layer_name: str
    pre_ft_name: str
    pre_ft_weight: np.ndarray
    loras: tuple[LoRA, ...]
    lora_names: tuple[str, ...]

    def finetuned(self, lora_ids: Sequence[int] | None = None) -> np.ndarray:
        """The merged fine-tuned weights ``W + (alpha / r) B A`` of the chosen LoRAs ``[K, d_out, d_in]``."""
        ids = range(len(self.loras)) if lora_ids is None else lora_ids
        w = self.pre_ft_weight.astype(np.float32)
        return np.stack([w + np.asarray(self.loras[i].delta(), np.float32) for i in ids])


def save_lowra_rows(path: str | os.PathLike[str], rows: Sequence[LowraRow]) -> Path:
    """Write LoWRA-Bench-style rows to one safetensors file (layout in the module docs)."""
    tensors: dict[str, np.ndarray] = {}
    scalars = []
    for r, row in enumerate(rows):
        tensors[f"{r}.pre_ft_weight"] = np.asarray(row.pre_ft_weight)
        cols: dict[str, Any] = {
            "layer_model": row.layer_model,
            "layer_name": row.layer_name,
            "pre_ft_name": row.pre_ft_name,
        }
        for i, lo in enumerate(row.loras):
            tensors[f"{r}.lora_{i}_A_weight"] = np.asarray(lo.A)
            tensors[f"{r}.lora_{i}_B_weight"] = np.asarray(lo.B)
            cols[f"lora_{i}_rank"] = lo.rank
            cols[f"lora_{i}_alpha"] = float(np.asarray(lo.alpha))
            cols[f"lora_{i}_name"] = row.lora_names[i] if i < len(row.lora_names) else f"lora_{i}"
        scalars.append(cols)
    path = Path(path)
    write_safetensors(path, tensors, {"weightspace": LOWRA_FORMAT, "rows": json.dumps(scalars)})
    return path


def load_lowra_rows(path: str | os.PathLike[str]) -> list[LowraRow]:
    """Read LoWRA-Bench-style rows (a file, or a directory of such files in name order).

    Checks every LoRA against its row: the ``lora_{i}_rank`` column must equal the rank of
    ``A``/``B`` and ``B A`` must have the pre-fine-tuning weight's shape.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise LoadError(f"{path}: no .safetensors row files")
        return [row for f in files for row in load_lowra_rows(f)]
    names, meta = _header(path)
    if meta.get("weightspace") != LOWRA_FORMAT or "rows" not in meta:
        raise LoadError(
            f"{path}: not a LoWRA-Bench rows file (header 'weightspace' is "
            f"{meta.get('weightspace')!r}, expected {LOWRA_FORMAT!r})"
        )
    try:
        scalars = json.loads(meta["rows"])
    except json.JSONDecodeError as e:
        raise LoadError(f"{path}: 'rows' header is not valid JSON ({e})") from e
    tensors = {k: v[0] for k, v in load_tensors([path], names, workers=1).items()}
    rows = []
    for r, cols in enumerate(scalars):
        where = f"{path} row {r}"
        w = tensors.get(f"{r}.pre_ft_weight")
        if w is None:
            raise LoadError(f"{where}: missing tensor '{r}.pre_ft_weight'")
        ids = sorted(int(m.group(1)) for k in cols if (m := re.match(r"lora_(\d+)_rank$", k)))
        loras, lnames = [], []
        for i in ids:
            a, b = tensors.get(f"{r}.lora_{i}_A_weight"), tensors.get(f"{r}.lora_{i}_B_weight")
            if a is None or b is None:
                raise LoadError(f"{where}: LoRA {i} lacks its A or B tensor")
            a, b = _flatten_pair(a, b, f"lora_{i}", where)
            if a.shape[0] != int(cols[f"lora_{i}_rank"]):
                raise ShapeError(
                    f"{where}: lora_{i}_rank column says {cols[f'lora_{i}_rank']} but A has rank "
                    f"{a.shape[0]} (shape {list(a.shape)})"
                )
            if (b.shape[0], a.shape[1]) != (w.shape[0], int(np.prod(w.shape[1:]))):
                raise ShapeError(
                    f"{where}: LoRA {i} updates a [{b.shape[0]}, {a.shape[1]}] weight but "
                    f"pre_ft_weight is {list(w.shape)}"
                )
            loras.append(LoRA.of(a, b, cols.get(f"lora_{i}_alpha"), name=f"{where} lora {i}"))
            lnames.append(str(cols.get(f"lora_{i}_name", f"lora_{i}")))
        rows.append(
            LowraRow(
                str(cols.get("layer_model", "")),
                str(cols.get("layer_name", "")),
                str(cols.get("pre_ft_name", "")),
                w.reshape(w.shape[0], -1),
                tuple(loras),
                tuple(lnames),
            )
        )
    return rows


# ---- LoRA-WiSE rows ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LoraRows:
    """LoRA fine-tunes as rows: a stacked adapter plus per-row label (dataset size) and concept."""

    adapter: Adapter
    labels: np.ndarray
    concepts: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def save_lora_rows(path: str | os.PathLike[str], rows: LoraRows, *, naming: str = "kohya") -> Path:
    """Write LoRA-WiSE-style rows (one column per LoRA tensor, stacked over rows) to safetensors."""
    if naming not in NAMINGS:
        raise ConfigError(f"naming must be one of {NAMINGS}, got {naming!r}")
    tensors: dict[str, np.ndarray] = {}
    for key, lo in rows.adapter.items():
        mod = key.removesuffix(".weight")
        sa, sb = ("lora_A.weight", "lora_B.weight") if naming == "peft" else ("lora_down.weight", "lora_up.weight")
        tensors[f"{mod}.{sa}"] = np.asarray(lo.A)
        tensors[f"{mod}.{sb}"] = np.asarray(lo.B)
        tensors[f"{mod}.alpha"] = np.asarray(lo.alpha, np.float32)
    meta = {
        "weightspace": WISE_FORMAT,
        "label": json.dumps(np.asarray(rows.labels).tolist()),
        "name": json.dumps(list(rows.concepts)),
    }
    path = Path(path)
    write_safetensors(path, tensors, meta)
    return path


def load_lora_rows(path: str | os.PathLike[str]) -> LoraRows:
    """Read LoRA-WiSE-style rows from ``.safetensors`` or ``.npz`` (layout in the module docs)."""
    path = Path(path)
    if path.suffix == ".npz":
        if not path.exists():
            raise LoadError(f"{path}: no such file")
        try:
            with np.load(path, allow_pickle=False) as z:
                cols = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise LoadError(f"{path}: not a readable .npz file without pickles ({e})") from e
        for need in ("label", "name"):
            if need not in cols:
                raise LoadError(f"{path}: missing column {need!r} (has {sorted(cols)[:8]})")
        labels, concepts = cols.pop("label"), [str(x) for x in cols.pop("name")]
        tensors = cols
        names = list(cols)
    else:
        names, meta = _header(path)
        try:
            if meta.get("weightspace") == LORA_ZOO_FORMAT:  # a LoRA zoo: rows are its models
                cols = json.loads(meta["meta"])
                labels, concepts = np.asarray(cols["n_images"]), cols["concept"]
                names = [n for n in names if not n.startswith("base.")]
            elif meta.get("weightspace") == WISE_FORMAT:
                labels, concepts = np.asarray(json.loads(meta["label"])), json.loads(meta["name"])
            else:
                raise LoadError(
                    f"{path}: not a LoRA-WiSE rows file (header 'weightspace' is "
                    f"{meta.get('weightspace')!r}, expected {WISE_FORMAT!r})"
                )
        except (KeyError, json.JSONDecodeError) as e:
            raise LoadError(f"{path}: header lacks valid label/name columns ({e})") from e
        tensors = {k: v[0] for k, v in load_tensors([path], names, workers=1).items()}
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.number):
        raise ShapeError(f"{path}: 'label' must be a 1-D numeric column, got {labels.dtype}{list(labels.shape)}")
    if len(concepts) != len(labels):
        raise ShapeError(f"{path}: {len(labels)} labels but {len(concepts)} names")
    groups = parse_lora_names(names, where=str(path))
    for g in groups.values():
        for half in ("A", "B"):
            if tensors[g[half]].shape[0] != len(labels):
                raise ShapeError(
                    f"{path}: column {g[half]!r} has {tensors[g[half]].shape[0]} rows, labels have {len(labels)}"
                )

    def alphas(mod: str, g: Mapping[str, str], batch: tuple[int, ...]) -> Any:
        return np.asarray(tensors[g["alpha"]], np.float32).reshape(batch) if "alpha" in g else None

    adapter = _adapters_from(tensors, groups, alphas, str(path))
    return LoraRows(adapter, labels, tuple(concepts))

"""Shared device helpers of the benchmark scripts: which JAX backend and PyTorch device ran, and where results go.

The scripts import it as a sibling module (``python benchmarks/x.py`` puts ``benchmarks/`` on ``sys.path``).
JAX's backend is always initialised BEFORE torch is imported: both bring CUDA libraries, and the
first one loaded wins, so JAX gets the libraries it was built against.

    >>> import _device
    >>> _device.resolve_torch_device("cpu")
    'cpu'
    >>> _device.default_stem("training", quick=True, gpu=False)
    'training_quick'
    >>> _device.default_stem("probing", quick=False, gpu=True)
    'probing_gpu'
"""

from __future__ import annotations

import os
import platform
import traceback
from pathlib import Path
from typing import Any

TORCH_DEVICES = ("auto", "cpu", "cuda")


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def jax_info() -> dict[str, Any]:
    """JAX version, backend, device kind and count (initialises the backend)."""
    import jax

    dev = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_device_kind": dev.device_kind,
        "jax_devices": jax.device_count(),
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
    }


def is_gpu() -> bool:
    """True when JAX runs on a GPU."""
    import jax

    return jax.default_backend() == "gpu"


def resolve_torch_device(choice: str) -> str:
    """``"cpu"`` or ``"cuda"`` for ``--torch-device`` (``auto``: cuda when torch sees one and JAX runs on a GPU).

    Raises ``SystemExit`` when ``cuda`` is asked for and PyTorch has no CUDA device.
    """
    if choice not in TORCH_DEVICES:
        raise SystemExit(f"--torch-device must be one of {TORCH_DEVICES}, got {choice!r}")
    if choice == "cpu":
        return "cpu"
    gpu = is_gpu()  # JAX first (see the module docstring)
    try:
        import torch
    except ImportError:
        if choice == "cuda":
            raise SystemExit("--torch-device cuda: torch is not installed") from None
        return "cpu"
    cuda = torch.cuda.is_available()
    if choice == "cuda":
        if not cuda:
            raise SystemExit("--torch-device cuda: torch.cuda.is_available() is False")
        return "cuda"
    return "cuda" if cuda and gpu else "cpu"


def torch_info(device: str, threads: int | None = None) -> dict[str, Any]:
    """PyTorch version, device, device name and the float32 matmul settings that matter on a GPU."""
    try:
        import torch
    except ImportError:
        return {"torch": None, "torch_device": None, "torch_device_name": None}
    info: dict[str, Any] = {"torch": torch.__version__, "torch_device": device}
    if device == "cuda":
        info["torch_device_name"] = torch.cuda.get_device_name()
        info["torch_cuda"] = torch.version.cuda
        info["torch_tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
        info["torch_tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
        info["torch_float32_matmul_precision"] = torch.get_float32_matmul_precision()
    else:
        info["torch_device_name"] = cpu_name()
        info["torch_threads"] = threads if threads is not None else torch.get_num_threads()
    return info


PRECISIONS = ("default", "highest")


def add_torch_device_argument(ap: Any, *, reference: str = "the PyTorch loop") -> None:
    """``--torch-device {auto,cpu,cuda}`` on an ``argparse`` parser (the same flag in every benchmark)."""
    ap.add_argument(
        "--torch-device",
        default="auto",
        choices=TORCH_DEVICES,
        help=f"where {reference} runs (auto: cuda when torch and JAX both see a GPU)",
    )


def add_matmul_precision_argument(ap: Any, *, default: str = "default") -> None:
    """``--matmul-precision {default,highest}`` on an ``argparse`` parser (the same flag in every benchmark)."""
    ap.add_argument(
        "--matmul-precision",
        default=default,
        choices=PRECISIONS,
        help=f"float32 matmul/conv precision of both sides (default {default}; default: JAX's own, TF32 "
        "for PyTorch on CUDA too; highest: full float32, as reference implementations run)",
    )


def set_matmul_precision(precision: str, device: str) -> None:
    """Give JAX and PyTorch the same float32 matmul/conv precision.

    ``default``: JAX's default (TF32 tensor cores on recent NVIDIA GPUs, full float32 on the CPU) and,
    on CUDA, PyTorch's TF32 too (``set_float32_matmul_precision("high")``, cuDNN TF32), so both
    sides take the same shortcut. ``highest``: full float32 on both sides. Call before any JAX
    program is compiled.
    """
    if precision not in PRECISIONS:
        raise SystemExit(f"--matmul-precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "highest":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
    if device == "cuda":
        import torch

        torch.set_float32_matmul_precision("high" if precision == "default" else "highest")
        torch.backends.cudnn.allow_tf32 = precision == "default"


def sync(device: str) -> None:
    """Wait for queued CUDA work (no-op on the CPU): call before reading the clock."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def default_stem(base: str, *, quick: bool, gpu: bool) -> str:
    """Results stem: ``base`` + ``_gpu`` on a GPU backend + ``_quick`` for smoke runs."""
    return base + ("_gpu" if gpu else "") + ("_quick" if quick else "")


def describe(info: dict[str, Any]) -> str:
    """One markdown-ready line naming the JAX backend/device and the PyTorch device."""
    jax_part = (
        f"JAX {info.get('jax')} on {info.get('jax_backend')} ({info.get('jax_device_kind')}, "
        f"{info.get('jax_devices')} device(s), matmul precision {info.get('jax_default_matmul_precision')})"
    )
    if info.get("torch") is None:
        return jax_part
    torch_part = f"torch {info['torch']} on {info['torch_device']} ({info.get('torch_device_name')}"
    if info.get("torch_device") == "cuda":
        torch_part += (
            f", CUDA {info.get('torch_cuda')}, float32 matmul precision "
            f"{info.get('torch_float32_matmul_precision')}, cuDNN TF32 {info.get('torch_tf32_cudnn')})"
        )
    else:
        torch_part += f", {info.get('torch_threads')} thread(s))"
    return f"{jax_part}; {torch_part}"


def error_text(exc: BaseException) -> str:
    """Print the traceback of a failed case and return a one-line summary for the results."""
    traceback.print_exc()
    return f"{type(exc).__name__}: {exc}"[:2000]


def loadavg() -> float:
    """The 1-minute load average (0.0 where unavailable)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def run_header(name: str, script: str, argv: list[str] | None) -> dict:
    """The fields every results JSON starts with: name, UTC date, CPU, cores, load, the command."""
    import datetime
    import os
    import sys

    return {
        "name": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "load": loadavg(),
        "command": f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:]),
    }

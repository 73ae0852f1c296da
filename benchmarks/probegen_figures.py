"""Pictures of learned probes next to fixed probes, from the probe files benchmarks/probegen_tasks.py saves.

    python benchmarks/probegen_figures.py --inr benchmarks/results/probegen_mnist_inr_probes \
        --images benchmarks/results/probegen_cnn_zoo_probes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"
ORDER = (
    "probegen",
    "probegen-nonlinear",
    "probegen-unbounded",
    "vanilla-probes",
    "fixed-uniform",
    "fixed-grid",
    "fixed-dead-leaves",
    "fixed-natural",
    "fixed-fashion-mnist",
)


def _load(directory: Path) -> list[tuple[str, np.ndarray]]:
    """``(method, probes)`` in :data:`ORDER` from ``{recipe}-{method}.npz`` files."""
    by_method = {}
    for p in sorted(directory.glob("*.npz")):
        m = max((m for m in ORDER if p.stem.endswith("-" + m)), key=len, default=None)
        if m is not None:
            by_method[m] = np.load(p)["probes"]
    return [(m, by_method[m]) for m in ORDER if m in by_method]


def inr_figure(directory: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = _load(directory)
    fig, axes = plt.subplots(1, len(sets), figsize=(2.6 * len(sets), 2.8))
    for ax, (name, p) in zip(np.atleast_1d(axes), sets, strict=True):
        ax.scatter(p[:, 1], -p[:, 0], s=9, c=np.arange(len(p)), cmap="viridis")
        ax.add_patch(plt.Rectangle((-1, -1), 2, 2, fill=False, ls="--", lw=0.8, color="gray"))
        lim = max(1.05, float(np.abs(p).max()) * 1.05)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle("INR probes: 64 (x, y) coordinates (dashed: the image domain [-1, 1]^2)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def image_figure(directory: Path, out: Path, per_row: int = 8) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = _load(directory)
    fig, axes = plt.subplots(len(sets), per_row, figsize=(per_row * 1.0, len(sets) * 1.15))
    for r, (name, p) in enumerate(sets):
        for c in range(per_row):
            ax = axes[r, c]
            ax.imshow(p[c, ..., 0], cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("Image probes (first 8 of 64), 28x28 in [0, 1]", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inr", type=Path, default=None, help="directory of INR probe .npz files")
    ap.add_argument("--images", type=Path, default=None, help="directory of image probe .npz files")
    args = ap.parse_args(argv)
    FIGURES.mkdir(parents=True, exist_ok=True)
    if args.inr:
        print("wrote", inr_figure(args.inr, FIGURES / "probegen_inr_probes.png"))
    if args.images:
        print("wrote", image_figure(args.images, FIGURES / "probegen_image_probes.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Draw a grid of every probe kind of ``weightspace.data`` (the figure in docs/data.md).

Usage:
    .venv/bin/python examples/plot_probe_sets.py [--out docs/figures/probe_sets.png] [--n 10] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: this script only writes a file
import matplotlib.pyplot as plt

from weightspace._atomic import atomic_path
from weightspace.data import make_probes

ROWS = [  # (kind, shape, row title)
    ("natural", (64, 64, 3), "natural (RGB)"),
    ("natural", (64, 64, 1), "natural (gray)"),
    ("dead-leaves", (64, 64, 3), "dead leaves (RGB)"),
    ("dead-leaves", (64, 64, 1), "dead leaves (gray)"),
    ("uniform", (28, 28, 1), "uniform"),
    ("fashion-mnist", (28, 28, 1), "fashion-mnist"),
    ("mnist-5k", (28, 28, 1), "mnist-5k"),
    ("digits", (8, 8, 1), "digits (8x8)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures/probe_sets.png"))
    parser.add_argument("--n", type=int, default=10, help="probes per row")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    fig, axes = plt.subplots(len(ROWS), args.n, figsize=(1.2 * args.n + 1.6, 1.3 * len(ROWS)), squeeze=False)
    for row, (kind, shape, title) in enumerate(ROWS):
        probes = make_probes(kind, args.n, seed=args.seed, shape=shape)
        for col in range(args.n):
            ax = axes[row, col]
            image = probes.data[col]
            if shape[2] == 1:
                ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if probes.labels is not None:
                ax.set_title(probes.label_names[probes.labels[col]], fontsize=7, pad=2)
        axes[row, 0].set_ylabel(f"{title}\n{shape[0]}x{shape[1]}x{shape[2]}", fontsize=8)
    fig.suptitle(f"weightspace.data.make_probes(kind, n={args.n}, seed={args.seed}, shape=...)", fontsize=10)
    fig.tight_layout()
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

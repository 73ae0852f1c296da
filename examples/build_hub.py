"""Build a model hub recipe and plot the held-out accuracy distribution of its models.

.venv/bin/python examples/build_hub.py --recipe digits-hub --size 60 --out hub_accuracy.png
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from weightspace.zoo import build_recipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="digits-hub", help="a classifier hub recipe (see `weightspace zoo recipes`)")
    ap.add_argument("--size", type=int, default=60, help="number of models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="hub_accuracy.png")
    args = ap.parse_args()

    hub = build_recipe(args.recipe, size=args.size, seed=args.seed)
    by_family: dict[str, list[float]] = defaultdict(list)
    by_k: dict[int, list[float]] = defaultdict(list)
    for zoo in hub:
        for i in range(len(zoo)):
            row = zoo.row(i)
            if not row.get("final", True):
                continue
            by_family[row.get("family", zoo.arch.kind)].append(row["test_acc"])
            by_k[len(row["classes"])].append(row["test_acc"])
    accs = np.concatenate([np.asarray(v) for v in by_family.values()])
    print(
        f"{args.recipe}: {len(accs)} models in {len(hub)} architectures; test accuracy "
        f"min {accs.min():.3f} median {np.median(accs):.3f} max {accs.max():.3f}"
    )

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(0, 1, 26)
    ax1.hist(list(by_family.values()), bins=bins, stacked=True, label=list(by_family))
    ax1.set(xlabel="held-out test accuracy", ylabel="models", title=f"{args.recipe} (n={len(accs)})")
    ax1.legend(fontsize=8)
    ks = sorted(by_k)
    ax2.boxplot([by_k[k] for k in ks], tick_labels=[str(k) for k in ks])
    ax2.plot(range(1, len(ks) + 1), [1 / k for k in ks], "r--", label="chance (1/k)")
    ax2.set(xlabel="number of classes k", ylabel="test accuracy", title="accuracy vs. task size", ylim=(0, 1.02))
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

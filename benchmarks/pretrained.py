"""Benchmark the JAX imports of real pretrained models against their PyTorch originals, same run.

Compared (medians over repeats, ``block_until_ready``; compile time reported separately; ratios
are what to quote on a shared machine):

- EfficientNet-Lite0 forward on 224x224 photos: ``jit(arch.apply)`` vs a PyTorch implementation
  (``F.conv2d`` with TF-SAME padding, eval BatchNorm) of the same checkpoint;
- the CIFAR-10 Keras CNN: ``jit(arch.apply)`` vs the same graph in PyTorch;
- all-MiniLM-L6-v2 sentence embeddings: ``MiniLM.encode`` (tokenisation included) vs
  transformers' ``BertModel`` + masked mean + L2 (the sentence-transformers recipe);
- CLIP image/text towers (random ViT-B/32-shaped weights; ``--quick``: a tiny config):
  ``CLIPModel.embed_images``/``embed_token_ids`` vs ``transformers.CLIPModel``.

Every pair is also checked to give the same numbers (max abs difference reported).

Usage:
    .venv/bin/python benchmarks/pretrained.py [--quick]
Writes benchmarks/results/pretrained.json and pretrained.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from weightspace._atomic import atomic_path
from weightspace.nets import load_clip, load_minilm, resize_images
from weightspace.zoo import load_cifar10_cnn, load_efficientnet_lite0

RESULTS = Path(__file__).parent / "results"


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN primitive creation, allocator) is not steady state
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def first_and_steady(fn, repeats: int) -> tuple[float, float]:
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    steady = median_time(fn, repeats)  # its warm-up call is already a cached one
    return first - steady, steady


def photos(n: int, size: int) -> np.ndarray:
    """``n`` random 160x160 crops of real skimage photos, resized to ``size`` (channels-last, [0, 1])."""
    import skimage.data as d

    names = ["chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry", "hubble_deep_field"]
    ims = [getattr(d, nm)()[..., :3].astype(np.float32) / 255.0 for nm in names]
    rng = np.random.default_rng(0)
    crops = []
    for i in range(n):
        im = ims[i % len(ims)]
        y, x = rng.integers(0, im.shape[0] - 160), rng.integers(0, im.shape[1] - 160)
        crops.append(im[y : y + 160, x : x + 160])
    return np.asarray(resize_images(np.stack(crops), (size, size, 3)))


def torch_effnet(sd, x):
    import torch.nn.functional as F

    stages = (
        (1, 3, 1, 1, 32, 16),
        (2, 3, 2, 6, 16, 24),
        (2, 5, 2, 6, 24, 40),
        (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112),
        (4, 5, 2, 6, 112, 192),
        (1, 3, 1, 6, 192, 320),
    )

    def pad(x, k, s):
        ih = x.shape[-1]
        p = max((-(-ih // s) - 1) * s + k - ih, 0)
        return F.pad(x, [p // 2, p - p // 2, p // 2, p - p // 2])

    def bn(x, n):
        return F.batch_norm(
            x, sd[n + ".running_mean"], sd[n + ".running_var"], sd[n + ".weight"], sd[n + ".bias"], False, 0.0, 1e-3
        )

    x = F.relu6(bn(F.conv2d(pad((x * 255 - 127) / 128, 3, 2), sd["_conv_stem.weight"], stride=2), "_bn0"))
    b = 0
    for r, k, s, e, ci, co in stages:
        for j in range(r):
            st, cin, p = (s if j == 0 else 1), (ci if j == 0 else co), f"_blocks.{b}."
            h = F.relu6(bn(F.conv2d(x, sd[p + "_expand_conv.weight"]), p + "_bn0")) if e != 1 else x
            h = F.relu6(
                bn(F.conv2d(pad(h, k, st), sd[p + "_depthwise_conv.weight"], stride=st, groups=h.shape[1]), p + "_bn1")
            )
            h = bn(F.conv2d(h, sd[p + "_project_conv.weight"]), p + "_bn2")
            x = x + h if st == 1 and cin == co else h
            b += 1
    x = F.relu6(bn(F.conv2d(x, sd["_conv_head.weight"]), "_bn1")).mean((2, 3))
    return F.linear(x, sd["_fc.weight"], sd["_fc.bias"])


def torch_cifar(sd, x):
    import torch
    import torch.nn.functional as F

    x = x * 255.0
    for i, pool in enumerate((1, 2, 1, 2, 1, 1)):
        x = torch.relu(F.conv2d(x, sd[f"convs.{i}.weight"], sd[f"convs.{i}.bias"]))
        x = F.batch_norm(
            x,
            sd[f"bns.{i}.running_mean"],
            sd[f"bns.{i}.running_var"],
            sd[f"bns.{i}.weight"],
            sd[f"bns.{i}.bias"],
            False,
            0.0,
            1e-3,
        )
        if pool > 1:
            x = F.max_pool2d(x, pool)
    x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    for j in range(3):
        x = torch.relu(F.linear(x, sd[f"fcs.{j}.weight"], sd[f"fcs.{j}.bias"]))
    return x


def bench_image_model(name, zoo, torch_fn, x, repeats):
    import torch

    params = {k: v[0] for k, v in zoo.params.items()}
    f = jax.jit(zoo.arch.apply)
    compile_s, jax_s = first_and_steady(lambda: f(params, x), repeats)
    sd = {k: torch.from_numpy(np.asarray(v)) for k, v in params.items()}
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.inference_mode():
        torch_s = median_time(lambda: torch_fn(sd, xt), repeats)
        ref = torch_fn(sd, xt).numpy()
    diff = float(np.abs(np.asarray(f(params, x)) - ref).max())
    return {
        "what": f"{name} forward, batch {x.shape[0]} of {x.shape[1:]} real photos",
        "jax_compile_s": compile_s,
        "jax_s": jax_s,
        "torch_s": torch_s,
        "images_per_s_jax": x.shape[0] / jax_s,
        "images_per_s_torch": x.shape[0] / torch_s,
        "torch_over_jax": torch_s / jax_s,
        "max_abs_diff": diff,
    }


def bench_minilm(n: int, repeats: int):
    import torch
    import transformers

    from weightspace.nets._minilm import minilm_dir

    rng = np.random.default_rng(0)
    words = [
        "sandal",
        "sneaker",
        "ankle",
        "boot",
        "shirt",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "bag",
        "a",
        "photo",
        "of",
        "the",
        "with",
        "red",
        "blue",
        "leather",
        "cotton",
        "summer",
        "winter",
        "running",
        "shoe",
        "for",
        "women",
        "men",
        "kids",
        "small",
        "large",
    ]
    texts = [" ".join(rng.choice(words, rng.integers(1, 24))) for _ in range(n)]
    enc = load_minilm()
    compile_s, jax_s = first_and_steady(lambda: enc.encode(texts), repeats)
    path = str(minilm_dir())
    model = transformers.BertModel.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)

    def ref():
        b = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        h = model(**b).last_hidden_state
        m = b["attention_mask"][..., None].float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)

    with torch.inference_mode():
        torch_s = median_time(ref, repeats)
        diff = float(np.abs(enc.encode(texts) - ref().numpy()).max())
    return {
        "what": f"all-MiniLM-L6-v2 sentence embeddings of {n} texts (1-24 words), tokenisation included",
        "jax_compile_s": compile_s,
        "jax_s": jax_s,
        "torch_s": torch_s,
        "texts_per_s_jax": n / jax_s,
        "texts_per_s_torch": n / torch_s,
        "torch_over_jax": torch_s / jax_s,
        "max_abs_diff": diff,
    }


def bench_clip(quick: bool, n_img: int, n_txt: int, repeats: int):
    import torch
    import transformers

    if quick:
        tc = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
        vc = dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=64,
            patch_size=16,
        )
        proj, label = 32, "tiny random CLIP"
    else:  # openai/clip-vit-base-patch32 shapes, random weights (no CLIP weights exist offline)
        tc = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
        vc = dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
        )
        proj, label = 512, "ViT-B/32-shaped random CLIP"
    torch.manual_seed(0)
    model = transformers.CLIPModel(
        transformers.CLIPConfig(text_config=tc, vision_config=vc, projection_dim=proj)
    ).eval()
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        ours = load_clip(d, batch_size=max(n_img, n_txt))
    size = vc["image_size"]
    x = photos(n_img, size)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 49000, (n_txt, 16))
    ids[:, -1] = 49407  # end-of-text: the largest id
    img_compile, img_s = first_and_steady(lambda: ours.embed_images(x), repeats)
    txt_compile, txt_s = first_and_steady(lambda: ours.embed_token_ids(ids), repeats)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    pv = (torch.from_numpy(x.transpose(0, 3, 1, 2).copy()) - mean) / std
    it = torch.from_numpy(ids)
    with torch.inference_mode():
        t_img = median_time(lambda: model.get_image_features(pixel_values=pv), repeats)
        t_txt = median_time(lambda: model.get_text_features(input_ids=it), repeats)
        ref_i = torch.nn.functional.normalize(model.get_image_features(pixel_values=pv), dim=-1).numpy()
        ref_t = torch.nn.functional.normalize(model.get_text_features(input_ids=it), dim=-1).numpy()
    return {
        "what": f"{label}: {n_img} images {size}x{size} and {n_txt} texts of 16 tokens",
        "image_jax_compile_s": img_compile,
        "image_jax_s": img_s,
        "image_torch_s": t_img,
        "image_torch_over_jax": t_img / img_s,
        "text_jax_compile_s": txt_compile,
        "text_jax_s": txt_s,
        "text_torch_s": t_txt,
        "text_torch_over_jax": t_txt / txt_s,
        "max_abs_diff_image": float(np.abs(ours.embed_images(x) - ref_i).max()),
        "max_abs_diff_text": float(np.abs(ours.embed_token_ids(ids) - ref_t).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batches and a tiny CLIP (smoke run)")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    q = args.quick
    repeats = args.repeats or (2 if q else 5)
    import torch

    results = {}
    x224 = photos(2 if q else 16, 224)
    results["efficientnet_lite0"] = bench_image_model(
        "EfficientNet-Lite0", load_efficientnet_lite0(), torch_effnet, x224, repeats
    )
    print(results["efficientnet_lite0"], flush=True)
    x32 = photos(16 if q else 256, 32)
    results["cifar10_cnn"] = bench_image_model("CIFAR-10 Keras CNN", load_cifar10_cnn(), torch_cifar, x32, repeats)
    print(results["cifar10_cnn"], flush=True)
    results["minilm"] = bench_minilm(16 if q else 256, repeats)
    print(results["minilm"], flush=True)
    results["clip"] = bench_clip(q, 2 if q else 16, 4 if q else 64, repeats)
    print(results["clip"], flush=True)

    meta = {
        "machine": f"{platform.node() and 'vm'} {platform.machine()} {os.cpu_count()} cpus, load avg {os.getloadavg()}",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": f"python {platform.python_version()}, jax {jax.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)",
        "command": "JAX_PLATFORMS=cpu .venv/bin/python benchmarks/pretrained.py" + (" --quick" if q else ""),
        "repeats": repeats,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "pretrained_quick" if q else "pretrained"
    with atomic_path(RESULTS / f"{name}.json") as tmp:
        tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = ["# weightspace.nets pretrained imports: JAX vs PyTorch", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k != "command"]
    lines += [f"- command: `{meta['command']}` (medians; shared machine: quote ratios)", ""]
    for key, row in results.items():
        lines += [f"## {key}", ""]
        lines += [f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in row.items()]
        lines.append("")
    with atomic_path(RESULTS / f"{name}.md") as tmp:
        tmp.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

"""LoRA basics: the pytree, merge/unmerge, spectra, and the on-disk formats (against NumPy oracles)."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from weightspace import InvalidValueError, LoadError, ShapeError
from weightspace.lora import (
    LoRA,
    LoraRows,
    LowraRow,
    load_lora_rows,
    load_lowra_rows,
    lora_spectra,
    merge,
    read_lora,
    read_lora_stack,
    save_lora,
    save_lora_rows,
    save_lowra_rows,
    spectral_detune,
    stack_adapters,
    unmerge,
)
from weightspace.testing import assert_tree_allclose


def _lora(rng, d_out, d_in, r, alpha=None, batch=()):
    return LoRA.of(
        rng.normal(size=(*batch, r, d_in)).astype(np.float32),
        rng.normal(size=(*batch, d_out, r)).astype(np.float32),
        alpha,
    )


# ---- the pytree -----------------------------------------------------------------------------
def test_lora_validates_shapes_and_values():
    with pytest.raises(ShapeError, match="rank mismatch: A has rank 3"):
        LoRA.of(np.ones((3, 5)), np.ones((4, 2)))
    with pytest.raises(ShapeError, match="float dtype"):
        LoRA.of(np.ones((2, 5), np.int32), np.ones((4, 2)))
    a = np.ones((2, 5))
    a[0, 0] = np.nan
    with pytest.raises(InvalidValueError, match="1 NaN/Inf"):
        LoRA.of(a, np.ones((4, 2)))
    lo = LoRA.of(np.ones((2, 5)), np.ones((4, 2)))
    assert float(lo.alpha) == 2.0 and float(lo.scaling) == 1.0  # alpha defaults to r


def test_merge_unmerge_round_trip_against_numpy():
    rng = np.random.default_rng(0)
    w = {
        "fc.weight": rng.normal(size=(6, 5)).astype(np.float32),
        "fc.bias": np.zeros(6, np.float32),
        "conv.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
    }
    ad = {"fc.weight": _lora(rng, 6, 5, 2, alpha=4.0), "conv.weight": _lora(rng, 4, 27, 3, alpha=1.5)}
    merged = merge(w, ad)
    oracle_fc = w["fc.weight"] + 4.0 / 2 * np.asarray(ad["fc.weight"].B) @ np.asarray(ad["fc.weight"].A)
    oracle_conv = w["conv.weight"] + (
        1.5 / 3 * np.asarray(ad["conv.weight"].B) @ np.asarray(ad["conv.weight"].A)
    ).reshape(4, 3, 3, 3)
    assert_tree_allclose(merged, {"fc.weight": oracle_fc, "fc.bias": w["fc.bias"], "conv.weight": oracle_conv})
    assert_tree_allclose(unmerge(merged, ad), w)


def test_merge_stacked_models_and_errors():
    rng = np.random.default_rng(1)
    w = {"w": rng.normal(size=(3, 6, 5)).astype(np.float32)}
    ads = [{"w": _lora(rng, 6, 5, 2)} for _ in range(3)]
    stacked = stack_adapters(ads)
    got = merge(w, stacked)["w"]
    for i in range(3):
        assert_tree_allclose(got[i], np.asarray(merge({"w": w["w"][i]}, ads[i])["w"]))
    with pytest.raises(ShapeError, match="no base weight"):
        merge({"v": w["w"]}, stacked)
    with pytest.raises(ShapeError, match="updates a \\[6, 5\\] weight"):
        merge({"w": np.zeros((6, 4), np.float32)}, ads[0])
    with pytest.raises(ShapeError, match="ranks or shapes differ"):
        stack_adapters([ads[0], {"w": _lora(rng, 6, 5, 3)}])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_spectra_match_numpy_svd(dtype):
    rng = np.random.default_rng(2)
    ad = {
        "q.weight": LoRA.of(
            rng.normal(size=(4, 3, 9)).astype(dtype),
            rng.normal(size=(4, 7, 3)).astype(dtype),
            np.array([1.0, 2.0, 3.0, 6.0]),
        )
    }
    sp = lora_spectra(ad, top_k=5, scaled=True)
    a, b = np.asarray(ad["q.weight"].A, np.float64), np.asarray(ad["q.weight"].B, np.float64)
    for i in range(4):
        want = {
            "A": np.linalg.svd(a[i], compute_uv=False),
            "B": np.linalg.svd(b[i], compute_uv=False),
            "BA": np.linalg.svd(b[i] @ a[i], compute_uv=False)[:3] * [1.0, 2.0, 3.0, 6.0][i] / 3,
        }
        for kind, v in want.items():
            padded = np.concatenate([v, np.zeros(5 - len(v))])  # top_k > rank pads with zeros
            # float32 spectra are compared with float32 tolerances (scale: SVD of a product)
            assert_tree_allclose(np.asarray(sp[f"q.weight:{kind}"][i]), padded.astype(dtype), scale=10)


# ---- adapter files ----------------------------------------------------------------------------
@pytest.mark.parametrize("naming", ["peft", "kohya"], ids=["peft", "kohya"])
def test_save_read_round_trip(naming, tmp_path):
    rng = np.random.default_rng(3)
    ad = {"blocks.0.attn.q.weight": _lora(rng, 8, 6, 2, alpha=16.0), "head.weight": _lora(rng, 3, 8, 2, alpha=1.0)}
    p = save_lora(tmp_path / "a.safetensors", ad, naming=naming)
    got = read_lora(p)
    assert sorted(got) == sorted(ad)
    for k in ad:
        assert_tree_allclose(got[k], ad[k])
    assert float(read_lora(p, alpha=3.0)["head.weight"].alpha) == 3.0


def test_read_diffusers_conv_and_peft_config(tmp_path):
    rng = np.random.default_rng(4)
    down, up = rng.normal(size=(4, 3, 3, 3)).astype(np.float32), rng.normal(size=(5, 4, 1, 1)).astype(np.float32)
    save_file(
        {
            "unet.conv.lora.down.weight": down,
            "unet.conv.lora.up.weight": up,
            "unet.attn.processor.to_q_lora.down.weight": np.ones((2, 6), np.float32),
            "unet.attn.processor.to_q_lora.up.weight": np.ones((7, 2), np.float32),
        },
        str(tmp_path / "d.safetensors"),
    )
    got = read_lora(tmp_path / "d.safetensors")
    assert got["unet.conv.weight"].A.shape == (4, 27) and got["unet.conv.weight"].B.shape == (5, 4)
    assert_tree_allclose(np.asarray(got["unet.conv.weight"].delta()), up[:, :, 0, 0] @ down.reshape(4, 27))
    assert got["unet.attn.processor.to_q.weight"].rank == 2
    peft = tmp_path / "peft"
    peft.mkdir()
    save_file(
        {
            "base_model.model.q.lora_A.weight": np.ones((2, 6), np.float32),
            "base_model.model.q.lora_B.weight": np.ones((7, 2), np.float32),
        },
        str(peft / "adapter_model.safetensors"),
    )
    (peft / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 32}))
    assert float(read_lora(peft / "adapter_model.safetensors")["q.weight"].scaling) == 16.0


def test_readers_reject_malformed_files(tmp_path):
    save_file({"m.lora_A.weight": np.ones((2, 6), np.float32)}, str(tmp_path / "half.safetensors"))
    with pytest.raises(LoadError, match="has only its A"):
        read_lora(tmp_path / "half.safetensors")
    save_file(
        {"m.lora_A.weight": np.ones((2, 6), np.float32), "m.lora_B.weight": np.ones((7, 3), np.float32)},
        str(tmp_path / "rank.safetensors"),
    )
    with pytest.raises(ShapeError, match=r"rank mismatch: A \(down\) has rank 2"):
        read_lora(tmp_path / "rank.safetensors")
    save_file({"layers.0.weight": np.ones((2, 6), np.float32)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(LoadError, match="no LoRA tensors"):
        read_lora(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x80\x04not safetensors at all")
    with pytest.raises(LoadError, match="not a readable safetensors"):
        read_lora(tmp_path / "junk.safetensors")
    with pytest.raises(LoadError, match="no such file"):
        read_lora(tmp_path / "missing.safetensors")


def test_read_stack_and_mismatch(tmp_path):
    rng = np.random.default_rng(5)
    ads = [{"q.weight": _lora(rng, 8, 6, 2, alpha=float(i + 1))} for i in range(3)]
    files = [save_lora(tmp_path / f"{i}.safetensors", a) for i, a in enumerate(ads)]
    st = read_lora_stack(files)
    assert st["q.weight"].A.shape == (3, 2, 6) and np.asarray(st["q.weight"].alpha).tolist() == [1.0, 2.0, 3.0]
    assert_tree_allclose(st["q.weight"][1], ads[1]["q.weight"])
    save_lora(tmp_path / "bad.safetensors", {"q.weight": _lora(rng, 8, 6, 4)})
    with pytest.raises(ShapeError, match=r"bad\.safetensors"):
        read_lora_stack([*files, tmp_path / "bad.safetensors"])


# ---- benchmark row layouts ----------------------------------------------------------------------
def test_lowra_rows_round_trip_and_detune(tmp_path):
    rng = np.random.default_rng(6)
    rows = []
    for layer in range(2):
        w = rng.normal(size=(24, 20)).astype(np.float32)
        loras = tuple(_lora(rng, 24, 20, 2, alpha=4.0) for _ in range(4))
        rows.append(
            LowraRow("toy", f"layers.{layer}", f"layers.{layer}.weight", w, loras, tuple(f"ft{i}" for i in range(4)))
        )
    p = save_lowra_rows(tmp_path / "rows.safetensors", rows)
    got = load_lowra_rows(p)
    assert [r.layer_name for r in got] == ["layers.0", "layers.1"] and got[0].lora_names[3] == "ft3"
    for r0, r1 in zip(rows, got, strict=True):
        assert_tree_allclose(r1.pre_ft_weight, r0.pre_ft_weight)
        assert_tree_allclose(r1.loras, r0.loras)
    wp = np.stack([r.finetuned() for r in got])
    res = spectral_detune(wp, rank=2, start_rank=2, n_iters=100)
    rel = np.linalg.norm(res.weights - np.stack([r.pre_ft_weight for r in rows])) / np.linalg.norm(wp[:, 0])
    assert rel < 1e-5
    meta = json.dumps(
        [{"layer_model": "toy", "layer_name": "x", "pre_ft_name": "x", "lora_0_rank": 3, "lora_0_alpha": 1.0}]
    )
    save_file(
        {
            "0.pre_ft_weight": np.ones((4, 5), np.float32),
            "0.lora_0_A_weight": np.ones((2, 5), np.float32),
            "0.lora_0_B_weight": np.ones((4, 2), np.float32),
        },
        str(tmp_path / "bad.safetensors"),
        metadata={"weightspace": "lowra-rows/1", "rows": meta},
    )
    with pytest.raises(ShapeError, match="lora_0_rank column says 3 but A has rank 2"):
        load_lowra_rows(tmp_path / "bad.safetensors")
    with pytest.raises(LoadError, match="not a LoWRA-Bench rows file"):
        load_lowra_rows(save_lora(tmp_path / "x.safetensors", {"q.weight": _lora(rng, 3, 3, 1)}))


def test_lora_wise_rows_safetensors_and_npz(tmp_path):
    rng = np.random.default_rng(7)
    ad = {"up.0.to_q.weight": _lora(rng, 8, 6, 2, batch=(5,)), "up.0.to_v.weight": _lora(rng, 8, 6, 2, batch=(5,))}
    rows = LoraRows(ad, np.array([1, 2, 3, 1, 2]), ("cat", "cat", "cat", "dog", "dog"))
    got = load_lora_rows(save_lora_rows(tmp_path / "w.safetensors", rows))
    assert got.concepts == rows.concepts and got.labels.tolist() == [1, 2, 3, 1, 2]
    assert_tree_allclose(got.adapter, ad)
    cols = {f"{k[:-7]}.lora.down.weight": np.asarray(v.A) for k, v in ad.items()}
    cols |= {f"{k[:-7]}.lora.up.weight": np.asarray(v.B) for k, v in ad.items()}
    np.savez(tmp_path / "w.npz", label=rows.labels, name=np.array(rows.concepts), **cols)
    got = load_lora_rows(tmp_path / "w.npz")
    assert_tree_allclose({k: (v.A, v.B) for k, v in got.adapter.items()}, {k: (v.A, v.B) for k, v in ad.items()})
    np.savez(tmp_path / "bad.npz", label=np.array([1, 2]), name=np.array(["a", "b"]), **cols)
    with pytest.raises(ShapeError, match="has 5 rows, labels have 2"):
        load_lora_rows(tmp_path / "bad.npz")


# ---- LoRA zoos ----------------------------------------------------------------------------------
def test_lora_zoo_save_load_merged_and_rows(tmp_path):
    from weightspace.lora import LoRAZoo, autoencoder, load_lora_zoo, save_lora_zoo

    rng = np.random.default_rng(8)
    arch = autoencoder()
    base = {k: rng.normal(size=s).astype(np.float32) * 0.05 for k, s in arch.param_shapes().items()}
    ad = {"layers.1.weight": _lora(rng, 32, 128, 2, alpha=2.0, batch=(3,))}
    meta = {"concept": ["a", "a", "b"], "n_images": [1, 10, 1], "subset": ["low", "medium", "low"]}
    zoo = LoRAZoo(arch, base, ad, meta, "toy")
    got = load_lora_zoo(save_lora_zoo(tmp_path / "z.safetensors", zoo))
    assert got.name == "toy" and got.meta == meta and len(got) == 3
    assert_tree_allclose((got.base, got.adapter), (base, ad))
    merged = got.where(subset="low").merged()
    assert merged.ids == ["toy-000000", "toy-000001"] and merged.meta["concept"] == ["a", "b"]
    want = base["layers.1.weight"] + np.asarray(ad["layers.1.weight"][2].delta())
    assert_tree_allclose(merged.params["layers.1.weight"][1], want)
    rows = load_lora_rows(tmp_path / "z.safetensors")  # a LoRA zoo file reads as LoRA-WiSE rows
    assert rows.labels.tolist() == [1, 10, 1] and rows.concepts == ("a", "a", "b")
    assert_tree_allclose(rows.adapter, ad)


@pytest.mark.slow
def test_fmnist_lora_recipe_builds_with_the_population_trainer(tmp_path, monkeypatch):
    from weightspace.lora import LoRAZoo, reconstruction_loss
    from weightspace.zoo import build_recipe, recipe_path

    monkeypatch.setenv("WEIGHTSPACE_CACHE", str(tmp_path))
    zoo = build_recipe("fmnist-lora", size=2, progress=False)
    assert isinstance(zoo, LoRAZoo) and len(zoo) == 2 * 17
    low = zoo.where(subset="low")
    assert len(low) == 12 and sorted(set(low.meta["n_images"])) == [1, 2, 3, 4, 5, 6]
    assert len(set(zoo.meta["concept"])) == 2 and all(np.isfinite(zoo.meta["final_loss"]))
    from weightspace.data import load_dataset

    x = load_dataset("fashion-mnist", "test").images[:500]
    base_loss = reconstruction_loss({k: v[None] for k, v in zoo.base.items()}, x)[0]
    assert base_loss < 0.03  # the base autoencoder reconstructs Fashion-MNIST
    assert (recipe_path("fmnist-lora", size=2) / "lora-zoo.safetensors").is_file()
    cached = build_recipe("fmnist-lora", size=2)
    assert cached.meta == zoo.meta  # cached
    assert_tree_allclose((cached.base, cached.adapter), (zoo.base, zoo.adapter))

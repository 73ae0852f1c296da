"""DSiRe: size recovery on synthetic spectra, invariances, oracles for 1-NN and the vote, CLI."""

from collections import Counter

import numpy as np
import pytest

from weightspace import ConfigError, ShapeError
from weightspace.cli import main
from weightspace.lora import (
    LoRA,
    LoraRows,
    SpectralFeatures,
    best_tensor,
    dsire_votes,
    evaluate_size_recovery,
    fit_dsire,
    lora_features,
    predict_dsire,
    save_lora,
    save_lora_rows,
    vote,
)

SIZES = np.array([1, 2, 3, 4, 5, 6])


def _synthetic(n_concepts=12, informative=4, noise_tensors=2, k=6, seed=0):
    """Spectra whose scale grows with the dataset size (per concept jitter); plus pure-noise tensors."""
    rng = np.random.default_rng(seed)
    labels = np.tile(SIZES, n_concepts)
    concepts = np.repeat([f"c{i}" for i in range(n_concepts)], len(SIZES))
    decay = 1.0 / np.arange(1, k + 1)
    jitter = rng.normal(0, 0.02, size=(n_concepts, 1, 1)).repeat(len(SIZES), 0)
    info = (1 + 0.3 * labels[:, None, None]) * decay * (1 + jitter + rng.normal(0, 0.01, (len(labels), informative, k)))
    noise = rng.uniform(0, 3, size=(len(labels), noise_tensors, k))
    names = tuple(f"t{i}" for i in range(informative + noise_tensors))
    return SpectralFeatures(names, np.concatenate([info, noise], axis=1)), labels, concepts


def test_recovers_sizes_on_synthetic_spectra():
    f, y, c = _synthetic()
    res = evaluate_size_recovery(f, y, c, n_splits=10, n_train_concepts=6)
    assert len(res["splits"]) == 10
    assert res["mean"]["accuracy"] > 90 and res["mean"]["mae"] < 0.2
    norm = evaluate_size_recovery(f, y, c, method="norm", n_train_concepts=6)
    best = evaluate_size_recovery(f, y, c, method="best-tensor", n_train_concepts=6)
    lin = evaluate_size_recovery(f, y, c, method="linear", n_train_concepts=6)
    assert best["mean"]["accuracy"] > 80 and lin["mean"]["accuracy"] > 50 and norm["mean"]["accuracy"] > 50
    assert best_tensor(f, y, c) < 4  # an informative tensor, never a noise one


def test_recovers_sizes_from_lora_weights():
    rng = np.random.default_rng(1)
    labels = np.tile(SIZES, 8)
    concepts = np.repeat(np.arange(8), len(SIZES))
    # the update's magnitude grows with the number of images, as the paper observes for real LoRAs
    scale = (0.5 + 0.25 * labels)[:, None, None] * (1 + rng.normal(0, 0.01, (len(labels), 1, 1)))
    # one source model and recipe: the down projections share their spectrum up to small noise
    direction = rng.normal(size=(1, 4, 24)) * (1 + rng.normal(0, 0.02, (8, 1, 1))).repeat(len(SIZES), 0)
    ad = {
        "q.weight": LoRA.of(
            direction + rng.normal(0, 0.01, (len(labels), 4, 24)), scale * rng.normal(1, 0.01, (len(labels), 16, 4))
        )
    }
    f = lora_features(ad)
    assert f.values.shape == (48, 3, 4)
    assert evaluate_size_recovery(f, labels, concepts, n_train_concepts=4)["mean"]["accuracy"] > 90


def test_predictions_invariant_to_global_affine_rescale():
    f, y, c = _synthetic(seed=2)
    train, test = c < "c6", c >= "c6"
    pred = predict_dsire(fit_dsire(f.select(train), y[train]), f.select(test))
    g = SpectralFeatures(f.names, 37.5 * f.values - 4.25)
    pred_g = predict_dsire(fit_dsire(g.select(train), y[train]), g.select(test))
    np.testing.assert_array_equal(pred, pred_g)
    assert evaluate_size_recovery(f, y, c, n_train_concepts=6) == evaluate_size_recovery(g, y, c, n_train_concepts=6)


def test_nearest_neighbour_and_vote_match_a_loop_oracle():
    rng = np.random.default_rng(3)
    ref = SpectralFeatures(tuple("abcde"), rng.normal(size=(30, 5, 4)))
    labels = rng.integers(1, 5, 30)
    q = SpectralFeatures(tuple("abcde"), rng.normal(size=(9, 5, 4)))
    model = fit_dsire(ref, labels)
    votes = dsire_votes(model, q)
    pred = predict_dsire(model, q)
    lo, hi = ref.values.min(), ref.values.max()
    for i in range(9):
        want_votes = []
        for t in range(5):
            d = [
                np.sum(((q.values[i, t] - lo) / (hi - lo) - (ref.values[j, t] - lo) / (hi - lo)) ** 2)
                for j in range(30)
            ]
            want_votes.append(labels[int(np.argmin(d))])
        assert votes[i].tolist() == want_votes
        assert pred[i] == Counter(want_votes).most_common(1)[0][0]  # the reference code's vote


def test_vote_tie_break_is_first_voted():
    rng = np.random.default_rng(4)
    rows = rng.integers(0, 3, size=(200, 4))  # many ties
    assert vote(rows).tolist() == [Counter(r.tolist()).most_common(1)[0][0] for r in rows]


def test_bad_inputs_raise():
    f, y, c = _synthetic()
    with pytest.raises(ConfigError, match="method must be one of"):
        evaluate_size_recovery(f, y, c, method="knn")
    with pytest.raises(ConfigError, match="n_train_concepts must be in"):
        evaluate_size_recovery(f, y, c, n_train_concepts=12)
    with pytest.raises(ShapeError, match="labels have shape"):
        fit_dsire(f, y[:-1])
    model = fit_dsire(f, y)
    with pytest.raises(ShapeError, match="the model was fitted on"):
        predict_dsire(model, SpectralFeatures(f.names[:2], f.values[:, :2]))


def _rows(rng, labels, concepts):
    scale = (0.5 + 0.25 * labels)[:, None, None]
    base = rng.normal(size=(1, 2, 12))
    ad = {
        "q.weight": LoRA.of(
            base + rng.normal(0, 0.01, (len(labels), 2, 12)), scale * (1 + rng.normal(0, 0.01, (len(labels), 10, 2)))
        ),
        "v.weight": LoRA.of(
            base + rng.normal(0, 0.01, (len(labels), 2, 12)), scale * (1 + rng.normal(0, 0.01, (len(labels), 10, 2)))
        ),
    }
    return LoraRows(ad, labels, tuple(concepts))


def test_cli_size_and_detune(tmp_path, capsys):
    rng = np.random.default_rng(5)
    labels = np.tile([1, 10, 50], 4)
    ref = save_lora_rows(tmp_path / "ref.safetensors", _rows(rng, labels, np.repeat(list("abcd"), 3)))
    query = _rows(rng, np.array([10, 50, 1]), ["z"] * 3)
    files = []
    for i in range(3):
        files.append(save_lora(tmp_path / f"q{i}.safetensors", {k: v[i] for k, v in query.adapter.items()}))
    assert main(["lora", "size", *map(str, files), "--reference", str(ref), "--json"]) == 0
    out = capsys.readouterr().out
    import json

    got = json.loads(out)
    assert [p["size"] for p in got["predictions"]] == [10, 50, 1]
    rows_file = save_lora_rows(tmp_path / "q.safetensors", query)
    assert main(["lora", "size", str(rows_file), "--reference", str(ref)]) == 0
    assert "size=50" in capsys.readouterr().out

    w = rng.normal(size=(16, 12)).astype(np.float32)
    fts = []
    for i in range(4):
        d = rng.normal(size=(16, 1)) @ rng.normal(size=(1, 12))
        from safetensors.numpy import save_file

        save_file(
            {"fc.weight": (w + d).astype(np.float32), "fc.bias": np.ones(16, np.float32)},
            str(tmp_path / f"ft{i}.safetensors"),
        )
        fts.append(str(tmp_path / f"ft{i}.safetensors"))
    out_path = tmp_path / "base.safetensors"
    assert main(["lora", "detune", *fts, "--rank", "1", "--iters", "80", "--out", str(out_path)]) == 0
    assert "1 tensors recovered, 1 copied" in capsys.readouterr().out
    from safetensors.numpy import load_file

    rec = load_file(str(out_path))
    assert np.abs(rec["fc.weight"] - w).max() < 1e-4 and (rec["fc.bias"] == 1).all()
    assert main(["lora", "detune", fts[0], "--rank", "1", "--out", str(out_path)]) == 2  # needs >= 2 files

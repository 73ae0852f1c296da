"""Ranking measures against SciPy, and the reproduction of Model Spider's published table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jax
import numpy as np
import pytest
import scipy.stats

import weightspace.selection as S
from weightspace import ShapeError
from weightspace.testing import TOLERANCES

RTOL64, ATOL64 = TOLERANCES["float64"]
# shared/ sits beside the checkout (CI clones elsewhere, with a copy of shared/ next to it).
_SPIDER_DIRS = (
    Path(__file__).resolve().parents[2] / "shared/data/model_spider",
    Path("/work/shared/data/model_spider"),
)
SPIDER = next((p for p in _SPIDER_DIRS if p.exists()), _SPIDER_DIRS[-1])


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _cases():
    rng = np.random.default_rng(0)
    for t in range(60):
        n = int(rng.integers(2, 14))
        x = rng.integers(0, 4, n).astype(float) if t % 3 else rng.standard_normal(n)
        y = rng.integers(0, 3, n).astype(float) if t % 2 else rng.standard_normal(n)
        yield x, y


def _same(a, b):
    return (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, rel=RTOL64, abs=ATOL64)


def test_weighted_tau_matches_scipy_with_ties():
    for x, y in _cases():
        assert _same(float(S.weighted_tau(x, y)), scipy.stats.weightedtau(x, y, rank=None).statistic), (x, y)


def test_kendall_pearson_regret_match_references():
    for x, y in _cases():
        assert _same(float(S.kendall_tau(x, y)), scipy.stats.kendalltau(x, y).statistic), (x, y)
        if np.std(x) > 0 and np.std(y) > 0:
            assert float(S.pearson(x, y)) == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-9, abs=1e-12)
        assert float(S.top1_regret(x, y)) == pytest.approx(x.max() - x[np.argmax(y)], abs=ATOL64)


def test_weighted_tau_weights_the_top():
    acc = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    swap_top = np.array([4.0, 5.0, 3.0, 2.0, 1.0])
    swap_bottom = np.array([5.0, 4.0, 3.0, 1.0, 2.0])
    assert float(S.weighted_tau(acc, swap_top)) < float(S.weighted_tau(acc, swap_bottom)) < 1.0


def test_ranking_errors():
    with pytest.raises(ShapeError, match="3 models but score has 2"):
        S.weighted_tau([1, 2, 3], [1, 2])
    with pytest.raises(ShapeError, match="at least 2"):
        S.kendall_tau([1], [1])


def load_model_spider_table():
    rows = list(csv.DictReader((SPIDER / "baseline_results.csv").open()))
    acc = json.loads((SPIDER / "finetune_accuracy.json").read_text())
    metrics = [k for k in rows[0] if k not in ("Dataset", "Model")]
    taus = {}
    for m in metrics:
        per = {}
        for d, a in acc["finetune_accuracy"].items():
            score = {r["Model"]: float(r[m]) for r in rows if r["Dataset"] == d}
            per[d] = float(S.weighted_tau(a, [score[x] for x in acc["models"]]))
        taus[m] = per
    return taus


@pytest.mark.skipif(not SPIDER.exists(), reason="shared Model Spider table data not present")
def test_reproduces_model_spider_published_table():
    taus = load_model_spider_table()
    expected = {
        "H-Score": 0.648,
        "NCE": 0.666,
        "OTCE": 0.149,
        "PACTranDirichlet": 0.397,
        "GBC": 0.094,
        "LFC": 0.034,
        "LEEP": 0.405,
        "LogME": 0.678,
        "NLEEP": 0.449,
    }  # golden.md "Ranking evaluation"
    for m, want in expected.items():
        assert np.mean(list(taus[m].values())) == pytest.approx(want, abs=1e-3), m
    # Per-dataset published values (README table) where the CSV carries full-precision scores.
    assert taus["H-Score"]["Aircraft"] == pytest.approx(0.328, abs=1e-3)
    assert taus["NCE"]["SUN397"] == pytest.approx(0.892, abs=1e-3)
    assert taus["LogME"]["CIFAR100"] == pytest.approx(0.798, abs=1e-3)

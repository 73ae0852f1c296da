"""Model Spider: ListMLE oracle, training to perfect tau, re-ranking, checkpoints, leave-one-task-out."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import weightspace.selection as S
from weightspace import ConfigError, LoadError, ShapeError
from weightspace.testing import TOLERANCES, assert_tree_allclose

RTOL32, ATOL32 = TOLERANCES["float32"]
CFG = S.SpiderConfig(num_models=5, task_dim=8, dim=32, heads=2)


def synthetic_tasks(n_tasks=8, seed=0, specific=False):
    """Accuracy of model m on task t is u_m . v_t; the task's class means are noisy images of v_t."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((5, 3))
    a = rng.standard_normal((3, 8))
    means, accs, spec = [], [], []
    for t in range(n_tasks):
        v = rng.standard_normal(3)
        c = 3 + t % 3  # tasks have 3..5 classes: exercises padding and masks
        means.append(v @ a + 0.3 * rng.standard_normal((c, 8)))
        accs.append(u @ v)
        spec.append([rng.standard_normal((c, 4)) for _ in range(5)])
    return S.stack_tasks(means, np.array(accs), specific=spec if specific else None)


def test_listmle_matches_plackett_luce_oracle():
    rng = np.random.default_rng(0)
    s, acc = rng.standard_normal(5), rng.standard_normal(5)
    order = np.argsort(-acc)
    want = -sum(s[order[i]] - np.log(np.sum(np.exp(s[order[i:]]))) for i in range(5))
    assert float(S.listmle_loss(jnp.asarray(s), jnp.asarray(acc))) == pytest.approx(want, rel=RTOL32, abs=ATOL32)
    # It is minimised (over all orderings of the same scores) by the true order.
    losses = {
        p: float(S.listmle_loss(jnp.asarray(np.sort(s)[::-1][list(p)]), jnp.asarray(acc)))
        for p in itertools.permutations(range(5))
    }
    best = min(losses, key=losses.get)
    assert np.array_equal(np.argsort(-np.sort(s)[::-1][list(best)]), order)


def test_trains_to_perfect_tau_and_scores_are_padding_invariant():
    tasks = synthetic_tasks()
    spider, losses = S.train_model_spider(tasks, CFG, S.SPIDER_TRAIN.replace(steps=200))
    assert losses[-1] < 0.05 * losses[0]
    ev = S.evaluate_rankings(S.rank_models(spider, tasks), tasks.accuracy)
    assert ev["mean"] == 1.0
    # Padding classes are masked: one task alone (no padding) scores like inside the stack.
    c = int(tasks.mask[0].sum())
    alone = spider(tasks.features[0, :c], tasks.mask[0, :c])
    np.testing.assert_allclose(np.asarray(alone), np.asarray(S.rank_models(spider, tasks)[0]), rtol=1e-5, atol=1e-5)


def test_reranking_reorders_only_the_top_k():
    tasks = synthetic_tasks(specific=True)
    cfg = S.SpiderConfig(num_models=5, task_dim=8, dim=32, heads=2, specific_dim=4)
    spider, _ = S.train_model_spider(tasks, cfg, S.SPIDER_TRAIN.replace(steps=100))
    base = np.asarray(S.rank_models(spider, tasks))
    rer = np.asarray(S.rank_models(spider, tasks, top_k=2))
    for b, r in zip(base, rer, strict=True):
        top_b, top_r = set(np.argsort(-b)[:2]), set(np.argsort(-r)[:2])
        assert top_b == top_r
        np.testing.assert_array_equal(np.argsort(-b)[2:], np.argsort(-r)[2:])
    plain = S.ModelSpider(CFG, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="specific_dim"):
        plain(tasks.features[0], tasks.mask[0], tasks.specific[0])


def test_checkpoint_round_trip(tmp_path):
    tasks = synthetic_tasks()  # same shapes as the training test: its compiled step is reused
    spider, _ = S.train_model_spider(tasks, CFG, S.SPIDER_TRAIN.replace(steps=5))
    path = S.save_model_spider(spider, tmp_path / "spider")
    back = S.load_model_spider(path)
    assert back.config == spider.config
    assert_tree_allclose(nnx.state(back, nnx.Param), nnx.state(spider, nnx.Param), rtol=0.0, atol=0.0)
    np.testing.assert_array_equal(np.asarray(S.rank_models(back, tasks)), np.asarray(S.rank_models(spider, tasks)))
    with pytest.raises(LoadError, match="not a Model Spider checkpoint"):
        S.load_model_spider(tmp_path)


def _spy_on_training(monkeypatch):
    seen = []
    real = S._spider.train_model_spider

    def spy(t, *a, **k):
        seen.append({tuple(np.asarray(f).ravel()[:3]) for f in t.features})
        return real(t, *a, **k)

    monkeypatch.setattr(S._spider, "train_model_spider", spy)
    return seen


def test_leave_one_task_out_never_trains_on_the_held_out_task(monkeypatch):
    tasks = synthetic_tasks(9)  # folds train on 8 tasks with 5 classes max: the shapes compiled above
    seen = _spy_on_training(monkeypatch)
    res = S.leave_one_task_out(tasks, CFG, S.SPIDER_TRAIN.replace(steps=20))
    keys = [tuple(np.asarray(f).ravel()[:3]) for f in tasks.features]
    assert len(seen) == 9
    for fold, trained in enumerate(seen):
        assert keys[fold] not in trained and len(trained) == 8
    assert res["scores"].shape == (9, 5)
    assert res["mean"] == pytest.approx(np.mean(res["per_task"]))


@pytest.mark.slow
def test_leave_one_task_out_selects_hyperparameters_without_the_test_task(monkeypatch):
    tasks = synthetic_tasks(4)
    seen = _spy_on_training(monkeypatch)
    res = S.leave_one_task_out(tasks, CFG, S.SPIDER_TRAIN.replace(steps=20), grid=[{"steps": 10}, {"steps": 20}])
    keys = [tuple(np.asarray(f).ravel()[:3]) for f in tasks.features]
    # Per fold: 2 grid settings x 3 inner folds, then the final fit; none sees the held-out task.
    assert len(seen) == 4 * (2 * 3 + 1)
    for fold in range(4):
        for trained in seen[fold * 7 : (fold + 1) * 7]:
            assert keys[fold] not in trained
    assert len(res["chosen"]) == 4 and all(c in ({"steps": 10}, {"steps": 20}) for c in res["chosen"])


def test_bad_inputs():
    with pytest.raises(ConfigError, match="divisible"):
        S.SpiderConfig(num_models=3, task_dim=4, dim=10, heads=3)
    with pytest.raises(ShapeError, match="task_dim"):
        S.stack_tasks([np.ones((2, 3)), np.ones((2, 4))])
    tasks = synthetic_tasks(2)
    with pytest.raises(ShapeError, match="task features have dim 8"):
        S.train_model_spider(
            tasks, spider=S.ModelSpider(S.SpiderConfig(num_models=5, task_dim=4, dim=8, heads=2), rngs=nnx.Rngs(0))
        )


def test_scoring_survives_nnx_tree_mode():
    spider = S.ModelSpider(CFG, rngs=nnx.Rngs(1))
    tasks = synthetic_tasks(2)
    graphdef, state = nnx.split(spider)
    f = jax.jit(lambda s, x, m: nnx.merge(graphdef, s)(x, m))
    np.testing.assert_allclose(
        np.asarray(f(state, tasks.features[0], tasks.mask[0])),
        np.asarray(spider(tasks.features[0], tasks.mask[0])),
        rtol=RTOL32,
        atol=ATOL32,
    )

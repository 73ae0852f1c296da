"""weightspace.learn.fit: the one training loop (oracle: a plain optax loop), resume, early stopping,
divergence, sharding, no retracing, module save/load."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from weightspace import ConfigError, LoadError
from weightspace.learn import FitReport, TrainConfig, TrainingDivergedError, fit, load_module, save_module
from weightspace.parallel import make_mesh
from weightspace.train import Checkpointing, Hook, Progress, Validation

_TRACES = {"n": 0}


class Net(nnx.Module):
    def __init__(self, d_in: int, *, dropout: float = 0.0, rngs: nnx.Rngs) -> None:
        self.l1 = nnx.Linear(d_in, 16, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.l2 = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(jax.nn.tanh(self.l1(x))))[..., 0]


def mse(model, batch, key):
    _TRACES["n"] += 1  # runs only while tracing
    err = model(batch["x"]) - batch["y"]
    return jnp.mean(err**2), {"mae": jnp.mean(jnp.abs(err))}


def dropout_mse(model, batch, key):
    err = model(batch["x"]) - batch["y"]
    return jnp.mean(err**2), {}


def idsum(model, batch, key):
    # A loss that exposes which examples were drawn (via aux metrics).
    return jnp.mean((model(batch["x"]) - batch["y"]) ** 2), {
        "ids": jnp.sum(batch["id"]),
        "ids2": jnp.sum(batch["id"] ** 2),
    }


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = np.sin(x @ rng.standard_normal(5)).astype(np.float32)
    return {"x": x, "y": y, "id": np.arange(64, dtype=np.float32)}


def _params(model):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_fit_matches_plain_optax_loop(data):
    """Full-batch steps: fit == a hand-written optax loop (same init, same optimizer)."""
    cfg = TrainConfig(
        steps=25,
        batch_size=64,
        learning_rate=1e-2,
        weight_decay=1e-3,
        grad_clip=0.5,
        schedule="cosine",
        warmup=5,
        eval_every=5,
    )
    model = Net(5, rngs=nnx.Rngs(0))
    report = fit(model, mse, {"x": data["x"], "y": data["y"]}, config=cfg)

    ref = Net(5, rngs=nnx.Rngs(0))
    tx = optax.chain(
        optax.clip_by_global_norm(0.5),
        optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 1e-2, 5, 25, 0.0), weight_decay=1e-3),
    )
    graphdef, params, rest = nnx.split(ref, nnx.Param, ...)
    opt = tx.init(params)
    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    losses = []

    @jax.jit
    def step(params, opt):
        def loss(p):
            m = nnx.merge(graphdef, p, rest, copy=True)
            return jnp.mean((m(x) - y) ** 2)

        val, g = jax.value_and_grad(loss)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, val

    for _ in range(25):
        params, opt, val = step(params, opt)
        losses.append(float(val))
    nnx.update(ref, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), _params(model), _params(ref))
    np.testing.assert_allclose(report.losses, losses, rtol=2e-5)
    assert isinstance(report, FitReport) and report.steps_done == 25 and report.resumed_from is None
    assert [h["step"] for h in report.history] == [5, 10, 15, 20, 25]
    np.testing.assert_allclose(report.history[0]["loss"], np.mean(losses[:5]), rtol=1e-5)
    assert "mae" in report.history[0] and report.compile_seconds > 0


def test_epochs_visit_every_example_once(data):
    model = Net(5, rngs=nnx.Rngs(0))
    # 64 examples, batches of 16: 4 steps per epoch; one history entry per epoch.
    report = fit(model, idsum, data, config=TrainConfig(steps=12, batch_size=16, eval_every=4, seed=1))
    ids = np.arange(64.0)
    for h in report.history:
        assert h["ids"] * 4 == pytest.approx(ids.sum())
        assert h["ids2"] * 4 == pytest.approx((ids**2).sum())


def test_batch_remainder_dropped_and_batch_clipped(data):
    sub = {k: v[:10] for k, v in data.items()}
    r = fit(
        Net(5, rngs=nnx.Rngs(0)), idsum, sub, config=TrainConfig(steps=2, batch_size=100, eval_every=1), progress=True
    )
    assert [h["ids"] for h in r.history] == [45.0, 45.0]  # batch clipped to the 10 examples


def test_no_retracing_within_and_across_calls(data):
    train = {"x": data["x"], "y": data["y"]}
    cfg = TrainConfig(steps=7, batch_size=8, eval_every=3)
    fit(Net(5, rngs=nnx.Rngs(0)), mse, train, config=cfg)
    before = _TRACES["n"]
    fit(Net(5, rngs=nnx.Rngs(1)), mse, train, config=cfg)
    fit(Net(5, rngs=nnx.Rngs(2)), mse, train, config=TrainConfig(steps=9, batch_size=8, eval_every=2, seed=3))
    assert _TRACES["n"] == before


class _Crash(Exception):
    pass


@pytest.mark.parametrize("schedule", ["constant", "cosine"], ids=["constant", "cosine"])
def test_resume_after_kill_is_bit_identical(data, tmp_path, schedule):
    cfg = TrainConfig(
        steps=12, batch_size=16, learning_rate=3e-3, eval_every=4, checkpoint_every=4, schedule=schedule, seed=5
    )
    train = {"x": data["x"], "y": data["y"]}

    def val(model):
        return -float(jnp.mean((model(train["x"]) - train["y"]) ** 2))

    full = Net(5, dropout=0.2, rngs=nnx.Rngs(0))
    r_full = fit(full, dropout_mse, train, config=cfg, val_fn=val)

    calls = {"n": 0}

    def val_crashing(model):
        calls["n"] += 1
        if calls["n"] == 2:  # dies at step 8, before that step's checkpoint
            raise _Crash
        return val(model)

    killed = Net(5, dropout=0.2, rngs=nnx.Rngs(0))
    with pytest.raises(_Crash):
        fit(killed, dropout_mse, train, config=cfg, val_fn=val_crashing, checkpoint_dir=tmp_path)
    resumed = Net(5, dropout=0.2, rngs=nnx.Rngs(0))
    r_res = fit(resumed, dropout_mse, train, config=cfg, val_fn=val, checkpoint_dir=tmp_path)
    assert r_res.resumed_from == 4 and r_res.steps_done == 12 and len(r_res.losses) == 8
    np.testing.assert_array_equal(r_res.losses, r_full.losses[4:])
    jax.tree.map(np.testing.assert_array_equal, _params(resumed), _params(full))
    assert r_res.history == r_full.history
    assert (r_res.best_step, r_res.best_score) == (r_full.best_step, r_full.best_score)
    # Fully done: a third call restores the final state and trains nothing.
    again = Net(5, dropout=0.2, rngs=nnx.Rngs(7))
    r3 = fit(again, dropout_mse, train, config=cfg, val_fn=val, checkpoint_dir=tmp_path)
    assert r3.resumed_from == 12 and len(r3.losses) == 0
    jax.tree.map(np.testing.assert_array_equal, _params(again), _params(full))
    with pytest.raises(ConfigError, match="cannot resume"):
        fit(
            Net(5, dropout=0.2, rngs=nnx.Rngs(0)),
            dropout_mse,
            train,
            config=TrainConfig(steps=12, batch_size=16, learning_rate=1e-2, seed=5),
            checkpoint_dir=tmp_path,
        )
    with pytest.raises(ConfigError, match="checkpoint"):
        fit(
            Net(3, dropout=0.2, rngs=nnx.Rngs(0)),
            dropout_mse,
            {"x": data["x"][:, :3], "y": data["y"]},
            config=cfg,
            checkpoint_dir=tmp_path,
        )


def test_early_stopping_ends_at_best_state(data):
    train = {"x": data["x"], "y": data["y"]}
    seen = []

    def val(model):
        seen.append(_params(model))
        return -abs(len(seen) - 3)  # peaks at the 3rd evaluation

    model = Net(5, rngs=nnx.Rngs(0))
    r = fit(model, mse, train, config=TrainConfig(steps=100, batch_size=16, eval_every=2, patience=2), val_fn=val)
    assert r.best_step == 6 and r.best_score == 0 and r.steps_done == 10 and len(seen) == 5
    assert [h["val"] for h in r.history] == [-2, -1, 0, -1, -2]
    jax.tree.map(np.testing.assert_array_equal, _params(model), seen[2])


class _EvalCounter(Hook):
    """A stateful user hook: counts evaluations and keeps a running array; resumes with the run."""

    every = 3  # also asks for boundaries every 3 steps

    def __init__(self):
        self.evals, self.boundaries, self.total = 0, [], jnp.zeros(())

    def evaluate(self, event):
        self.evals += 1
        self.total = self.total + event.entry["loss"]
        event.entry["evals"] = self.evals

    def boundary(self, run, *, stop):
        self.boundaries.append(run.step)

    def state_dict(self):
        return {"evals": self.evals}

    def load_state_dict(self, state):
        self.evals = state["evals"]

    def arrays(self, run):
        return self.total

    def load_arrays(self, tree):
        self.total = tree


def test_hooks_as_objects_resume_with_the_run(data, tmp_path):
    train = {"x": data["x"], "y": data["y"]}
    cfg = TrainConfig(steps=12, batch_size=16, eval_every=4, seed=2)

    def val(model):
        return -float(jnp.mean((model(train["x"]) - train["y"]) ** 2))

    # val_fn= is shorthand for a Validation hook: same history, same best state
    a, b = Net(5, rngs=nnx.Rngs(0)), Net(5, rngs=nnx.Rngs(0))
    ra = fit(a, mse, train, config=cfg, val_fn=val)
    rb = fit(b, mse, train, config=cfg, hooks=[Validation(val), Progress(False)])
    assert ra.history == rb.history and (ra.best_step, ra.best_score) == (rb.best_step, rb.best_score)
    jax.tree.map(np.testing.assert_array_equal, _params(a), _params(b))

    full_hook = _EvalCounter()
    r_full = fit(Net(5, rngs=nnx.Rngs(0)), mse, train, config=cfg, hooks=[full_hook])
    assert full_hook.boundaries == [3, 4, 6, 8, 9, 12] and [h["evals"] for h in r_full.history] == [1, 2, 3]

    first = _EvalCounter()
    fit(Net(5, rngs=nnx.Rngs(0)), mse, train, config=cfg.replace(steps=8), hooks=[first, Checkpointing(tmp_path)])
    second = _EvalCounter()
    r = fit(Net(5, rngs=nnx.Rngs(0)), mse, train, config=cfg, hooks=[second], checkpoint_dir=tmp_path)
    assert r.resumed_from == 8 and second.evals == 3 and r.history == r_full.history
    np.testing.assert_array_equal(second.total, full_hook.total)
    with pytest.raises(ConfigError, match=r"cannot resume.*stateful hooks"):
        fit(Net(5, rngs=nnx.Rngs(0)), mse, train, config=cfg, checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="more than one validation"):
        fit(Net(5, rngs=nnx.Rngs(0)), mse, train, config=cfg, val_fn=val, hooks=[Validation(val)])
    with pytest.raises(ConfigError, match="every hook must be"):
        fit(Net(5, rngs=nnx.Rngs(0)), mse, train, config=cfg, hooks=[3])


def test_divergence_names_step_and_keeps_last_good_checkpoint(data, tmp_path):
    x, y = data["x"][:16], data["y"][:16]

    def sample(key, step):
        bad = np.float32(np.nan) if step == 5 else np.float32(1.0)
        return {"x": x * bad, "y": y}

    model = Net(5, rngs=nnx.Rngs(0))
    before = _params(model)
    cfg = TrainConfig(steps=20, batch_size=16, eval_every=4, checkpoint_every=4)
    with pytest.raises(
        TrainingDivergedError,
        match=r"loss of step 6 \(of 20\) is nan.*last good checkpoint is "
        r"step 4",
    ) as e:
        fit(model, mse, None, config=cfg, sample=sample, checkpoint_dir=tmp_path)
    assert e.value.step == 6 and e.value.checkpoint_step == 4
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [4]
    jax.tree.map(np.testing.assert_array_equal, _params(model), before)


def test_sharded_equals_unsharded(data):
    train = {"x": data["x"], "y": data["y"]}
    cfg = TrainConfig(steps=10, batch_size=16, learning_rate=1e-2, eval_every=5)
    a, b = Net(5, rngs=nnx.Rngs(0)), Net(5, rngs=nnx.Rngs(0))
    ra = fit(a, mse, train, config=cfg)
    mesh = make_mesh()
    assert mesh.size == 8
    rb = fit(b, mse, train, config=cfg, mesh=mesh)
    np.testing.assert_allclose(rb.losses, ra.losses, rtol=1e-5)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), _params(a), _params(b))
    with pytest.raises(ConfigError, match="cannot fill one batch across 8 devices"):
        fit(Net(5, rngs=nnx.Rngs(0)), mse, {k: v[:5] for k, v in train.items()}, config=cfg, mesh=mesh)


def test_config_validation_and_optimizer_cache():
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig(learning_rate=float("nan"))
    assert TrainConfig(steps=5).optimizer() is TrainConfig(steps=9).optimizer()  # constant: steps irrelevant
    assert (
        TrainConfig(steps=5, schedule="cosine").optimizer() is not TrainConfig(steps=9, schedule="cosine").optimizer()
    )
    # cosine decays to 0: the last update is (numerically) zero.
    tx = TrainConfig(steps=10, schedule="cosine", learning_rate=0.1).optimizer()
    p = {"w": jnp.ones(3)}
    s = tx.init(p)
    for _ in range(11):
        u, s = tx.update({"w": jnp.ones(3)}, s, p)
    assert float(jnp.abs(u["w"]).max()) < 1e-8


def test_bad_inputs(data):
    with pytest.raises(Exception, match="same leading"):
        fit(Net(5, rngs=nnx.Rngs(0)), mse, {"x": data["x"], "y": data["y"][:3]}, config=TrainConfig(steps=1))
    with pytest.raises(ConfigError, match=r"nnx\.Module"):
        fit(lambda x: x, mse, data, config=TrainConfig(steps=1))


def test_save_load_module_round_trip(tmp_path):
    net = Net(5, dropout=0.1, rngs=nnx.Rngs(3))
    p = save_module(net, tmp_path / "net", config={"d_in": 5})
    back = load_module(p, lambda c: Net(c["d_in"], dropout=0.1, rngs=nnx.Rngs(0)))
    jax.tree.map(np.testing.assert_array_equal, _params(back), _params(net))
    with pytest.raises(ConfigError, match=r"'l1'\]\['kernel'\].*\[5, 16\].*\[4, 16\]"):
        load_module(p, lambda c: Net(4, dropout=0.1, rngs=nnx.Rngs(0)))
    with pytest.raises(LoadError, match="not a saved weightspace module"):
        load_module(tmp_path, lambda c: Net(5, rngs=nnx.Rngs(0)))
    with pytest.raises(ConfigError, match="JSON-serialisable"):
        save_module(net, tmp_path / "x", config={"f": object()})

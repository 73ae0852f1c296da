"""ProbeLog galleries on disk: round trip, append, resume-after-kill, model/logit search, bad input, CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weightspace import ConfigError, InvalidValueError, LoadError, ShapeError
from weightspace.cli import main
from weightspace.data import make_probes
from weightspace.nets import CNN, MLP
from weightspace.search import Gallery, Responses, build_gallery, logit_descriptors, open_gallery
from weightspace.testing import assert_tree_allclose
from weightspace.zoo import Collection, Zoo, save_zoo


def _responses(name, n, probes=48, logits=3, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"{name}-{i}" for i in range(n)]
    classes = [[f"c{(i + j) % 5}" for j in range(logits)] for i in range(n)]
    return Responses(name, rng.normal(size=(n, probes, logits)).astype(np.float32), ids, classes)


@pytest.fixture
def probes():
    return make_probes("uniform", 48, shape=(6, 6, 1))


@pytest.mark.parametrize("dtype", ["float16", "float32"], ids=["float16", "float32"])
def test_round_trip_metadata_and_memmap(tmp_path, probes, dtype):
    r = _responses("a", 7)
    g = build_gallery(r, probes, tmp_path / "g", dtype=dtype, models_per_shard=3)
    assert (g.num_logits, g.num_probes, g.complete) == (21, 48, True)
    assert [len(z["shards"]) for z in g.manifest["zoos"]] == [3]
    assert all(isinstance(c, np.memmap) for c in g.columns())
    want = np.asarray(logit_descriptors(r.values))
    assert_tree_allclose(g.descriptors(np.arange(21)), want.astype(dtype).astype(np.float32))
    assert g.info(10) == ("a", "a-3", 1, "c4")
    assert g.logits_of("a-3").tolist() == [9, 10, 11]
    g2 = open_gallery(tmp_path / "g")
    assert g2.probes.name == probes.name and np.array_equal(g2.probes.data, probes.data)


def test_append_keeps_existing_shards(tmp_path, probes):
    build_gallery(_responses("a", 5), probes, tmp_path / "g", models_per_shard=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "g" / "shards").iterdir()}
    g = open_gallery(tmp_path / "g").append(_responses("b", 4, seed=1), models_per_shard=2)
    assert g.zoos == ["a", "b"] and g.num_logits == 27
    for name, data in before.items():
        assert (tmp_path / "g" / "shards" / name).read_bytes() == data
    assert g.info(15)[:2] == ("b", "b-0")
    # re-indexing an already indexed zoo is a no-op; a different zoo under the same name is refused
    assert build_gallery(_responses("a", 5), probes, tmp_path / "g").num_logits == 27
    with pytest.raises(InvalidValueError, match="already indexed"):
        build_gallery(_responses("a", 5, seed=9), probes, tmp_path / "g")


def test_resume_after_kill_is_byte_identical(tmp_path, probes):
    src = [_responses("a", 7), _responses("b", 5, seed=1)]
    build_gallery(src, probes, tmp_path / "full", models_per_shard=2)

    class Killed(Exception):
        pass

    def die_after_three(done, total):
        if done >= 6:  # three shards of zoo "a"
            raise Killed

    with pytest.raises(Killed):
        build_gallery(src, probes, tmp_path / "part", models_per_shard=2, progress=die_after_three)
    assert not Gallery(tmp_path / "part").complete
    assert Gallery(tmp_path / "part").num_logits == 18
    calls = []
    build_gallery(src, probes, tmp_path / "part", models_per_shard=2, progress=lambda d, t: calls.append(d))
    assert calls[0] == 7  # resumed at model 6 (the last shard of "a"): nothing recomputed
    files = sorted(p.relative_to(tmp_path / "full") for p in (tmp_path / "full").rglob("*") if p.is_file())
    part = sorted(p.relative_to(tmp_path / "part") for p in (tmp_path / "part").rglob("*") if p.is_file())
    assert files == part
    for f in files:
        assert (tmp_path / "full" / f).read_bytes() == (tmp_path / "part" / f).read_bytes(), f


def test_search_logit_planted_and_text_protocol(tmp_path, probes):
    r = _responses("a", 6)
    vals = r.values.copy()
    vals[4, :, 2] = 3.0 * vals[1, :, 0] + 1.0  # logit a-4:2 behaves exactly like a-1:0 (up to scale/offset)
    g = build_gallery(Responses("a", vals, r.ids, r.classes), probes, tmp_path / "g")
    hit = g.search_logit("a-1:0", top=3)[0]
    assert (hit.model_id, hit.logit, hit.rank) == ("a-4", 2, 1) and hit.score < 0.05
    own = g.search_logit("a-1:0", top=1, exclude_model=False)[0]
    assert (own.model_id, own.logit) == ("a-1", 0)
    res = g.search(vals[1, :, 0], top=2, labels=["raw"])[0]  # raw responses are normalised like the gallery
    assert res.query == "raw" and res[0].index in (3, 14)
    out = json.loads(res.to_json())
    assert out["hits"][0]["zoo"] == "a" and len(out["hits"]) == 2

    class Echo:  # an Aligner returning a fixed descriptor
        def describe(self, texts, probes_):
            return np.stack([vals[4, :, 2]] * len(texts))

    t = g.search_text(["anything"], Echo(), top=1)[0]
    assert (t[0].model_id, t[0].logit) in {("a-4", 2), ("a-1", 0)}


def test_bad_input_errors(tmp_path, probes):
    g = build_gallery(_responses("a", 3), probes, tmp_path / "g")
    with pytest.raises(InvalidValueError, match="no model 'nope'"):
        g.search_logit("nope:0")
    with pytest.raises(InvalidValueError, match="out of range"):
        g.search_logit("a-0:7")
    with pytest.raises(InvalidValueError, match="MODEL_ID:IDX"):
        g.search_logit("a-0")
    with pytest.raises(ShapeError, match="same ordered probe set"):
        g.search(np.zeros((1, 47)))
    with pytest.raises(InvalidValueError, match="non-empty"):
        g.search_text([""], object())
    with pytest.raises(InvalidValueError, match="no text"):
        g.search_text([], object())
    other = make_probes("uniform", 48, seed=1, shape=(6, 6, 1))
    with pytest.raises(InvalidValueError, match="probe set"):
        build_gallery(_responses("b", 2), other, tmp_path / "g")
    with pytest.raises(ShapeError, match="probes"):
        build_gallery(_responses("c", 2, probes=40), probes, tmp_path / "g")
    with pytest.raises(ConfigError):
        build_gallery(_responses("d", 2), probes, tmp_path / "g", dtype="int8")
    bad = _responses("e", 2)
    bad.values[1, 3, 0] = np.nan
    with pytest.raises(InvalidValueError, match="NaN"):
        build_gallery(bad, probes, tmp_path / "g2")
    with pytest.raises(LoadError, match="not a gallery"):
        open_gallery(tmp_path)


def test_corrupted_shard_is_a_load_error(tmp_path, probes):
    g = build_gallery(_responses("a", 4), probes, tmp_path / "g", models_per_shard=2)
    shard = g.shards[1].file
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # flip a descriptor byte: only the checksum sees it
    shard.write_bytes(bytes(data))
    with pytest.raises(LoadError, match="corrupt"):
        open_gallery(tmp_path / "g")
    assert open_gallery(tmp_path / "g", verify=False).num_logits == 12
    shard.write_bytes(bytes(data[:-100]))  # truncated
    with pytest.raises(LoadError, match="truncated"):
        open_gallery(tmp_path / "g", verify=False)
    shard.write_bytes(b"\x10\x00")
    with pytest.raises(LoadError, match=shard.name):
        open_gallery(tmp_path / "g", verify=False)


def _mixed_collection():
    mlp = MLP(in_features=36, hidden=(8,), out_features=3, image_shape=(6, 6, 1))
    cnn = CNN(image_shape=(8, 8, 3), channels=(4,), out_features=4)
    a = Zoo.init(mlp, 5, key=jax.random.key(0), name="mlps")
    a = a.with_meta(classes=[["x", "y", "z"]] * 5)
    b = Zoo.init(cnn, 3, key=jax.random.key(1), name="cnns")
    return Collection([a, b])


def test_build_from_heterogeneous_collection_matches_per_model_loop(tmp_path, probes):
    coll = _mixed_collection()
    g = build_gallery(coll, probes, tmp_path / "g", dtype="float32")
    assert g.num_logits == 5 * 3 + 3 * 4
    rows = []
    for zoo in coll:
        x = zoo.arch.adapt(jnp.asarray(probes.data))  # each architecture sees the same ordered probes
        for i in range(len(zoo)):
            rows.append(np.asarray(zoo.arch.apply(zoo.model(i), x)))
    want = np.concatenate([np.asarray(logit_descriptors(r[None])) for r in rows])
    assert_tree_allclose(g.descriptors(np.arange(g.num_logits)), want, scale=100)  # conv/matmul round-off
    assert g.info(0)[3] == "x" and g.info(15)[3] is None
    res = g.search_model(coll.zoos[1].select([2]), exclude_self=False, top=1)
    assert [r[0].model_id for r in res] == ["cnns-000002"] * 4
    assert [r[0].logit for r in res] == [0, 1, 2, 3]
    res = g.search_model(coll.zoos[1].select([2]), top=3)
    assert all(h.model_id != "cnns-000002" for r in res for h in r)


def test_cli_index_and_search(tmp_path, capsys):
    zoo = Zoo.init(
        MLP(in_features=784, hidden=(8,), out_features=3, image_shape=(28, 28, 1)),
        4,
        key=jax.random.key(3),
        name="tiny",
    )
    zoo = zoo.with_meta(classes=[["Sandal", "Bag", "Coat"]] * 4)
    save_zoo(zoo, tmp_path / "tiny.safetensors")
    out = str(tmp_path / "g")
    assert (
        main(
            [
                "index",
                str(tmp_path / "tiny.safetensors"),
                "--probes",
                "uniform",
                "--n",
                "64",
                "--out",
                out,
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["search", out, "--logit", "tiny-000001:0", "--top", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res[0]["hits"]) == 2 and all(h["model_id"] != "tiny-000001" for h in res[0]["hits"])
    assert main(["search", out, "--logit", "tiny-000001:0"]) == 0
    assert "class" in capsys.readouterr().out
    assert main(["search", out, "--model", str(tmp_path / "tiny.safetensors"), "--top", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res) == 4 * 3 and all(r["hits"][0]["model_id"] != r["query"].split()[1].split(":")[0] for r in res)
    # uniform probes have no labels (by default --text would use the ConSE aligner: tests/test_search_conse.py)
    assert main(["search", out, "--text", "sandal", "--aligner", "label"]) == 2
    assert "no labels" in capsys.readouterr().err
    assert main(["search", out, "--logit", "ghost:0"]) == 2

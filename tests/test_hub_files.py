"""A hub downloaded from elsewhere: PyTorch-written state_dicts whose config.json / safetensors metadata
say the activation, class names and input preprocessing. They index and search from the CLI with the
right classes; the library's responses equal PyTorch's; contradictions are errors; guesses warn."""

from __future__ import annotations

import itertools
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from weightspace import ConfigError, GuessWarning, ShapeError  # noqa: E402
from weightspace.cli import main  # noqa: E402
from weightspace.data import load_dataset, make_probes  # noqa: E402
from weightspace.probing import probe  # noqa: E402
from weightspace.testing import assert_tree_allclose  # noqa: E402
from weightspace.zoo import load_collection, load_model, load_zoo  # noqa: E402

MEAN, STD = 0.286, 0.353
_ACT = {"tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid, "gelu": torch.nn.GELU, "relu": torch.nn.ReLU}


class TorchMLP(torch.nn.Module):
    """How a user writes it: transforms (normalisation) in front, flatten, a ModuleList of Linear."""

    def __init__(self, widths, act, *, mean=0.0, std=1.0, per_image=False):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.act, self.mean, self.std, self.per_image = _ACT[act](), mean, std, per_image

    def preprocess(self, x):  # x: [n, 1, 28, 28] in [0, 1]
        if self.per_image:  # tf.image.per_image_standardization
            flat = x.flatten(1)
            m = flat.mean(1, keepdim=True)
            s = flat.std(1, unbiased=False, keepdim=True).clamp_min(1.0 / np.sqrt(flat.shape[1]))
            x = ((flat - m) / s).reshape(x.shape)
        return (x - self.mean) / self.std

    def forward(self, x):
        h = self.preprocess(x).flatten(1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h


class TorchCNN(torch.nn.Module):
    def __init__(self, channels, k, act, *, mean=0.0, std=1.0):
        super().__init__()
        cins = (1, *channels[:-1])
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(cins, channels, strict=True)
        )
        self.head = torch.nn.Linear(channels[-1], k)
        self.act, self.mean, self.std = _ACT[act](), mean, std

    def forward(self, x):
        h = (x - self.mean) / self.std
        for c in self.convs:
            h = self.act(c(h))
        return self.head(h.mean((2, 3)))


# (name, class indices, activation, how the files say it)
HUB = [
    ("tanh-cfg", [5, 1, 8], "tanh", "config"),  # Sandal Trouser Bag; config.json, global mean/std
    ("sigmoid-meta", [0, 7, 3], "sigmoid", "metadata"),  # T-shirt Sneaker Dress; metadata only (no image size)
    ("gelu-perimage", [9, 2, 1], "gelu", "config-per-image"),  # Ankle boot Pullover Trouser
    ("cnn-relu", [8, 5, 7, 3], "relu", "cnn-config"),  # Bag Sandal Sneaker Dress; CNN with preprocessor_config
]


def _train(model, x, y, steps, seed):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _write(root: Path, name: str, model, classes, names, how: str) -> None:
    d = root / name
    d.mkdir(parents=True)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    id2label = {str(i): names[c] for i, c in enumerate(classes)}
    if how == "config":
        save_file(sd, str(d / "model.safetensors"))
        (d / "config.json").write_text(
            json.dumps(
                {
                    "model_type": "mlp",
                    "hidden_sizes": [32],
                    "hidden_act": "tanh",
                    "id2label": id2label,
                    "image_size": 28,
                    "num_channels": 1,
                    "image_mean": [MEAN],
                    "image_std": [STD],
                }
            )
        )
    elif how == "metadata":
        save_file(
            sd,
            str(d / "model.safetensors"),
            metadata={"activation": "sigmoid", "classes": json.dumps([names[c] for c in classes])},
        )
    elif how == "config-per-image":
        save_file(sd, str(d / "model.safetensors"))
        (d / "config.json").write_text(
            json.dumps(
                {
                    "hidden_act": "gelu",
                    "label2id": {v: int(k) for k, v in id2label.items()},
                    "image_size": [28, 28],
                    "per_image_standardization": True,
                }
            )
        )
    else:
        save_file(sd, str(d / "model.safetensors"))
        (d / "config.json").write_text(
            json.dumps(
                {
                    "model_type": "cnn",
                    "hidden_act": "relu",
                    "id2label": id2label,
                    "stride": 2,
                    "padding": 1,
                    "kernel_size": 3,
                }
            )
        )
        (d / "preprocessor_config.json").write_text(
            json.dumps({"image_size": 28, "do_normalize": True, "image_mean": MEAN, "image_std": STD})
        )


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Real Fashion-MNIST classifiers trained here with PyTorch (a few seconds), saved as a downloaded hub."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend (several times slower on a loaded machine)
    ds = load_dataset("fashion-mnist", "train")
    x_all = torch.from_numpy(ds.images[:20000].copy()).permute(0, 3, 1, 2).contiguous()
    y_all = torch.from_numpy(ds.labels[:20000].astype(np.int64))
    root = tmp_path_factory.mktemp("hub")
    models = {}
    for i, (name, classes, act, how) in enumerate(HUB):
        keep = np.isin(y_all.numpy(), classes)
        lut = np.full(10, -1)
        lut[classes] = np.arange(len(classes))  # output j is class classes[j] (the id2label order)
        x, y = x_all[keep], torch.from_numpy(lut[y_all.numpy()[keep]])
        if how == "cnn-config":
            m = TorchCNN((8, 16), len(classes), act, mean=MEAN, std=STD)
            steps = 150
        else:
            m = TorchMLP(
                (784, 32, len(classes)),
                act,
                mean=MEAN if how == "config" else 0.0,
                std=STD if how == "config" else 1.0,
                per_image=how == "config-per-image",
            )
            steps = 200
        _train(m, x, y, steps, seed=i).eval()
        _write(root, name, m, classes, ds.class_names, how)
        models[name] = (m, [ds.class_names[c] for c in classes])
    torch.set_num_threads(threads)
    return root, models


def test_files_say_activation_classes_and_preprocessing(hub):
    root, models = hub
    with warnings.catch_warnings():
        warnings.simplefilter("error", GuessWarning)  # nothing is guessed: every file says it all
        coll = load_collection(root, strict=True)
    assert coll.num_models == len(HUB)
    archs = {z.ids[0]: z.arch for z in coll}
    assert {k: a.activation for k, a in archs.items()} == {n: act for n, _, act, _ in HUB}
    assert archs["tanh-cfg"].image_shape == (28, 28, 1) and archs["tanh-cfg"].input_mean == MEAN
    assert archs["sigmoid-meta"].image_shape is None  # an MLP on flattened images, from shapes alone
    assert archs["gelu-perimage"].per_image_standardization
    assert archs["cnn-relu"].input_std == STD and archs["cnn-relu"].strides == 2
    for z in coll:
        assert z.meta["classes"] == [models[z.ids[0]][1]]


def test_responses_equal_pytorch(hub):
    # The library runs each file as its PyTorch model (with the preprocessing its files declare) runs.
    root, models = hub
    probes = make_probes("fashion-mnist", 64, seed=1)
    x = torch.from_numpy(probes.data).permute(0, 3, 1, 2)
    for z in load_collection(root):
        m, _ = models[z.ids[0]]
        with torch.no_grad():
            want = m(x).numpy()
        assert_tree_allclose(np.asarray(probe(z, probes, mesh=False))[0], want)


def test_index_and_text_search_from_the_cli(hub, tmp_path, capsys):
    root, models = hub
    g = tmp_path / "g"
    assert (
        main(
            [
                "index",
                str(root),
                "--probes",
                "fashion-mnist",
                "--n",
                "300",
                "--out",
                str(g),
                "--no-progress",
                "--strict",
            ]
        )
        == 0
    )
    capsys.readouterr()
    queries = sorted({c for _, cls in models.values() for c in cls})
    assert main(["search", str(g), *[a for q in queries for a in ("--text", q)], "--top", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    top1 = {q: r["hits"][0]["class_name"] for q, r in zip(queries, results, strict=True)}
    assert top1 == {q: q for q in queries}


def test_guessing_warns_names_the_file_and_can_be_refused_or_overridden(hub, tmp_path, capsys):
    root, models = hub
    m, _ = models["sigmoid-meta"]
    plain = tmp_path / "plain" / "model.safetensors"
    plain.parent.mkdir()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(plain))
    with pytest.warns(GuessWarning, match=r"plain/model\.safetensors.*activation \(assumed relu\)"):
        arch, _, meta = load_model(plain)
    assert arch.activation == "relu" and "classes" not in meta
    with pytest.raises(ConfigError, match=r"plain/model\.safetensors: strict=True.*activation"):
        load_model(plain, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GuessWarning)
        z = load_zoo(plain, activation="sigmoid", strict=True)
    assert z.arch.activation == "sigmoid"
    with pytest.raises(ConfigError, match=r"activation='tanh' was asked for.*says 'sigmoid'"):
        load_collection(root / "sigmoid-meta", activation="tanh")
    # the CLI: --strict refuses, --activation says it; an image MLP from shapes takes image probes
    g = tmp_path / "g"
    assert (
        main(
            [
                "index",
                str(plain.parent),
                "--probes",
                "fashion-mnist",
                "--n",
                "20",
                "--out",
                str(g),
                "--strict",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "plain/model.safetensors: strict=True" in capsys.readouterr().err
    assert not g.exists()
    assert (
        main(
            [
                "index",
                str(plain.parent),
                "--probes",
                "fashion-mnist",
                "--n",
                "20",
                "--out",
                str(g),
                "--activation",
                "sigmoid",
                "--no-progress",
            ]
        )
        == 0
    )


def _contradict(root: Path, tmp_path: Path, change: dict) -> Path:
    d = tmp_path / "bad"
    d.mkdir(exist_ok=True)
    (d / "model.safetensors").write_bytes((root / "tanh-cfg" / "model.safetensors").read_bytes())
    cfg = json.loads((root / "tanh-cfg" / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **change}))
    return d


CONTRADICTIONS = {
    "hidden_sizes": (
        {"hidden_sizes": [64]},
        r"config\.json \(hidden_sizes\) says hidden_sizes=\(64,\), but the "
        r"tensors say \[32\] \(layers\.0\.weight \(32, 784\)",
    ),
    "classes": ({"id2label": {"0": "a", "1": "b"}}, r"config\.json \(id2label\) names 2 classes, but the model has 3"),
    "image_size": ({"image_size": 32}, r"image_size=\[32, 32\] x 1 channels, but the first layer takes 784 inputs"),
    "model_type": ({"model_type": "cnn"}, r"says model_type='cnn', but the tensors say 'mlp'"),
    "num_labels": ({"num_labels": 10}, r"says num_labels=10, but the tensors say 3"),
}


@pytest.mark.parametrize("case", sorted(CONTRADICTIONS), ids=sorted(CONTRADICTIONS))
def test_config_contradicting_shapes_is_an_error_naming_both(hub, tmp_path, case, capsys):
    root, _ = hub
    change, match = CONTRADICTIONS[case]
    bad = _contradict(root, tmp_path, change)
    with pytest.raises(ConfigError, match=match) as info:
        load_collection(bad)
    assert str(bad / "model.safetensors") in str(info.value)
    before = sorted(os.listdir(tmp_path))
    assert (
        main(
            ["index", str(bad), "--probes", "fashion-mnist", "--n", "8", "--out", str(tmp_path / "g"), "--no-progress"]
        )
        == 2
    )
    assert "config.json" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written on failure


def test_declarations_that_disagree_or_do_not_chain(hub, tmp_path):
    _, models = hub
    d = tmp_path / "two"
    d.mkdir()
    m, _ = models["tanh-cfg"]
    save_file(
        {k: v.contiguous() for k, v in m.state_dict().items()},
        str(d / "model.safetensors"),
        metadata={"activation": "gelu"},
    )
    (d / "config.json").write_text(json.dumps({"hidden_act": "tanh"}))
    with pytest.raises(
        ConfigError,
        match=r"config\.json \(hidden_act\) says activation='tanh' but .*metadata\) "
        r"\(activation\) says activation='gelu'",
    ):
        load_model(d / "model.safetensors")
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    sd["layers.1.weight"] = torch.zeros(3, 31)
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(ShapeError, match=r"'layers\.1\.weight' \(3, 31\) does not take the 32 outputs"):
        load_model(d / "model.safetensors")

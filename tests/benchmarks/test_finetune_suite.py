"""The fine-tune suite (benchmarks/finetune.py): its summary, on run records written by hand; its image tasks' data
and model, on a tiny Fashion-MNIST made here and a tiny EfficientNet (the real model is never loaded).

The paired statistics are checked against numbers worked out here, not against the summary's own
output: an arm is paired with AdamW on the seeds both ran, and an arm still being measured (fewer
seeds) neither shrinks the other arms' seeds nor ranks above an arm measured on every seed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

finetune = pytest.importorskip("benchmarks.finetune")


def _record(task: str, arm: str, seed: int, val: float, test: float, first_share: float) -> dict:
    epochs = [
        {"epoch": 1, "train_time": 10.0, "val_acc": 0.6, "test_acc": 0.58, "test_top_share": first_share},
        {"epoch": 2, "train_time": 20.0, "val_acc": val - 0.01, "test_acc": test - 0.01, "test_top_share": 0.6},
        {
            "epoch": 3,
            "train_time": 30.0 if arm == "adamw" else 60.0,
            "val_acc": val,
            "test_acc": test,
            "test_top_share": 0.55,
        },
    ]
    result = {
        "seed": seed,
        "epochs": epochs,
        "train_time": epochs[-1]["train_time"],
        "last_val": val,
        "last_test": test,
        "best_epoch": 3,
        "best_val": val,
        "best_test": test,
    }
    settings = finetune.resolved_settings(finetune.ARMS[arm][0])
    return {
        "task": {"name": task},
        "arm": arm,
        "settings": settings,
        "seed": seed,
        "result": result,
        "machine": {"cpu": "test cpu"},
    }


def _write(out: Path, rec: dict) -> None:
    path = finetune.run_path(out, rec["task"]["name"], rec["arm"], rec["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))


def test_arms_are_paired_with_adamw_on_the_seeds_they_share(tmp_path: Path) -> None:
    task = "zz"  # not one of TASKS: no task-definition check
    adamw_test = [0.70, 0.72, 0.71, 0.69, 0.73]
    sam_test = [0.74, 0.73, 0.75, 0.72, 0.76]  # every seed
    partial_test = {0: 0.80, 1: 0.79}  # two seeds only, better than everything on validation
    for s in range(5):
        _write(tmp_path, _record(task, "adamw", s, 0.70 + s / 100, adamw_test[s], 0.5))
        _write(tmp_path, _record(task, "sam", s, 0.75 + s / 100, sam_test[s], 0.99))
    for s, t in partial_test.items():
        _write(tmp_path, _record(task, "sam-0.02-lr-after-warmup", s, 0.90, t, 0.7))

    t = finetune.summarise(tmp_path)["tasks"][task]
    assert t["seeds"] == [0, 1, 2, 3, 4]
    assert t["arms"]["adamw"]["seeds"] == [0, 1, 2, 3, 4]
    assert t["arms"]["sam"]["seeds"] == [0, 1, 2, 3, 4]
    assert t["arms"]["sam-0.02-lr-after-warmup"]["seeds"] == [0, 1]
    # full-seed arms first (by validation), then the partial one, although its validation mean is the highest
    assert t["ranked_by_validation"] == ["sam", "adamw", "sam-0.02-lr-after-warmup"]

    # the paired test by hand: differences, their mean, t = mean / (sd / sqrt(n)), two-sided p from Student's t
    diffs = [a - b for a, b in zip(sam_test, adamw_test)]
    d = t["arms"]["sam"]["vs_adamw_test"]
    assert d["mean"] == pytest.approx(statistics.fmean(diffs), abs=1e-12)
    tstat = statistics.fmean(diffs) / (statistics.stdev(diffs) / math.sqrt(5))
    scipy_stats = pytest.importorskip("scipy.stats")
    assert d["p_value"] == pytest.approx(2 * scipy_stats.t.sf(abs(tstat), df=4), rel=1e-9)
    partial = t["arms"]["sam-0.02-lr-after-warmup"]["vs_adamw_test"]
    assert partial["mean"] == pytest.approx(statistics.fmean([0.80 - 0.70, 0.79 - 0.72]), abs=1e-12)
    assert t["arms"]["sam"]["time_ratio"] == pytest.approx(2.0)
    # the first epoch at one class (share 0.99 >= 0.95) is counted per seed; the last epoch is not collapsed
    assert t["arms"]["sam"]["first_epoch_collapsed_seeds"] == [0, 1, 2, 3, 4]
    assert t["arms"]["sam"]["collapsed_seeds"] == []

    md = finetune.markdown(finetune.summarise(tmp_path))
    row = next(line for line in md.splitlines() if line.startswith("| 1 | sam |"))
    assert "| 0-4 |" in row and "(5 of 5 at one class)" in row
    assert next(line for line in md.splitlines() if "sam-0.02-lr-after-warmup |" in line).startswith("| 3 |")
    assert "| 0, 1 |" in md


# ---- the image tasks (e, f): EfficientNet-Lite0 on Fashion-MNIST ------------------------------


def _idx(path: Path, array) -> None:
    """An idx file (gzip) as Fashion-MNIST ships it: magic 0x08 (unsigned bytes), the dimensions, the bytes."""
    import gzip
    import struct

    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def _tiny_fashion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Idx files of 600 training and 200 test images, each one grey level that tells its class (class k: 20k + 10),
    built by samtune.sources into a cache under tmp_path; the model folder is only the Lite0 processor's config."""
    np = pytest.importorskip("numpy")
    idx_dir, model_dir = tmp_path / "idx", tmp_path / "lite0"
    idx_dir.mkdir()
    model_dir.mkdir()
    rng = np.random.default_rng(1)
    for images, labels, n in (
        ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 600),
        ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 200),
    ):
        # each half balanced: the saved train and validation splits are the halves of a file this small
        y = np.concatenate([rng.permutation(np.arange(n // 2) % 10) for _ in range(2)]).astype(np.uint8)
        _idx(idx_dir / labels, y)
        _idx(idx_dir / images, np.broadcast_to((20 * y + 10)[:, None, None], (n, 28, 28)).astype(np.uint8).copy())
    config = {
        "image_processor_type": "EfficientNetImageProcessor",
        "do_resize": True,
        "size": {"height": 224, "width": 224},
        "resample": 3,
        "do_center_crop": False,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "rescale_offset": False,
        "do_normalize": True,
        "image_mean": [127 / 255] * 3,  # Lite0's: (x - 127) / 128
        "image_std": [128 / 255] * 3,
        "include_top": False,
    }
    (model_dir / "preprocessor_config.json").write_text(json.dumps(config))
    monkeypatch.setenv("SAMTUNE_FASHION_MNIST_DIR", str(idx_dir))
    monkeypatch.setenv("SAMTUNE_CACHE", str(tmp_path / "cache"))
    accuracy = pytest.importorskip("benchmarks.accuracy")
    monkeypatch.setattr(accuracy, "lite0_path", lambda: model_dir)
    accuracy._fashion_tensors.cache_clear()


def test_image_tasks_are_the_image_recipes_settings() -> None:
    yaml = pytest.importorskip("yaml")
    recipe = yaml.safe_load((ROOT / "recipes" / "efficientnet-fashion-mnist.yaml").read_text())
    e, f = finetune.TASKS["e"], finetune.TASKS["f"]
    training = recipe["training"]
    assert (e.data, e.model, e.noise, f.noise) == ("fashion", "lite0", 0.0, 0.3)
    assert (e.epochs, e.batch_size, e.learning_rate) == (training["epochs"], training["batch_size"], 1e-3)
    assert (e.weight_decay, e.warmup_ratio) == (training["weight_decay"], training["warmup"])
    assert (e.n_train, e.image_size) == (recipe["data"]["max_train_samples"], recipe["model"]["image_size"])
    assert (e.n_val, e.n_test) == (1000, 2000)
    assert dataclasses.replace(f, noise=0.0, name="e") == e  # f is e with noisy training labels, nothing else


def test_digits_tasks_are_the_accuracy_suites_digits_noise_pair() -> None:
    """g and h must train what `accuracy.py --suite digits-noise` trains (its earlier tables compare with them)."""
    vit, cnn = pytest.importorskip("benchmarks.accuracy").SUITES["digits-noise"]()
    g, h = finetune.TASKS["g"], finetune.TASKS["h"]
    assert (g.data, g.model, g.noise, g.epochs) == ("digits", "vit", 0.4, 40)
    assert (h.data, h.model, h.noise, h.image_size) == ("digits", "cnn", 0.4, 32)
    assert dataclasses.replace(g, name="vit") == vit and dataclasses.replace(h, name="cnn") == cnn


def test_fashion_splits_fixed_stratified_processed_and_noised_per_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    _tiny_fashion(tmp_path, monkeypatch)
    accuracy = pytest.importorskip("benchmarks.accuracy")
    # the saved dataset: train 300 / validation 300 (the last half of a file under 10,000) / test 200
    task = dataclasses.replace(finetune.TASKS["f"], n_train=100, n_val=50, n_test=80, image_size=32)
    s0, s1 = accuracy.build_splits(task, 0), accuracy.build_splits(task, 1)
    clean = dataclasses.replace(task, noise=0.0)
    c0 = accuracy.build_splits(clean, 0)

    for part, n in (("train", 100), ("val", 50), ("test", 80)):
        x, y = getattr(c0, part)["pixel_values"], getattr(c0, part)["labels"]
        assert x.shape == (n, 3, 32, 32) and x.dtype == torch.float32  # grayscale -> RGB, resized
        assert sorted(torch.bincount(y, minlength=10).tolist()) == [n // 10] * 10  # stratified (balanced source)
        # each image is one grey level 20k + 10 (k its class): normalised as (v - 127) / 128 in every channel
        want = ((20 * y.double() + 10) - 127) / 128
        assert torch.allclose(x.double().amax(dim=(1, 2, 3)), want, atol=1e-5)
        assert torch.allclose(x.double().amin(dim=(1, 2, 3)), want, atol=1e-5)
        # the same examples for every seed and arm: images identical, validation and test labels clean
        for noisy in (s0, s1):
            assert torch.equal(getattr(noisy, part)["pixel_values"], x)
            if part != "train":
                assert torch.equal(getattr(noisy, part)["labels"], y)

    y_true = c0.train["labels"]
    for s in (s0, s1):
        wrong = s.train["labels"] != y_true
        assert torch.equal(wrong, s.noisy)  # every replaced label is a wrong class, every other one kept
        assert 0.15 < float(wrong.float().mean()) < 0.45  # 30% of 100, drawn
    assert not torch.equal(s0.noisy, s1.noisy)  # drawn per seed
    assert not c0.noisy.any()
    expected, _ = accuracy.symmetric_noise(y_true.numpy(), 0.3, 10, 1)  # the noise is symmetric_noise's, per seed
    assert np.array_equal(s1.train["labels"].numpy(), expected)


def test_lite0_gets_a_new_ten_class_head_drawn_from_the_seed_and_keeps_its_body(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    accuracy = pytest.importorskip("benchmarks.accuracy")
    config = transformers.EfficientNetConfig(
        image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=64, num_labels=1000
    )
    torch.manual_seed(0)
    transformers.EfficientNetForImageClassification(config).save_pretrained(tmp_path)  # a 1,000-class "ImageNet" one
    monkeypatch.setattr(accuracy, "lite0_path", lambda: tmp_path)
    saved = transformers.EfficientNetForImageClassification.from_pretrained(tmp_path).state_dict()

    task = finetune.TASKS["e"]
    a, b, c = (accuracy.build_model(task, seed, 10).state_dict() for seed in (3, 3, 4))
    assert a["classifier.weight"].shape == (10, saved["classifier.weight"].shape[1])
    assert torch.equal(a["classifier.weight"], b["classifier.weight"])  # paired: one head per seed for every arm
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])
    body = [k for k in saved if not k.startswith("classifier.")]
    assert body and all(torch.equal(a[k], saved[k]) for k in body)  # the pretrained body, untouched

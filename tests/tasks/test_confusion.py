"""Per-class scores and the confusion matrix: by hand, large label sets, and in train, eval and the card."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import text_examples, write_csv
from PIL import Image
from typer.testing import CliRunner

from samtune.cli import app
from samtune.confusion import Confusion, plot_confusion

runner = CliRunner()


def test_matrix_and_per_class_scores_match_a_hand_count():
    truth = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    guess = np.array([0, 1, 0, 1, 2, 2, 2, 0, 2])
    c = Confusion.of(["a", "b", "c"], truth, guess)
    assert c.matrix.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]  # rows: true, columns: predicted
    # a: predicted 3 times, 2 right; 3 true a's, 2 found. b: 2 predicted, 1 right; 2 true, 1 found. c: 4/4, 3 right.
    assert c.precision.tolist() == pytest.approx([2 / 3, 1 / 2, 3 / 4])
    assert c.recall.tolist() == pytest.approx([2 / 3, 1 / 2, 3 / 4])
    assert c.f1.tolist() == pytest.approx([2 / 3, 1 / 2, 3 / 4]) and c.support.tolist() == [3, 2, 4]
    assert c.top_confusions(2) == [("a", "b", 1), ("b", "c", 1)]  # ties in reading order
    assert json.loads(json.dumps(c.to_json()))["per_class"]["c"]["support"] == 4


def test_large_label_sets_keep_the_most_confused_classes(tmp_path):
    rng = np.random.default_rng(0)
    labels = [f"class-{i:02d}" for i in range(50)]
    truth = rng.integers(0, 50, 2000)
    guess = truth.copy()
    guess[truth == 7] = 8  # every 7 read as 8: the two most involved classes
    noisy = rng.random(2000) < 0.05
    guess[noisy] = rng.integers(0, 50, int(noisy.sum()))
    c = Confusion.of(labels, truth, guess)
    shown = c.shown(20)
    assert len(shown) == 20 and {7, 8} <= set(shown) and shown == sorted(shown)
    assert c.top_confusions(1)[0][:2] == ("class-07", "class-08")


@pytest.mark.parametrize("classes", [2, 10, 100])
def test_the_figure_is_drawn_for_small_and_large_label_sets(tmp_path, classes):
    rng = np.random.default_rng(classes)
    truth = rng.integers(0, classes, 30 * classes)
    guess = np.where(rng.random(truth.size) < 0.7, truth, rng.integers(0, classes, truth.size))
    path = plot_confusion(Confusion.of([f"label {i}" for i in range(classes)], truth, guess), tmp_path / "cm.png", "t")
    with Image.open(path) as png:
        assert png.format == "PNG" and min(png.size) >= 300


def test_train_writes_the_matrix_and_the_card_shows_it_eval_prints_it(tmp_path, text_model_dir, text_csv):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(text_csv),
            "--output-dir",
            str(out),
            "--max-steps",
            "6",
            "--batch-size",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "confusion.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    matrix = np.array(saved["matrix"])
    assert saved["labels"] == ["neg", "pos"] and matrix.sum() == metrics["eval_samples"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(metrics["eval_accuracy"], abs=1e-12)
    assert (out / "confusion_matrix.png").is_file()
    card = (out / "README.md").read_text()
    assert "## Where it errs" in card and "![Confusion matrix](confusion_matrix.png)" in card
    data = write_csv(tmp_path / "new.csv", text_examples(40, seed=3))
    figure = tmp_path / "eval-cm.png"
    evaluated = runner.invoke(app, ["eval", str(out), "--dataset", str(data), "--figure", str(figure)])
    assert evaluated.exit_code == 0, evaluated.output
    flat = " ".join(evaluated.output.split())  # rich wraps narrow tables' titles
    assert "precision" in flat and "recall" in flat and "confusion" in flat and "predicted" in flat
    assert figure.is_file()
    beside = json.loads((tmp_path / "eval-new-train-confusion.json").read_text())  # the figure's JSON, beside it
    assert np.array(beside["matrix"]).sum() == 40
    again = runner.invoke(app, ["eval", str(out), "--dataset", str(data)])  # default: beside the model
    assert again.exit_code == 0 and (out / "eval-new-train-confusion_matrix.png").is_file()

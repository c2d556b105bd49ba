"""Where a multi-label classifier errs: per-label precision, recall, F1, examples and predictions, by hand, for large
label sets, and in train, eval and the card."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_jsonl
from PIL import Image
from task_examples import topic_examples
from transformers import EvalPrediction
from typer.testing import CliRunner

from samtune import tasks
from samtune.cli import app

runner = CliRunner()

# Six rows, four labels (d never occurs): truth and predictions as multi-hot rows.
TRUTH = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
GUESS = np.array([[1, 0, 0, 0], [1, 0, 1, 0], [0, 0, 1, 0], [1, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])


def test_per_label_scores_match_a_hand_count():
    from samtune.per_label import PerLabel

    r = PerLabel.of(["a", "b", "c", "d"], TRUTH, GUESS)
    # a: true in rows 0,1,3,5, predicted in 0,1,3: TP 3, FP 0, FN 1. b: true in 0,2, predicted in 3: TP 0, FP 1, FN 2.
    # c: true in 2,3, predicted in 1,2,3,4: TP 2, FP 2, FN 0. d: never true, never predicted (zero_division=0).
    tp, fp, fn = [3, 0, 2, 0], [0, 1, 2, 0], [1, 2, 0, 0]
    precision = [t / (t + p) if t + p else 0.0 for t, p in zip(tp, fp)]
    recall = [t / (t + n) if t + n else 0.0 for t, n in zip(tp, fn)]
    f1 = [2 * t / (2 * t + p + n) if t + p + n else 0.0 for t, p, n in zip(tp, fp, fn)]
    assert r.precision.tolist() == pytest.approx(precision) and r.recall.tolist() == pytest.approx(recall)
    assert r.f1.tolist() == pytest.approx(f1) == [6 / 7, 0.0, 2 / 3, 0.0]
    assert r.support.tolist() == [t + n for t, n in zip(tp, fn)] == [4, 2, 2, 0]
    assert r.predicted.tolist() == [t + p for t, p in zip(tp, fp)] == [3, 1, 4, 0]
    assert r.examples == 6
    assert [r.labels[i] for i in r.worst()] == ["b", "c", "a"]  # by F1; d, absent from the split, says nothing
    assert [r.labels[i] for i in r.missed()] == ["b", "a"]  # predicted 1 of 2, 3 of 4: recall 0, 3/4
    assert [r.labels[i] for i in r.over_predicted()] == ["c"]  # predicted 4 for 2
    saved = json.loads(json.dumps(r.to_json()))
    assert saved["examples"] == 6 and saved["per_label"]["c"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": pytest.approx(2 / 3),
        "support": 2,
        "predicted": 4,
    }


def test_the_recorder_thresholds_as_the_task_metrics_do():
    logits = np.array([[2.0, -1.0, 0.5], [-0.5, 1.0, -2.0], [0.1, 0.2, -0.1], [-3.0, -1.0, -0.2]])
    targets = np.array([[1, 0, 1], [1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=np.float32)
    task = tasks.get("text-multi-label")
    names = ["x", "y", "z"]
    # sigmoid: row 2's 0.1 and 0.2 give 0.525 and 0.550, under 0.6 but over 0.5; 0.5 gives 0.622, over both.
    for threshold, predicted in ((0.5, [2, 2, 1]), (0.6, [1, 1, 1])):
        recorder = task.compute_metrics(names, threshold)
        scores = recorder(EvalPrediction(predictions=logits, label_ids=targets))
        report = recorder.report(names)
        assert report.predicted.tolist() == predicted and report.support.tolist() == [3, 2, 2]
        assert float(np.mean(report.f1)) == pytest.approx(scores["macro_f1"], abs=1e-12)
    assert report.recall.tolist() == pytest.approx([1 / 3, 1 / 2, 1 / 2])  # 0.6: x found in row 0 of rows 0-2


def test_large_label_sets_show_the_lowest_f1_labels(tmp_path):
    from samtune.per_label import PerLabel

    rng = np.random.default_rng(0)
    truth = (rng.random((400, 200)) < 0.1).astype(int)
    guess = np.where(rng.random(truth.shape) < 0.9, truth, 1 - truth)
    guess[:, 7] = 0  # label 7 never predicted: F1 0
    r = PerLabel.of([f"label {i}" for i in range(200)], truth, guess)
    shown = r.shown(30)
    assert len(shown) == 30 and shown[0] == 7 and shown == sorted(shown, key=lambda i: r.f1[i])
    assert max(r.f1[shown]) <= min(np.delete(r.f1, shown))


@pytest.mark.parametrize("labels", [3, 200])
def test_the_figure_is_drawn_for_small_and_large_label_sets(tmp_path, labels):
    from samtune.per_label import PerLabel

    rng = np.random.default_rng(labels)
    truth = (rng.random((50, labels)) < 0.3).astype(int)
    guess = np.where(rng.random(truth.shape) < 0.8, truth, 1 - truth)
    path = PerLabel.of([f"label {i}" for i in range(labels)], truth, guess).plot(tmp_path / "f1.png", "t")
    with Image.open(path) as png:
        assert png.format == "PNG" and min(png.size) >= 300 and png.size[1] <= 1500  # capped: 30 bars at most


def test_train_writes_the_per_label_report_the_card_shows_it_eval_prints_it(tmp_path, text_model_dir):
    data = write_jsonl(tmp_path / "topics.jsonl", topic_examples(80))
    out = tmp_path / "run"
    args = ["--model", str(text_model_dir), "--dataset", str(data), "--output-dir", str(out), "--max-steps", "6"]
    result = runner.invoke(app, ["train", *args, "--batch-size", "8", "model.max_length=16", "data.label_column=tags"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "per_label.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert saved["labels"] == ["acting", "music", "plot"] and saved["examples"] == metrics["eval_samples"]
    rows = saved["per_label"].values()
    # Micro F1 from the per-label counts (TP = recall x examples): the run's own, so the same threshold made both.
    tp = sum(round(r["recall"] * r["support"]) for r in rows)
    micro = 2 * tp / sum(r["support"] + r["predicted"] for r in rows)
    assert micro == pytest.approx(metrics["eval_micro_f1"], abs=1e-12)
    assert np.mean([r["f1"] for r in rows]) == pytest.approx(metrics["eval_macro_f1"], abs=1e-12)
    assert (out / "per_label_f1.png").is_file() and not (out / "confusion.json").exists()
    card = (out / "README.md").read_text()
    assert "## Where it errs" in card and "![Per-label F1](per_label_f1.png)" in card
    worst = min(saved["per_label"], key=lambda label: saved["per_label"][label]["f1"])
    assert f"| {worst} | " in card and "predicted" in card
    new = write_jsonl(tmp_path / "new.jsonl", topic_examples(40, seed=3))
    figure = tmp_path / "figures" / "f1.png"
    figure.parent.mkdir()
    evaluated = runner.invoke(app, ["eval", str(out), "--dataset", str(new), "--figure", str(figure)])
    assert evaluated.exit_code == 0, evaluated.output
    flat = " ".join(evaluated.output.split())  # rich wraps narrow tables' titles
    assert "per label" in flat and "recall" in flat and "predicted" in flat and "acting" in flat
    assert figure.is_file()
    assert json.loads((figure.parent / "eval-new-train-per_label.json").read_text())["examples"] == 40
    again = runner.invoke(app, ["eval", str(out), "--dataset", str(new)])  # default: beside the model
    assert again.exit_code == 0 and (out / "eval-new-train-per_label_f1.png").is_file()
    assert (out / "eval-new-train-per_label.json").is_file()

"""Multi-label classification: several classes per example, sigmoid outputs, micro/macro F1 and subset accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_card_example, sam_and_reference, write_jsonl
from task_examples import TOPICS, topic_examples
from tiny import max_abs_diff, tiny_bert
from transformers import EvalPrediction
from typer.testing import CliRunner

from samtune.cli import app
from samtune.data import load_data
from samtune.errors import DataError
from samtune.recipe import DataSection
from samtune.tasks.multi_label import multi_label_metrics

runner = CliRunner()


@pytest.fixture
def topics_jsonl(tmp_path) -> Path:
    return write_jsonl(tmp_path / "topics.jsonl", topic_examples(80))


def test_multi_label_metrics_match_a_hand_computation():
    logits = np.array([[2.0, -1.0, 0.5], [-0.5, 1.0, -2.0], [0.1, 0.2, -0.1], [-3.0, -1.0, -0.2]])
    targets = np.array([[1, 0, 1], [1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=np.float32)
    got = multi_label_metrics(0.5)(EvalPrediction(predictions=logits, label_ids=targets))
    preds = (1 / (1 + np.exp(-logits)) >= 0.5).astype(int)  # [[1,0,1],[0,1,0],[1,1,0],[0,0,0]]
    tp = [sum(p[j] and t[j] for p, t in zip(preds, targets)) for j in range(3)]
    fp = [sum(p[j] and not t[j] for p, t in zip(preds, targets)) for j in range(3)]
    fn = [sum(t[j] and not p[j] for p, t in zip(preds, targets)) for j in range(3)]
    micro = 2 * sum(tp) / (2 * sum(tp) + sum(fp) + sum(fn))
    macro = sum(2 * a / (2 * a + b + c) if (2 * a + b + c) else 0.0 for a, b, c in zip(tp, fp, fn)) / 3
    subset = sum(all(p == t) for p, t in zip(preds, targets)) / len(preds)  # rows 0 and 3 match exactly
    assert got["micro_f1"] == pytest.approx(micro, abs=1e-12) and got["macro_f1"] == pytest.approx(macro, abs=1e-12)
    assert got["subset_accuracy"] == pytest.approx(subset) == 0.5
    # A higher threshold predicts fewer classes: row 2's 0.55 and 0.52 fall below 0.6.
    strict = multi_label_metrics(0.6)(EvalPrediction(predictions=logits, label_ids=targets))
    assert strict["micro_f1"] < got["micro_f1"]


def test_a_column_of_lists_makes_a_multi_label_task(topics_jsonl):
    data = load_data(DataSection(dataset=str(topics_jsonl), label_column="tags"), seed=0)
    assert data.task == "text-multi-label" and data.labels == ["acting", "music", "plot"]
    rows = topic_examples(80)
    first = data.train[0]
    source = next(r for r in rows if r["text"] == first["text"])
    assert first["labels"] == [float(name in source["tags"]) for name in data.labels]  # multi-hot, in label order


def test_several_zero_one_columns_are_the_classes(tmp_path):
    rows = [{"text": r["text"], **{t: int(t in r["tags"]) for t in TOPICS}} for r in topic_examples(40)]
    path = write_jsonl(tmp_path / "wide.jsonl", rows)
    data = load_data(DataSection(dataset=str(path), label_columns=["plot", "acting", "music"]), seed=0)
    assert data.task == "text-multi-label" and data.labels == ["plot", "acting", "music"]  # the recipe's order
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**r, "music": 2 if i == 5 else r["music"]} for i, r in enumerate(rows)])
    with pytest.raises(DataError, match="must hold 0 or 1"):
        load_data(DataSection(dataset=str(bad), label_columns=["plot", "acting", "music"]), seed=0)


def test_rows_with_labels_the_training_split_never_had_are_a_data_error(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", topic_examples(40))
    unseen = write_jsonl(tmp_path / "eval.jsonl", [{"text": "a film", "tags": ["plot", "costumes"]}])
    with pytest.raises(DataError, match="labels the model was not trained on: costumes"):
        load_data(DataSection(dataset=str(train), eval_file=str(unseen), label_column="tags"), seed=0)


def _multi_hot_rows(n: int, seed: int = 4) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (n, 8), generator=g)
    targets = (torch.rand(n, 3, generator=g) < 0.5).float()
    return [
        {"input_ids": ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": targets[i]} for i in range(n)
    ]


@pytest.mark.parametrize("head", ["multi-label", "regression"])
@pytest.mark.parametrize(("batch_size", "accumulation"), [(8, 1), (4, 2)], ids=["ga1", "ga2"])
def test_sam_on_multi_label_and_regression_heads_matches_the_hand_written_loop(
    tmp_path, head, batch_size, accumulation
):
    """BCE over sigmoids, and MSE on one output: the SAM step is the paper's whatever the loss."""
    from task_examples import regression_rows

    if head == "multi-label":
        rows, model = _multi_hot_rows(24), tiny_bert(num_labels=3, problem_type="multi_label_classification")
    else:
        rows, model = regression_rows(24), tiny_bert(num_labels=1, problem_type="regression")
    ours, reference, no_climb, _ = sam_and_reference(tmp_path, model, rows, batch_size, accumulation)
    assert max_abs_diff(ours, reference) <= 1e-6  # same formula, different code: rounding only
    assert max_abs_diff(no_climb, reference) > 1e-4  # the climb mattered


def test_text_multi_label_end_to_end(tmp_path, text_model_dir, topics_jsonl):
    from transformers import AutoConfig

    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(topics_jsonl),
            "--output-dir",
            str(out),
            "--epochs",
            "3",
            "--learning-rate",
            "5e-3",
            "--batch-size",
            "8",
            "model.max_length=16",
            "data.label_column=tags",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"eval_micro_f1", "eval_macro_f1", "eval_subset_accuracy", "eval_loss"} <= set(metrics)
    assert "eval_accuracy" not in metrics
    config = AutoConfig.from_pretrained(out)
    assert config.problem_type == "multi_label_classification" and config.id2label == {
        0: "acting",
        1: "music",
        2: "plot",
    }
    card = (out / "README.md").read_text()
    assert "several per example" in card and "micro F1" in card
    printed = run_card_example(out)  # every label with its own sigmoid probability
    scores = printed[0][0] if isinstance(printed[0][0], list) else printed[0]  # one input: one list of labels
    assert sorted(p["label"] for p in scores) == ["acting", "music", "plot"]
    assert sum(p["score"] for p in scores) != pytest.approx(1.0)  # sigmoids, not a softmax
    evaluated = runner.invoke(app, ["eval", str(out), "--dataset", str(topics_jsonl)])
    assert evaluated.exit_code == 0, evaluated.output
    assert "eval_micro_f1" in evaluated.output


def test_image_multi_label_end_to_end(tmp_path, image_model_dir):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    images, tags = [], []
    for _ in range(40):
        on = [c for c in ("red", "green", "blue") if rng.random() < 0.5]
        pixels = rng.integers(0, 60, (20, 20, 3), dtype=np.uint8)
        for c in on:
            pixels[..., ("red", "green", "blue").index(c)] = 220
        images.append(Image.fromarray(pixels))
        tags.append(on)
    saved = tmp_path / "colours"
    datasets.Dataset.from_dict({"image": images, "colours": tags}).cast_column("image", datasets.Image()).save_to_disk(
        saved
    )
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(image_model_dir),
            "--dataset",
            str(saved),
            "--output-dir",
            str(out),
            "--max-steps",
            "3",
            "training.batch_size=8",
            "data.label_column=colours",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert "eval_micro_f1" in metrics and "image-multi-label" in (out / "README.md").read_text()

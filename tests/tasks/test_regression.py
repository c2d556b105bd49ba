"""Regression (text and image): one output and an MSE loss, float targets, MSE/MAE/Pearson/Spearman, SAM exact."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_card_example, write_csv
from task_examples import score_examples
from transformers import EvalPrediction
from typer.testing import CliRunner

from samtune.cli import app
from samtune.data import load_data
from samtune.errors import DataError, UsageError
from samtune.recipe import DataSection
from samtune.tasks.regression import compute_regression_metrics

runner = CliRunner()


@pytest.fixture
def scores_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "scores.csv", score_examples(80))


# ---- metrics ------------------------------------------------------------------------------


def test_regression_metrics_match_a_hand_computation():
    preds = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 1.2])
    targets = np.array([0.0, 0.5, 0.3, 1.0, 0.6, 0.9])
    got = compute_regression_metrics(EvalPrediction(predictions=preds.reshape(-1, 1), label_ids=targets))
    n = len(preds)
    mse = sum((p - t) ** 2 for p, t in zip(preds, targets)) / n
    mae = sum(abs(p - t) for p, t in zip(preds, targets)) / n

    def pearson(a, b):
        ma, mb = sum(a) / n, sum(b) / n
        cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
        return cov / (sum((x - ma) ** 2 for x in a) ** 0.5 * sum((y - mb) ** 2 for y in b) ** 0.5)

    def ranks(v):  # no ties in these values: the rank is the position in sorted order
        return [sorted(v).index(x) + 1 for x in v]

    assert got["mse"] == pytest.approx(mse, abs=1e-12) and got["mae"] == pytest.approx(mae, abs=1e-12)
    assert got["pearson"] == pytest.approx(pearson(preds, targets), abs=1e-12)
    assert got["spearman"] == pytest.approx(pearson(ranks(list(preds)), ranks(list(targets))), abs=1e-12)
    # A collapsed model (one value for every input) has no correlation: 0, never NaN.
    flat = compute_regression_metrics(EvalPrediction(predictions=np.full((n, 1), 0.5), label_ids=targets))
    assert (
        flat["pearson"] == 0.0
        and flat["spearman"] == 0.0
        and flat["mse"] == pytest.approx(np.mean((targets - 0.5) ** 2))
    )


# ---- data ---------------------------------------------------------------------------------


def test_fractional_labels_make_a_regression_task(scores_csv):
    data = load_data(DataSection(dataset=str(scores_csv), label_column="score"), seed=0)
    assert data.task == "text-regression" and data.labels == ["score"]
    assert data.train.features["labels"].dtype == "float32"
    assert len(data.train) + len(data.eval) == 80 and data.eval_source.endswith("random")


def test_whole_number_targets_are_regression_when_the_task_says_so(tmp_path):
    rows = [{"text": f"review {i}", "stars": 1 + i % 5} for i in range(40)]
    path = write_csv(tmp_path / "stars.csv", rows)
    assert load_data(DataSection(dataset=str(path), label_column="stars"), seed=0).task == "text-classification"
    data = load_data(DataSection(dataset=str(path), label_column="stars"), seed=0, task="text-regression")
    assert data.task == "text-regression" and sorted(set(data.train["labels"])) == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_numbers_written_as_text_are_read_and_anything_else_is_a_data_error(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": f"t{i}", "label": f"{i / 10:.1f}"}) + "\n" for i in range(20)))
    data = load_data(DataSection(dataset=str(good)), seed=0, task="text-regression")
    assert sorted(list(data.train["labels"]) + list(data.eval["labels"])) == pytest.approx([i / 10 for i in range(20)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "".join(json.dumps({"text": f"t{i}", "label": "high" if i == 3 else str(i)}) + "\n" for i in range(20))
    )
    with pytest.raises(DataError) as e:
        load_data(DataSection(dataset=str(bad)), seed=0, task="text-regression")
    assert "holds values that are not numbers, such as 'high'" in e.value.message


def test_class_subsets_make_no_sense_for_regression(scores_csv):
    with pytest.raises(
        UsageError, match="data.labels keeps some classes of a single-label column; this is a regression run"
    ):
        load_data(
            DataSection(dataset=str(scores_csv), label_column="score", labels=["0.5", "1.0"]),
            seed=0,
            task="text-regression",
        )


# ---- SAM ----------------------------------------------------------------------------------


# ---- end to end ---------------------------------------------------------------------------


def _shown(output: str, key: str) -> float:
    found = re.search(rf"{key}\s*│\s*(-?[0-9.]+)", output)
    assert found, output
    return float(found.group(1))


def test_text_regression_end_to_end(tmp_path, text_model_dir, scores_csv):
    from transformers import AutoConfig

    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(scores_csv),
            "--output-dir",
            str(out),
            "--epochs",
            "3",
            "--learning-rate",
            "5e-3",
            "--batch-size",
            "8",
            "model.max_length=16",
            "data.label_column=score",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("eval_mse", "eval_mae", "eval_pearson", "eval_spearman", "eval_loss"):
        assert key in metrics, key
    assert "eval_accuracy" not in metrics
    assert metrics["eval_mse"] == pytest.approx(metrics["eval_loss"], rel=1e-5)  # the loss is the MSE
    assert metrics["eval_pearson"] > 0.5  # three epochs learn the score from the sentiment words
    config = AutoConfig.from_pretrained(out)
    assert config.problem_type == "regression" and config.num_labels == 1 and config.id2label == {0: "score"}
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_metric"] == pytest.approx(min(h["eval_mse"] for h in state["log_history"] if "eval_mse" in h))
    card = (out / "README.md").read_text()
    assert "Regression: one output, the target `score`" in card and "| mean squared error |" in card
    assert "type: mse" in card and "pipeline_tag: text-classification" in card
    printed = run_card_example(out)  # the card's example: the raw score, not a softmax of one output
    assert printed[0][0]["label"] == "score" and printed[0][0]["score"] != 1.0

    evaluated = runner.invoke(app, ["eval", str(out), "--dataset", str(scores_csv)])
    assert evaluated.exit_code == 0, evaluated.output
    assert _shown(evaluated.output, "eval_mse") == pytest.approx(_shown(evaluated.output, "eval_loss"), abs=1e-4)
    assert "eval_accuracy" not in evaluated.output


def test_image_regression_end_to_end(tmp_path, image_model_dir):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    images, targets = [], []
    for _ in range(40):
        red = float(rng.uniform(0, 1))
        pixels = rng.integers(0, 60, (20, 20, 3), dtype=np.uint8)
        pixels[..., 0] = int(60 + 190 * red)
        images.append(Image.fromarray(pixels))
        targets.append(round(red, 3))
    saved = tmp_path / "redness"
    datasets.Dataset.from_dict({"image": images, "redness": targets}).cast_column(
        "image", datasets.Image()
    ).save_to_disk(saved)
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
            "data.label_column=redness",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"eval_mse", "eval_pearson"} <= set(metrics) and "eval_accuracy" not in metrics
    assert "image-regression" in (out / "README.md").read_text()


def test_a_classification_metric_for_a_regression_run_is_a_usage_error(tmp_path, text_model_dir, scores_csv):
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(scores_csv),
            "--output-dir",
            str(tmp_path / "run"),
            "--max-steps",
            "1",
            "data.label_column=score",
            "training.metric_for_best_model=accuracy",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "training.metric_for_best_model is 'accuracy', which a text-regression run does not compute" in result.output
    assert not (tmp_path / "run").exists()


def test_the_recipe_refuses_a_metric_that_its_task_does_not_compute():
    from samtune.errors import RecipeError
    from samtune.recipe import build_recipe

    with pytest.raises(RecipeError, match="'f1', which a image-regression run does not compute"):
        build_recipe({"task": "image-regression", "training": {"metric_for_best_model": "f1"}})
    assert build_recipe({"task": "text-regression", "training": {"metric_for_best_model": "spearman"}})


def test_compare_ranks_regression_arms_by_mse_lowest_first(tmp_path, text_model_dir, scores_csv):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": {"name": str(text_model_dir), "max_length": 16},
                "data": {"dataset": str(scores_csv), "label_column": "score"},
                "training": {"max_steps": 4, "batch_size": 8, "learning_rate": 5e-3, "eval_strategy": "no"},
            }
        )
    )
    result = runner.invoke(app, ["compare", str(recipe), "--seeds", "1", "--output-dir", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    ranking = report["ranking"]
    assert ranking["metric"] == "eval_mse" and ranking["greater_is_better"] is False
    means = [report["arms"][a]["metrics"]["eval_mse"]["mean"] for a in ranking["order"]]
    assert means == sorted(means)


def test_a_test_split_scored_minus_one_throughout_is_unlabelled(tmp_path):
    """GLUE's STS-B test split carries -1.0 for every target: no test split, not a test of -1s."""
    import datasets

    def split(n: int, unlabelled: bool = False) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "sentence1": [f"a {i}" for i in range(n)],
                "sentence2": [f"b {i}" for i in range(n)],
                "label": [-1.0 if unlabelled else i / n * 5 for i in range(n)],
            }
        )

    saved = tmp_path / "stsb"
    datasets.DatasetDict({"train": split(20), "validation": split(8), "test": split(8, unlabelled=True)}).save_to_disk(
        saved
    )
    data = load_data(DataSection(dataset=str(saved)), seed=0, task="text-regression")
    assert data.test is None and len(data.eval) == 8 and data.text_column == "sentence1"

"""The task registry: tasks found by name, and a task of one's own added from outside samtune (this file alone)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import text_examples, write_csv
from typer.testing import CliRunner

import samtune
from samtune import tasks
from samtune.cli import app
from samtune.data import load_data
from samtune.errors import DataError, RecipeError
from samtune.recipe import DataSection, build_recipe
from samtune.tasks import Metric, model_outputs, register
from samtune.tasks.classification import SingleLabelClassification

runner = CliRunner()


class BalancedBinary(SingleLabelClassification):
    """Two classes of text, the best checkpoint chosen by balanced accuracy (the mean of the two recalls), which a
    classifier that always answers the larger class cannot fool."""

    metrics = (Metric("balanced_accuracy", "balanced accuracy", True), *SingleLabelClassification.metrics)

    def encode(self, splits, cols, names=None):
        splits, names = super().encode(splits, cols, names)
        if len(names) != 2:
            raise DataError(f"text-binary: column '{cols['label']}' holds {len(names)} classes, not 2")
        return splits, names

    def scores(self, eval_pred):
        from sklearn.metrics import balanced_accuracy_score

        predicted = np.asarray(model_outputs(eval_pred)).argmax(-1)
        return {
            "balanced_accuracy": float(balanced_accuracy_score(eval_pred.label_ids, predicted)),
            **super().scores(eval_pred),
        }


register(BalancedBinary("text-binary", "text"))


@pytest.fixture
def skewed_csv(tmp_path) -> Path:
    """Reviews, three positive to one negative (80 rows)."""
    rows = [r for i, r in enumerate(text_examples(120)) if r["label"] == "pos" or i % 4 == 1]
    return write_csv(tmp_path / "skewed.csv", rows)


def _recipe(tmp_path: Path, model_dir: Path, dataset: Path, out: str) -> dict:
    return {
        "task": "text-binary",
        "model": {"name": str(model_dir), "max_length": 16},
        "data": {"dataset": str(dataset)},
        "training": {"epochs": 2, "learning_rate": 5e-3, "batch_size": 8, "logging_steps": 2},
        "output": {"dir": str(tmp_path / out)},
    }


def test_a_task_of_ones_own_trains_through_the_library(tmp_path, text_model_dir, skewed_csv):
    result = samtune.train(build_recipe(_recipe(tmp_path, text_model_dir, skewed_csv, "lib")), notify=lambda _: None)
    assert result.task == "text-binary" and result.labels == ["neg", "pos"]
    trainer = result.trainer
    assert (trainer.args.metric_for_best_model, trainer.args.greater_is_better) == ("balanced_accuracy", True)
    # The metric as the task defines it, recomputed by hand from the final model's predictions: the mean recall.
    out = trainer.predict(trainer.eval_dataset)
    predicted, truth = out.predictions.argmax(-1), out.label_ids
    assert 0 < (truth == 0).sum() < (truth == 1).sum()  # both classes, skewed: balanced accuracy is not accuracy
    recalls = [float((predicted[truth == c] == c).mean()) for c in (0, 1)]
    assert result.metrics["eval_balanced_accuracy"] == pytest.approx(sum(recalls) / 2, abs=1e-9)
    assert result.metrics["eval_accuracy"] == pytest.approx(float((predicted == truth).mean()), abs=1e-9)
    card = (tmp_path / "lib" / "README.md").read_text()
    assert "balanced accuracy" in card and "text-binary" in card
    assert yaml.safe_load((tmp_path / "lib" / "config.yaml").read_text())["task"] == "text-binary"


def test_a_task_of_ones_own_trains_by_the_recipe_key(tmp_path, text_model_dir, skewed_csv):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(tmp_path, text_model_dir, skewed_csv, "cli")))
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "eval_balanced_accuracy" in result.output  # the summary shows the task's own metrics
    metrics = yaml.safe_load((tmp_path / "cli" / "metrics.json").read_text())
    assert 0.0 <= metrics["eval_balanced_accuracy"] <= 1.0
    three = write_csv(
        tmp_path / "three.csv", [{**r, "label": ("a", "b", "c")[i % 3]} for i, r in enumerate(text_examples(60))]
    )
    refused = runner.invoke(app, ["train", str(recipe), f"data.dataset={three}", f"output.dir={tmp_path / 'three'}"])
    assert refused.exit_code == 3 and "holds 3 classes, not 2" in refused.output  # its own label encoding


def test_the_recipe_checks_tasks_and_metrics_against_the_registry():
    assert "text-binary" in tasks.names() and tasks.get("text-binary").default_metric == "balanced_accuracy"
    assert build_recipe({"task": "text-binary", "training": {"metric_for_best_model": "balanced_accuracy"}})
    with pytest.raises(RecipeError) as err:
        build_recipe({"task": "text-regression", "training": {"metric_for_best_model": "balanced_accuracy"}})
    assert "which a text-regression run does not compute" in err.value.problems[0]
    with pytest.raises(RecipeError) as err:
        build_recipe({"task": "text-binry"})
    assert "'text-binary'" in err.value.problems[0] and "(got 'text-binry')" in err.value.problems[0]
    with pytest.raises(ValueError, match="already registered"):
        register(BalancedBinary("text-classification", "text"))


def test_a_task_of_ones_own_is_never_detected_in_place_of_a_built_in_one(tmp_path):
    data = load_data(DataSection(dataset=str(write_csv(tmp_path / "r.csv", text_examples(40)))), seed=0)
    assert data.task == "text-classification"  # registered first, the built-in claims the data first


def test_only_the_tasks_package_names_a_task():
    """What differs between tasks lives in samtune/tasks/: no other module tests a task's name or problem."""
    root = Path(samtune.__file__).parent
    names = "|".join(re.escape(n) for n in tasks.names())
    branch = re.compile(rf"""["']({names})["']|\bproblem\(|\bmodality\(|isinstance\([^)]*Task\b""")
    found = [
        f"{p.relative_to(root)}:{i}: {line.strip()}"
        for p in sorted(root.rglob("*.py"))
        if p.parent.name != "tasks"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if branch.search(line)
    ]
    assert found == []

"""A finished run read back: its task and labels, examples matched to its labels, its model and their inputs.

The one path by which `samtune eval` (`runner.evaluate_run`) and `samtune sharpness`
(`analysis.runs`) load a saved run: the model and processor from the run directory, the labels
matched by name, the examples tokenised (or resized) by the run's own processor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samtune import modeling, tasks
from samtune.data import DroppedRows, detect_columns, load_raw, pick_eval_split
from samtune.errors import UsageError
from samtune.recipe import DataSection, ModelSection, Recipe, build_recipe, read_recipe_file
from samtune.rundir import CONFIG_FILE, require_model


@dataclass
class SavedRun:
    """A run directory, read without loading its weights: its recipe, task and labels."""

    run_dir: Path
    recipe: Recipe
    task: str
    labels: list[str]

    @property
    def section(self) -> ModelSection:
        """The run directory as a model to load."""
        return ModelSection(name=str(self.run_dir), max_length=self.recipe.model.max_length)


@dataclass
class Examples:
    """Labelled examples to evaluate on (not yet tokenised), and where they came from."""

    rows: Any  # a datasets.Dataset with a `labels` ClassLabel column
    columns: dict[str, str | None]  # text / pair / image column names
    dataset: str
    split: str
    dropped: list[str] = field(default_factory=list)  # rows left out (no text, no label), and why: to say once


def open_run(run_dir: Path) -> tuple[Recipe, SavedRun]:
    """A finished run directory's resolved recipe (its config.yaml; the defaults without one) and what it saved."""
    require_model(run_dir)
    config = run_dir / CONFIG_FILE
    recipe = build_recipe(read_recipe_file(config)) if config.is_file() else build_recipe()
    modeling.quiet_transformers()
    return recipe, read_run(run_dir, recipe)


def read_run(run_dir: Path, recipe: Recipe) -> SavedRun:
    """A run directory's task and labels, from its model's config (no weights); `recipe` is the one it saved."""
    model_config = modeling.load_config(ModelSection(name=str(run_dir)))
    task = modeling.model_task(model_config) or recipe.task
    if task == tasks.AUTO:
        raise UsageError(f"cannot tell whether {run_dir} classifies text or images", "Set task: in its config.yaml.")
    return SavedRun(Path(run_dir), recipe, task, tasks.get(task).saved_labels(model_config))


def split_examples(run: SavedRun, data: DataSection, split: str | None) -> Examples:
    """`split` of the dataset `data` names (default: the validation-like one), its labels matched to the run's by name
    (`Task.eval_examples`: a regression run's targets read as numbers; a causal LM's text as it is); rows dropped
    as training drops them, and said (`Examples.dropped`)."""
    raw, _ = load_raw(data)
    split_name = pick_eval_split(raw, split)
    ds = raw[split_name]
    cols = detect_columns(list(ds.column_names), ds.features, data, run.task)
    dropped = DroppedRows()
    rows, columns = tasks.get(run.task).eval_examples(ds, cols, run.labels, split_name, dropped)
    return Examples(rows, columns, data.dataset or "", split_name, dropped.lines())


def model_inputs(run: SavedRun, examples: Examples, rows: list[int] | None = None) -> tuple[Any, Any]:
    """The run's processor, and the examples (those at `rows`, or all) as its model's inputs."""
    processor = modeling.load_processor(run.section, run.task)
    chosen = examples.rows if rows is None else examples.rows.select(rows)
    return processor, modeling.eval_inputs(chosen, run.task, processor, examples.columns, run.recipe.model.max_length)


def load_model(run: SavedRun) -> Any:
    """The run's trained model, with its own labels."""
    return modeling.load_model(run.section, run.task, run.labels)

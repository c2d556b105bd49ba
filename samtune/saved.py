"""A finished run read back: its task and labels, examples matched to its labels, its model and their inputs.

The one path by which `samtune eval` (`runner.evaluate_run`) and `samtune sharpness`
(`analysis.runs`) load a saved run: the model and processor from the run directory, the labels
matched by name, the examples tokenised (or resized) by the run's own processor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samtune.recipe import DataSection, ModelSection, Recipe
from samtune.tasks import TEXT_GENERATION


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


def read_run(run_dir: Path, recipe: Recipe) -> SavedRun:
    """A run directory's task and labels, from its model's config (no weights); `recipe` is the one it saved."""
    from samtune import modeling

    model_config = modeling.load_config(ModelSection(name=str(run_dir)))
    task = modeling.model_task(model_config) or recipe.task
    if task == TEXT_GENERATION:  # a causal LM's config keeps transformers' placeholder labels: it has none
        return SavedRun(Path(run_dir), recipe, task, [])
    labels = [model_config.id2label[i] for i in range(len(model_config.id2label))]
    return SavedRun(Path(run_dir), recipe, task, labels)


def split_examples(run: SavedRun, data: DataSection, split: str | None) -> Examples:
    """`split` of the dataset `data` names (default: the validation-like one), its labels matched to the run's by name
    (a regression run's targets read as numbers)."""
    from samtune.data import (
        DroppedRows,
        detect_columns,
        drop_unusable_rows,
        encode_labels,
        encode_multi_hot,
        encode_tags,
        encode_targets,
        has_text,
        load_raw,
        pick_eval_split,
    )
    from samtune.tasks import MULTI_LABEL, REGRESSION, TOKENS, problem

    raw, _ = load_raw(data)
    split_name = pick_eval_split(raw, split)
    ds = raw[split_name]
    cols = detect_columns(list(ds.column_names), ds.features, data, run.task)
    dropped = DroppedRows()  # rows dropped as training drops them, and said
    if run.task == TEXT_GENERATION:  # no labels: the text (or prompt and response) is all
        keep = [c for c in (cols["text"], cols["response"]) if c]
        columns = {"text": cols["text"], "response": cols["response"]}
        rows = dropped.filter(split_name, ds.select_columns(keep), has_text, keep, "with no text")
        return Examples(rows, columns, data.dataset or "", split_name, dropped.lines())
    keep = [c for c in (cols["label"], cols["text"], cols["pair"], cols["image"]) if c]
    kind = problem(run.task)
    rows = drop_unusable_rows({"eval": ds.select_columns(keep)}, cols, kind, {"eval": split_name}, dropped)
    if kind == REGRESSION:
        encoded = encode_targets(rows, cols["label"])
    elif kind == MULTI_LABEL:
        encoded, _ = encode_multi_hot(rows, cols["label"], names=run.labels)
    elif kind == TOKENS:
        encoded, _ = encode_tags(rows, cols["text"], cols["label"], names=run.labels)
    else:
        encoded, _ = encode_labels(rows, cols["label"], names=run.labels)
    columns = {"text": cols["text"], "pair": cols["pair"], "image": cols["image"]}
    return Examples(encoded["eval"], columns, data.dataset or "", split_name, dropped.lines())


def model_inputs(run: SavedRun, examples: Examples, rows: list[int] | None = None) -> tuple[Any, Any]:
    """The run's processor, and the examples (those at `rows`, or all) as its model's inputs."""
    from samtune import modeling

    processor = modeling.load_processor(run.section, run.task)
    chosen = examples.rows if rows is None else examples.rows.select(rows)
    return processor, modeling.eval_inputs(chosen, run.task, processor, examples.columns, run.recipe.model.max_length)


def load_model(run: SavedRun) -> Any:
    """The run's trained model, with its own labels."""
    from samtune import modeling

    return modeling.load_model(run.section, run.task, run.labels)

"""The loading layer of `samtune sharpness`: a run directory's model and the batches to measure it on.

This is the only part of samtune.analysis that knows about Hugging Face models and datasets; it
reads a run the way `samtune eval` does (`runner.evaluate_run`): the resolved recipe from
config.yaml, the model and processor from the folder, the labels matched by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samtune.errors import DataError, UsageError
from samtune.recipe import ModelSection, Recipe


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
    """The labelled examples the loss is measured on (not yet tokenised), and where they came from."""

    rows: Any  # a datasets.Dataset with a `labels` ClassLabel column
    columns: dict[str, str | None]  # text / pair / image column names
    dataset: str
    split: str


def open_run(run_dir: Path, option: str = "RUN_DIR") -> SavedRun:
    """A run directory's recipe, task and labels; a UsageError (exit 2) if it is not a finished run."""
    from samtune import modeling
    from samtune.files import lock_is_held
    from samtune.recipe import build_recipe, read_recipe_file
    from samtune.runner import CONFIG_FILE

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        what = "does not exist" if not run_dir.exists() else "is not a samtune run directory (no config.json)"
        raise UsageError(f"{option} {run_dir} {what}", "Give a folder that `samtune train` wrote.")
    holder = lock_is_held(run_dir)
    if holder:
        raise UsageError(f"{run_dir} is in use by a samtune run (process {holder})", "Measure it once that run ends.")
    config = run_dir / CONFIG_FILE
    recipe = build_recipe(read_recipe_file(config), source=str(config)) if config.is_file() else build_recipe()
    model_config = modeling.load_config(ModelSection(name=str(run_dir)))
    task = modeling.model_task(model_config) or recipe.task
    if task == "auto":
        raise UsageError(f"cannot tell whether {run_dir} classifies text or images", "Set task: in its config.yaml.")
    labels = [model_config.id2label[i] for i in range(len(model_config.id2label))]
    return SavedRun(run_dir, recipe, task, labels)


def load_examples(run: SavedRun, dataset: str | None = None, split: str | None = None) -> Examples:
    """The examples to measure on: the run's own eval split by default, else `split` of `dataset`.

    The run's own eval split is rebuilt from its recipe as training built it (a validation split
    carved from train is carved again with the same seed).
    """
    from samtune.data import detect_columns, encode_labels, load_data, load_raw, pick_eval_split

    data = run.recipe.data
    if dataset is None and split is None:
        try:
            prepared = load_data(data, run.recipe.training.seed, run.task)
        except DataError as e:
            raise DataError(
                f"the run's own data cannot be loaded again: {e.message}", "Measure on other data with --dataset."
            ) from e
        if prepared.labels != run.labels:
            raise DataError(
                f"the run's data now has the labels {', '.join(prepared.labels[:10])}, the model "
                f"{', '.join(run.labels[:10])}",
                "Measure on data with the model's labels: --dataset.",
            )
        columns = {"text": prepared.text_column, "pair": prepared.text_pair_column, "image": prepared.image_column}
        return Examples(prepared.eval, columns, data.dataset or "", prepared.eval_split)
    section = data.model_copy(update={"dataset": dataset, "config": None, "eval_file": None}) if dataset else data
    raw, _ = load_raw(section)
    split_name = pick_eval_split(raw, split)
    ds = raw[split_name]
    cols = detect_columns(list(ds.column_names), ds.features, section, run.task)
    keep = [c for c in (cols["label"], cols["text"], cols["pair"], cols["image"]) if c]
    encoded, _ = encode_labels({"eval": ds.select_columns(keep)}, cols["label"], names=run.labels)
    columns = {"text": cols["text"], "pair": cols["pair"], "image": cols["image"]}
    return Examples(encoded["eval"], columns, section.dataset or "", split_name)


def pick_rows(total: int, count: int, seed: int) -> list[int]:
    """`count` row indices out of `total` (all of them if fewer), in a seeded random order."""
    import torch

    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[:count]


def load_batches(
    run: SavedRun, examples: Examples, rows: list[int], batch_size: int
) -> tuple[Any, list[dict[str, Any]], list[int]]:
    """The run's model and the chosen rows as its batches (tokenised by its own processor, on the CPU); batch sizes."""
    from transformers import default_data_collator

    from samtune import modeling

    processor = modeling.load_processor(run.section, run.task)
    inputs = modeling.eval_inputs(
        examples.rows.select(rows), run.task, processor, examples.columns, run.recipe.model.max_length
    )
    collate = modeling.collator(run.task, processor) or default_data_collator
    batches, sizes = [], []
    for start in range(0, len(inputs), batch_size):
        chunk = [inputs[i] for i in range(start, min(start + batch_size, len(inputs)))]
        batches.append(dict(collate(chunk)))
        sizes.append(len(chunk))
    return modeling.load_model(run.section, run.task, run.labels), batches, sizes

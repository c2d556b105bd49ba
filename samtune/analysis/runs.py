"""The loading layer of `samtune sharpness`: a run directory's model and the batches to measure it on.

This is the only part of samtune.analysis that knows about Hugging Face models and datasets; it
reads a run the way `samtune eval` does (through `samtune.saved`): the resolved recipe from
config.yaml, the model and processor from the folder, the labels matched by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import default_data_collator

from samtune import modeling
from samtune.data import load_data
from samtune.errors import DataError
from samtune.recipe import build_recipe, read_recipe_file
from samtune.rundir import CONFIG_FILE, refuse_if_in_use, require_model
from samtune.saved import Examples, SavedRun, load_model, model_inputs, read_run, split_examples


def open_run(run_dir: Path, option: str = "RUN_DIR") -> SavedRun:
    """A run directory's recipe, task and labels; a UsageError (exit 2) if it is not a finished run."""
    run_dir = Path(run_dir)
    require_model(run_dir, option)
    refuse_if_in_use(run_dir, "Measure it once that run ends.")
    config = run_dir / CONFIG_FILE
    recipe = build_recipe(read_recipe_file(config), source=str(config)) if config.is_file() else build_recipe()
    return read_run(run_dir, recipe)


def load_examples(run: SavedRun, dataset: str | None = None, split: str | None = None) -> Examples:
    """The examples to measure on: the run's own eval split by default, else `split` of `dataset`.

    The run's own eval split is rebuilt from its recipe as training built it (a validation split
    carved from train is carved again with the same seed).
    """
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
        return Examples(prepared.eval, prepared.columns, data.dataset or "", prepared.eval_split)
    section = data.model_copy(update={"dataset": dataset, "config": None, "eval_file": None}) if dataset else data
    return split_examples(run, section, split)


def pick_rows(total: int, count: int, seed: int) -> list[int]:
    """`count` row indices out of `total` (all of them if fewer), in a seeded random order."""
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[:count]


def load_batches(
    run: SavedRun, examples: Examples, rows: list[int], batch_size: int
) -> tuple[Any, list[dict[str, Any]], list[int]]:
    """The run's model and the chosen rows as its batches (tokenised by its own processor, on the CPU); batch sizes."""
    processor, inputs = model_inputs(run, examples, rows)
    collate = modeling.collator(run.task, processor) or default_data_collator
    batches, sizes = [], []
    for start in range(0, len(inputs), batch_size):
        chunk = [inputs[i] for i in range(start, min(start + batch_size, len(inputs)))]
        batches.append(dict(collate(chunk)))
        sizes.append(len(chunk))
    return load_model(run), batches, sizes

"""`samtune predict`: a finished run's predictions on new examples (a file, a folder of images, or texts).

The run's model and processor, its labels and the columns it was trained on (its config.yaml) are read
back as `samtune eval` reads them (`samtune.saved`); the examples need no labels. Each input row comes
back with the predicted label and the probability of every class (multi-label: every label's own;
regression: the predicted number; a tagger: the entities and each word's tag; a causal LM: the prompt's completion),
written as CSV or JSON lines. What each task adds is its own (`Task.predict_batch`, `Task.prediction_columns`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import datasets
import numpy as np
import torch
from PIL import Image

from samtune import modeling, tasks
from samtune.data import _builder_for, _load_files
from samtune.errors import DataError, UsageError
from samtune.imaging import image_problem
from samtune.saved import load_model, open_run

OUTPUT_FORMATS = (".csv", ".jsonl", ".json")


@dataclass
class Predictions:
    """The input rows (without image pixels) with the prediction columns added after them."""

    table: Any  # a pandas DataFrame
    added: list[str]  # the prediction columns
    skipped: list[str]  # image files that did not decode (with --skip-bad)


def _image_folder(folder: Path, skip_bad: bool) -> tuple[Any, list[str]]:
    """Every image file under `folder` (by extension), checked to decode (and to be under Pillow's decompression-bomb
    limit); a DataError names the first that does not, unless `skip_bad`."""
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    good, bad = [], []
    for p in files:
        why = image_problem(p)
        if why is None:
            good.append(p)
        elif skip_bad:
            bad.append(str(p.relative_to(folder)))
        else:
            raise DataError(
                f"cannot read the image {p}: {why}",
                "Remove or replace the file, or pass --skip-bad to predict on the others.",
            )
    if not good:
        raise DataError(f"no image that decodes in {folder}", "Give a folder of images (png, jpg, ...).")
    rows = datasets.Dataset.from_dict(
        {"file": [str(p.relative_to(folder)) for p in good], "image": [str(p) for p in good]}
    )
    return rows.cast_column("image", datasets.Image()), bad


def read_inputs(source: Path | list[str], image_run: bool, skip_bad: bool = False) -> tuple[Any, list[str]]:
    """The examples to predict on: a data file's rows or a folder's images (`source` a path), or texts (a list)."""
    if isinstance(source, list):
        if image_run:
            raise UsageError("this run classifies images, not texts", "Give a folder of images instead of --text.")
        return datasets.Dataset.from_dict({"text": [str(t) for t in source]}), []
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"input not found: {path}",
            "Check the path (it is relative to where you run)"
            + ("." if image_run else '; to classify a text itself, give it as --text "...".'),
        )
    if path.is_dir():
        if not image_run:
            raise UsageError(
                f"{path} is a folder; this run classifies text", 'Give a csv/jsonl/parquet file, or --text "...".'
            )
        return _image_folder(path, skip_bad)
    if image_run and _builder_for(path) is None:
        raise UsageError(f"{path} is not a folder of images or a data file", "Give a folder of images.")
    return _load_files({"train": path})["train"], []  # a format it cannot tell is a DataError naming the file


def input_column(rows: Any, named: str | None, candidates: tuple[str, ...], what: str, key: str) -> str:
    """The input's column of `what`: the one the run was trained on (its name), else a usual name."""
    for c in ([named] if named else []) + list(candidates):
        if c in rows.column_names:
            return c
    wanted = f"'{named}'" if named else " or ".join(f"'{c}'" for c in candidates)
    raise DataError(
        f"the input has no {what} column {wanted} (columns: {', '.join(rows.column_names)})",
        f"Rename the column to {wanted}, as in the run's training data ({key} in its config.yaml).",
    )


def predict(
    run_dir: Path,
    source: Path | list[str],
    batch_size: int = 64,
    skip_bad: bool = False,
    progress: Callable[[Any, int], Any] = lambda it, total: it,
    generation: dict[str, Any] | None = None,
) -> Predictions:
    """Predictions of the run in `run_dir` on `source`, a data file or image folder, or a list of texts (see
    `read_inputs`); `progress` wraps the batch loop; `generation`: the generation settings given (max_new_tokens,
    do_sample, temperature, top_p), for a run that generates text."""
    run_dir = Path(run_dir)
    recipe, run = open_run(run_dir)
    task = tasks.get(run.task)
    if not task.predicts:
        raise UsageError(
            f"samtune predict cannot predict with a {run.task} run ({run_dir})",
            "Use the code in the run's README.md (transformers' pipeline).",
        )
    generation = generation or {}
    if generation and not task.generates:
        flags = ", ".join("--" + k.replace("_", "-") for k in generation)
        raise UsageError(
            f"{flags}: generation settings, but {run_dir} is a {run.task} run, which generates no text",
            "Drop them (they apply to causal LMs, text-generation runs).",
        )
    rows, skipped = task.read_inputs(source, skip_bad)
    _refuse_clashing_columns(rows.column_names, task.prediction_names(run.labels))
    columns = task.input_columns(rows, recipe.data)
    processor = modeling.load_processor(run.section, run.task)
    model = load_model(run)
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu")).eval()
    how = tasks.PredictSettings(columns, recipe.model.max_length, generation)
    outputs: list = []
    starts = range(0, len(rows), batch_size)
    with torch.no_grad():
        for start in progress(starts, len(starts)):
            batch = rows[start : start + batch_size]
            outputs += task.predict_batch(model, processor, batch, how)
    table = rows.remove_columns([c for c in rows.column_names if c == columns.get("image")]).to_pandas()
    added = task.prediction_columns(table, outputs, run.labels, recipe.training.threshold)
    return Predictions(table, added, skipped)


def _refuse_clashing_columns(columns: list[str], names: list[str]) -> None:
    """A DataError when the input has columns the predictions would overwrite."""
    clash = [c for c in columns if c in names]
    if clash:
        raise DataError(
            f"the input has column(s) {', '.join(repr(c) for c in clash)}, the names the predictions are written under",
            f"Rename or drop them in the input (this run's predictions: {_shown(names)}), then run again.",
        )


def _shown(names: list[str], most: int = 6) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def _as_text(value: Any) -> Any:
    """A cell for CSV: a list or a mapping (a tagger's entities, a list of words) as JSON text, else as it is."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value


def write_predictions(predictions: Predictions, output: Path) -> None:
    """The table as CSV (.csv) or JSON lines (.jsonl, .json)."""
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UsageError(f"cannot tell the format of --output {output}", "End it with .csv or .jsonl.")
    output.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        predictions.table.map(_as_text).to_csv(output, index=False)
    else:
        predictions.table.to_json(output, orient="records", lines=True, force_ascii=False)

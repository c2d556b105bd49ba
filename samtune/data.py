"""Datasets: hub ids, local files and folders; which columns hold what; labels as classes; splits.

`load_data(recipe.data)` returns the train / eval (/ test) splits with the label column renamed
`labels` and encoded by the task (`samtune.tasks`: a `ClassLabel`, float32 targets, a multi-hot
vector, a list of tag ids, one per word; a causal LM has none), and says which columns hold the
text (or the words) or the image.
Every problem a user can cause ends in a `DataError` (exit 3) that names it and the fix.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import datasets
from datasets import ClassLabel
from PIL import Image

from samtune import tasks
from samtune.errors import OFFLINE_HINT, DataError, hub_unreachable
from samtune.imaging import image_problem
from samtune.network import work_offline_if_unresolved
from samtune.recipe import PACKAGE_PREFIX, SOURCE_PREFIX, DataSection, resolve_package_path
from samtune.tasks.columns import COMBINED_LABELS, LABELS, as_names, is_list_column
from samtune.tasks.per_example import example_columns

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

log = logging.getLogger(__name__)

EVAL_SPLITS = ("validation", "valid", "val", "dev")  # "test" is kept for the final score
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
COMPRESSIONS = (".bz2", ".gz", ".xz", ".zst", ".zip")


@dataclass
class PreparedData:
    """The splits to train and evaluate on, and what their columns hold."""

    task: str  # a registered task's name (samtune.tasks)
    train: Dataset
    eval: Dataset
    labels: list[str]  # the class names; for regression, the target's name alone
    test: Dataset | None = None
    text_column: str | None = None  # token classification: the column of word lists
    text_pair_column: str | None = None
    image_column: str | None = None
    response_column: str | None = None  # causal LM with prompts: text_column holds the prompt, this the response
    eval_source: str = ""
    eval_split: str = "validation"  # the split's name, or "validation" for one carved from train
    test_split: str | None = None
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # rows left out of each split, and why (DroppedRows.lines)
    is_hub_dataset: bool = False
    augment: Any = None  # the training images' transform, told the epoch by the runner
    picked: dict[str, str] = field(default_factory=dict)  # "label"/"text" -> the column chosen by its values

    @classmethod
    def of(
        cls,
        task: str,
        splits: dict[str, Dataset],
        labels: list[str],
        cols: dict[str, Any],
        eval_source: str,
        eval_name: str | None,
        test_name: str | None,
        notes: list[str],
        dropped: DroppedRows,
        from_hub: bool,
    ) -> PreparedData:
        """The "train", "eval" (and "test") splits with their labels, the columns as `detect_columns` finds them
        (those picked by their values too), and how they were made: where the eval split came from, the names of
        the eval split (None: carved from train) and the test split, the notes, the rows dropped, from the Hub."""
        return cls(
            task=task,
            train=splits["train"],
            eval=splits["eval"],
            test=splits.get("test"),
            labels=labels,
            text_column=cols["text"],
            text_pair_column=cols.get("pair"),
            image_column=cols.get("image"),
            response_column=cols.get("response"),
            picked=cols.get("picked", {}),
            eval_source=eval_source,
            eval_split=eval_name or "validation",
            test_split=test_name,
            notes=notes,
            dropped=dropped.lines(),
            is_hub_dataset=from_hub,
        )

    @property
    def label_column(self) -> str:
        return LABELS

    @property
    def columns(self) -> dict[str, str | None]:
        """The input columns by what they hold, as a task's `eval_inputs` takes them."""
        return {
            "text": self.text_column,
            "pair": self.text_pair_column,
            "image": self.image_column,
            "response": self.response_column,
        }


def is_local(ref: str) -> bool:
    """Whether a dataset or model reference is a local path (or a package path)."""
    return ref.startswith((PACKAGE_PREFIX, SOURCE_PREFIX)) or Path(ref).exists() or ref.startswith((".", "/", "~"))


# ---- reading ------------------------------------------------------------------------------


def _builder_for(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    return FILE_BUILDERS.get(suffixes[-1]) if suffixes else None


def _load_files(files: dict[str, Path]) -> DatasetDict:
    builders = {name: _builder_for(p) for name, p in files.items()}
    for name, builder in builders.items():
        if builder is None:
            raise DataError(
                f"cannot tell the format of {files[name]}",
                "Use a .csv, .tsv, .json, .jsonl or .parquet file (optionally compressed: .gz, .bz2, .xz), "
                "an image folder, or a saved datasets folder.",
            )
    if len(set(builders.values())) > 1:
        raise DataError(f"the train and eval files have different formats: {', '.join(map(str, files.values()))}")
    builder = next(iter(builders.values()))
    kwargs: dict[str, Any] = {}
    if any(_strip_compression(p).suffix.lower() == ".tsv" for p in files.values()):
        kwargs["sep"] = "\t"
    try:
        return datasets.load_dataset(builder, data_files={k: str(v) for k, v in files.items()}, **kwargs)
    except Exception as e:  # pandas/pyarrow parse errors come in many types
        names = ", ".join(str(p) for p in files.values())
        raise DataError(f"cannot read {names} as {builder}: {_first_line(e)}", "Check that the file is valid.") from e


def _strip_compression(path: Path) -> Path:
    while path.suffix.lower() in COMPRESSIONS:
        path = path.with_suffix("")
    return path


def _first_line(e: BaseException) -> str:
    """The first line of the innermost cause: datasets wraps parse errors in generic ones."""
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _load_folder(path: Path) -> DatasetDict:
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:
            raise DataError(f"cannot load the saved dataset in {path}: {_first_line(e)}") from e
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    check_image_files(path)
    try:
        return datasets.load_dataset(str(path))
    except Exception as e:
        raise DataError(
            f"cannot load {path} as a dataset: {_first_line(e)}",
            "A folder must hold class sub-folders of images (imagefolder), data files (train.csv, ...), "
            "or a dataset saved with save_to_disk.",
        ) from e


METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.json", "metadata.parquet")


def check_image_files(folder: Path) -> None:
    """In a folder of images: every image file must decode, and nothing else may sit among them.

    Runs only when the folder holds images; a corrupt file would otherwise stop training hours
    in, with a message that does not say which file.
    """
    image_ext = {ext.lower() for ext in Image.registered_extensions()}
    files = [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)
    ]
    images = [p for p in files if p.suffix.lower() in image_ext]
    if not images:
        return
    others = [p for p in files if p.suffix.lower() not in image_ext and p.name not in METADATA_FILES]
    if others:
        shown = ", ".join(str(p.relative_to(folder)) for p in others[:5])
        raise DataError(
            f"the image folder {folder} holds {len(others)} file(s) that are not images: {shown}",
            "Move them out of the folder (class sub-folders must hold only images).",
        )
    for p in images:
        if (why := image_problem(p)) is not None:
            raise DataError(f"cannot read the image {p}: {why}", "Remove or replace the file, then run again.")


def _load_hub(data: DataSection) -> DatasetDict:
    unresolved = work_offline_if_unresolved()  # the Hub's name does not resolve: the local cache only, at once
    try:
        return datasets.load_dataset(data.dataset, data.config, revision=data.revision)
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") and unresolved is None
        text = _first_line(e)
        if "Config name is missing" in str(e) or "BuilderConfig" in str(e):
            raise DataError(f"dataset '{data.dataset}': {text}", "Set data.config to one of the names above.") from e
        reason = unresolved or hub_unreachable(e)
        if reason is not None and not offline:
            raise DataError(
                f"dataset '{data.dataset}': the Hugging Face Hub could not be reached ({reason})",
                f"Check the network connection; {OFFLINE_HINT}; or give a local path.",
            ) from e
        if offline:
            hint = (
                "HF_HUB_OFFLINE=1 is set: only local files and datasets already in the cache load. "
                "Give a local path, or unset HF_HUB_OFFLINE with network access."
            )
        else:
            hint = "Check the dataset id on huggingface.co/datasets, or give a local path."
        raise DataError(f"dataset '{data.dataset}' could not be loaded: not a local path, and {text}", hint) from e


def _load_raw(data: DataSection) -> tuple[DatasetDict, bool]:
    """The dataset's splits as loaded, and whether it came from the Hub."""
    if not data.dataset:
        raise DataError("no dataset given", "Set data.dataset in the recipe, or pass --dataset.")
    ref = resolve_package_path(data.dataset, DataError)
    path = Path(ref).expanduser()
    if path.exists():
        if path.is_dir():
            if data.eval_file:
                raise DataError(
                    "data.eval_file goes with a data file, not a folder", "Put the eval split in the folder."
                )
            return _load_folder(path), False
        files = {"train": path}
        if data.eval_file:
            eval_path = Path(resolve_package_path(data.eval_file, DataError)).expanduser()
            if not eval_path.is_file():
                raise DataError(f"eval file not found: {data.eval_file}")
            files["validation"] = eval_path
        return _load_files(files), False
    if is_local(data.dataset) or data.dataset.endswith(tuple(FILE_BUILDERS)):
        raise DataError(f"dataset not found: {data.dataset}", "Check the path (it is relative to where you run).")
    return _load_hub(data), True


def load_raw(data: DataSection) -> tuple[DatasetDict, bool]:
    """The dataset's splits as loaded (data.label_columns combined into one column of lists), and whether it came
    from the Hub."""
    raw, from_hub = _load_raw(data)
    if data.label_columns:
        raw = _combine_label_columns(raw, data.label_columns)
    return raw, from_hub


def _combine_label_columns(raw: Any, columns: list[str]) -> Any:
    """One 0/1 column per class -> one column of lists of the classes that are 1 (COMBINED_LABELS)."""
    out = {}
    for split, ds in raw.items():
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise DataError(
                f"data.label_columns names {', '.join(missing)}, not in the '{split}' split "
                f"(columns: {', '.join(ds.column_names)})",
                "List the 0/1 columns that hold the classes.",
            )
        for c in columns:
            bad = [v for v in ds.unique(c) if v is not None and (isinstance(v, str) or v not in (0, 1))]
            if bad:
                raise DataError(
                    f"the '{split}' split's column '{c}' (in data.label_columns) must hold 0 or 1, "
                    f"found {', '.join(repr(v) for v in bad[:5])}",
                    "Each class column marks with 1 the rows that have the class; fix those rows.",
                )

        def combine(*values: Any) -> dict[str, list[str]]:
            return {COMBINED_LABELS: [c for c, v in zip(columns, values) if v == 1]}

        ds = ds.map(combine, input_columns=columns, features=None).remove_columns(columns)
        out[split] = ds.cast_column(COMBINED_LABELS, datasets.Sequence(datasets.Value("string")))
    return datasets.DatasetDict(out)


# ---- columns, the task, its splits ----------------------------------------------------------


def detect_columns(
    columns: list[str], features: Any, data: DataSection, task: str, rows: Dataset | None = None
) -> dict[str, str | None]:
    """Which columns hold what for `task` (its `columns`): the label, and the text (and its pair) or the image;
    the words and tags of token classification; a causal LM's text, or prompt and response. With task auto, a
    label and a text or an image.

    Names decide first (the recipe's, then the usual ones: `label`, `text`, ...). Where they do not, and `rows`
    (the train split) is given, the values do; the columns so picked are listed under "picked".
    """
    if task == tasks.AUTO:
        return example_columns(columns, features, data, None, rows)
    return tasks.get(task).columns(columns, features, data, rows)


def pick_eval_split(raw: DatasetDict, split: str | None) -> str:
    """The split to evaluate: the one named, else validation-like, else the only one."""
    if split is not None:
        if split not in raw:
            raise DataError(
                f"unknown split '{split}' (the dataset has: {', '.join(raw)})", "Pass --split with one of them."
            )
        return split
    for name in (*EVAL_SPLITS, "test"):
        if name in raw:
            return name
    if len(raw) == 1:
        return next(iter(raw))
    raise DataError(f"which split to evaluate? the dataset has: {', '.join(raw)}", "Pass --split NAME.")


# ---- splits -------------------------------------------------------------------------------


def _stratified_subset(ds: Dataset, n: int, seed: int) -> Dataset:
    if n >= len(ds):
        return ds
    if not isinstance(ds.features[LABELS], ClassLabel):  # regression targets: a random subset
        return ds.shuffle(seed=seed).select(range(n))
    try:
        return ds.train_test_split(train_size=n, stratify_by_column=LABELS, seed=seed)["train"]
    except ValueError:  # a class too small to stratify
        return ds.shuffle(seed=seed).select(range(n))


def _has_labels(ds: Dataset, column: str) -> bool:
    """Whether a split holds labels: not only None, negative class ids, or -1 throughout (GLUE's unlabelled test
    sets)."""
    if is_list_column(ds, column):  # multi-label: an empty list is a row with no class, still labelled
        return any(v is not None for v in ds[column])
    values = ds.unique(column)
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == -1 for v in values):
        return False
    return any(v is not None and not (isinstance(v, int) and v < 0) for v in values)


class DroppedRows:
    """Rows left out of each split while loading, and why: counted, so that whoever loads says it once (`lines`)."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}  # split -> its rows before any was dropped
        self.reasons: dict[str, dict[str, int]] = {}  # split -> why -> rows dropped

    def filter(self, split: str, ds: Dataset, keep: Callable[..., bool], columns: list[str], why: str) -> Dataset:
        """The rows of `ds` that `keep` (given `columns`) keeps; the others counted under `why`."""
        self.rows.setdefault(split, len(ds))
        kept = ds.filter(keep, input_columns=columns)
        if len(kept) < len(ds):
            counts = self.reasons.setdefault(split, {})
            counts[why] = counts.get(why, 0) + len(ds) - len(kept)
        return kept

    def lines(self) -> list[str]:
        """One line per split that lost rows: how many of how many, and why."""
        return [
            f"dropped {sum(c.values())} of {self.rows[split]} rows of the '{split}' split: "
            + ", ".join(f"{n} {why}" for why, n in c.items())
            for split, c in self.reasons.items()
        ]


def has_text(*values: Any) -> bool:
    """Whether each value is a text with something in it (a causal LM's text, prompt or response)."""
    return all(isinstance(x, str) and x.strip() for x in values)


def _present(*values: Any) -> bool:
    """Whether each value is there: a text, or a list of words with a word in it (an empty line of a conll file
    has nothing to tag)."""
    return all(x is not None and x != [] for x in values)


def _labelled(feature: Any) -> Callable[[Any], bool]:
    """Whether a label value is a label: not missing (None, or NaN: an empty cell in a column of numbers), nor a
    ClassLabel's -1 (unlabelled)."""
    class_ids = isinstance(feature, ClassLabel)
    return lambda v: v is not None and not (isinstance(v, float) and math.isnan(v)) and not (class_ids and v < 0)


def drop_unusable_rows(
    splits: dict[str, Dataset], cols: dict[str, Any], task: tasks.Task, names: dict[str, str], dropped: DroppedRows
) -> dict[str, Dataset]:
    """Each split's rows that have their text (or words) and, where the task drops them (a tagger's are an error
    naming the row), their label; the rest counted in `dropped` under the split's name in `names`."""
    text_columns = [c for c in (cols["text"], cols["pair"]) if c]
    out = {}
    for key, ds in splits.items():
        if text_columns:
            ds = dropped.filter(names[key], ds, _present, text_columns, "with no text")
        if cols["label"] and task.drops_unlabelled_rows:
            ds = dropped.filter(names[key], ds, _labelled(ds.features[cols["label"]]), [cols["label"]], "with no label")
        out[key] = ds
    return out


def load_data(data: DataSection, seed: int = 42, task: str = tasks.AUTO, model_task: str | None = None) -> PreparedData:
    """Load, detect the task and its columns, encode labels, choose or carve the eval split, apply the caps.

    `task` is the recipe's. Auto asks the registered tasks (`samtune.tasks.detection`), given `model_task`, the
    model's own: lists of words make a tagger, prompts and responses (or a causal LM given text and no labels) a
    causal LM; else the modality comes from the model, or the columns, and the problem from the model if it was
    fine-tuned for regression or multi-label, else from the labels (lists: several per example; numbers with
    fractions: a regression target; anything else: classes).
    """
    raw, from_hub = load_raw(data)
    _check_split_names(raw, data)
    train = raw[data.train_split]
    if len(train) == 0:
        raise DataError(f"the '{data.train_split}' split is empty", "Check the data.")
    if task == tasks.AUTO:
        chosen, cols = tasks.detect_data(train, data, tasks.get(model_task) if model_task else None)
    else:
        chosen = tasks.get(task)
        cols = chosen.columns(list(train.column_names), train.features, data, rows=train)
    chosen.check_data(train, cols, data)
    return chosen.prepared_data(raw, data, cols, seed, from_hub)


def labelled_data(
    task: tasks.Task, raw: Any, data: DataSection, cols: dict[str, Any], seed: int, from_hub: bool
) -> PreparedData:
    """A labelled task's splits (`Task.prepared_data`): the used columns, usable rows, the labels encoded by the
    task; the eval split named or found (a labelled one), else carved from train (stratified by class where the
    labels are classes); the caps."""
    eval_name, test_name = _eval_and_test_names(raw, data, cols["label"])
    splits = {"train": raw[data.train_split]}
    if eval_name is not None:
        splits["eval"] = raw[eval_name]
    if test_name is not None:
        splits["test"] = raw[test_name]
    dropped = DroppedRows()
    split_names = {"train": data.train_split, "eval": eval_name or "", "test": test_name or ""}
    splits = _keep_usable_rows(splits, cols, data, task, split_names, dropped)
    splits, names = task.encode(splits, cols, names=task.recipe_classes(data))
    notes: list[str] = []
    if "eval" in splits:
        eval_source = f"the '{eval_name}' split"
    else:
        eval_source = _carve_validation(splits, data, seed, notes)
    if data.max_train_samples:
        splits["train"] = _stratified_subset(splits["train"], data.max_train_samples, seed)
    if data.max_eval_samples:
        splits["eval"] = _stratified_subset(splits["eval"], data.max_eval_samples, seed)
    for name, ds in splits.items():
        if len(ds) == 0:
            raise DataError(
                f"the {name} split is empty after dropping unlabelled or empty rows",
                "Check the label and text columns (data.label_column, data.text_column).",
            )
    return PreparedData.of(task.name, splits, names, cols, eval_source, eval_name, test_name, notes, dropped, from_hub)


def _check_split_names(raw: Any, data: DataSection) -> None:
    """Every split the recipe names exists in the dataset."""
    available = list(raw.keys())
    if data.train_split not in raw:
        raise DataError(
            f"unknown split '{data.train_split}' (the dataset has: {', '.join(available)})",
            "Set data.train_split to one of them.",
        )
    for key in ("eval_split", "test_split"):
        split = getattr(data, key)
        if split is not None and split not in raw:
            raise DataError(
                f"unknown split '{split}' for data.{key} (the dataset has: {', '.join(available)})",
                f"Set data.{key} to one of them.",
            )


def _eval_and_test_names(raw: Any, data: DataSection, label: str) -> tuple[str | None, str | None]:
    """The evaluation split (named, or the first labelled one of EVAL_SPLITS) and the test split, if any."""
    eval_name = data.eval_split
    if eval_name is None:
        eval_name = next(
            (
                s
                for s in EVAL_SPLITS
                if s in raw and s != data.train_split and s != data.test_split and _has_labels(raw[s], label)
            ),
            None,
        )
    test_name = data.test_split
    if test_name is None and "test" in raw and data.eval_split != "test" and _has_labels(raw["test"], label):
        test_name = "test"  # scored at the end, never used to pick the checkpoint
    return eval_name, test_name


def _keep_usable_rows(
    splits: dict[str, Any],
    cols: dict[str, Any],
    data: DataSection,
    task: tasks.Task,
    names: dict[str, str],
    dropped: DroppedRows,
) -> dict[str, Any]:
    """The used columns only, rows with text and a label (`drop_unusable_rows`), and (with data.labels) the listed
    labels only."""
    for name, ds in splits.items():
        missing = [
            c for c in (cols["label"], cols["text"], cols["pair"], cols["image"]) if c and c not in ds.column_names
        ]
        if missing:
            raise DataError(
                f"the {name} split lacks column(s) {', '.join(missing)} (it has: {', '.join(ds.column_names)})"
            )
    keep = [c for c in (cols["label"], cols["text"], cols["pair"], cols["image"]) if c]
    splits = drop_unusable_rows({k: v.select_columns(keep) for k, v in splits.items()}, cols, task, names, dropped)
    if data.labels:
        splits = {k: as_names(v, cols["label"]) for k, v in splits.items()}
        wanted = set(data.labels)
        present = set(splits["train"].unique(cols["label"]))
        absent = [label for label in data.labels if label not in present]
        if absent:
            raise DataError(
                f"data.labels lists {', '.join(absent)}, not found in the train split's '{cols['label']}' column",
                f"Labels present: {', '.join(sorted(present)[:20])}.",
            )
        splits = {k: v.filter(lambda v: v in wanted, input_columns=cols["label"]) for k, v in splits.items()}
    return splits


def _carve_validation(splits: dict[str, Any], data: DataSection, seed: int, notes: list[str]) -> str:
    """Carve the validation split out of train (stratified where every class allows it); returns its source."""
    if not isinstance(splits["train"].features[LABELS], ClassLabel):  # regression targets: at random
        parts = splits["train"].train_test_split(test_size=data.validation_fraction, seed=seed)
        splits["train"], splits["eval"] = parts["train"], parts["test"]
        return f"{data.validation_fraction:.0%} of '{data.train_split}', random"
    try:
        parts = splits["train"].train_test_split(
            test_size=data.validation_fraction, stratify_by_column=LABELS, seed=seed
        )
        how = "stratified"
    except ValueError:
        parts = splits["train"].train_test_split(test_size=data.validation_fraction, seed=seed)
        how = "random (a class was too small to stratify)"
        notes.append(f"validation split carved at random: {how}")
    splits["train"], splits["eval"] = parts["train"], parts["test"]
    return f"{data.validation_fraction:.0%} of '{data.train_split}', {how.split(' ')[0]}"

"""Datasets: hub ids, local files and folders; which columns hold what; labels as classes; splits.

`load_data(recipe.data)` returns the train / eval (/ test) splits with the label column renamed
`labels` and encoded as a `ClassLabel` (classification), float32 targets (regression), a multi-hot
vector (multi-label) or a list of tag ids, one per word (token classification), and says which
columns hold the text (or the words) or the image.
Every problem a user can cause ends in a `DataError` (exit 3) that names it and the fix.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from samtune.errors import OFFLINE_HINT, DataError, UsageError, hub_unreachable
from samtune.recipe import DataSection, resolve_package_path
from samtune.tasks import (
    CLASSIFICATION,
    MULTI_LABEL,
    REGRESSION,
    TEXT_GENERATION,
    TOKEN_CLASSIFICATION,
    TOKENS,
    modality,
    problem,
    task_of,
)

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("label", "labels")
IMAGE_COLUMNS = ("image", "img")
TEXT_COLUMNS = ("text", "sentence")
WORD_COLUMNS = ("tokens", "words")  # token classification: a list of words per row ...
TAG_COLUMNS = ("ner_tags", "tags", "labels", "label")  # ... and a list of tags, one per word (conll-style names)
PROMPT_COLUMNS = ("prompt", "instruction")  # causal LM: a prompt (not trained on) ...
RESPONSE_COLUMNS = ("response", "completion", "output")  # ... and its response (trained on)
PAIR_COLUMNS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"), ("question", "sentence"))
EVAL_SPLITS = ("validation", "valid", "val", "dev")  # "test" is kept for the final score
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
COMPRESSIONS = (".bz2", ".gz", ".xz", ".zst", ".zip")
LABELS = "labels"
COMBINED_LABELS = "__samtune_labels"  # data.label_columns' 0/1 columns as one column of lists of class names


@dataclass
class PreparedData:
    """The splits to train and evaluate on, and what their columns hold."""

    task: str  # a task of samtune.tasks
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

    @property
    def label_column(self) -> str:
        return LABELS


def is_local(ref: str) -> bool:
    """Whether a dataset or model reference is a local path (or a package path)."""
    return ref.startswith("package:") or Path(ref).exists() or ref.startswith((".", "/", "~"))


# ---- reading ------------------------------------------------------------------------------


def _builder_for(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    return FILE_BUILDERS.get(suffixes[-1]) if suffixes else None


def _load_files(files: dict[str, Path]) -> DatasetDict:
    import datasets

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
    import datasets

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
    from PIL import Image

    from samtune.imaging import image_problem

    image_ext = {ext.lower() for ext in Image.registered_extensions()}
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)]
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
    import os

    import datasets

    try:
        return datasets.load_dataset(data.dataset, data.config, revision=data.revision)
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        text = _first_line(e)
        if "Config name is missing" in str(e) or "BuilderConfig" in str(e):
            raise DataError(f"dataset '{data.dataset}': {text}", "Set data.config to one of the names above.") from e
        reason = hub_unreachable(e)
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
                raise DataError("data.eval_file goes with a data file, not a folder", "Put the eval split in the folder.")
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
    import datasets

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


# ---- columns ------------------------------------------------------------------------------


def _pick(columns: list[str], explicit: str | None, candidates: tuple[str, ...], what: str, key: str) -> str | None:
    if explicit is not None:
        if explicit not in columns:
            raise DataError(
                f"{key} is '{explicit}', but the data has no such column (columns: {', '.join(columns)})",
                f"Set {key} to one of the columns.",
            )
        return explicit
    found = [c for c in candidates if c in columns]
    if len(found) > 1:
        raise DataError(
            f"more than one column could hold the {what}: {', '.join(found)}", f"Say which with {key}=COLUMN."
        )
    return found[0] if found else None


def detect_columns(
    columns: list[str], features: Any, data: DataSection, task: str, rows: Dataset | None = None
) -> dict[str, str | None]:
    """Which columns hold the label, and the text (and its pair) or the image (token classification: the words).

    Names decide first (the recipe's, then the usual ones: `label`, `text`, ...). Where they do not, and `rows`
    (the train split) is given, the values do (`_by_content`); the columns so picked are listed under "picked".
    """
    from datasets import Image

    if task == TOKEN_CLASSIFICATION:
        return _word_columns(columns, data)
    if task == TEXT_GENERATION:
        return _generation_columns(columns, data)
    explicit = COMBINED_LABELS if data.label_columns else data.label_column
    label = _pick(columns, explicit, LABEL_COLUMNS, "labels", "data.label_column")
    want = None if task == "auto" else modality(task)
    image_candidates = tuple(c for c in columns if isinstance(features.get(c), Image)) or IMAGE_COLUMNS
    image = None
    if want != "text":
        image = _pick(columns, data.image_column, image_candidates, "images", "data.image_column")
    picked: dict[str, str] = {}  # data.<key>_column -> the column chosen by its values
    if label is None and rows is not None:
        text_named = data.text_column or next((c for c in TEXT_COLUMNS if c in columns), None)
        label = _by_content(rows, columns, "label", exclude=(image, text_named))
        if label is not None:
            picked["label"] = label
    if label is None:
        raise DataError(
            f"no label column found (columns: {', '.join(columns)})",
            "Name it with data.label_column=COLUMN (samtune looks for 'label' or 'labels', then for one column "
            "whose values repeat: none does here).",
        )
    if image is not None or want == "image":
        if image is None:
            raise DataError(
                f"no image column found (columns: {', '.join(columns)})",
                "Name it with data.image_column=COLUMN (samtune looks for 'image' or 'img').",
            )
        return {"label": label, "image": image, "text": None, "pair": None, "picked": picked}

    text = _pick(columns, data.text_column, TEXT_COLUMNS, "text", "data.text_column")
    if text is None and rows is not None and not data.text_pair_column and not any(
        all(c in columns for c in pair) for pair in PAIR_COLUMNS
    ):
        text = _by_content(rows, columns, "text", exclude=(label,))
        if text is not None:
            picked["text"] = text
    pair = data.text_pair_column
    if pair is not None and pair not in columns:
        raise DataError(f"data.text_pair_column is '{pair}', but the data has no such column (columns: {', '.join(columns)})")
    if data.text_column is None and pair is None:
        pairs = [p for p in PAIR_COLUMNS if all(c in columns for c in p)]
        if pairs and (text is None or text in pairs[0]):
            text, pair = pairs[0]
    if text is None:
        raise DataError(
            f"no text column found (columns: {', '.join(columns)})",
            "Name it with data.text_column=COLUMN (and data.text_pair_column=COLUMN for sentence pairs); "
            "samtune looks for 'text', 'sentence' and pairs such as sentence1/sentence2, then for one column of "
            "mostly distinct sentences.",
        )
    return {"label": label, "image": None, "text": text, "pair": pair, "picked": picked}


CONTENT_SAMPLE = 5000  # rows read to judge a column by its values


def _by_content(rows: Dataset, columns: list[str], what: str, exclude: tuple[str | None, ...] = ()) -> str | None:
    """The one column whose values look like the `what` ("label" or "text"), where no name said; None if none does.

    A label: strings, whole numbers or booleans that repeat (2 to 100 distinct values, at most a fifth of the
    rows). A text: strings, mostly distinct (at least half the rows), most with a space in them (sentences, not
    ids or codes). Two candidates or more is a DataError naming them all: samtune never guesses between columns.
    """
    sample = rows.select(range(min(len(rows), CONTENT_SAMPLE)))
    n, found = len(sample), {}
    for c in columns:
        if c in exclude:
            continue
        values = [v for v in sample[c] if v is not None]
        kind = type(values[0]) if values else None
        if kind not in (str, int, bool) or not all(type(v) is kind for v in values):
            continue
        distinct = len(set(values))
        if what == "label" and 2 <= distinct <= max(2, min(100, n // 5)):
            found[c] = distinct
        elif what == "text" and kind is str and distinct >= n / 2 and sum(" " in v.strip() for v in values) >= len(values) / 2:
            found[c] = distinct
    if len(found) > 1:
        described = ", ".join(f"'{c}' ({d} distinct values in {n} rows)" for c, d in found.items())
        raise DataError(
            f"more than one column could be the {what}: {described}; samtune does not guess between them",
            "Say which: " + " or ".join(f"data.{what}_column={c}" for c in found)
            + (" (and data.text_column=COLUMN for the text)" if what == "label" else "") + ".",
        )
    return next(iter(found), None)


def _word_columns(columns: list[str], data: DataSection) -> dict[str, str | None]:
    """Token classification: the column of words (data.text_column) and of their tags (data.label_column)."""
    words = _pick(columns, data.text_column, WORD_COLUMNS, "words", "data.text_column")
    tags = _pick(columns, data.label_column, TAG_COLUMNS, "tags", "data.label_column")
    if words is None or tags is None:
        what, key, looked = ("words", "text_column", WORD_COLUMNS) if words is None else ("tags", "label_column", TAG_COLUMNS)
        raise DataError(
            f"token classification: no column of {what} found (columns: {', '.join(columns)})",
            f"Name it with data.{key}=COLUMN (samtune looks for {', '.join(repr(c) for c in looked)}); "
            "each row holds a list of words and a list of tags, one per word.",
        )
    return {"label": tags, "image": None, "text": words, "pair": None}


def _prompt_and_response(columns: list[str], data: DataSection) -> tuple[str | None, str | None]:
    """Causal LM: the prompt and response columns, named or found (None, None: there are none)."""
    prompt = _pick(columns, data.prompt_column, PROMPT_COLUMNS, "prompts", "data.prompt_column")
    response = _pick(columns, data.response_column, RESPONSE_COLUMNS, "responses", "data.response_column")
    if (prompt is None) != (response is None):
        missing, key = ("response", "response_column") if response is None else ("prompt", "prompt_column")
        raise DataError(
            f"causal LM: a {'prompt' if prompt else 'response'} column but no {missing} column "
            f"(columns: {', '.join(columns)})",
            f"Name it with data.{key}=COLUMN, or train on whole texts with data.text_column=COLUMN.",
        )
    return prompt, response


def _generation_columns(columns: list[str], data: DataSection) -> dict[str, str | None]:
    """Causal LM: a prompt and its response (the loss on the response only), or one text column (the loss on all)."""
    if data.text_column is None:
        prompt, response = _prompt_and_response(columns, data)
        if prompt is not None:
            return {"label": None, "image": None, "text": prompt, "pair": None, "response": response}
    text = _pick(columns, data.text_column, TEXT_COLUMNS, "text", "data.text_column")
    if text is None:
        raise DataError(
            f"causal LM: no text column found (columns: {', '.join(columns)})",
            "Name it with data.text_column=COLUMN (samtune looks for 'text' or 'sentence'), or give prompts and "
            "responses (data.prompt_column, data.response_column; found by themselves as prompt/response, "
            "instruction/output or prompt/completion).",
        )
    return {"label": None, "image": None, "text": text, "pair": None, "response": None}


def _looks_like_generation(ds: Dataset, data: DataSection, model_task: str | None) -> bool:
    """With task auto and no label column: prompt and response columns, or a causal LM (and text)."""
    columns = list(ds.column_names)
    if data.label_column is not None or data.label_columns or any(c in columns for c in LABEL_COLUMNS):
        return False
    if data.text_column is None:
        try:
            if _prompt_and_response(columns, data)[0] is not None:
                return True
        except DataError:  # one of the two: a causal LM's recipe says which is missing; anything else is not one
            pass
    return model_task == TEXT_GENERATION


def holds_word_lists(ds: Dataset, data: DataSection) -> bool:
    """Whether the data looks like token classification: a words column (data.text_column, else 'tokens' or
    'words') that holds lists of strings."""
    column = data.text_column or next((c for c in WORD_COLUMNS if c in ds.column_names), None)
    if column is None or column not in ds.column_names or not is_list_column(ds, column):
        return False
    item = ds.features[column].feature
    return getattr(item, "dtype", None) in ("string", "large_string")


# ---- labels -------------------------------------------------------------------------------


def _label_names(train: Dataset, column: str) -> list[str] | None:
    """Class names for the label column, or None when its values are not classes."""
    from datasets import ClassLabel

    feature = train.features[column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = [v for v in train.unique(column) if v is not None]
    if not values:
        return []
    if all(isinstance(v, bool) for v in values):
        return [str(v) for v in sorted(values)]
    if all(isinstance(v, str) for v in values):
        return sorted(values)
    if all(isinstance(v, (int, float)) for v in values) and all(float(v).is_integer() for v in values):
        return [str(int(v)) for v in sorted(values)]
    return None


def _as_names(ds: Dataset, column: str) -> Dataset:
    """The label column as strings: class names for a ClassLabel, whole numbers as text."""
    from datasets import ClassLabel, Value

    feature = ds.features[column]
    if isinstance(feature, ClassLabel):
        ds = ds.filter(lambda v: v is not None and v >= 0, input_columns=column)  # -1: unlabelled
        return ds.map(lambda v: {column: feature.int2str(v)}, input_columns=column, features=None).cast_column(
            column, Value("string")
        )
    ds = ds.filter(lambda v: v is not None, input_columns=column)
    as_text = ds.map(
        lambda v: {column: str(v) if isinstance(v, (str, bool)) else str(int(v))}, input_columns=column
    )
    return as_text.cast_column(column, Value("string"))


def _renamed_to_labels(ds: Dataset, column: str) -> Dataset:
    """The encoded label column under the name the models take, `labels` (any other column of that name dropped)."""
    if column == LABELS:
        return ds
    if LABELS in ds.column_names:
        ds = ds.remove_columns(LABELS)
    return ds.rename_column(column, LABELS)


def encode_labels(
    splits: dict[str, Dataset], column: str, names: list[str] | None = None
) -> tuple[dict[str, Dataset], list[str]]:
    """Each split's label column as `labels`, a ClassLabel named after `names` (default: the train split's)."""
    from datasets import ClassLabel

    if names is None:
        train = splits["train"]
        names = _label_names(train, column)
        if names is None:
            sample = ", ".join(repr(v) for v in train.unique(column)[:5])
            raise DataError(
                f"the labels in column '{column}' are not classes (values such as {sample})",
                "A classifier's labels are strings or whole numbers: pick another column with "
                "data.label_column=COLUMN, or for a numeric target set task to text-regression or image-regression.",
            )
        if len(names) > max(100, len(train) // 2):
            raise DataError(
                f"column '{column}' has {len(names)} distinct values in {len(train)} rows: it does not look like labels",
                "Pick the label column with data.label_column=COLUMN.",
            )
        if len(names) < 2:
            raise DataError(
                f"the train split has {len(names)} class{'es' if len(names) != 1 else ''} in column '{column}'",
                "A classifier needs at least two classes; check the data and data.label_column.",
            )
    target = ClassLabel(names=names)
    encoded: dict[str, Dataset] = {}
    for split, ds in splits.items():
        feature = ds.features[column]
        if isinstance(feature, ClassLabel) and list(feature.names) == names:
            ds = ds.filter(lambda v: v is not None and v >= 0, input_columns=column)  # -1: unlabelled
        else:
            if not isinstance(feature, ClassLabel) and _label_names(ds, column) is None:
                raise DataError(f"the labels in the '{split}' split's column '{column}' are not classes")
            ds = _as_names(ds, column)
            unseen = sorted(set(ds.unique(column)) - set(names))
            if unseen:
                raise DataError(
                    f"the '{split}' split has labels the model was not trained on: {', '.join(unseen[:10])}",
                    f"Known labels: {', '.join(names[:20])}. Fix the data or drop those rows.",
                )
            ds = ds.cast_column(column, target)
        encoded[split] = _renamed_to_labels(ds, column)
    return encoded, names


def _number(v: Any) -> float | None:
    """A regression target as a float (numbers, and text that reads as one); None if it is not a number."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def _is_fractional_numbers(ds: Dataset, column: str) -> bool:
    """Whether a label column holds numbers, some with a fractional part (so: a regression target)."""
    values = [v for v in ds.unique(column) if v is not None]
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return bool(values) and len(numbers) == len(values) and any(not float(v).is_integer() for v in numbers)


def encode_targets(splits: dict[str, Dataset], column: str) -> dict[str, Dataset]:
    """Each split's regression target as `labels`, float32; rows without a target dropped, any other value refused."""
    import math

    from datasets import Value

    encoded: dict[str, Dataset] = {}
    for split, ds in splits.items():
        ds = ds.filter(lambda v: v is not None and not (isinstance(v, float) and math.isnan(v)), input_columns=column)
        bad = [v for v in ds.unique(column) if _number(v) is None or not math.isfinite(_number(v))]
        if bad:
            raise DataError(
                f"the '{split}' split's column '{column}' holds values that are not numbers, such as "
                f"{', '.join(repr(v) for v in bad[:5])}: a regression target must be a finite number",
                "Fix or drop those rows, pick the target with data.label_column=COLUMN, or set task to a "
                "-classification task if the values are classes.",
            )
        ds = ds.map(lambda v: {column: _number(v)}, input_columns=column).cast_column(column, Value("float32"))
        encoded[split] = _renamed_to_labels(ds, column)
    return encoded


def is_list_column(ds: Dataset, column: str) -> bool:
    """Whether a label column holds lists (several labels per example)."""
    return getattr(ds.features[column], "_type", "") in ("Sequence", "List", "LargeList")


def _list_item_names(ds: Dataset, column: str) -> tuple[Any, list[str] | None]:
    """A list column's item feature, and its class names when the items are a ClassLabel."""
    from datasets import ClassLabel

    item = ds.features[column].feature
    return item, list(item.names) if isinstance(item, ClassLabel) else None


def encode_multi_hot(
    splits: dict[str, Dataset], column: str, names: list[str] | None = None
) -> tuple[dict[str, Dataset], list[str]]:
    """Each split's lists of labels as `labels`, a multi-hot float32 vector over `names` (default: the train split's
    classes: a ClassLabel's names, else every label seen, sorted); a label outside them is a DataError."""
    from datasets import ClassLabel, Sequence, Value

    def as_names(ds: Dataset) -> list[list[str]]:
        item, class_names = _list_item_names(ds, column)
        rows = []
        for value in ds[column]:
            items = value or []
            if class_names is not None:
                rows.append([class_names[i] for i in items if i is not None and i >= 0])
            else:
                rows.append([str(int(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
                             for v in items if v is not None])  # fmt: skip
        return rows

    if names is None:
        train = splits["train"]
        _, class_names = _list_item_names(train, column)
        names = class_names if class_names is not None else sorted({n for row in as_names(train) for n in row})
        if len(names) < 2:
            raise DataError(
                f"the train split has {len(names)} label{'s' if len(names) != 1 else ''} in column '{column}'",
                "A multi-label classifier needs at least two classes; check the data and data.label_column.",
            )
    index = {n: i for i, n in enumerate(names)}
    encoded: dict[str, Dataset] = {}
    for split, ds in splits.items():
        if not isinstance(ds.features[column], ClassLabel) and not is_list_column(ds, column):
            raise DataError(f"the '{split}' split's column '{column}' does not hold lists of labels",
                            "Every split of a multi-label dataset holds a list of labels per row.")  # fmt: skip
        ds = ds.filter(lambda v: v is not None, input_columns=column)
        rows = as_names(ds)
        unseen = sorted({n for row in rows for n in row} - set(names))
        if unseen:
            raise DataError(
                f"the '{split}' split has labels the model was not trained on: {', '.join(unseen[:10])}",
                f"Known labels: {', '.join(names[:20])}. Fix the data or drop those rows.",
            )
        hot = [[0.0] * len(names) for _ in rows]
        for vector, row in zip(hot, rows):
            for n in row:
                vector[index[n]] = 1.0
        ds = ds.remove_columns(column).add_column(LABELS, hot)
        encoded[split] = ds.cast_column(LABELS, Sequence(Value("float32"), length=len(names)))
    return encoded, names


def _tag_names(ds: Dataset, column: str) -> list[str]:
    """The tag set of a words-and-tags split: a ClassLabel's names, else every tag seen (whole numbers in
    numeric order, text sorted)."""
    _, class_names = _list_item_names(ds, column)
    if class_names is not None:
        return class_names
    seen = {v for row in ds[column] if row is not None for v in row if v is not None}
    if seen and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seen):
        return [str(int(v)) for v in sorted(seen)]
    return sorted(str(v) for v in seen)


def encode_tags(
    splits: dict[str, Dataset], words: str, column: str, names: list[str] | None = None
) -> tuple[dict[str, Dataset], list[str]]:
    """Each split's tags as `labels`, a list of tag ids over `names` (default: the train split's tag set), one per
    word; rows whose tags are not a list as long as their words, or hold a tag outside `names`, are a DataError."""
    from datasets import ClassLabel, Sequence

    for split, ds in splits.items():
        if not is_list_column(ds, column):
            raise DataError(
                f"token classification: the '{split}' split's column '{column}' holds "
                f"{ds.features[column]}, not a list of tags per row",
                "Each row needs a list of tags, one per word (data.label_column names the column).",
            )
        if not is_list_column(ds, words):
            raise DataError(
                f"token classification: the '{split}' split's column '{words}' does not hold a list of words per row",
                "Each row needs a list of words (data.text_column names the column).",
            )
        for i, (tokens, tags) in enumerate(zip(ds[words], ds[column])):
            if tags is None or len(tags) != len(tokens):
                raise DataError(
                    f"token classification: row {i} of the '{split}' split has {len(tokens)} words but "
                    f"{'no' if tags is None else len(tags)} tags",
                    f"Give every row one tag per word in '{column}' (or drop the row).",
                )
    if names is None:
        names = _tag_names(splits["train"], column)
        if len(names) < 2:
            raise DataError(f"the train split has {len(names)} tag{'s' if len(names) != 1 else ''} in column '{column}'",
                            "A tagger needs at least two tags; check the data and data.label_column.")  # fmt: skip
    index = {n: i for i, n in enumerate(names)}
    encoded: dict[str, Dataset] = {}
    for split, ds in splits.items():
        _, class_names = _list_item_names(ds, column)
        rows, unseen = [], set()
        for tags in ds[column]:
            as_names = [class_names[t] if class_names is not None else
                        str(int(t)) if isinstance(t, (int, float)) and not isinstance(t, bool) else str(t) for t in tags]  # fmt: skip
            unseen.update(n for n in as_names if n not in index)
            rows.append([index.get(n, -1) for n in as_names])
        if unseen:
            raise DataError(
                f"the '{split}' split has tags the model was not trained on: {', '.join(sorted(unseen)[:10])}",
                f"Known tags: {', '.join(names[:20])}. Fix the data or drop those rows.",
            )
        ds = ds.remove_columns(column).add_column(LABELS, rows)
        encoded[split] = ds.cast_column(LABELS, Sequence(ClassLabel(names=names)))
    return encoded, names


def pick_eval_split(raw: DatasetDict, split: str | None) -> str:
    """The split to evaluate: the one named, else validation-like, else the only one."""
    if split is not None:
        if split not in raw:
            raise DataError(f"unknown split '{split}' (the dataset has: {', '.join(raw)})", "Pass --split with one of them.")
        return split
    for name in (*EVAL_SPLITS, "test"):
        if name in raw:
            return name
    if len(raw) == 1:
        return next(iter(raw))
    raise DataError(f"which split to evaluate? the dataset has: {', '.join(raw)}", "Pass --split NAME.")


# ---- splits -------------------------------------------------------------------------------


def _stratified_subset(ds: Dataset, n: int, seed: int) -> Dataset:
    from datasets import ClassLabel

    if n >= len(ds):
        return ds
    if not isinstance(ds.features[LABELS], ClassLabel):  # regression targets: a random subset
        return ds.shuffle(seed=seed).select(range(n))
    try:
        return ds.train_test_split(train_size=n, stratify_by_column=LABELS, seed=seed)["train"]
    except ValueError:  # a class too small to stratify
        return ds.shuffle(seed=seed).select(range(n))


def _has_labels(ds: Dataset, column: str) -> bool:
    """Whether a split holds labels: not only None, negative class ids, or -1 throughout (GLUE's unlabelled test sets)."""
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
        return [f"dropped {sum(c.values())} of {self.rows[split]} rows of the '{split}' split: "
                + ", ".join(f"{n} {why}" for why, n in c.items()) for split, c in self.reasons.items()]  # fmt: skip


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
    from datasets import ClassLabel

    class_ids = isinstance(feature, ClassLabel)
    return lambda v: v is not None and not (isinstance(v, float) and math.isnan(v)) and not (class_ids and v < 0)


def drop_unusable_rows(
    splits: dict[str, Dataset], cols: dict[str, Any], kind: str, names: dict[str, str], dropped: DroppedRows
) -> dict[str, Dataset]:
    """Each split's rows that have their text (or words) and, but for a tagger's, their label; the rest counted in
    `dropped` under the split's name in `names`."""
    text_columns = [c for c in (cols["text"], cols["pair"]) if c]
    out = {}
    for key, ds in splits.items():
        if text_columns:
            ds = dropped.filter(names[key], ds, _present, text_columns, "with no text")
        if cols["label"] and kind != TOKENS:  # (a tagger's rows without tags are an error, naming the row)
            ds = dropped.filter(names[key], ds, _labelled(ds.features[cols["label"]]), [cols["label"]], "with no label")
        out[key] = ds
    return out


def load_data(data: DataSection, seed: int = 42, task: str = "auto", model_task: str | None = None) -> PreparedData:
    """Load, detect columns, encode labels, choose or carve the eval split, apply the caps.

    `task` is the recipe's (auto: the modality from `model_task`, the model's own, else from the
    columns; the problem from the model if it was fine-tuned for regression, else from the labels:
    numbers with fractions are a regression target, anything else classes).
    """
    raw, from_hub = load_raw(data)
    _check_split_names(raw, data)
    train = raw[data.train_split]
    if len(train) == 0:
        raise DataError(f"the '{data.train_split}' split is empty", "Check the data.")
    words = task == TOKEN_CLASSIFICATION or (task == "auto" and holds_word_lists(train, data))
    generation = task == TEXT_GENERATION or (task == "auto" and not words and _looks_like_generation(train, data, model_task))
    if words or generation:
        hint = TOKEN_CLASSIFICATION if words else TEXT_GENERATION
    else:
        hint = task if task != "auto" else model_task if model_task not in (None, TOKEN_CLASSIFICATION, TEXT_GENERATION) else "auto"
    cols = detect_columns(list(train.column_names), train.features, data, hint, rows=train)
    if generation:
        return _generation_data(raw, data, cols, seed, from_hub)
    eval_name, test_name = _eval_and_test_names(raw, data, cols["label"])
    splits = {"train": train}
    if eval_name is not None:
        splits["eval"] = raw[eval_name]
    if test_name is not None:
        splits["test"] = raw[test_name]
    if task != "auto" or words:
        kind = problem(hint)
    elif is_list_column(train, cols["label"]):
        kind = MULTI_LABEL
    elif model_task is not None and problem(model_task) in (REGRESSION, MULTI_LABEL):
        kind = problem(model_task)
    else:
        kind = REGRESSION if _is_fractional_numbers(train, cols["label"]) else CLASSIFICATION
    if kind != CLASSIFICATION and data.labels:
        raise UsageError(f"data.labels keeps some classes of a single-label column; this is a {kind} run",
                         "Remove data.labels, or set task to a -classification task.")  # fmt: skip
    if kind == MULTI_LABEL and not is_list_column(train, cols["label"]):
        raise DataError(
            f"a multi-label run needs a list of labels per row, but column '{cols['label']}' holds single values",
            "Point data.label_column at a column of lists, or name one 0/1 column per class in data.label_columns.",
        )
    dropped = DroppedRows()
    names = {"train": data.train_split, "eval": eval_name or "", "test": test_name or ""}
    splits = _keep_usable_rows(splits, cols, data, kind, names, dropped)
    if kind == REGRESSION:
        splits, names = encode_targets(splits, cols["label"]), [cols["label"]]
    elif kind == TOKENS:
        splits, names = encode_tags(splits, cols["text"], cols["label"])
    elif kind == MULTI_LABEL:
        splits, names = encode_multi_hot(splits, cols["label"], names=data.label_columns)
    else:
        splits, names = encode_labels(splits, cols["label"], names=data.labels)
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
    return PreparedData(
        task=task_of("image" if cols["image"] else "text", kind),
        train=splits["train"],
        eval=splits["eval"],
        test=splits.get("test"),
        labels=names,
        text_column=cols["text"],
        text_pair_column=cols["pair"],
        image_column=cols["image"],
        eval_source=eval_source,
        eval_split=eval_name or "validation",
        test_split=test_name,
        notes=notes,
        dropped=dropped.lines(),
        is_hub_dataset=from_hub,
        picked=cols.get("picked", {}),
    )


def _generation_data(raw: Any, data: DataSection, cols: dict[str, str | None], seed: int, from_hub: bool) -> PreparedData:
    """A causal LM's splits: the text (or prompt and response) columns only, rows with text; no labels (the
    tokens are the targets). The eval split is named or found, else carved from train at random."""
    if data.labels or data.label_columns:
        raise UsageError("data.labels / data.label_columns name classes; a causal LM (text-generation) has none",
                         "Remove them, or set task to a classification task.")  # fmt: skip
    eval_name = data.eval_split or next(
        (s for s in EVAL_SPLITS if s in raw and s not in (data.train_split, data.test_split)), None
    )
    test_name = data.test_split or ("test" if "test" in raw and data.eval_split != "test" else None)
    names = {"train": data.train_split, "eval": eval_name, "test": test_name}
    keep = [c for c in (cols["text"], cols["response"]) if c]
    splits: dict[str, Any] = {}
    dropped = DroppedRows()
    for key, name in names.items():
        if name is None:
            continue
        ds = raw[name]
        missing = [c for c in keep if c not in ds.column_names]
        if missing:
            raise DataError(f"the '{name}' split lacks column(s) {', '.join(missing)} (it has: {', '.join(ds.column_names)})")
        splits[key] = dropped.filter(name, ds.select_columns(keep), has_text, keep, "with no text")
    notes: list[str] = []
    if "eval" in splits:
        eval_source = f"the '{eval_name}' split"
    else:
        parts = splits["train"].train_test_split(test_size=data.validation_fraction, seed=seed)
        splits["train"], splits["eval"] = parts["train"], parts["test"]
        eval_source = f"{data.validation_fraction:.0%} of '{data.train_split}', random"
    for key, cap in (("train", data.max_train_samples), ("eval", data.max_eval_samples)):
        if cap and cap < len(splits[key]):
            splits[key] = splits[key].shuffle(seed=seed).select(range(cap))
    for key, ds in splits.items():
        if len(ds) == 0:
            raise DataError(f"the {key} split has no text after dropping empty rows",
                            f"Check the column{'s' if len(keep) > 1 else ''} {', '.join(keep)}.")  # fmt: skip
    return PreparedData(
        task=TEXT_GENERATION,
        train=splits["train"],
        eval=splits["eval"],
        test=splits.get("test"),
        labels=[],
        text_column=cols["text"],
        response_column=cols["response"],
        eval_source=eval_source,
        eval_split=eval_name or "validation",
        test_split=test_name,
        notes=notes,
        dropped=dropped.lines(),
        is_hub_dataset=from_hub,
    )


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
            (s for s in EVAL_SPLITS if s in raw and s != data.train_split and s != data.test_split
             and _has_labels(raw[s], label)),
            None,
        )  # fmt: skip
    test_name = data.test_split
    if test_name is None and "test" in raw and data.eval_split != "test" and _has_labels(raw["test"], label):
        test_name = "test"  # scored at the end, never used to pick the checkpoint
    return eval_name, test_name


def _keep_usable_rows(
    splits: dict[str, Any], cols: dict[str, Any], data: DataSection, kind: str, names: dict[str, str],
    dropped: DroppedRows,
) -> dict[str, Any]:
    """The used columns only, rows with text and a label (`drop_unusable_rows`), and (with data.labels) the listed
    labels only."""
    for name, ds in splits.items():
        missing = [c for c in (cols["label"], cols["text"], cols["pair"], cols["image"]) if c and c not in ds.column_names]
        if missing:
            raise DataError(f"the {name} split lacks column(s) {', '.join(missing)} (it has: {', '.join(ds.column_names)})")
    keep = [c for c in (cols["label"], cols["text"], cols["pair"], cols["image"]) if c]
    splits = drop_unusable_rows({k: v.select_columns(keep) for k, v in splits.items()}, cols, kind, names, dropped)
    if data.labels:
        splits = {k: _as_names(v, cols["label"]) for k, v in splits.items()}
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
    from datasets import ClassLabel

    if not isinstance(splits["train"].features[LABELS], ClassLabel):  # regression targets: at random
        parts = splits["train"].train_test_split(test_size=data.validation_fraction, seed=seed)
        splits["train"], splits["eval"] = parts["train"], parts["test"]
        return f"{data.validation_fraction:.0%} of '{data.train_split}', random"
    try:
        parts = splits["train"].train_test_split(test_size=data.validation_fraction, stratify_by_column=LABELS, seed=seed)
        how = "stratified"
    except ValueError:
        parts = splits["train"].train_test_split(test_size=data.validation_fraction, seed=seed)
        how = "random (a class was too small to stratify)"
        notes.append(f"validation split carved at random: {how}")
    splits["train"], splits["eval"] = parts["train"], parts["test"]
    return f"{data.validation_fraction:.0%} of '{data.train_split}', {how.split(' ')[0]}"

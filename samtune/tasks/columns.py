"""Columns and label values, as the tasks read them: which column holds what (by name, else by its values), and
label columns as class names, lists or the `labels` column the models take. Only `datasets`, imported where used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from samtune.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

LABELS = "labels"  # the encoded label column, under the name the models take
COMBINED_LABELS = "__samtune_labels"  # data.label_columns' 0/1 columns as one column of lists of class names
LABEL_COLUMNS = ("label", "labels")
IMAGE_COLUMNS = ("image", "img")
TEXT_COLUMNS = ("text", "sentence")
PAIR_COLUMNS = (
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("question1", "question2"),
    ("question", "sentence"),
)


def pick(columns: list[str], explicit: str | None, candidates: tuple[str, ...], what: str, key: str) -> str | None:
    """The column the recipe names (`key`), else the one of `candidates` present; None if none is."""
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


CONTENT_SAMPLE = 5000  # rows read to judge a column by its values


def by_content(rows: Dataset, columns: list[str], what: str, exclude: tuple[str | None, ...] = ()) -> str | None:
    """The one column whose values look like the `what` ("label" or "text"), where no name said; None if none does.

    A label: strings, whole numbers or booleans that repeat (2 to 100 distinct values, at most a fifth of the
    rows), or numbers with fractions (a regression target; floats that are all whole are whole numbers). A text:
    strings, mostly distinct (at least half the rows), most with a space in them (sentences, not ids or codes).
    Two candidates or more is a DataError naming them all: samtune never guesses between columns.
    """
    sample = rows.select(range(min(len(rows), CONTENT_SAMPLE)))
    n, found = len(sample), {}
    for c in columns:
        if c in exclude:
            continue
        values = [v for v in sample[c] if v is not None and v == v]  # (NaN: a missing number)
        kind = type(values[0]) if values else None
        if kind is float and all(isinstance(v, float) and v.is_integer() for v in values):
            values, kind = [int(v) for v in values], int  # 1.0, 2.0, ...: whole numbers, as a CSV reader may type them
        if kind not in (str, int, bool, float) or not all(type(v) is kind for v in values):
            continue
        distinct = len(set(values))
        if what == "label" and kind is float and distinct >= 2:
            found[c] = distinct  # numbers with fractions: a regression target
        elif what == "label" and kind is not float and 2 <= distinct <= max(2, min(100, n // 5)):
            found[c] = distinct
        elif (
            what == "text"
            and kind is str
            and distinct >= n / 2
            and sum(" " in v.strip() for v in values) >= len(values) / 2
        ):
            found[c] = distinct
    if len(found) > 1:
        described = ", ".join(f"'{c}' ({d} distinct values in {n} rows)" for c, d in found.items())
        raise DataError(
            f"more than one column could be the {what}: {described}; samtune does not guess between them",
            "Say which: "
            + " or ".join(f"data.{what}_column={c}" for c in found)
            + (" (and data.text_column=COLUMN for the text)" if what == "label" else "")
            + ".",
        )
    return next(iter(found), None)


def label_names(train: Dataset, column: str) -> list[str] | None:
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


def as_names(ds: Dataset, column: str) -> Dataset:
    """The label column as strings: class names for a ClassLabel, whole numbers as text."""
    from datasets import ClassLabel, Value

    feature = ds.features[column]
    if isinstance(feature, ClassLabel):
        ds = ds.filter(lambda v: v is not None and v >= 0, input_columns=column)  # -1: unlabelled
        return ds.map(lambda v: {column: feature.int2str(v)}, input_columns=column, features=None).cast_column(
            column, Value("string")
        )
    ds = ds.filter(lambda v: v is not None, input_columns=column)
    as_text = ds.map(lambda v: {column: str(v) if isinstance(v, (str, bool)) else str(int(v))}, input_columns=column)
    return as_text.cast_column(column, Value("string"))


def renamed_to_labels(ds: Dataset, column: str) -> Dataset:
    """The encoded label column under the name the models take, `labels` (any other column of that name dropped)."""
    if column == LABELS:
        return ds
    if LABELS in ds.column_names:
        ds = ds.remove_columns(LABELS)
    return ds.rename_column(column, LABELS)


def is_list_column(ds: Dataset, column: str) -> bool:
    """Whether a label column holds lists (several labels per example)."""
    return getattr(ds.features[column], "_type", "") in ("Sequence", "List", "LargeList")


def list_item_names(ds: Dataset, column: str) -> tuple[Any, list[str] | None]:
    """A list column's item feature, and its class names when the items are a ClassLabel."""
    from datasets import ClassLabel

    item = ds.features[column].feature
    return item, list(item.names) if isinstance(item, ClassLabel) else None

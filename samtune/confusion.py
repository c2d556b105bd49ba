"""Where a classifier errs: per-class precision, recall and F1, and the confusion matrix (a table and a figure).

`ErrorRecorder` wraps a run's `compute_metrics` and keeps the truth and predictions of the latest evaluation, so the
final evaluation (of `train`, or `eval`) yields its report without a second pass. A report (`ErrorReport`: here
`Confusion`, single-label classification; `samtune.per_label.PerLabel`, multi-label) is written as JSON and a figure
into the run directory, printed by `samtune eval` and summed up in the card's "Where it errs". A task that has one
names it in `Task.error_report`. Large label sets keep the most confused classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from rich.markup import escape
from rich.table import Table
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from samtune.card import md_cell

JSON_FILE = "confusion.json"  # the eval split's matrix and per-class scores, in the run directory
FIGURE_FILE = "confusion_matrix.png"
MAX_SHOWN = 20  # classes drawn (and tabled) at most: beyond, the most confused ones


class ErrorReport(Protocol):
    """Where a model errs on one evaluation: what the run directory, `samtune eval` and the card show of it."""

    json_file: ClassVar[str]  # its name in the run directory (`samtune eval`: eval-<data>-<split>-<name>)
    figure_file: ClassVar[str]

    def to_json(self) -> dict[str, Any]: ...

    def plot(self, path: Path, title: str = "") -> Path: ...

    def card_section(self, split: str) -> str:
        """The body of the card's "Where it errs" (markdown), on the split `split`."""
        ...

    def printed(self) -> list[Any]:
        """What `samtune eval` prints of it (rich renderables)."""
        ...


class ErrorRecorder:
    """A `compute_metrics` that passes through to `metrics` and keeps the latest evaluation's truth and predictions, as
    `decide` reads them from its EvalPrediction; `report` makes them an ErrorReport (`report_of(labels, truth,
    predicted)`)."""

    def __init__(
        self,
        metrics: Callable[[Any], dict[str, float]],
        decide: Callable[[Any], tuple[np.ndarray, np.ndarray]],
        report_of: Callable[[list[str], np.ndarray, np.ndarray], ErrorReport],
    ):
        self.metrics, self.decide, self.report_of = metrics, decide, report_of
        self.truth: np.ndarray | None = None
        self.predicted: np.ndarray | None = None

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        self.truth, self.predicted = self.decide(eval_pred)
        return self.metrics(eval_pred)

    def report(self, labels: list[str]) -> ErrorReport | None:
        """The latest evaluation's report (None before any)."""
        if self.truth is None or self.predicted is None:
            return None
        return self.report_of(labels, self.truth, self.predicted)


@dataclass
class Confusion:
    """Labels (names), the matrix (rows: true class, columns: predicted), and per-class scores."""

    labels: list[str]
    matrix: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray

    json_file: ClassVar[str] = JSON_FILE
    figure_file: ClassVar[str] = FIGURE_FILE

    @classmethod
    def of(cls, labels: list[str], truth: np.ndarray, predicted: np.ndarray) -> Confusion:
        ids = list(range(len(labels)))
        matrix = confusion_matrix(truth, predicted, labels=ids)
        p, r, f, s = precision_recall_fscore_support(truth, predicted, labels=ids, zero_division=0)
        return cls(list(labels), matrix, p, r, f, s)

    def shown(self, limit: int = MAX_SHOWN) -> list[int]:
        """The classes to show: all of them up to `limit`, else the `limit` most involved in errors (as true or
        predicted class), in label order."""
        if len(self.labels) <= limit:
            return list(range(len(self.labels)))
        errors = self.matrix.copy()
        np.fill_diagonal(errors, 0)
        involvement = errors.sum(axis=0) + errors.sum(axis=1)
        return sorted(np.argsort(-involvement, kind="stable")[:limit].tolist())

    def top_confusions(self, k: int = 10) -> list[tuple[str, str, int]]:
        """The `k` largest off-diagonal cells: (true class, predicted class, count)."""
        errors = self.matrix.copy()
        np.fill_diagonal(errors, 0)
        order = np.argsort(-errors, axis=None, kind="stable")[:k]
        cells = [np.unravel_index(i, errors.shape) for i in order]
        return [(self.labels[t], self.labels[p], int(errors[t, p])) for t, p in cells if errors[t, p] > 0]

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "matrix": self.matrix.tolist(),
            "per_class": {
                label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                for label, p, r, f, s in zip(self.labels, self.precision, self.recall, self.f1, self.support)
            },
        }

    def plot(self, path: Path, title: str = "") -> Path:
        return plot_confusion(self, path, title)

    def card_section(self, split: str) -> str:
        """Per-class scores and the figure."""

        keep = self.shown()
        rows = "\n".join(
            f"| {md_cell(self.labels[i])} | {self.precision[i]:.3f} | {self.recall[i]:.3f} | {self.f1[i]:.3f} "
            f"| {self.support[i]} |"
            for i in keep
        )
        which = (
            ""
            if len(keep) == len(self.labels)
            else f" (the {len(keep)} classes most involved in errors, of {len(self.labels)})"
        )
        return f"""Per class on the {split} split{which}:

| class | precision | recall | F1 | examples |
|---|---:|---:|---:|---:|
{rows}

![Confusion matrix]({FIGURE_FILE})
"""

    def printed(self) -> list[Any]:
        """Per-class scores, and the matrix as a table (up to 12 classes) or its largest confusions."""

        keep = self.shown()
        which = "" if len(keep) == len(self.labels) else f" (the {len(keep)} most confused of {len(self.labels)})"
        scores = scores_table(f"per class{which}", "class", self, keep)
        if len(keep) <= 12:
            matrix = Table(title="confusion matrix (rows: true, columns: predicted)")
            matrix.add_column("")
            for i in keep:
                matrix.add_column(escape(self.labels[i]), justify="right")
            for t in keep:
                matrix.add_row(escape(self.labels[t]), *[str(self.matrix[t, p]) for p in keep])
            return [scores, matrix]
        pairs = Table(title="most frequent confusions")
        for name in ("true", "predicted as", "examples"):
            pairs.add_column(name, justify="right" if name == "examples" else "left")
        for true, predicted, count in self.top_confusions():
            pairs.add_row(escape(true), escape(predicted), str(count))
        return [scores, pairs]


def scores_table(title: str, first: str, report: Any, rows: list[int], extra: dict[str, Any] | None = None) -> Any:
    """A rich table of the `rows` of `report` (a Confusion or a PerLabel): label (its column named `first`),
    precision, recall, F1, examples, then the `extra` columns (name: counts)."""

    extra = extra or {}
    table = Table(title=title)
    for name in (first, "precision", "recall", "F1", "examples", *extra):
        table.add_column(name, justify="left" if name == first else "right")
    for i in rows:
        scores = (f"{a[i]:.3f}" for a in (report.precision, report.recall, report.f1))
        table.add_row(escape(report.labels[i]), *scores, str(report.support[i]), *(str(a[i]) for a in extra.values()))
    return table


def argmax_decisions(eval_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """The true classes and the argmax predictions of an EvalPrediction."""
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    return np.asarray(eval_pred.label_ids), np.asarray(logits).argmax(-1)


class ConfusionRecorder(ErrorRecorder):
    """A `compute_metrics` that passes through to `metrics` and keeps the latest evaluation's argmax predictions."""

    def __init__(self, metrics: Callable[[Any], dict[str, float]]):
        super().__init__(metrics, argmax_decisions, Confusion.of)


def plot_confusion(confusion: Confusion, path: Path, title: str = "") -> Path:
    """The confusion matrix as a PNG, rows normalised (each true class's share predicted as each class), counts in
    the cells while they fit; label names on both axes; over MAX_SHOWN classes, the most confused ones."""
    matplotlib.use("Agg")
    keep = confusion.shown()
    matrix = confusion.matrix[np.ix_(keep, keep)]
    names = [confusion.labels[i] for i in keep]
    totals = confusion.matrix[keep].sum(axis=1, keepdims=True)  # the whole row, classes not shown included
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    size = min(12.0, 2.5 + 0.45 * len(keep))
    fig, ax = plt.subplots(figsize=(size + 1.2, size), dpi=100)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(keep)), labels=names, rotation=90 if len(keep) > 6 else 0, fontsize=8)
    ax.set_yticks(range(len(keep)), labels=names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(keep) <= 12:
        for t in range(len(keep)):
            for p in range(len(keep)):
                ax.text(
                    p,
                    t,
                    str(matrix[t, p]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if shares[t, p] > 0.5 else "black",
                )
    note = (
        "" if len(keep) == len(confusion.labels) else f" ({len(keep)} most confused of {len(confusion.labels)} classes)"
    )
    ax.set_title(f"{title}{note}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

"""Where a classifier errs: per-class precision, recall and F1, and the confusion matrix (a table and a figure).

`ConfusionRecorder` wraps a run's `compute_metrics` and keeps the labels and predictions of the latest
evaluation, so the final evaluation (of `train`, or `eval`) yields its matrix without a second pass.
Single-label classification only (text or image); large label sets keep the most confused classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

FIGURE_FILE = "confusion_matrix.png"
MAX_SHOWN = 20  # classes drawn (and tabled) at most: beyond, the most confused ones


@dataclass
class Confusion:
    """Labels (names), the matrix (rows: true class, columns: predicted), and per-class scores."""

    labels: list[str]
    matrix: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray

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


class ConfusionRecorder:
    """A `compute_metrics` that passes through to `metrics` and keeps the latest evaluation's argmax predictions."""

    def __init__(self, metrics: Callable[[Any], dict[str, float]]):
        self.metrics = metrics
        self.truth: np.ndarray | None = None
        self.predicted: np.ndarray | None = None

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        self.predicted = np.asarray(logits).argmax(-1)
        self.truth = np.asarray(eval_pred.label_ids)
        return self.metrics(eval_pred)

    def confusion(self, labels: list[str]) -> Confusion | None:
        if self.truth is None or self.predicted is None:
            return None
        return Confusion.of(labels, self.truth, self.predicted)


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

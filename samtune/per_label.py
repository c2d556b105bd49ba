"""Where a multi-label classifier errs: each label's precision, recall and F1 with its examples (support) and how often
it was predicted (a table and a figure).

The predictions are the task's own, thresholded as its metrics are (training.threshold); a label predicted in fewer
examples than have it is missed (recall pays), one predicted in more is over-predicted (precision pays): predicted -
examples = false positives - false negatives. Labels that neither occur in the split nor are predicted say nothing and
are left out of the rankings (the JSON keeps every label). An `ErrorReport` (samtune.confusion).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from rich.text import Text
from sklearn.metrics import precision_recall_fscore_support

from samtune.card import md_cell
from samtune.confusion import scores_table

JSON_FILE = "per_label.json"  # the eval split's per-label scores and counts, in the run directory
FIGURE_FILE = "per_label_f1.png"
MAX_SHOWN = 30  # labels drawn at most: beyond, the lowest F1
MAX_LISTED = 10  # labels in the card's table and named in its sentence at most (`samtune eval` prints 2x)


@dataclass
class PerLabel:
    """Labels (names), each one's scores, its examples in the split (`support`), its predictions, the split's size."""

    labels: list[str]
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    predicted: np.ndarray
    examples: int

    json_file: ClassVar[str] = JSON_FILE
    figure_file: ClassVar[str] = FIGURE_FILE

    @classmethod
    def of(cls, labels: list[str], truth: np.ndarray, predicted: np.ndarray) -> PerLabel:
        """From multi-hot rows (examples x labels) of truth and predictions, by scikit-learn."""

        truth, predicted = np.asarray(truth).astype(int), np.asarray(predicted).astype(int)
        p, r, f, s = precision_recall_fscore_support(truth, predicted, average=None, zero_division=0)
        return cls(list(labels), p, r, f, s, predicted.sum(axis=0), len(truth))

    def _ranked(self, key: np.ndarray, keep: np.ndarray) -> list[int]:
        """The labels where `keep`, `key` ascending (ties: the most examples first, then label order)."""
        order = np.lexsort((np.arange(len(self.labels)), -self.support, key))
        return [int(i) for i in order if keep[i]]

    def worst(self) -> list[int]:
        """The labels by F1, lowest first; those absent from the split and never predicted left out."""
        return self._ranked(self.f1, (self.support + self.predicted) > 0)

    def shown(self, limit: int = MAX_SHOWN) -> list[int]:
        """The labels to draw: the `limit` lowest F1, lowest first."""
        return self.worst()[:limit]

    def missed(self) -> list[int]:
        """Labels predicted in fewer examples than have them (false negatives outnumber false positives), the lowest
        recall first."""
        return self._ranked(self.recall, self.support > self.predicted)

    def over_predicted(self) -> list[int]:
        """Labels predicted in more examples than have them (false positives outnumber false negatives), the lowest
        precision first."""
        return self._ranked(self.precision, self.predicted > self.support)

    def found(self, i: int) -> int:
        """Label `i`'s true positives."""
        return int(round(self.recall[i] * self.support[i]))

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "examples": self.examples,
            "per_label": {
                label: {
                    "precision": float(p),
                    "recall": float(r),
                    "f1": float(f),
                    "support": int(s),
                    "predicted": int(n),
                }
                for label, p, r, f, s, n in zip(
                    self.labels, self.precision, self.recall, self.f1, self.support, self.predicted
                )
            },
        }

    def summary(self, limit: int = 3) -> str:
        """A sentence on the labels missed (the lowest recall first) and those over-predicted (the lowest precision
        first)."""
        missed = ", ".join(
            f"{self.labels[i]} (found in {self.found(i)} of the {self.support[i]} examples that have it)"
            for i in self.missed()[:limit]
        )
        over = ", ".join(
            f"{self.labels[i]} (predicted in {self.predicted[i]} examples, {self.support[i]} have it)"
            for i in self.over_predicted()[:limit]
        )
        parts = [
            *([f"Missed most (predicted in fewer examples than have it: recall pays): {missed}."] if missed else []),
            *(
                [f"Over-predicted most (predicted in more examples than have it: precision pays): {over}."]
                if over
                else []
            ),
        ]
        return " ".join(parts) or "Every label is predicted as often as it occurs."

    def _which(self, shown: list[int]) -> str:
        present = len(self.worst())
        absent = len(self.labels) - present
        return (f" (the {len(shown)} lowest-F1 of {present} labels)" if len(shown) < present else "") + (
            f"; {absent} label{'s' if absent != 1 else ''} neither in the split nor predicted" if absent else ""
        )

    def card_section(self, split: str) -> str:
        """The lowest-F1 labels with their scores and counts, the missed and over-predicted ones, and the figure."""

        shown = self.worst()[:MAX_LISTED]
        rows = "\n".join(
            f"| {md_cell(self.labels[i])} | {self.precision[i]:.3f} | {self.recall[i]:.3f} | {self.f1[i]:.3f} "
            f"| {self.support[i]} | {self.predicted[i]} |"
            for i in shown
        )
        return f"""Per label on the {split} split ({self.examples} examples), the lowest F1 first{self._which(shown)}:

| label | precision | recall | F1 | examples | predicted |
|---|---:|---:|---:|---:|---:|
{rows}

{self.summary()}

![Per-label F1]({FIGURE_FILE})
"""

    def printed(self) -> list[Any]:
        """The lowest-F1 labels as a table, and the sentence on the missed and over-predicted ones."""

        shown = self.worst()[: 2 * MAX_LISTED]
        title = f"per label, the lowest F1 first{self._which(shown)}"
        table = scores_table(title, "label", self, shown, {"predicted": self.predicted})
        return [table, Text(self.summary())]

    def plot(self, path: Path, title: str = "") -> Path:
        """Each label's F1 as a horizontal bar, the lowest at the top, with its examples and predictions; over
        MAX_SHOWN labels, the MAX_SHOWN lowest (the title says so)."""

        matplotlib.use("Agg")

        shown = self.shown()
        fig, ax = plt.subplots(figsize=(8.0, 1.5 + 0.3 * max(len(shown), 5)), dpi=100)
        ax.barh(range(len(shown)), self.f1[shown], color="tab:blue")
        ax.set_yticks(range(len(shown)), labels=[self.labels[i] for i in shown], fontsize=8)
        ax.invert_yaxis()  # the lowest F1 on top
        for row, i in enumerate(shown):
            note = f" {self.f1[i]:.2f}: {self.support[i]} examples, {self.predicted[i]} predicted"
            ax.text(self.f1[i], row, note, va="center", fontsize=7)
        ax.set_xlim(0.0, 1.45)  # room for the notes right of a full bar
        ax.set_xticks([0.0, 0.25, 0.5, 0.75, 1.0])
        ax.set_xlabel("F1")
        ax.set_title(f"{title}{self._which(shown)}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path

"""Multi-label classification, of a text (or a pair) or an image: several classes per example, a sigmoid and a
binary cross-entropy per class.

Detected from a label column that holds lists (or `data.label_columns`: one 0/1 column per class), or a model
fine-tuned for it. A class is predicted where its probability reaches training.threshold; scored by micro and
macro F1 and subset accuracy; the eval split's per-label scores recorded (samtune.per_label).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from samtune.errors import DataError
from samtune.tasks.base import Metric, model_outputs, register
from samtune.tasks.columns import LABELS, is_list_column, list_item_names
from samtune.tasks.per_example import PerExampleTask, add_probabilities, logit_matrix, probability_names

if TYPE_CHECKING:
    from datasets import Dataset


def encode_multi_hot(
    splits: dict[str, Dataset], column: str, names: list[str] | None = None
) -> tuple[dict[str, Dataset], list[str]]:
    """Each split's lists of labels as `labels`, a multi-hot float32 vector over `names` (default: the train split's
    classes: a ClassLabel's names, else every label seen, sorted); a label outside them is a DataError."""
    from datasets import ClassLabel, Sequence, Value

    def as_names(ds: Dataset) -> list[list[str]]:
        item, class_names = list_item_names(ds, column)
        rows = []
        for value in ds[column]:
            items = value or []
            if class_names is not None:
                rows.append([class_names[i] for i in items if i is not None and i >= 0])
            else:
                rows.append(
                    [
                        str(int(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
                        for v in items
                        if v is not None
                    ]
                )
        return rows

    if names is None:
        train = splits["train"]
        _, class_names = list_item_names(train, column)
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
            raise DataError(
                f"the '{split}' split's column '{column}' does not hold lists of labels",
                "Every split of a multi-label dataset holds a list of labels per row.",
            )
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


def sigmoid(logits: Any) -> Any:
    """Each class's own probability."""
    import numpy as np

    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def decisions(eval_pred: Any, threshold: float = 0.5) -> tuple[Any, Any]:
    """The multi-hot truth and predictions of an EvalPrediction: a class is predicted where its sigmoid reaches
    `threshold`."""
    import numpy as np

    preds = (sigmoid(model_outputs(eval_pred)) >= threshold).astype(int)
    return (np.asarray(eval_pred.label_ids) >= 0.5).astype(int), preds


def multi_label_metrics(threshold: float = 0.5) -> Callable[[Any], dict[str, float]]:
    """The `compute_metrics` of a multi-label task: a class is predicted where its sigmoid reaches `threshold`;
    micro and macro F1 and subset accuracy (every class right), by scikit-learn."""

    def compute(eval_pred: Any) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score

        targets, preds = decisions(eval_pred, threshold)
        return {
            "micro_f1": float(f1_score(targets, preds, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(targets, preds, average="macro", zero_division=0)),
            "subset_accuracy": float(accuracy_score(targets, preds)),
        }

    return compute


class MultiLabelClassification(PerExampleTask):
    """Several classes per example."""

    metrics = (
        Metric("micro_f1", "micro F1", True),
        Metric("macro_f1", "macro F1", True),
        Metric("subset_accuracy", "subset accuracy", True),
    )
    problem = "multi-label"
    problem_type = "multi_label_classification"
    pipeline_options = ', function_to_apply="sigmoid", top_k=None'  # every label's own
    error_report = "per-label F1"

    def claims_labels(self, rows: Any, label_column: str, model_task: Any) -> bool:
        """Lists of labels, or a model fine-tuned for several labels per example."""
        by_model = model_task is not None and model_task.problem_type == self.problem_type
        return is_list_column(rows, label_column) or by_model

    def check_data(self, train: Any, cols: dict[str, Any], section: Any) -> None:
        super().check_data(train, cols, section)
        if not is_list_column(train, cols["label"]):
            raise DataError(
                f"a multi-label run needs a list of labels per row, but column '{cols['label']}' holds single values",
                "Point data.label_column at a column of lists, or name one 0/1 column per class in data.label_columns.",
            )

    def recipe_classes(self, section: Any) -> list[str] | None:
        return section.label_columns

    def encode(self, splits: dict[str, Any], cols: dict[str, Any], names: list[str] | None = None) -> tuple[dict, list]:
        return encode_multi_hot(splits, cols["label"], names=names)

    def head_config(self, labels: list[str]) -> dict[str, Any]:
        """A sigmoid per class and a binary cross-entropy loss."""
        return {**super().head_config(labels), "problem_type": self.problem_type}

    def compute_metrics(self, labels: list[str], threshold: float = 0.5) -> Callable[[Any], dict[str, float]]:
        """`multi_label_metrics`, the thresholded predictions kept for the per-label report."""
        from samtune.confusion import ErrorRecorder
        from samtune.per_label import PerLabel

        return ErrorRecorder(multi_label_metrics(threshold), lambda p: decisions(p, threshold), PerLabel.of)

    def prediction_names(self, labels: list[str]) -> list[str]:
        """The labels whose probability reaches the threshold, joined by "|", and every label's probability."""
        return ["predicted_labels", *probability_names(labels)]

    def prediction_columns(self, table: Any, logits: Any, labels: list[str], threshold: float) -> list[str]:
        probs = sigmoid(logit_matrix(logits, labels))
        table["predicted_labels"] = ["|".join(name for name, p in zip(labels, row) if p >= threshold) for row in probs]
        add_probabilities(table, probs, labels)
        return self.prediction_names(labels)

    def card_labels_line(self, facts: Any) -> str:
        return (
            f"Labels ({len(facts.labels)}, several per example: multi-label, a sigmoid and a binary cross-entropy "
            f"per label; predicted from probability {facts.recipe.training.threshold:g}): {', '.join(facts.labels)}."
        )


register(MultiLabelClassification("text-multi-label", "text"))
register(MultiLabelClassification("image-multi-label", "image"))

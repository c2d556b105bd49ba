"""Single-label classification, of a text (or a pair) or an image: one class per example, a softmax head.

Detected when nothing else is (labels that are strings, whole numbers or booleans); scored by accuracy and
macro F1, with the eval split's confusion matrix recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from samtune.errors import DataError
from samtune.tasks.base import Metric, model_outputs, register
from samtune.tasks.columns import as_names, label_names, renamed_to_labels
from samtune.tasks.per_example import PerExampleTask, add_probabilities, logit_matrix, probability_names

if TYPE_CHECKING:
    from datasets import Dataset

TEXT_CLASSIFICATION = "text-classification"
IMAGE_CLASSIFICATION = "image-classification"


def encode_labels(
    splits: dict[str, Dataset], column: str, names: list[str] | None = None
) -> tuple[dict[str, Dataset], list[str]]:
    """Each split's label column as `labels`, a ClassLabel named after `names` (default: the train split's)."""
    from datasets import ClassLabel

    if names is None:
        train = splits["train"]
        names = label_names(train, column)
        if names is None:
            sample = ", ".join(repr(v) for v in train.unique(column)[:5])
            raise DataError(
                f"the labels in column '{column}' are not classes (values such as {sample})",
                "A classifier's labels are strings or whole numbers: pick another column with "
                "data.label_column=COLUMN, or for a numeric target set task to text-regression or image-regression.",
            )
        if len(names) > max(100, len(train) // 2):
            raise DataError(
                f"column '{column}' has {len(names)} distinct values in {len(train)} rows: "
                "it does not look like labels",
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
            if not isinstance(feature, ClassLabel) and label_names(ds, column) is None:
                raise DataError(f"the labels in the '{split}' split's column '{column}' are not classes")
            ds = as_names(ds, column)
            unseen = sorted(set(ds.unique(column)) - set(names))
            if unseen:
                raise DataError(
                    f"the '{split}' split has labels the model was not trained on: {', '.join(unseen[:10])}",
                    f"Known labels: {', '.join(names[:20])}. Fix the data or drop those rows.",
                )
            ds = ds.cast_column(column, target)
        encoded[split] = renamed_to_labels(ds, column)
    return encoded, names


class SingleLabelClassification(PerExampleTask):
    """One class per example."""

    metrics = (Metric("accuracy", "accuracy", True), Metric("f1", "macro F1", True))
    problem = "classification"
    problem_type = "single_label_classification"
    fallback = True
    smooths_labels = True
    error_report = "confusion matrix"

    def claims_labels(self, rows: Any, label_column: str, model_task: Any) -> bool:
        return True  # (the fallback: tried after the others)

    def check_data(self, train: Any, cols: dict[str, Any], section: Any) -> None:
        pass  # data.labels keeps some classes: this is the task it was made for

    def recipe_classes(self, section: Any) -> list[str] | None:
        return section.labels

    def encode(self, splits: dict[str, Any], cols: dict[str, Any], names: list[str] | None = None) -> tuple[dict, list]:
        return encode_labels(splits, cols["label"], names=names)

    def scores(self, eval_pred: Any) -> dict[str, float]:
        """Accuracy and macro F1 (scikit-learn) of the argmax predictions."""
        import numpy as np
        from sklearn.metrics import accuracy_score, f1_score

        preds = np.asarray(model_outputs(eval_pred)).argmax(-1)
        labels = np.asarray(eval_pred.label_ids)
        return {
            "accuracy": float(accuracy_score(labels, preds)),
            "f1": float(f1_score(labels, preds, average="macro")),
        }

    def compute_metrics(self, labels: list[str], threshold: float = 0.5) -> Callable[[Any], dict[str, float]]:
        """`scores`, the predictions kept for the confusion matrix."""
        from samtune.confusion import ConfusionRecorder

        return ConfusionRecorder(self.scores)

    def prediction_names(self, labels: list[str]) -> list[str]:
        """The most probable class, its probability (softmax) and every class's."""
        return ["predicted_label", "score", *probability_names(labels)]

    def prediction_columns(self, table: Any, logits: Any, labels: list[str], threshold: float) -> list[str]:
        import numpy as np

        names = self.prediction_names(labels)
        logits = logit_matrix(logits, labels)
        shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        table[names[0]] = [labels[i] for i in probs.argmax(axis=1)]
        table[names[1]] = probs.max(axis=1)
        add_probabilities(table, probs, labels)
        return names


register(SingleLabelClassification(TEXT_CLASSIFICATION, "text"))
register(SingleLabelClassification(IMAGE_CLASSIFICATION, "image"))

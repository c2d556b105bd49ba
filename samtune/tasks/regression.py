"""Regression, of a text (or a pair) or an image: a number per example, one output and a mean squared error loss.

Detected from labels that are numbers with fractions (STS-B's 0.0-5.0), or a model fine-tuned for it; whole
numbers stay classes unless the recipe names a -regression task. Scored by MSE, MAE, Pearson and Spearman.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, Callable

from samtune.errors import DataError
from samtune.tasks.base import Metric, model_outputs, register
from samtune.tasks.columns import is_list_column, renamed_to_labels
from samtune.tasks.per_example import PerExampleTask, logit_matrix

if TYPE_CHECKING:
    from datasets import Dataset


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
        encoded[split] = renamed_to_labels(ds, column)
    return encoded


def compute_regression_metrics(eval_pred: Any) -> dict[str, float]:
    """MSE and MAE (scikit-learn), Pearson and Spearman correlations (SciPy) of the single output.

    A correlation is undefined when the predictions (or targets) are all equal: it is reported as 0.0,
    no linear or rank relation, so that a collapsed model never ranks above one that learned something.
    """

    import numpy as np
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    preds = np.asarray(model_outputs(eval_pred), dtype=np.float64).reshape(-1)
    targets = np.asarray(eval_pred.label_ids, dtype=np.float64).reshape(-1)
    constant = np.ptp(preds) == 0 or np.ptp(targets) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pearson = 0.0 if constant else float(pearsonr(preds, targets)[0])
        spearman = 0.0 if constant else float(spearmanr(preds, targets)[0])
    return {
        "mse": float(mean_squared_error(targets, preds)),
        "mae": float(mean_absolute_error(targets, preds)),
        "pearson": pearson,
        "spearman": spearman,
    }


class Regression(PerExampleTask):
    """A number per example."""

    metrics = (
        Metric("mse", "mean squared error", False),
        Metric("mae", "mean absolute error", False),
        Metric("pearson", "Pearson r", True),
        Metric("spearman", "Spearman rho", True),
    )
    problem = "regression"
    problem_type = "regression"
    pipeline_options = ', function_to_apply="none"'  # the number itself

    def claims_labels(self, rows: Any, label_column: str, model_task: Any) -> bool:
        """A model fine-tuned for regression, or numbers with fractions (a single value per row)."""
        by_model = model_task is not None and model_task.problem_type == self.problem_type
        return not is_list_column(rows, label_column) and (by_model or _is_fractional_numbers(rows, label_column))

    def encode(self, splits: dict[str, Any], cols: dict[str, Any], names: list[str] | None = None) -> tuple[dict, list]:
        """The targets as float32; the target's name stands for the labels."""
        return encode_targets(splits, cols["label"]), [cols["label"]]

    def head_config(self, labels: list[str]) -> dict[str, Any]:
        """One output and an MSE loss; `labels` names the target."""
        return dict(num_labels=1, problem_type=self.problem_type, id2label={0: labels[0] if labels else "value"})

    def compute_metrics(self, labels: list[str], threshold: float = 0.5) -> Callable[[Any], dict[str, float]]:
        return compute_regression_metrics

    def prediction_names(self, labels: list[str]) -> list[str]:
        """The predicted number, named after the target."""
        return [f"predicted_{labels[0] if labels else 'value'}"]

    def prediction_columns(self, table: Any, logits: Any, labels: list[str], threshold: float) -> list[str]:
        import numpy as np

        names = self.prediction_names(labels)
        table[names[0]] = logit_matrix(logits, labels).reshape(-1).astype(np.float64)
        return names

    def describe_targets(self, data: Any, packing: bool) -> tuple[str, str]:
        return "target", f"{data.labels[0]} (a number: regression)"

    def card_labels_line(self, facts: Any) -> str:
        target = facts.labels[0] if facts.labels else "the label column"
        return f"Regression: one output, the target `{target}`, trained with a mean squared error loss."


register(Regression("text-regression", "text"))
register(Regression("image-regression", "image"))

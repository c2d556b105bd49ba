"""The tasks samtune fine-tunes, as one table: a modality (text or image) and a problem (classes or a number).

A task's name is what the recipe's `task` takes; everything else about it (the metrics, which way
each is better, the default metric for choosing the best checkpoint) is read from here. Nothing
heavy is imported: recipes validate against this table in milliseconds.
"""

from __future__ import annotations

TEXT_CLASSIFICATION = "text-classification"
IMAGE_CLASSIFICATION = "image-classification"
TEXT_REGRESSION = "text-regression"
IMAGE_REGRESSION = "image-regression"
TASKS = (TEXT_CLASSIFICATION, IMAGE_CLASSIFICATION, TEXT_REGRESSION, IMAGE_REGRESSION)

CLASSIFICATION = "classification"
REGRESSION = "regression"

# Per problem: the metrics computed at every evaluation (besides the loss), the first the default for
# choosing the best checkpoint.
METRICS = {CLASSIFICATION: ("accuracy", "f1"), REGRESSION: ("mse", "mae", "pearson", "spearman")}
GREATER_IS_BETTER = {"accuracy": True, "f1": True, "loss": False, "mse": False, "mae": False, "pearson": True,
                     "spearman": True}  # fmt: skip
ALL_METRICS = tuple(GREATER_IS_BETTER)
METRIC_NAMES = {"accuracy": "accuracy", "f1": "macro F1", "loss": "loss", "mse": "mean squared error",
                "mae": "mean absolute error", "pearson": "Pearson r", "spearman": "Spearman rho"}  # fmt: skip


def modality(task: str) -> str:
    """'text' or 'image'."""
    return task.split("-", 1)[0]


def problem(task: str) -> str:
    """'classification' or 'regression'."""
    return REGRESSION if task.endswith("-regression") else CLASSIFICATION


def task_of(modality_name: str, problem_name: str) -> str:
    """The task for a modality and a problem: ('text', 'regression') -> 'text-regression'."""
    return f"{modality_name}-{problem_name}"


def metrics_of(task: str) -> tuple[str, ...]:
    """The metrics a task's evaluations report, the loss last."""
    return (*METRICS[problem(task)], "loss")


def default_metric(task: str) -> str:
    """The metric that chooses the best checkpoint when the recipe names none."""
    return METRICS[problem(task)][0]


def metric_problem(task: str, metric: str) -> str | None:
    """What is wrong with choosing checkpoints by `metric` for `task` (None: nothing)."""
    if metric in metrics_of(task):
        return None
    return (f"training.metric_for_best_model is '{metric}', which a {task} run does not compute "
            f"(it reports {', '.join(metrics_of(task))})")  # fmt: skip


def pipeline_tag(task: str) -> str:
    """The Hub pipeline a task's model serves: regression heads are sequence/image classifiers with one output."""
    return f"{modality(task)}-classification"

"""The tasks samtune fine-tunes, as one table: a modality (text or image) and a problem (one class, several, a number,
a class per word, or the next token).

A task's name is what the recipe's `task` takes; everything else about it (the metrics, which way
each is better, the default metric for choosing the best checkpoint) is read from here. Nothing
heavy is imported: recipes validate against this table in milliseconds.
"""

from __future__ import annotations

TEXT_CLASSIFICATION = "text-classification"
IMAGE_CLASSIFICATION = "image-classification"
TEXT_REGRESSION = "text-regression"
IMAGE_REGRESSION = "image-regression"
TEXT_MULTI_LABEL = "text-multi-label"
IMAGE_MULTI_LABEL = "image-multi-label"
TOKEN_CLASSIFICATION = "token-classification"  # a class per word (NER-style tags); text only
TEXT_GENERATION = "text-generation"  # causal language modelling: the next token, on a text or a prompt's response
TASKS = (TEXT_CLASSIFICATION, IMAGE_CLASSIFICATION, TEXT_REGRESSION, IMAGE_REGRESSION, TEXT_MULTI_LABEL,
         IMAGE_MULTI_LABEL, TOKEN_CLASSIFICATION, TEXT_GENERATION)  # fmt: skip

CLASSIFICATION = "classification"
REGRESSION = "regression"
MULTI_LABEL = "multi-label"
TOKENS = "tokens"  # a class per word
GENERATION = "generation"  # the next token (a causal LM)
# transformers' config.problem_type for each problem
PROBLEM_TYPES = {CLASSIFICATION: "single_label_classification", REGRESSION: "regression",
                 MULTI_LABEL: "multi_label_classification"}  # fmt: skip

# Per problem: the metrics computed at every evaluation (besides the loss), the first the default for
# choosing the best checkpoint.
METRICS = {CLASSIFICATION: ("accuracy", "f1"), REGRESSION: ("mse", "mae", "pearson", "spearman"),
           MULTI_LABEL: ("micro_f1", "macro_f1", "subset_accuracy"),
           TOKENS: ("entity_f1", "entity_precision", "entity_recall", "word_accuracy"),
           GENERATION: ("perplexity",)}  # fmt: skip
GREATER_IS_BETTER = {"accuracy": True, "f1": True, "loss": False, "mse": False, "mae": False, "pearson": True,
                     "spearman": True, "micro_f1": True, "macro_f1": True, "subset_accuracy": True, "entity_f1": True,
                     "entity_precision": True, "entity_recall": True, "word_accuracy": True,
                     "perplexity": False}  # fmt: skip
ALL_METRICS = tuple(GREATER_IS_BETTER)
METRIC_NAMES = {"accuracy": "accuracy", "f1": "macro F1", "loss": "loss", "mse": "mean squared error",
                "mae": "mean absolute error", "pearson": "Pearson r", "spearman": "Spearman rho",
                "micro_f1": "micro F1", "macro_f1": "macro F1", "subset_accuracy": "subset accuracy",
                "entity_f1": "entity F1", "entity_precision": "entity precision", "entity_recall": "entity recall",
                "word_accuracy": "word accuracy", "perplexity": "perplexity"}  # fmt: skip


def modality(task: str) -> str:
    """'text' or 'image'."""
    return "text" if task == TOKEN_CLASSIFICATION else task.split("-", 1)[0]


def problem(task: str) -> str:
    """'classification', 'regression', 'multi-label', 'tokens' or 'generation'."""
    if task == TOKEN_CLASSIFICATION:
        return TOKENS
    for kind in (REGRESSION, MULTI_LABEL, GENERATION):
        if task.endswith(f"-{kind}"):
            return kind
    return CLASSIFICATION


def from_problem_type(problem_type: str | None) -> str:
    """The problem of a transformers config's problem_type (None, as a pretrained body has: classification)."""
    return {v: k for k, v in PROBLEM_TYPES.items()}.get(problem_type or "", CLASSIFICATION)


def task_of(modality_name: str, problem_name: str) -> str:
    """The task for a modality and a problem: ('text', 'regression') -> 'text-regression'."""
    return TOKEN_CLASSIFICATION if problem_name == TOKENS else f"{modality_name}-{problem_name}"


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
    """The Hub pipeline a task's model serves: regression and multi-label heads are sequence/image classifiers too."""
    if task in (TOKEN_CLASSIFICATION, TEXT_GENERATION):
        return task
    return f"{modality(task)}-classification"

"""`task: auto`: the task a model does, and the task data is for, asked of the registered tasks.

Each phase tries the tasks in registration order. A model: first by its architecture (a tagger, a causal LM),
then, for a sequence or image classifier, by its config's problem_type. Data: first by the shape of its rows
(lists of words, prompts and responses), then, once the label and the text or image columns are found, by the
label column's values; a `fallback` task (single-label classification) is tried last.
"""

from __future__ import annotations

from typing import Any

from samtune.tasks.base import Task, registered
from samtune.tasks.per_example import PerExampleTask, example_columns


def _of_modality(modality: str) -> list[Task]:
    """The tasks of a modality, in registration order, the fallback ones last."""
    tasks = [t for t in registered() if t.modality == modality]
    return [t for t in tasks if not t.fallback] + [t for t in tasks if t.fallback]


def detect_model(config: Any) -> Task | None:
    """The task a model's architecture (and, once fine-tuned, its config) does; None if it could do either/neither."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    architectures = getattr(config, "architectures", None) or []
    for task in registered():
        if task.claims_architecture(architectures):
            return task
    image = config.model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    text = config.model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    modality = "image" if image and not text else "text" if text and not image else None
    if modality is None:
        return None
    # A model fine-tuned for regression or multi-label says so in its config; a pretrained body says nothing.
    problem_type = getattr(config, "problem_type", None)
    return next((t for t in _of_modality(modality) if t.claims_problem_type(problem_type)), None)


def detect_data(rows: Any, section: Any, model_task: Task | None) -> tuple[Task, dict[str, Any]]:
    """The task the train split `rows` is for, and its columns (`section`: the recipe's data; `model_task`: the
    model's own, whose modality wins when it reads whole examples)."""
    names = list(rows.column_names)
    for task in registered():
        if task.claims_rows(rows, section, model_task):
            return task, task.columns(names, rows.features, section, rows)
    want = model_task.modality if isinstance(model_task, PerExampleTask) else None
    cols = example_columns(names, rows.features, section, want, rows)
    modality = "image" if cols["image"] else "text"
    task = next(t for t in _of_modality(modality) if t.claims_labels(rows, cols["label"], model_task))
    return task, cols

"""samtune's tasks: what it fine-tunes a model for, one module per task family, found by name in a registry.

- `base`: the `Task` protocol (every hook, with the defaults most tasks share), `Metric`, and the registry:
  `register`, `get`, `names`, `registered`, and the metrics of every registered task.
- `classification`, `multi_label`, `regression`: one prediction per example (`per_example`), each registering
  its text and its image task; `token_classification`: a tag per word; `causal_lm`: the next token.
- `detection`: `task: auto`, asked of the registered tasks in registration order.
- `columns`: the column and label helpers the tasks share.

A task of your own: subclass `Task` (or a family's class), then `register(YourTask("your-name", "text"))`
before the recipe that names it is validated. Nothing heavy is imported here.
"""

from __future__ import annotations

from samtune.tasks.base import (
    AUTO,
    LOSS,
    Metric,
    PredictSettings,
    Task,
    all_metrics,
    default_metrics,
    get,
    metric,
    model_outputs,
    names,
    register,
    registered,
)

# The built-in tasks, registered in this order, the order detection tries them (keep it: a causal LM given
# word lists is a tagger only because token classification is tried first).
from samtune.tasks import classification, multi_label, regression  # noqa: F401
from samtune.tasks import token_classification  # noqa: F401
from samtune.tasks import causal_lm  # noqa: F401
from samtune.tasks.detection import detect_data, detect_model

__all__ = [
    "AUTO",
    "LOSS",
    "Metric",
    "PredictSettings",
    "Task",
    "all_metrics",
    "default_metrics",
    "detect_data",
    "detect_model",
    "get",
    "metric",
    "model_outputs",
    "names",
    "register",
    "registered",
]

"""Loss normalisation under gradient accumulation (transformers 5.0-5.24).

Upstream behaviour: `Trainer.training_step` divides the loss by the accumulation steps unless it
believes the model normalised it already (`model_accepts_loss_kwargs` and `num_items_in_batch`
given). Classification heads (BERT's, ViT's, ...) and token-classification heads accept
`num_items_in_batch` through `**kwargs` but return a batch mean anyway, so with accumulation the stock update is N times too large.
Where this is fixed upstream, `loss_ignores_num_items` can go.

transformers 5.20 added `Trainer.loss_is_scaled_for_ga`; `loss_is_scaled_for_ga` below is that
attribute, or the rule it replaced on older 5.x versions.
"""

from __future__ import annotations

from typing import Any

from torch import nn

# Heads whose loss is a mean over the batch whatever `num_items_in_batch` says (transformers 5.x).
MEAN_LOSS_HEADS = (
    "ForSequenceClassification",
    "ForTokenClassification",  # every 5.24 tagger: a mean over the micro-batch's labelled tokens
    "ForImageClassification",
    "ForAudioClassification",
    "ForVideoClassification",
    "ForMultipleChoice",
)


def loss_ignores_num_items(model: nn.Module) -> bool:
    """Whether a model's loss is a batch mean that ignores `num_items_in_batch` (classification heads)."""
    inner = getattr(model, "base_model", model) if type(model).__name__.startswith("Peft") else model
    inner = getattr(inner, "model", inner) if type(inner).__name__.startswith("Lora") else inner
    return type(inner).__name__.endswith(MEAN_LOSS_HEADS)


def loss_is_scaled_for_ga(trainer: Any, num_items_in_batch: Any) -> bool:
    """The stock step's rule for whether the loss is already normalised for accumulation."""
    scaled = getattr(trainer, "loss_is_scaled_for_ga", None)  # transformers >= 5.20; absent before
    if scaled is not None:
        return scaled
    return bool(
        (trainer.model_accepts_loss_kwargs and num_items_in_batch is not None) or trainer.compute_loss_func is not None
    )

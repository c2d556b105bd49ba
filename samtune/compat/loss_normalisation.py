"""Loss normalisation under gradient accumulation (transformers 5.0-5.24).

Upstream behaviour: `Trainer.training_step` divides the loss by the accumulation steps unless it
believes the model normalised it already (`model_accepts_loss_kwargs` and `num_items_in_batch`
given). Classification heads (BERT's, ViT's, ...) and token-classification heads accept
`num_items_in_batch` through `**kwargs` but return a batch mean anyway, so with accumulation the stock update
is N times too large.
Where this is fixed upstream, `loss_ignores_num_items` can go. Likewise `loss_shifts_labels`, for
the causal LMs whose targets the Trainer counts one per row too many (see there).

transformers 5.20 added `Trainer.loss_is_scaled_for_ga`; `loss_is_scaled_for_ga` below is that
attribute, or the rule it replaced on older 5.x versions.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn
from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

# Heads whose loss is a mean over the batch whatever `num_items_in_batch` says (transformers 5.x).
MEAN_LOSS_HEADS = (
    "ForSequenceClassification",
    "ForTokenClassification",  # every 5.24 tagger: a mean over the micro-batch's labelled tokens
    "ForImageClassification",
    "ForAudioClassification",
    "ForVideoClassification",
    "ForMultipleChoice",
)


def _unwrapped(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    inner = getattr(model, "base_model", model) if type(model).__name__.startswith("Peft") else model
    return getattr(inner, "model", inner) if type(inner).__name__.startswith("Lora") else inner


def loss_ignores_num_items(model: nn.Module) -> bool:
    """Whether a model's loss is a batch mean that ignores `num_items_in_batch` (classification heads)."""
    return type(_unwrapped(model)).__name__.endswith(MEAN_LOSS_HEADS)


def loss_shifts_labels(model: nn.Module) -> bool:
    """Whether a model's loss is transformers' causal-LM loss, where position t predicts label t + 1 (so a step's
    targets are counted over `labels[..., 1:]`).

    The 5.24 Trainer decides this from `model.loss_type`, which is None for the causal LMs whose class name does
    not contain "ForCausalLM" (GPT2LMHeadModel, BertLMHeadModel, ...): it then counts every label, one target too
    many per row, while their `loss_function` falls back to the causal-LM loss all the same.
    """
    inner = _unwrapped(model)
    if getattr(getattr(inner, "config", None), "is_encoder_decoder", False):
        return False
    loss_type = getattr(inner, "loss_type", None)
    if loss_type is not None:
        return LOSS_MAPPING.get(loss_type) is ForCausalLMLoss
    if type(inner).__name__ not in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        return False
    try:  # a causal LM that computes its loss with `self.loss_function` (not its own cross-entropy, as XLNet does)
        return "self.loss_function(" in inspect.getsource(type(inner).forward)
    except (OSError, TypeError):
        return False


def loss_is_scaled_for_ga(trainer: Any, num_items_in_batch: Any) -> bool:
    """The stock step's rule for whether the loss is already normalised for accumulation."""
    scaled = getattr(trainer, "loss_is_scaled_for_ga", None)  # transformers >= 5.20; absent before
    if scaled is not None:
        return scaled
    return bool(
        (trainer.model_accepts_loss_kwargs and num_items_in_batch is not None) or trainer.compute_loss_func is not None
    )

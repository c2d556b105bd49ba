"""Loading a checkpoint's weights where the Trainer's own load misses renamed keys (transformers 5.x).

Upstream behaviour (transformers 5.0-5.24): some models (ViT among them) are saved under their
former parameter names and mapped back by `from_pretrained`; `Trainer._load_from_checkpoint` and
`Trainer._load_best_model` read the safetensors file as it is and load it non-strictly, which
silently leaves those parameters where they were (at their initial values on resume, at the last
step's values for the best model). Loading through `from_pretrained`, strictly, is exact.
"""

from __future__ import annotations

import os

from torch import nn
from transformers import PreTrainedModel


def reload_weights(model: nn.Module, checkpoint: str) -> bool:
    """Load `checkpoint` into `model` through `from_pretrained`, strictly; False if it is not such a checkpoint."""
    if not isinstance(model, PreTrainedModel) or not os.path.isfile(os.path.join(checkpoint, "config.json")):
        return False
    saved = type(model).from_pretrained(checkpoint, dtype=next(model.parameters()).dtype)
    model.load_state_dict(saved.state_dict(), strict=True)
    del saved
    return True

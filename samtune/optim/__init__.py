"""SAM maths in pure PyTorch (no transformers import): the functions, the settings and a standalone optimizer.

The names below load on first use (PEP 562), so that `samtune.optim.settings`, which the recipe
schema reads, does not import torch: validating a recipe stays a matter of milliseconds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from samtune.optim.functional import (
        ascent_norm,
        climb_,
        frozen_running_stats,
        perturbation_,
        restore_weights_,
        sam_perturbation,
        save_weights,
        trainable_parameters,
    )
    from samtune.optim.sam import SAM
    from samtune.optim.settings import SAMSettings

__all__ = [
    "SAM",
    "SAMSettings",
    "ascent_norm",
    "climb_",
    "frozen_running_stats",
    "perturbation_",
    "restore_weights_",
    "sam_perturbation",
    "save_weights",
    "trainable_parameters",
]
_WHERE = {"SAM": "sam", "SAMSettings": "settings"}  # the others are in functional


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(f"samtune.optim.{_WHERE.get(name, 'functional')}"), name)
    raise AttributeError(f"module 'samtune.optim' has no attribute {name!r}")

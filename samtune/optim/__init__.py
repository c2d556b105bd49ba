"""SAM maths in pure PyTorch (no transformers import): the functions and a standalone optimizer."""

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

__all__ = [
    "SAM",
    "ascent_norm",
    "climb_",
    "frozen_running_stats",
    "perturbation_",
    "restore_weights_",
    "sam_perturbation",
    "save_weights",
    "trainable_parameters",
]

"""samtune: fine-tune Hugging Face models with Sharpness-Aware Minimization (SAM)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from samtune.recipe import load_recipe
    from samtune.runner import train
    from samtune.trainer import SAMArguments, SAMTrainer

__all__ = ["SAMArguments", "SAMTrainer", "__version__", "load_recipe", "train"]


def __getattr__(name: str) -> Any:
    # transformers takes seconds to import: load it only when the Trainer is asked for,
    # so that `samtune --version` and `samtune.optim` stay fast.
    if name in ("SAMArguments", "SAMTrainer", "UnsupportedSetupError"):
        from samtune import trainer

        return getattr(trainer, name)
    if name == "train":
        from samtune.runner import train

        return train
    if name == "load_recipe":
        from samtune.recipe import load_recipe

        return load_recipe
    raise AttributeError(f"module 'samtune' has no attribute {name!r}")

"""The ascent gradient from a fraction of each micro-batch (Bahri, Mobahi and Tay, "Sharpness-Aware Minimization
Improves Language Model Generalization", ACL 2022: 25% of the batch kept most of the gain).

Extra cost about the fraction of a pass on models whose cost scales with the batch; the climb direction
is noisier. BatchNorm's running statistics come from the descent (the whole micro-batch, at w + e(w)),
not from the ascent's share, and the logged loss is that share's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from samtune.optim.variants import Variant, register_variant


@register_variant
class AscentFraction(Variant):
    """SAM on every step, the ascent on the first ceil(fraction * batch) examples of each micro-batch."""

    name = "ascent_fraction"
    summary = "the climb on sam.ascent_fraction of each batch"
    settings = ("ascent_fraction",)
    ascent_fraction: float

    def ascent_inputs(self, inputs: Mapping[str, Any]) -> dict[str, Any] | None:
        size = batch_size_of(inputs)
        rows = size if size is None else self.climb_rows(size)
        return None if rows == size else first_rows(inputs, rows)

    def climb_rows(self, batch_size: int) -> int:
        return ascent_rows(batch_size, self.ascent_fraction)

    @property
    def extra_pass_share(self) -> float:
        return self.ascent_fraction

    def describe(self) -> str:
        return f"ascent on {self.ascent_fraction:.0%} of each batch"


def ascent_rows(batch_size: int, fraction: float) -> int:
    """How many examples of a micro-batch the ascent uses: ceil(fraction * batch), at least one."""
    return max(1, min(batch_size, math.ceil(fraction * batch_size - 1e-9)))


def batch_size_of(inputs: Mapping[str, Any]) -> int | None:
    """The micro-batch size: the leading dimension of the labels (or of the first tensor)."""
    import torch  # here, not at the top: listing the variants stays free of torch

    labels = inputs.get("labels")
    if isinstance(labels, torch.Tensor) and labels.dim() > 0:
        return labels.shape[0]
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    return None


def first_rows(inputs: Mapping[str, Any], rows: int) -> dict[str, Any]:
    """The first `rows` examples of a micro-batch: every tensor with the batch's leading size is sliced."""
    import torch

    size = batch_size_of(inputs)
    return {
        k: v[:rows] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == size else v
        for k, v in inputs.items()
    }

"""Exact SAM (Foret et al., ICLR 2021): both passes on every optimizer step, the ascent on the whole micro-batch.

The reference the other variants are measured against: extra cost one pass per step.
"""

from __future__ import annotations

from samtune.optim.variants import Variant, register_variant


@register_variant
class ExactSAM(Variant):
    """SAM on every step: the `Variant` protocol's defaults."""

    name = "sam"
    summary = "exact SAM (every step)"

"""SAM on one optimizer step in k, plain steps in between (Composer's SAM `interval`, MosaicML).

Extra cost 1/k of a pass. Between SAM steps nothing of the sharpness direction is kept.
"""

from __future__ import annotations

from samtune.optim.variants import Variant, register_variant


@register_variant
class EveryK(Variant):
    """SAM on the optimizer steps where step % every_k == 0."""

    name = "every_k"
    summary = "SAM on one step in sam.every_k"
    settings = ("every_k",)
    every_k: int

    def climbs_on(self, step: int) -> bool:
        return step % self.every_k == 0

    @property
    def extra_pass_share(self) -> float:
        return 1 / self.every_k

    def describe(self) -> str:
        return f"SAM every {self.every_k} steps"

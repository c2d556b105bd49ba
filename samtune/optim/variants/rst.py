"""Randomized Sharpness-Aware Training (Zhao, Zhang and Hu, 2022): each step is SAM with probability p.

Extra cost p of a pass. The coin is a function of the optimizer step and the seed only, the same on
every process and after a resume.
"""

from __future__ import annotations

from samtune.optim.variants import Variant, register_variant


@register_variant
class RST(Variant):
    """SAM on a step with probability `rst_probability`, a plain step otherwise.

    The coin is drawn from the optimizer step and the run's seed (`rst_draw`), not from a running generator.
    """

    name = "rst"
    summary = "SAM on a step with probability sam.rst_probability"
    settings = ("rst_probability",)
    rst_probability: float

    def climbs_on(self, step: int) -> bool:
        return rst_draw(step, self.rst_probability, self.seed)

    @property
    def extra_pass_share(self) -> float:
        return self.rst_probability

    def describe(self) -> str:
        return f"RST (SAM with probability {self.rst_probability})"


def rst_draw(step: int, probability: float, seed: int) -> bool:
    """RST's coin for optimizer step `step`: True with `probability`, the same on every process and resume."""
    import torch  # here, not at the top: listing the variants stays free of torch

    if probability >= 1:
        return True
    if probability <= 0:
        return False
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))
    return bool(torch.rand((), generator=generator) < probability)

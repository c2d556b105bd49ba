"""AE-SAM (Jiang, Yang, Zhang and Kwok, "An Adaptive Policy to Employ Sharpness-Aware Minimization", ICLR 2023):
SAM's second pass only on the steps whose gradient is large for the run so far.

Every step takes the plain pass: g, the gradient at w. Its squared norm x = ||g||^2 updates running
statistics (decay delta, both from 0 as in the paper):

    mu    <- delta * mu    + (1 - delta) * x
    var   <- delta * var   + (1 - delta) * (x - mu)^2          (with the updated mu)

and the step climbs iff  x >= mu + c * sqrt(var),  c moving linearly over the SAM window from `aesam_c_start`
(the paper's lambda2 = 1) to `aesam_c_end` (its lambda1 = -1). A step that climbs takes SAM's step with
e(w) = rho * g / ||g|| from that same g (one extra pass); the others step with g itself, which is the base
optimizer's own step (no extra pass). If x were normal, c = 1 would climb on about 16% of the steps and
c = -1 on 84%: about half over the window. With mu and var from 0 the first steps of a run climb (about
1 / (1 - delta) of them) while the statistics fill.

g is the gradient of the step's whole effective batch (all micro-batches and processes), so the decision
and the climb are the same on every process and micro-batch; the climb is then one per step, not one per
micro-batch and process (m-sharpness) as exact SAM's. The trainer takes the plain pass as the stock step,
decides on the last micro-batch, and if the step climbs, runs the step's micro-batches again at w + e(w).

Its state, mu, var and the count of gradients seen, goes into each checkpoint (`samtune_aesam.pt`), so a
resumed run decides as the uninterrupted one does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from samtune.optim.variants import Variant, register_variant


@register_variant
class AESAM(Variant):
    """SAM on the steps whose ||g||^2 is at least its running mean plus c times its running standard deviation."""

    name = "aesam"
    summary = "AE-SAM: SAM where ||g||^2 is high against its running mean and variance"
    settings = ("aesam_decay", "aesam_c_start", "aesam_c_end")
    decides_on_gradient = True
    climbs_from_whole_batch = True
    aesam_decay: float
    aesam_c_start: float
    aesam_c_end: float

    def __init__(self, *, seed: int = 0, **values: Any) -> None:
        super().__init__(seed=seed, **values)
        self.mean, self.var, self.seen = 0.0, 0.0, 0  # the running statistics of ||g||^2, and how many fed them

    def climbs_given(self, sq_norm: float, progress: float) -> bool:
        if not math.isfinite(sq_norm):  # fp16 overflow: the scaler skips this step; the statistics leave it out
            return False
        self.mean, self.var = aesam_statistics(self.mean, self.var, sq_norm, self.aesam_decay)
        self.seen += 1
        return sq_norm >= self.mean + self.threshold(progress) * math.sqrt(self.var)

    def threshold(self, progress: float) -> float:
        """c at `progress` (the share of the SAM window done): linear from aesam_c_start to aesam_c_end."""
        return self.aesam_c_start + (self.aesam_c_end - self.aesam_c_start) * min(max(progress, 0.0), 1.0)

    def state_dict(self) -> dict[str, Any]:
        """The running statistics (Python floats: exact across a checkpoint); empty before the first step."""
        return {"mean": self.mean, "var": self.var, "seen": self.seen} if self.seen else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.mean, self.var = float(state.get("mean", 0.0)), float(state.get("var", 0.0))
        self.seen = int(state.get("seen", 0))

    @property
    def extra_pass_share(self) -> float:
        """P(Z >= c) for a normal ||g||^2, averaged over the window's linear c (the statistics' fill not counted)."""
        points = 1000
        cs = [self.threshold((i + 0.5) / points) for i in range(points)]
        return sum(0.5 * math.erfc(c / math.sqrt(2)) for c in cs) / points

    def describe(self) -> str:
        return (
            f"AE-SAM (SAM where ||g||^2 >= mean + c std, c {self.aesam_c_start:g} -> {self.aesam_c_end:g}, "
            f"decay {self.aesam_decay:g}; one climb per step, from the whole batch's gradient)"
        )


def aesam_statistics(mean: float, var: float, sq_norm: float, decay: float) -> tuple[float, float]:
    """AE-SAM's running mean and variance of ||g||^2 after one more value (the variance about the updated mean)."""
    mean = decay * mean + (1 - decay) * sq_norm
    return mean, decay * var + (1 - decay) * (sq_norm - mean) ** 2

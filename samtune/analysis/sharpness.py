"""How sharp the loss is at the trained weights w: the Hessian's top eigenvalue and trace, and SAM's own measure.

- Top eigenvalue: power iteration on Hessian-vector products, as PyHessian does (Yao et al.,
  "PyHessian: Neural Networks Through the Lens of the Hessian", 2020): v <- Hv / ||Hv||, with the
  Rayleigh quotient <v, Hv> as the estimate. It finds the eigenvalue of largest magnitude: at a
  minimum, where H is close to positive semi-definite, that is the top one.
- Trace: Hutchinson's estimator, tr(H) = E[v^T H v] for Rademacher v (entries +1/-1); the mean
  over n draws, with its standard error.
- SAM sharpness (Foret et al., ICLR 2021): L(w + e) - L(w), e = rho * g / ||g||, the loss
  increase at the point SAM's ascent step climbs to, for each rho. e(w) comes from
  `samtune.optim.functional`, the same code the trainer climbs with.

Each function measures in eval mode (dropout off; BatchNorm uses its running statistics) and
leaves the weights exactly as it found them (restored by copy), and the `.grad` buffers untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from samtune.analysis.objective import Objective, Progress, dot, measuring, norm, random_vector
from samtune.optim.functional import climb_, restore_weights_, sam_perturbation, save_weights
from samtune.optim.settings import default_of


@dataclass
class TopEigenvalue:
    """The Hessian's eigenvalue of largest magnitude, and how the power iteration got there."""

    value: float
    iterations: int
    converged: bool


@dataclass
class TraceEstimate:
    """Hutchinson's estimate of tr(H): the mean of v^T H v over `samples` draws, and its standard error."""

    value: float
    stderr: float
    samples: int


def hessian_top_eigenvalue(
    objective: Objective, *, max_iter: int = 100, tol: float = 1e-4, seed: int = 0, progress: Progress | None = None
) -> TopEigenvalue:
    """Power iteration on H v from a seeded normal start; stops when the estimate moves less than `tol`, relatively."""
    params = objective.params
    v = random_vector(params, torch.Generator().manual_seed(seed), "normal")
    length = norm(v)
    v = [x / length for x in v]
    eigenvalue = math.nan
    with measuring(objective.model):
        for i in range(1, max_iter + 1):
            hv = objective.hvp(v)
            previous, eigenvalue = eigenvalue, dot(v, hv)  # the Rayleigh quotient v^T H v, ||v|| = 1
            if progress:
                progress(i, max_iter)
            length = norm(hv)
            if length == 0.0:  # H v = 0: v lies in the null space, and so (almost surely) does all of H
                return TopEigenvalue(0.0, i, True)
            if abs(eigenvalue - previous) <= tol * abs(previous):
                return TopEigenvalue(eigenvalue, i, True)
            v = [x / length for x in hv]
    return TopEigenvalue(eigenvalue, max_iter, False)


def hessian_trace(
    objective: Objective, *, samples: int = 32, seed: int = 0, progress: Progress | None = None
) -> TraceEstimate:
    """Hutchinson: the mean of v^T H v over `samples` seeded Rademacher vectors v, with its standard error."""
    if samples < 2:
        raise ValueError("the trace estimate needs at least 2 samples (for its standard error)")
    params = objective.params
    generator = torch.Generator().manual_seed(seed)
    draws = []
    with measuring(objective.model):
        for i in range(samples):
            v = random_vector(params, generator, "rademacher")
            draws.append(dot(v, objective.hvp(v)))
            if progress:
                progress(i + 1, samples)
    mean = sum(draws) / samples
    variance = sum((x - mean) ** 2 for x in draws) / (samples - 1)
    return TraceEstimate(mean, math.sqrt(variance / samples), samples)


def sam_sharpness(
    objective: Objective,
    rhos: Sequence[float],
    *,
    adaptive: bool = False,
    asam_eta: float = default_of("asam_eta"),
    progress: Progress | None = None,
) -> dict[float, float]:
    """{rho: L(w + e(w)) - L(w)} with SAM's e(w) = rho * g / ||g|| (ASAM's, T = |w| + asam_eta, if `adaptive`)."""
    params = objective.params
    out: dict[float, float] = {}
    with measuring(objective.model):
        base = objective.loss()
        grads = objective.gradient()
        saved = save_weights(params)
        try:
            for i, rho in enumerate(rhos):
                climbing, e, ascent = sam_perturbation([g.clone() for g in grads], params, rho, adaptive, asam_eta)
                if not torch.isfinite(ascent):
                    raise ValueError(f"the gradient's norm is {float(ascent)}: the loss is not finite at w")
                climb_(climbing, e)  # climb to "w + e(w)"
                out[float(rho)] = objective.loss() - base
                restore_weights_(params, saved)  # back to "w", by copy
                if progress:
                    progress(i + 1, len(rhos))
        finally:
            restore_weights_(params, saved)
    return out

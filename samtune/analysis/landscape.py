"""Loss landscapes along filter-normalised random directions (Li, Xu, Taylor, Studer and Goldstein,
"Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018).

A raw direction is a standard normal draw shaped like the parameters. Filter normalisation then
rescales each filter of the direction (each slice along the first dimension: an output channel of
a convolution, a row of a linear layer or of an embedding) to the norm of the same filter of the
weights, so that a step of 1 along it is as large, filter by filter, as the weights themselves;
that is what makes landscapes of different models (and of differently scaled networks) comparable.
Biases and other 1-D parameters (LayerNorm, BatchNorm) get a zero direction, as the paper's code
does with `ignore='biasbn'`.

The raw directions depend only on the seed and the parameters' shapes: two models of the same
architecture get the same raw directions, each then normalised to its own weights.

    curve:   L(w + a d)             for a in alphas
    surface: L(w + a d1 + b d2)     for a in alphas (columns), b in betas (rows)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from samtune.analysis.objective import Objective, Progress, Vector, measuring, random_vector
from samtune.optim.functional import restore_weights_, save_weights

# Added to a filter's norm before dividing by it, as the paper's code does.
FILTER_EPS = 1e-10


def random_directions(params: Sequence[torch.Tensor], count: int = 2, seed: int = 0) -> list[Vector]:
    """`count` raw directions, standard normal, from one generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return [random_vector(params, generator, "normal") for _ in range(count)]


@torch.no_grad()
def filter_normalize(direction: Vector, params: Sequence[torch.Tensor]) -> Vector:
    """A copy of `direction` with each filter scaled to the norm of the weights' filter; 1-D parameters zeroed."""
    out = []
    for d, w in zip(direction, params, strict=True):
        d = d.clone()
        if d.dim() <= 1:
            d.zero_()  # biases, LayerNorm and BatchNorm: left where they are
        else:
            w_norms = w.detach().flatten(1).norm(dim=1)
            d_norms = d.flatten(1).norm(dim=1)
            scale = w_norms / (d_norms + FILTER_EPS)
            d.mul_(scale.view(-1, *([1] * (d.dim() - 1))))
        out.append(d)
    return out


def filter_normalized_directions(params: Sequence[torch.Tensor], count: int = 2, seed: int = 0) -> list[Vector]:
    """`count` seeded random directions, each filter-normalised to these weights."""
    return [filter_normalize(d, params) for d in random_directions(params, count, seed)]


def grid(points: int, span: float = 1.0) -> list[float]:
    """`points` evenly spaced steps from -span to span (0 included when `points` is odd)."""
    if points < 2:
        raise ValueError("a grid needs at least 2 points")
    return torch.linspace(-span, span, points, dtype=torch.float64).tolist()


@torch.no_grad()
def _loss_at(objective: Objective, saved: Vector, steps: Sequence[tuple[float, Vector]]) -> float:
    """L(w + sum_i c_i d_i), starting from the saved w each time (no drift from one point to the next)."""
    params = objective.params
    restore_weights_(params, saved)
    for coefficient, direction in steps:
        if coefficient != 0.0:
            torch._foreach_add_(params, direction, alpha=coefficient)
    return objective.loss()


def loss_curve(
    objective: Objective, direction: Vector, alphas: Sequence[float], progress: Progress | None = None
) -> list[float]:
    """[L(w + a d) for a in alphas]; the weights are restored exactly afterwards."""
    params = objective.params
    saved = save_weights(params)
    out = []
    with measuring(objective.model):
        try:
            for i, a in enumerate(alphas):
                out.append(_loss_at(objective, saved, [(a, direction)]))
                if progress:
                    progress(i + 1, len(alphas))
        finally:
            restore_weights_(params, saved)
    return out


def loss_surface(
    objective: Objective,
    d1: Vector,
    d2: Vector,
    alphas: Sequence[float],
    betas: Sequence[float] | None = None,
    progress: Progress | None = None,
) -> list[list[float]]:
    """Rows over betas, columns over alphas: out[i][j] = L(w + alphas[j] d1 + betas[i] d2) (matplotlib's layout)."""
    betas = alphas if betas is None else betas
    params = objective.params
    saved = save_weights(params)
    total = len(alphas) * len(betas)
    out = []
    with measuring(objective.model):
        try:
            for i, b in enumerate(betas):
                row = []
                for j, a in enumerate(alphas):
                    row.append(_loss_at(objective, saved, [(a, d1), (b, d2)]))
                    if progress:
                        progress(i * len(alphas) + j + 1, total)
                out.append(row)
        finally:
            restore_weights_(params, saved)
    return out

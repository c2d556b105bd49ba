"""Sharpness measures and loss landscapes of trained models (what `samtune sharpness` reports).

The measures (`sharpness`, `landscape`) are pure PyTorch on an `Objective`: a model, a loss
function and a fixed list of batches. Only `runs` (and `report`, which uses it) knows about Hugging
Face run directories.

    from samtune.analysis import Objective, hessian_top_eigenvalue
    top = hessian_top_eigenvalue(Objective(model, batches, loss_fn=lambda m, b: m(**b).loss))
"""

from samtune.analysis.landscape import (
    filter_normalize,
    filter_normalized_directions,
    grid,
    loss_curve,
    loss_surface,
    random_directions,
)
from samtune.analysis.objective import Objective, measuring, model_loss
from samtune.analysis.sharpness import (
    TopEigenvalue,
    TraceEstimate,
    hessian_top_eigenvalue,
    hessian_trace,
    sam_sharpness,
)

__all__ = [
    "Objective",
    "TopEigenvalue",
    "TraceEstimate",
    "filter_normalize",
    "filter_normalized_directions",
    "grid",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "loss_curve",
    "loss_surface",
    "measure_sharpness",
    "measuring",
    "model_loss",
    "random_directions",
    "sam_sharpness",
]


def __getattr__(name: str):
    # The report reads run directories (recipes, the card): loaded only when asked for.
    if name == "measure_sharpness":
        from samtune.analysis.report import measure_sharpness  # here: report imports this package

        return measure_sharpness
    raise AttributeError(f"module 'samtune.analysis' has no attribute {name!r}")

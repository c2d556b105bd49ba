"""The loss that the sharpness measures look at, and its first and second derivatives.

An `Objective` is L(w): the mean of `loss_fn(model, batch)` over a fixed list of batches, each
batch weighted (by default equally; the loading layer weights them by their number of examples,
so L is the mean over examples). Since differentiation is linear, the gradient and the
Hessian-vector product of L are the same weighted means of the per-batch ones: one batch at a
time, so memory stays that of a single batch.

Everything here is pure PyTorch: `loss_fn` is any callable, `batch` anything it takes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from samtune.optim.functional import trainable_parameters

LossFn = Callable[[nn.Module, Any], torch.Tensor]
Progress = Callable[[int, int], None]  # (done, total): a measurement reports its steps
Vector = list[torch.Tensor]  # one tensor per parameter


def model_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """The model's own loss for a batch of keyword inputs (a Hugging Face model given `labels`)."""
    return model(**batch).loss


@contextlib.contextmanager
def measuring(model: nn.Module) -> Iterator[None]:
    """Eval mode while measuring, each module's own mode back afterwards.

    In eval mode dropout is off (the loss is a function of w alone) and BatchNorm normalises with
    its running statistics, which it then leaves untouched. Fused attention kernels have no second
    derivative, so scaled-dot-product attention runs on its plain maths backend.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        for m, training in modes:
            m.training = training


class Objective:
    """L(w) = sum_k weights[k] * loss_fn(model, batches[k]), over `params` (default: the trainable ones).

    The weights are normalised to sum to one. Call the methods inside `measuring(model)` (the
    measurement functions do).
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Any],
        loss_fn: LossFn = model_loss,
        weights: Sequence[float] | None = None,
        params: Sequence[torch.Tensor] | None = None,
    ):
        if not batches:
            raise ValueError("no batches to measure the loss on")
        raw = [1.0] * len(batches) if weights is None else [float(w) for w in weights]
        if len(raw) != len(batches) or min(raw) < 0 or sum(raw) <= 0:
            raise ValueError("weights: one non-negative number per batch, not all zero")
        self.model = model
        self.batches = list(batches)
        self.loss_fn = loss_fn
        self.weights = [w / sum(raw) for w in raw]
        self.params: list[torch.Tensor] = list(trainable_parameters(model) if params is None else params)
        if not self.params:
            raise ValueError("the model has no trainable parameters to measure")

    def _terms(self) -> Iterator[tuple[float, Any]]:
        return zip(self.weights, self.batches)

    @torch.no_grad()
    def loss(self) -> float:
        """L(w) at the current weights."""
        return sum(w * float(self.loss_fn(self.model, b)) for w, b in self._terms())

    def gradient(self) -> Vector:
        """g = grad L(w) (zeros for parameters the loss does not reach); `.grad` buffers untouched."""
        params = self.params
        total = zeros_like(params)
        for w, b in self._terms():
            grads = torch.autograd.grad(self.loss_fn(self.model, b), params, allow_unused=True)
            for t, g in zip(total, grads):
                if g is not None:
                    t.add_(g, alpha=w)
        return total

    def hvp(self, v: Vector) -> Vector:
        """H v, the Hessian of L times v, by double backward: H v = grad <grad L(w), v>."""
        params = self.params
        total = zeros_like(params)
        for w, b in self._terms():
            grads = torch.autograd.grad(self.loss_fn(self.model, b), params, create_graph=True, allow_unused=True)
            dot = None
            for g, x in zip(grads, v):
                if g is not None and g.requires_grad:  # a gradient constant in w has no second derivative
                    term = (g * x).sum()
                    dot = term if dot is None else dot + term
            if dot is None:
                continue
            for t, h in zip(total, torch.autograd.grad(dot, params, allow_unused=True)):
                if h is not None:
                    t.add_(h.detach(), alpha=w)
        return total


# ---- vectors: one tensor per parameter -------------------------------------------------------


def zeros_like(params: Sequence[torch.Tensor]) -> Vector:
    """A zero vector shaped like the parameters."""
    return [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params]


def dot(a: Vector, b: Vector) -> float:
    """<a, b>, summed in float64."""
    return float(sum((x * y).sum(dtype=torch.float64).item() for x, y in zip(a, b, strict=True)))


def norm(a: Vector) -> float:
    """||a||, the L2 norm over all the tensors."""
    return dot(a, a) ** 0.5


def random_vector(params: Sequence[torch.Tensor], generator: torch.Generator, kind: str = "normal") -> Vector:
    """A random vector shaped like the parameters: standard normal, or Rademacher (+1/-1).

    Drawn on the CPU from `generator`, so the same seed gives the same vector on any device.
    """
    out = []
    for p in params:
        dtype = p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32
        if kind == "normal":
            x = torch.randn(p.shape, generator=generator, dtype=dtype)
        elif kind == "rademacher":
            x = torch.randint(0, 2, p.shape, generator=generator).to(dtype).mul_(2).sub_(1)
        else:
            raise ValueError(f"unknown kind of random vector: {kind}")
        out.append(x.to(device=p.device, dtype=p.dtype))
    return out

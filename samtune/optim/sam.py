"""A standalone SAM optimizer with the interface of davda54/sam: switching is changing the import."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from samtune.optim.functional import NORM_EPS, ascent_norm, climb_, perturbation_, restore_weights_, save_weights
from samtune.optim.settings import default_of, sam_setting_problems


class SAM(torch.optim.Optimizer):
    """Sharpness-Aware Minimization around any base optimizer (AdamW, SGD, ...).

    Use with two passes per batch::

        loss_fn(model(x), y).backward()
        optimizer.first_step(zero_grad=True)    # climb to w + e(w)
        loss_fn(model(x), y).backward()
        optimizer.second_step(zero_grad=True)   # back to w, base step with the gradient at w + e(w)

    or `optimizer.step(closure)` with a closure that does the forward and backward pass.
    `rho`, `adaptive` (ASAM) and `asam_eta` (ASAM's T = |w| + eta: default 0.01, the paper's, as
    samtune's setting; 0 is davda54/sam's ASAM) may differ per param group; the norm is global,
    over all groups. `param_groups` are the base optimizer's, so LR schedulers act on the base
    optimizer, and `state_dict()` is the base optimizer's state plus `rho`/`adaptive`/`asam_eta` in
    each group.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        asam_eta: float = default_of("asam_eta"),
        **kwargs: Any,
    ) -> None:
        if not rho >= 0.0:
            raise ValueError(f"Invalid rho {rho!r}: SAM's neighbourhood radius must be >= 0")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, asam_eta=asam_eta, **kwargs))
        for group in self.param_groups:
            if problems := sam_setting_problems({"asam_eta": group["asam_eta"]}):
                raise ValueError(problems[0])
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        # One set of groups and one state, owned by the base optimizer.
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults.update(self.base_optimizer.defaults)
        self._saved: list[tuple[list[torch.Tensor], list[torch.Tensor]]] | None = None

    def _with_grad(self) -> list[tuple[dict[str, Any], list[torch.Tensor]]]:
        return [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> torch.Tensor:
        """Climb to the local maximum "w + e(w)" using the gradients in `.grad`; returns ||g||."""
        groups = self._with_grad()
        params = [p for _, ps in groups for p in ps]
        adaptive = [bool(g["adaptive"]) for g, ps in groups for _ in ps]
        etas = [float(g["asam_eta"]) for g, ps in groups for _ in ps]
        norm = ascent_norm([p.grad for p in params], params, adaptive, etas)
        self._saved = []
        for group, ps in groups:
            if not ps:
                continue
            scale = group["rho"] / (norm + NORM_EPS)
            # e(w) from a copy: `.grad` keeps the gradient at w until the caller zeroes it.
            e = perturbation_([p.grad.clone() for p in ps], ps, scale, group["adaptive"], group["asam_eta"])
            self._saved.append((ps, save_weights(ps)))
            climb_(ps, e)
        if zero_grad:
            self.zero_grad()
        return norm

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Get back to "w" from "w + e(w)", then take the base optimizer's step (the sharpness-aware update)."""
        if self._saved is None:
            raise RuntimeError("SAM.second_step() called without first_step(): there is no w to return to")
        for ps, saved in self._saved:
            restore_weights_(ps, saved)
        self._saved = None
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Both SAM steps; `closure` must do a full forward and backward pass (and return the loss)."""
        if closure is None:
            raise RuntimeError(
                "SAM.step() needs a closure that recomputes the loss and calls backward(); "
                "or call first_step() and second_step() yourself"
            )
        closure = torch.enable_grad()(closure)
        self.first_step(zero_grad=True)
        try:
            loss = closure()
        except BaseException:
            self._restore_on_error()
            raise
        self.second_step()
        return loss

    def _restore_on_error(self) -> None:
        with torch.no_grad():
            for ps, saved in self._saved or []:
                restore_weights_(ps, saved)
        self._saved = None

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (its groups carry `rho`, `adaptive` and `asam_eta`)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by `state_dict()`; the base optimizer and SAM keep sharing groups and state."""
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

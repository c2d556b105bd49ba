"""Skipping an optimizer step by choice, as the fp16 GradScaler skips an overflow (PyTorch 1.6-2.13).

Upstream behaviour: `torch.amp.GradScaler` skips `optimizer.step` only when `unscale_` found an
inf, and offers no public way to ask for a skip; a step left out around it leaves its
per-optimizer state "unscaled" (the next `unscale_` raises). `record_overflow` writes the
found-inf flag that `unscale_` would have written, so `scaler.step` skips and `scaler.update`
backs the scale off and resets its state, exactly as for an overflow.

torch's LR scheduler wraps `optimizer.step` and warns when it seems not to have run; `mark_stepped`
keeps its bookkeeping for a step that was skipped on purpose.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.amp.grad_scaler import OptState


def record_overflow(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> None:
    """Make `scaler` see an inf in this optimizer step, so that its `step` skips and `update` backs off.

    Uses the GradScaler's per-optimizer record (`_per_optimizer_states`, `found_inf_per_device`):
    after `unscale_` it holds one found-inf flag per device.
    """
    state = scaler._per_optimizer_states[id(optimizer)]
    if state["stage"] is OptState.READY:  # not unscaled yet (no clipping, no grad-norm log)
        scaler.unscale_(optimizer)
    found = state["found_inf_per_device"]
    if not found:  # no gradients at all: record the overflow on the scale's own device
        found[scaler._scale.device] = torch.ones((), dtype=torch.float32, device=scaler._scale.device)
    for flag in found.values():
        flag.fill_(1.0)


def mark_stepped(optimizer: Any) -> None:
    """Tell torch's LR scheduler that `optimizer.step` ran (it checks `_opt_called`), for a skipped step."""
    optimizer._opt_called = True


def keep_scheduler_wrapper_mark(wrapper: Any, wrapped: Any) -> None:
    """Carry torch's LR-scheduler mark over to a function that wraps `optimizer.step` again."""
    wrapper._wrapped_by_lr_sched = getattr(wrapped, "_wrapped_by_lr_sched", True)

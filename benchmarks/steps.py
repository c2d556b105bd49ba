"""The arms of the cost, perturbation and memory suites, and one optimizer step of each arm's trainer.

An arm is only `SAMArguments` keyword arguments (`ARMS`, and `LOOP_ARMS` for `LoopSAMTrainer`,
davda54/sam's per-parameter perturbation). `make_trainer` builds an arm's trainer as
`Trainer.train` does, `optimizer_step` takes one optimizer step as `Trainer._run_epoch` does;
`block_length` says how many steps hold a whole number of an efficient variant's schedule, and
`_sync`, `_quiet_gc` and `_summary` serve the timed suites.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import math
import statistics
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as `python benchmarks/<file>.py`: the root holds the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.arms import PAPER, make_arms  # noqa: E402
from torch import nn

# ---- arms: name -> SAMArguments keyword arguments ---------------------------------------------

SAM_RHO = 0.05
ASAM_RHO = 0.5

#: Each arm is the `SAMArguments` keyword arguments that differ from plain training (same names
#: as in benchmarks/accuracy.py). `rho=0` is the stock Trainer step: plain AdamW.
ARMS: dict[str, dict[str, Any]] = make_arms(SAM_RHO, ASAM_RHO)
BASELINE = "adamw"
#: Arms whose trainer is `LoopSAMTrainer` (davda54-style perturbation), with these SAMArguments.
LOOP_ARMS: dict[str, dict[str, Any]] = {"sam_loop": {"rho": SAM_RHO, **PAPER}}
#: RST draws its SAM steps at random: its blocks are this long, and the realised share is reported.
RST_BLOCK = 10


# ---- trainers and the optimizer step -------------------------------------------------------------


def sam_argument_names() -> set[str]:
    """The fields `SAMArguments` has (the efficient variants' keywords may not exist yet)."""
    from samtune.trainer import SAMArguments

    return {f.name for f in dataclasses.fields(SAMArguments)}


def available_arms(names: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The arms whose keywords `SAMArguments` has, and the missing keywords of the others."""
    known = sam_argument_names()
    kept, skipped = [], {}
    for name in names:
        kwargs = {**ARMS, **LOOP_ARMS}[name]
        missing = sorted(set(kwargs) - known)
        if missing:
            skipped[name] = missing
        else:
            kept.append(name)
    return kept, skipped


def arm_period(kwargs: dict[str, Any]) -> int:
    """Optimizer steps after which the arm's schedule repeats (1 for SAM, ASAM and AdamW)."""
    variant = kwargs.get("sam_variant", "sam")
    if variant == "every_k":
        return int(kwargs.get("every_k", 2))
    if variant == "looksam":
        return int(kwargs.get("looksam_k", 5))
    if variant == "rst":
        return RST_BLOCK
    return 1


def block_length(kwargs: dict[str, Any], min_block: int) -> int:
    """A whole number of the arm's periods, at least `min_block` optimizer steps."""
    period = arm_period(kwargs)
    return period * max(1, math.ceil(min_block / period))


def _loop_trainer_class() -> type:
    """`SAMTrainer` with davda54/sam's per-parameter perturbation in place of samtune's foreach one."""
    from transformers import Trainer

    from samtune.trainer import SAMTrainer

    class LoopSAMTrainer(SAMTrainer):
        """The same two passes as `SAMTrainer`, the perturbation written as davda54/sam writes it.

        Pass 1 by `backward()` into `.grad` (as davda54's `closure`), then `first_step`: the norm
        from a stack of per-parameter norms, per parameter `old_p = p.data.clone()` and
        `p.add_(e_w)`; `zero_grad`; pass 2, the stock step; `second_step`: `p.data = old_p`.
        Only for one micro-batch per optimizer step (davda54's ascent uses `.grad`).
        """

        def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None):
            rho, adaptive = self.args.rho, self.args.adaptive
            model.train()
            prepared = self._prepare_inputs(copy.copy(inputs))
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, prepared)
            loss.backward()
            params = [p for p in model.parameters() if p.requires_grad]
            old: dict[nn.Parameter, torch.Tensor] = {}
            with torch.no_grad():  # davda54 SAM.first_step
                shared = params[0].device
                grad_norm = torch.norm(
                    torch.stack(
                        [
                            ((torch.abs(p) if adaptive else 1.0) * p.grad).norm(p=2).to(shared)
                            for p in params
                            if p.grad is not None
                        ]
                    ),
                    p=2,
                )
                scale = rho / (grad_norm + 1e-12)
                for p in params:
                    if p.grad is None:
                        continue
                    old[p] = p.data.clone()
                    e_w = (torch.pow(p, 2) if adaptive else 1.0) * p.grad * scale.to(p)
                    p.add_(e_w)
            model.zero_grad()
            try:
                Trainer.training_step(self, model, inputs, num_items_in_batch)  # the stock descent
            finally:
                for p, w in old.items():  # davda54 SAM.second_step
                    p.data = w
            return loss.detach() / self.current_gradient_accumulation_steps

    return LoopSAMTrainer


def make_trainer(
    model: nn.Module,
    arm: str,
    *,
    device: str,
    precision: str,
    batch_size: int,
    accumulation: int = 1,
    output_dir: str,
) -> Any:
    """A `SAMTrainer` for `arm`, its optimizer and scheduler built and prepared as `Trainer.train` does."""
    from samtune.trainer import SAMArguments, SAMTrainer

    loop = arm in LOOP_ARMS
    kwargs = LOOP_ARMS[arm] if loop else ARMS[arm]
    args = SAMArguments(
        output_dir=output_dir,
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=2e-5,
        max_grad_norm=1.0,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
        **kwargs,
    )
    cls = _loop_trainer_class() if loop else SAMTrainer
    trainer = cls(model=model, args=args)
    # As `Trainer._prepare_for_training`: the optimizer, `accelerator.prepare` (autocast for bf16,
    # the optimizer wrapper), then the scheduler. Many steps, so the learning rate never reaches 0.
    trainer.create_optimizer()
    trainer.model_wrapped, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.create_scheduler(num_training_steps=1_000_000)
    trainer.state.global_step = 0
    return trainer


def _set_sync_gradients(trainer: Any, sync: bool) -> None:
    """What `_run_epoch` tells accelerate before each micro-batch (the last one synchronises)."""
    state = trainer.accelerator.gradient_state
    setter = getattr(state, "_set_sync_gradients", None)
    if setter is not None:
        setter(sync)


def optimizer_step(trainer: Any, micro_batches: Sequence[dict[str, torch.Tensor]]) -> None:
    """One optimizer step as `Trainer._run_epoch` takes it (callbacks and logging left out)."""
    model = trainer.model_wrapped
    trainer.current_gradient_accumulation_steps = len(micro_batches)
    count = getattr(trainer, "_get_num_items_in_batch", None)
    num_items = count(list(micro_batches), trainer.args.device) if count is not None else None
    for i, inputs in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        _set_sync_gradients(trainer, last)
        context = contextlib.nullcontext() if last else trainer.accelerator.no_sync(model)
        with context:
            trainer.training_step(model, inputs, num_items)
    if trainer.args.max_grad_norm > 0:
        trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    if not trainer.accelerator.optimizer_step_was_skipped:
        trainer.lr_scheduler.step()
    model.zero_grad()
    trainer.state.global_step += 1


# ---- timing ------------------------------------------------------------------------------------------


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _quiet_gc() -> Iterator[None]:
    """No garbage collection inside a timed region (collect before it instead)."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}

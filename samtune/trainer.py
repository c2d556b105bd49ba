"""SAMTrainer: the Hugging Face Trainer with SAM's two-pass step, and SAMArguments, its settings.

Only `training_step` changes. Per micro-batch:

1. ascent: the gradient g of the micro-batch loss at w, inside `no_sync` and with
   `torch.autograd.grad`, so neither DDP nor the `.grad` buffers (which hold the earlier
   micro-batches' descent gradients) see it;
2. e(w) = rho * g / ||g|| (ASAM: rho * w^2 * g / || |w| g ||); a non-finite ||g|| (fp16
   overflow) skips the climb for this micro-batch and is counted;
3. save w exactly and climb to w + e(w);
4. descent: the stock `Trainer.training_step` at w + e(w), BatchNorm running statistics frozen,
   so loss scaling, accumulation, the GradScaler and the DDP all-reduce are the stock ones;
5. restore w by copy, in a `finally`;
6. return the ascent loss (the loss at w) for logging.

Clipping, the base optimizer's step, the scheduler and zeroing stay the Trainer's own.

At the edges: gradients that autograd returns aliased are cloned before e(w) is computed in
place (samtune.optim.functional.owned); an exception anywhere in the step leaves the weights at
w; a NaN/inf loss (`on_nonfinite`) is decided on every process alike (one all-reduce of a flag),
and under fp16 a skipped step goes through the GradScaler. Checkpoints carry samtune's state,
written before `trainer_state.json`, and resuming (a path, or True) restores it.

`sam_variant` picks a cheaper step (samtune.optim.variants): `every_k` and `rst` take the stock
step on some optimizer steps, `ascent_fraction` climbs along part of each micro-batch, and
`looksam` takes the stock step between its SAM steps and adds its recorded sharpness direction to
the accumulated gradient before clipping. Which steps climb depends on the optimizer step only, so
every micro-batch and every process agrees.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from samtune.files import atomic_path, write_json_atomic

from samtune.optim import functional as F
from samtune.optim.variants import SAMVariant, VariantName, ascent_rows, batch_size_of, first_rows
from samtune.optim.variants import looksam_direction, looksam_gradient_

_LOMO = ("lomo", "adalomo")
# Heads whose loss is a mean over the batch whatever `num_items_in_batch` says (transformers 5.x).
_MEAN_LOSS_HEADS = (
    "ForSequenceClassification",
    "ForImageClassification",
    "ForAudioClassification",
    "ForVideoClassification",
    "ForMultipleChoice",
)


SAM_STATE_FILE = "samtune_state.json"
LOOKSAM_STATE_FILE = "samtune_looksam.pt"


class UnsupportedSetupError(ValueError):
    """A training setup under which SAM's step cannot be made exact (DeepSpeed, FSDP, ...)."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (with `on_nonfinite="stop"`)."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"the training loss became {loss} at step {step}")
        self.step, self.loss = step, loss


@dataclass
class SAMArguments(TrainingArguments):
    """`transformers.TrainingArguments` plus SAM's settings."""

    rho: float = field(
        default=0.05,
        metadata={
            "help": "Radius of the neighbourhood SAM climbs in (0: no climb, one pass a step). rho=0 is the stock "
            "Trainer to the bit at gradient_accumulation_steps=1, and for any model whose loss honours "
            "num_items_in_batch; with accumulation, classification heads that accept but ignore it get their loss "
            "divided by the accumulation steps (the stock update is N times too large for them). "
            "0.05 is the paper's value for SAM; ASAM's scale-invariant climb wants larger values (0.5-2.0)."
        },
    )
    adaptive: bool = field(
        default=False,
        metadata={"help": "ASAM (Kwon et al., 2021): scale the climb per weight by |w|."},
    )
    sam_variant: VariantName = field(
        default="sam",
        metadata={
            "help": "Which SAM step: 'sam' (exact, every step), or a cheaper variant: 'every_k' (SAM on one step "
            "in every_k), 'looksam' (LookSAM: SAM every looksam_k steps, its sharpness direction reused in "
            "between), 'ascent_fraction' (ascent on a fraction of each batch), 'rst' (SAM on a random share "
            "rst_probability of the steps). See samtune.optim.variants."
        },
    )
    every_k: int = field(default=2, metadata={"help": "every_k: SAM on optimizer steps where step % every_k == 0."})
    looksam_k: int = field(default=5, metadata={"help": "looksam: an exact SAM step every looksam_k steps."})
    looksam_alpha: float = field(
        default=0.7, metadata={"help": "looksam: weight of the reused sharpness direction g_v."}
    )
    ascent_fraction: float = field(
        default=0.25, metadata={"help": "ascent_fraction: share of each micro-batch the ascent gradient uses."}
    )
    rst_probability: float = field(default=0.5, metadata={"help": "rst: probability that a step is a SAM step."})
    on_nonfinite: Literal["stop", "skip"] = field(
        default="stop",
        metadata={
            "help": "A NaN/inf training loss: 'stop' raises NonFiniteLossError (no update, nothing saved); "
            "'skip' skips that optimizer step (no update) and counts it."
        },
    )

    def __post_init__(self) -> None:
        rho = self.rho
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho < 0:
            raise ValueError(
                f"rho must be a finite number >= 0 (got {rho!r}): it is the radius SAM climbs in; "
                "use 0.05 for SAM, 0.5-2.0 for ASAM, or 0 to train without SAM."
            )
        self.rho = float(rho)
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip' (got {self.on_nonfinite!r})")
        self.variant()  # validates the variant and its parameters
        super().__post_init__()

    def variant(self) -> SAMVariant:
        """The SAM variant these arguments select, with its parameters."""
        return SAMVariant(
            name=self.sam_variant,
            every_k=self.every_k,
            looksam_k=self.looksam_k,
            looksam_alpha=float(self.looksam_alpha),
            ascent_fraction=float(self.ascent_fraction),
            rst_probability=float(self.rst_probability),
            seed=self.seed,
        )


def _loss_ignores_num_items(model: nn.Module) -> bool:
    """Whether a model's loss is a batch mean that ignores `num_items_in_batch` (classification heads)."""
    inner = getattr(model, "base_model", model) if type(model).__name__.startswith("Peft") else model
    inner = getattr(inner, "model", inner) if type(inner).__name__.startswith("Lora") else inner
    return type(inner).__name__.endswith(_MEAN_LOSS_HEADS)


def _refuse_unsupported_args(args: TrainingArguments) -> None:
    """Refuse, before anything is built, the setups in which SAM's step would be silently wrong."""
    if args.deepspeed:
        raise UnsupportedSetupError(
            "SAMTrainer does not support DeepSpeed: DeepSpeed steps the optimizer inside backward(), so "
            "SAM's ascent pass would update the weights. Train with plain data parallelism instead "
            "(`accelerate launch` or `torchrun` without a DeepSpeed config), or set rho=0."
        )
    if args.fsdp:
        raise UnsupportedSetupError(
            "SAMTrainer does not support FSDP yet: FSDP shards parameters and gradients across ranks, so the "
            "global ascent norm ||g|| and the exact save/restore of w would need collective operations it does "
            "not do. Use data parallelism (DDP) instead, for models that fit on one device."
        )
    optim = str(getattr(args.optim, "value", args.optim))
    if optim in _LOMO or optim.endswith("layerwise"):
        raise UnsupportedSetupError(
            f"SAMTrainer cannot use optim={optim!r}: it steps inside backward() (LOMO, layer-wise GaLore/APOLLO), "
            "so the update would be taken at w + e(w) and then overwritten by the restore of w. Choose another "
            "optimizer, e.g. optim='adamw_torch' or optim='sgd'."
        )
    pc = getattr(args, "parallelism_config", None)
    if pc is not None and (getattr(pc, "cp_enabled", False) or getattr(pc, "sp_enabled", False)):
        raise UnsupportedSetupError(
            "SAMTrainer does not support context or sequence parallelism: each rank would see a slice of "
            "every sequence, and the ascent gradient (taken without synchronisation) would be a slice's "
            "gradient. Use data parallelism instead (drop cp_size/sp_size from parallelism_config)."
        )


class SAMTrainer(Trainer):
    """A `transformers.Trainer` whose step is Sharpness-Aware Minimization (rho=0: the stock step).

    Logs, at the Trainer's logging steps: `sam_rho`, `sam_ascent_grad_norm` (mean ||g|| of the
    ascent passes since the last log, on this process), `sam_perturbations_skipped` (total
    climbs skipped because ||g|| was not finite, on this process) and `sam_climb_steps` (optimizer
    steps that took SAM's two passes: all of them for exact SAM, fewer for the variants).

    Notes:
        - Dropout draws different masks in the two passes, as in the reference implementations.
        - The ascent is per micro-batch and per device (m-sharpness, the paper's recipe); the
          descent gradient is averaged over the whole effective batch.
        - The loss of every micro-batch is divided by the accumulation steps (the update is the
          mean over the effective batch for every model, including those that accept but
          ignore `num_items_in_batch`); a `compute_loss_func` keeps its own normalisation.
    """

    args: SAMArguments

    def __init__(self, model: nn.Module | None = None, args: SAMArguments | None = None, *a: Any, **kw: Any):
        if args is None:
            args = SAMArguments(output_dir="tmp_trainer")
        if not isinstance(args, SAMArguments):
            raise TypeError(
                f"SAMTrainer needs samtune.SAMArguments, got {type(args).__name__}: build the arguments with "
                "SAMArguments(..., rho=0.05) (it accepts every TrainingArguments field)."
            )
        _refuse_unsupported_args(args)
        super().__init__(model, args, *a, **kw)
        # An `accelerate launch` config can switch these on without the arguments saying so.
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or getattr(self, "is_fsdp_xla_enabled", False):
            backend = "DeepSpeed" if self.is_deepspeed_enabled else "FSDP"
            raise UnsupportedSetupError(
                f"SAMTrainer does not support {backend} (enabled by your accelerate config): SAM's two-pass step "
                "would be silently wrong under it. Launch with a config that uses plain multi-GPU data "
                "parallelism (`accelerate config`, distributed_type MULTI_GPU) instead."
            )
        if self.compute_loss_func is None and _loss_ignores_num_items(self.accelerator.unwrap_model(self.model)):
            # Classification heads (BERT's in transformers 5.x) accept `num_items_in_batch` but
            # return a batch mean anyway: the stock step would then skip the division by the
            # accumulation steps and make the update N times too large. Divide for them; models
            # whose loss honours `num_items_in_batch` (token-level losses) keep the stock rule.
            self.model_accepts_loss_kwargs = False
        self._sam_norm_sum = 0.0
        self._sam_norm_count = 0
        self.sam_perturbations_skipped = 0
        self.sam_nonfinite_skipped = 0
        self._nonfinite_in_step = False
        self._skip_optimizer_step = False
        self.sam_variant = self.args.variant()
        self._saved_weights: list[torch.Tensor] | None = None  # the copy of w, reused between CPU steps
        self.sam_climb_steps = 0  # optimizer steps that took SAM's two passes (the variants skip some)
        self._looksam_g: list[torch.Tensor | None] | None = None  # plain gradient, summed over micro-batches
        self._looksam_v: list[torch.Tensor | None] | None = None  # LookSAM's g_v, from its last SAM step
        self._looksam_missed_climb = False  # a micro-batch of this SAM step did not climb (non-finite ||g||)
        if self.args.on_nonfinite == "skip":
            self.add_callback(_StepSkipper(self))

    # ---- the step ------------------------------------------------------------------------

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """One SAM step on a micro-batch: ascent at w, descent at w + e(w), back to w."""
        self._nonfinite_in_step, self._nonfinite_loss = False, float("nan")
        try:
            loss = self._sam_step(model, inputs, num_items_in_batch)
        except BaseException:
            # The weights are back at w (save_and_climb_ and the restore undo the climb); drop
            # what this optimizer step had accumulated of its own, so a caller that retries
            # (auto_find_batch_size, a notebook) starts the step afresh.
            self._looksam_g, self._looksam_missed_climb = None, False
            raise
        # A NaN/inf loss on any process decides for all of them: otherwise one replica would skip
        # (or raise) while the others step (or wait in the next all-reduce until it times out).
        if self._on_any_process(self._nonfinite_in_step):
            if self.args.on_nonfinite == "stop":
                raise NonFiniteLossError(self.state.global_step + 1, self._nonfinite_loss)
            self._skip_optimizer_step = True  # no gradient from this micro-batch; the optimizer step is skipped
            return torch.tensor(float("nan"), device=loss.device)  # the Trainer's logs filter NaN out
        return loss

    def _on_any_process(self, flag: bool) -> bool:
        """Whether `flag` holds on any data-parallel process (one all-reduce of a scalar; none on one process)."""
        if self.accelerator.num_processes <= 1:
            return flag
        votes = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(votes, reduction="sum").item() > 0)

    def _sam_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None,
    ) -> torch.Tensor:
        if self.args.rho == 0:
            return super().training_step(model, inputs, num_items_in_batch)
        variant = self.sam_variant
        looksam = variant.name == "looksam"
        # A function of the optimizer step only: every micro-batch and every process agrees.
        climbs = variant.climbs_on(self.state.global_step) or (looksam and self._looksam_v is None)
        last_micro_batch = self.accelerator.sync_gradients
        if not climbs:  # a plain step (every_k, rst), or LookSAM reusing g_v
            loss = super().training_step(model, inputs, num_items_in_batch)
            if looksam and last_micro_batch:
                self._looksam_reuse(model)
            return loss

        params = F.trainable_parameters(model)
        ascent_inputs = copy.copy(inputs)
        if variant.name == "ascent_fraction":
            size = batch_size_of(inputs)
            if size is not None:
                ascent_inputs = first_rows(inputs, ascent_rows(size, variant.ascent_fraction))
        with self.accelerator.no_sync(model):
            ascent_loss, grads = self._ascent_gradient(model, ascent_inputs, params, num_items_in_batch)
        if looksam:
            self._looksam_accumulate(grads, num_items_in_batch)
        climbed, e, norm = F.sam_perturbation(grads, params, self.args.rho, self.args.adaptive)
        del grads
        finite = not self._nonfinite_in_step and self._record_ascent(norm)

        saved = None
        try:
            if finite:
                # climb to the local maximum "w + e(w)"
                saved = F.save_and_climb_(climbed, e, out=self._saved_weights)
            del e
            # The descent, with the stock machinery; BatchNorm statistics were updated at w.
            with F.frozen_running_stats(model):
                super().training_step(model, copy.copy(inputs), num_items_in_batch)
        finally:
            if saved is not None:
                F.restore_weights_(climbed, saved)  # get back to "w" from "w + e(w)"
        # On the CPU every fresh tensor of this size is new pages from the system (about 15 ms for
        # MiniLM's 87 MB): keep the copy for the next step. GPU allocators cache blocks themselves.
        self._saved_weights = saved if saved is not None and climbed and climbed[0].device.type == "cpu" else None
        if looksam:
            self._looksam_missed_climb = self._looksam_missed_climb or not finite
        if last_micro_batch:
            self.sam_climb_steps += 1
            if looksam:
                # g_v needs the SAM gradient of the whole effective batch: every micro-batch climbed.
                self._looksam_refresh(params, climbed=not self._looksam_missed_climb)
                self._looksam_missed_climb = False
        return ascent_loss

    # ---- LookSAM -------------------------------------------------------------------------

    def _looksam_accumulate(self, grads: tuple[torch.Tensor | None, ...], num_items_in_batch: Any) -> None:
        """Add this micro-batch's plain gradient at w to the effective batch's, normalised as the descent is."""
        weight = 1.0 if self._loss_is_scaled_for_ga(num_items_in_batch) else 1.0 / self.current_gradient_accumulation_steps
        if self._looksam_g is None:
            self._looksam_g = [None] * len(grads)
        for i, g in enumerate(grads):
            if g is None:
                continue
            acc = self._looksam_g[i]
            self._looksam_g[i] = g.float() * weight if acc is None else acc.add_(g.float(), alpha=weight)

    def _looksam_refresh(self, params: list[nn.Parameter], climbed: bool) -> None:
        """After LookSAM's SAM step: g_v from the plain gradient g and the SAM gradient g_s now in `.grad`.

        Every process takes the same path, whatever it saw (an fp16 ascent may overflow on one rank
        only): the plain gradients and whether this process climbed travel in one all-reduce, and
        g_v is kept only if every process climbed.
        """
        plain, self._looksam_g = self._looksam_g or [None] * len(params), None
        index = [i for i, p in enumerate(params) if p.grad is not None]  # after DDP's all-reduce: alike everywhere
        g = [plain[i] if plain[i] is not None else torch.zeros_like(params[i].grad, dtype=torch.float32) for i in index]
        climbed_share = torch.tensor([1.0 if climbed else 0.0], device=self.accelerator.device)
        *g, climbed_share = self._mean_over_processes([*g, climbed_share])
        if float(climbed_share) < 1.0 or not index:
            self._looksam_v = None  # no SAM gradient this step (somewhere): the next step refreshes again
            return
        g_v = looksam_direction(g, [params[i].grad for i in index])
        size = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(g_v, 2))))
        if not (math.isfinite(size) and size > 0):  # fp16 overflow (the scaler skips this step) or g_s parallel to g
            self._looksam_v = None
            return
        self._looksam_v = [None] * len(params)
        for i, v in zip(index, g_v, strict=True):
            self._looksam_v[i] = v

    def _looksam_reuse(self, model: nn.Module) -> None:
        """LookSAM between its SAM steps: .grad <- g + alpha * (||g|| / ||g_v||) * g_v, one pass only."""
        params = F.trainable_parameters(model)
        pairs = [(p.grad, v) for p, v in zip(params, self._looksam_v or [], strict=False) if p.grad is not None and v is not None]
        looksam_gradient_([g for g, _ in pairs], [v for _, v in pairs], self.sam_variant.looksam_alpha)

    def _mean_over_processes(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The mean of each tensor over the data-parallel processes (one all-reduce), as DDP does for `.grad`."""
        if self.accelerator.num_processes <= 1 or not tensors:
            return tensors
        flat = self.accelerator.reduce(torch.cat([t.reshape(-1) for t in tensors]), reduction="mean")
        return [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in tensors]), tensors, strict=True)]

    def _ascent_gradient(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        params: list[nn.Parameter],
        num_items_in_batch: torch.Tensor | int | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
        """Loss at w (normalised for logging as the stock step does) and its gradient, `.grad` untouched."""
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        with torch.enable_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        if self.args.n_gpu > 1:
            loss = loss.mean()
        # Under fp16 the GradScaler's scale keeps small gradients from underflowing; the
        # direction g/||g|| does not depend on it, and nothing is unscaled here (the Trainer's
        # clipping unscales the descent gradients, once per optimizer step).
        scaler = self.accelerator.scaler
        target = scaler.scale(loss) if scaler is not None else loss
        grads = torch.autograd.grad(target, params, allow_unused=True)
        if not self._loss_is_scaled_for_ga(num_items_in_batch):
            loss = loss / self.current_gradient_accumulation_steps
        return loss.detach(), grads

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, **kw: Any):
        """The stock loss, checked for NaN/inf while training (see `on_nonfinite`)."""
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, **kw)
        if not (model.training and torch.is_grad_enabled()):
            return result
        loss = result[0] if return_outputs else result
        if not bool(torch.isfinite(loss.detach()).all()):
            self._nonfinite_in_step = True
            self._nonfinite_loss = float(loss.detach().float().mean())
        if self._nonfinite_in_step:
            # Take no gradient from this micro-batch (both passes): a loss whose gradient is zero for
            # every trainable weight adds nothing to `.grad`, and under DDP every rank still joins
            # the all-reduce. `training_step` then stops or skips the step, on every process alike.
            loss = sum((p.reshape(-1)[:1] * 0.0).sum() for p in model.parameters() if p.requires_grad)
            result = (loss, result[1]) if return_outputs else loss
        return result

    def _loss_is_scaled_for_ga(self, num_items_in_batch: torch.Tensor | int | None) -> bool:
        """The stock step's rule for whether the loss is already normalised for accumulation."""
        scaled = getattr(self, "loss_is_scaled_for_ga", None)  # transformers >= 5.20; absent before
        if scaled is not None:
            return scaled
        return bool(
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
        )

    def _record_ascent(self, norm: torch.Tensor) -> bool:
        """Count the ascent norm (unscaled) for the logs; False when it is not finite."""
        value = float(norm)
        scaler = self.accelerator.scaler
        if scaler is not None:
            value /= float(scaler.get_scale())
        if not math.isfinite(value):
            self.sam_perturbations_skipped += 1
            return False
        self._sam_norm_sum += value
        self._sam_norm_count += 1
        return True

    # ---- samtune's own state in checkpoints -----------------------------------------------

    def sam_state(self) -> dict[str, Any]:
        """What a checkpoint must carry beyond the Trainer's own state."""
        return {
            "rho": self.args.rho,
            "adaptive": self.args.adaptive,
            "variant": self.sam_variant.name,
            "climb_steps": self.sam_climb_steps,
            "perturbations_skipped": self.sam_perturbations_skipped,
            "nonfinite_skipped": self.sam_nonfinite_skipped,
        }

    def train(self, resume_from_checkpoint: str | bool | None = None, *a: Any, **kw: Any):
        """The Trainer's `train`, resuming samtune's state too (a checkpoint path, or True for the newest)."""
        if resume_from_checkpoint is True:
            # The Trainer's own rule for True; where there is none, the Trainer raises its own error.
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True
        if isinstance(resume_from_checkpoint, str):
            self._reload_weights(resume_from_checkpoint)
            path = os.path.join(resume_from_checkpoint, SAM_STATE_FILE)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    saved = json.load(f)
                self.sam_perturbations_skipped = int(saved.get("perturbations_skipped", 0))
                self.sam_nonfinite_skipped = int(saved.get("nonfinite_skipped", 0))
                self.sam_climb_steps = int(saved.get("climb_steps", 0))
            self._load_looksam_state(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *a, **kw)

    def _save_rng_state(self, output_dir: str) -> None:
        """Write samtune's state into the checkpoint, then the Trainer's RNG state.

        The Trainer writes a checkpoint's files in a fixed order and `trainer_state.json` last:
        it is the mark of a complete checkpoint (`resume auto` takes the newest folder that has
        it). The RNG state is the last save before it, so samtune's files go in here, and a kill
        can never leave a "complete" checkpoint without them. (The Trainer skips this save with
        `save_only_model`, whose checkpoints hold no optimizer state to resume from either.)
        """
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            write_json_atomic(Path(output_dir) / SAM_STATE_FILE, self.sam_state())
            self.save_looksam_state(output_dir)
        super()._save_rng_state(output_dir)

    def _load_best_model(self) -> None:
        """Load the best checkpoint through `from_pretrained` (see `_reload_weights`); else the Trainer's way."""
        if not self._reload_weights(self.state.best_model_checkpoint):
            super()._load_best_model()

    def save_looksam_state(self, folder: str) -> None:
        """Write LookSAM's g_v into a checkpoint folder, so a resumed run reuses it exactly."""
        if self._looksam_v is not None:
            with atomic_path(Path(folder) / LOOKSAM_STATE_FILE) as tmp:
                torch.save([v.cpu() if v is not None else None for v in self._looksam_v], tmp)

    def _load_looksam_state(self, checkpoint: str) -> None:
        """Read g_v back (without it, LookSAM's next step is a SAM step that computes it afresh)."""
        path = os.path.join(checkpoint, LOOKSAM_STATE_FILE)
        self._looksam_v = None
        if self.sam_variant.name != "looksam" or not os.path.isfile(path):
            return
        params = F.trainable_parameters(self.model)
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if len(saved) == len(params):
            self._looksam_v = [v.to(p.device) if v is not None else None for v, p in zip(saved, params, strict=True)]

    def _reload_weights(self, checkpoint: str) -> bool:
        """Load a checkpoint's weights through `from_pretrained`, which maps renamed parameters; False if it can't.

        transformers 5.x saves some models (ViT among them) under their former parameter names and
        maps them back in `from_pretrained`; the Trainer's own loads (resume, and the best model at
        the end) read the file as it is, non-strictly, which silently leaves those parameters where
        they were. Loading here, strictly, makes both exact; on resume the Trainer's own load then
        rewrites the same values.
        """
        from transformers import PreTrainedModel

        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, PreTrainedModel) or not os.path.isfile(os.path.join(checkpoint, "config.json")):
            return False
        saved = type(model).from_pretrained(checkpoint, dtype=next(model.parameters()).dtype)
        model.load_state_dict(saved.state_dict(), strict=True)
        del saved
        return True

    # ---- logging -------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add SAM's own figures to the Trainer's training logs."""
        if "loss" in logs:
            logs["sam_rho"] = self.args.rho
            if self._sam_norm_count:
                logs["sam_ascent_grad_norm"] = self._sam_norm_sum / self._sam_norm_count
            logs["sam_perturbations_skipped"] = self.sam_perturbations_skipped
            logs["sam_climb_steps"] = self.sam_climb_steps
            if self.sam_nonfinite_skipped:
                logs["sam_nonfinite_skipped"] = self.sam_nonfinite_skipped
            self._sam_norm_sum, self._sam_norm_count = 0.0, 0
        super().log(logs, start_time)


class _StepSkipper(TrainerCallback):
    """With on_nonfinite="skip": an optimizer step with a NaN/inf micro-batch loss does nothing at all.

    Wraps the prepared optimizer's `step` (the one the Trainer calls), so neither the weights nor
    the optimizer's state (moments, weight decay) move; the skipped steps are counted.
    """

    def __init__(self, trainer: SAMTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is None or getattr(optimizer, "_samtune_skippable", False):
            return
        step = optimizer.step
        trainer = self.trainer

        def skippable_step(*a: Any, **kw: Any) -> Any:
            if trainer._skip_optimizer_step:
                trainer._skip_optimizer_step = False
                trainer.sam_nonfinite_skipped += 1
                scaler = getattr(optimizer, "scaler", None)
                if scaler is not None:
                    # fp16: skip through the GradScaler, as its own overflow skip does: the step is
                    # skipped, the scale backs off and the scaler's per-step state is reset (returning
                    # here would leave it "unscaled" by the clipping, and the next step would raise).
                    _record_overflow(scaler, getattr(optimizer, "optimizer", optimizer))
                    return step(*a, **kw)
                optimizer._opt_called = True
                return None
            return step(*a, **kw)

        # Keep the LR scheduler's bookkeeping: it wrapped `step` already and checks for that mark.
        skippable_step._wrapped_by_lr_sched = getattr(step, "_wrapped_by_lr_sched", True)  # type: ignore[attr-defined]
        optimizer.step = skippable_step
        optimizer._samtune_skippable = True


def _record_overflow(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> None:
    """Make `scaler` see an inf in this optimizer step, so that its `step` skips and `update` backs off.

    Uses the GradScaler's per-optimizer record (`_per_optimizer_states`, `found_inf_per_device`,
    unchanged from torch 1.6 to 2.13): after `unscale_` it holds one found-inf flag per device.
    """
    from torch.amp.grad_scaler import OptState

    state = scaler._per_optimizer_states[id(optimizer)]
    if state["stage"] is OptState.READY:  # not unscaled yet (no clipping, no grad-norm log)
        scaler.unscale_(optimizer)
    found = state["found_inf_per_device"]
    if not found:  # no gradients at all: record the overflow on the scale's own device
        found[scaler._scale.device] = torch.ones((), dtype=torch.float32, device=scaler._scale.device)
    for flag in found.values():
        flag.fill_(1.0)

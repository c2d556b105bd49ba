"""SAMTrainer: the Hugging Face Trainer with SAM's two-pass step, and SAMArguments, its settings.

The step lives in `training_step` (with `compute_loss`'s NaN/inf check and `log`'s SAM figures);
`__init__` refuses setups SAM cannot run exactly, and an optimizer-step wrapper skips a step
with a NaN/inf loss (`on_nonfinite="skip"`). SAM's own state across steps (counters, the figures
it logs, the variant) is one `samtune.sam_state.SAMState`; checkpoint I/O is `samtune.sam_checkpoint`;
workarounds for given library versions are `samtune.compat`.

Per micro-batch:

1. ascent: the gradient g of the micro-batch loss at w, inside `no_sync` and with
   `torch.autograd.grad`, so neither DDP nor the `.grad` buffers (which hold the earlier
   micro-batches' descent gradients) see it;
2. e(w) = rho * g / ||g|| (ASAM: rho * T^2 * g / || T g ||, T = |w| + asam_eta); a non-finite ||g|| (fp16
   overflow) skips the climb for this micro-batch and is counted;
3. save w exactly and climb to w + e(w);
4. descent: the stock `Trainer.training_step` at w + e(w), BatchNorm running statistics frozen
   (the ascent updated them at w; with `ascent_fraction`, whose ascent sees part of the micro-batch,
   the ascent leaves them alone and the descent updates them),
   so loss scaling, accumulation, the GradScaler and the DDP all-reduce are the stock ones;
5. restore w by copy, in a `finally`;
6. return the ascent loss (the loss at w) for logging.

Clipping, the base optimizer's step, the scheduler and zeroing stay the Trainer's own.

Under FSDP2 (Accelerate's `fsdp_version: 2`) step 1 goes through FSDP's reduce-scatter instead: the
ascent gradient is the mean over the processes (a per-process one would need the whole model's
unsharded gradient on every process), taken by a backward pass with the accumulated `.grad` set
aside, and every micro-batch of a SAM step reduce-scatters so that `.grad` stays sharded between
them (the steps that do not climb keep the stock schedule of reductions). Steps
2, 3 and 5 work on each process's shards, the norm summed over them (samtune.optim.shards).
DeepSpeed and FSDP1 are refused (the README says why).

At the edges: gradients that autograd returns aliased are cloned before e(w) is computed in
place (samtune.optim.functional.owned); an exception anywhere in the step leaves the weights at
w; a NaN/inf loss (`on_nonfinite`) is decided on every process alike (one all-reduce of a flag),
and under fp16 a skipped step goes through the GradScaler. Checkpoints carry SAM's state (its
counters in `trainer_state.json`, a variant's tensors written before it), and resuming (a path, or
True) restores it.

`sam_variant` picks the variant (samtune.optim.variants, one module each): it says which optimizer
steps climb (the others take the stock step), which part of a micro-batch the ascent sees, and
takes hooks after each ascent and after each step (LookSAM records a direction on its SAM steps and
adds it to the gradient of the others, before clipping). The step calls the hooks and never asks
which variant it runs. Which steps climb depends on the optimizer step only, so every micro-batch
and every process agrees; a variant that decides on the gradient (AE-SAM's trigger) decides once a
step, on the step's reduced gradient after its plain pass, and a step that climbs runs its
micro-batches again at w + e(w) (`_triggered_step`).
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from samtune.compat.grad_scaler import keep_scheduler_wrapper_mark, mark_stepped, record_overflow
from samtune.compat.loss_normalisation import loss_ignores_num_items, loss_is_scaled_for_ga, loss_shifts_labels
from samtune.optim.functional import (
    ascent_norm,
    frozen_running_stats,
    gradients_by_backward,
    restore_weights_,
    sam_perturbation,
    save_and_climb_,
    trainable_parameters,
)
from samtune.optim.selection import SelectionError, climbing_names
from samtune.optim.settings import SAMSettings, empty_window_problem, sam_window
from samtune.optim.shards import is_sharded
from samtune.optim.variants import Processes, Variant, make_variant
from samtune.sam_checkpoint import SAMCheckpointing
from samtune.sam_state import SAMState

_LOMO = ("lomo", "adalomo")


class UnsupportedSetupError(ValueError):
    """A training setup under which SAM's step cannot be made exact (DeepSpeed, FSDP, ...)."""


class SAMWindowError(ValueError):
    """The SAM window (`start`, `stop`) holds no optimizer step of the run: SAM would never climb."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (with `on_nonfinite="stop"`)."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"the training loss became {loss} at step {step}")
        self.step, self.loss = step, loss


@dataclass
class SAMArguments(SAMSettings, TrainingArguments):
    """`transformers.TrainingArguments` plus SAM's settings (defined in `samtune.optim.settings.SAMSettings`)."""

    on_nonfinite: Literal["stop", "skip"] = field(
        default="stop",
        metadata={
            "help": "A NaN/inf training loss: 'stop' raises NonFiniteLossError (no update, nothing saved); "
            "'skip' skips that optimizer step (no update) and counts it."
        },
    )

    def __post_init__(self) -> None:
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            # `accelerate launch` with a DeepSpeed config: refused before TrainingArguments sets DeepSpeed up (which
            # fails with a bare PackageNotFoundError where deepspeed is not installed, and is dropped on CPU).
            raise UnsupportedSetupError(_DEEPSPEED.format(how=" (asked for by your accelerate config)"))
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip' (got {self.on_nonfinite!r})")
        super().__post_init__()  # SAMSettings' checks, then TrainingArguments'
        self.rho = float(self.rho)

    def variant(self) -> Variant:
        """The SAM variant these arguments select, with its own settings."""
        return make_variant(self, seed=self.seed)


_DEEPSPEED = (
    "SAMTrainer does not support DeepSpeed{how}: its engine reduces, partitions and (ZeRO-2) steps on the gradients "
    "inside backward(), so SAM's ascent gradient cannot be taken apart from the descent's and the update "
    "would not be SAM's. To shard a model that does not fit on one device, use FSDP2 (Accelerate config: "
    "distributed_type FSDP, fsdp_version 2; or TrainingArguments fsdp='full_shard' with "
    "fsdp_config={{'version': 2}}), which samtune supports exactly; for models that fit, plain data parallelism."
)
_FSDP_XLA = "SAMTrainer does not support FSDP on XLA (TPU); use FSDP2 on GPUs."
_FSDP1 = (
    "SAMTrainer supports FSDP through FSDP2 only (fully_shard): FSDP1's flat parameters hide the per-parameter "
    "shards that SAM's climb and its exact restore work on. Use fsdp_version 2 (Accelerate config: "
    "fsdp_version: 2; TrainingArguments: fsdp_config={'version': 2}, the default)."
)


def _refuse_unsupported_args(args: TrainingArguments) -> None:
    """Refuse, before anything is built, the setups in which SAM's step would be silently wrong."""
    if args.deepspeed:
        raise UnsupportedSetupError(_DEEPSPEED.format(how=""))
    if args.fsdp:
        config = args.fsdp_config or {}
        if config.get("xla", False):
            raise UnsupportedSetupError(_FSDP_XLA)
        if int(config.get("version", 2)) != 2:
            raise UnsupportedSetupError(_FSDP1)
        if args.parallel_mode.value != "distributed":
            raise UnsupportedSetupError(
                "FSDP shards the model over several processes, and this is one: launch it with "
                "`samtune train ... --nproc N` or `accelerate launch` (on GPUs), or set training.fsdp=false."
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


class SAMTrainer(SAMCheckpointing, Trainer):
    """A `transformers.Trainer` whose step is Sharpness-Aware Minimization (rho=0: the stock step).

    Logs, at the Trainer's logging steps: `sam_rho` (the latest SAM step's radius; the configured rho
    before the first SAM step),
    `sam_ascent_grad_norm` (mean ||g|| of the ascent passes since the last log, on this process),
    `sam_sharpness` (mean over the SAM steps since the last log, and over the processes, of
    L(w + e(w)) - L(w), the sharpness SAM minimises, computed from the two passes it takes anyway;
    with dropout it includes the two passes' different masks), `sam_perturbations_skipped` (total climbs skipped because
    ||g|| was not finite, on this process) and `sam_climb_steps` (optimizer steps that took SAM's
    two passes: all of them for exact SAM, fewer for the variants, the window and the schedule).

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
        if self.is_deepspeed_enabled:
            raise UnsupportedSetupError(_DEEPSPEED.format(how=" (asked for by your accelerate config)"))
        if getattr(self, "is_fsdp_xla_enabled", False):
            raise UnsupportedSetupError(_FSDP_XLA)
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        self.is_fsdp2 = bool(self.is_fsdp_enabled and getattr(plugin, "fsdp_version", 1) == 2)
        if self.is_fsdp_enabled and not self.is_fsdp2:
            raise UnsupportedSetupError(_FSDP1)
        if getattr(self, "is_distributed_loading_by_transformers", False):
            raise UnsupportedSetupError(
                "SAMTrainer does not support a model sharded by transformers at load time (distributed_config): "
                "load it unsharded and let Accelerate's FSDP2 shard it (fsdp_version 2)."
            )
        if (args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true") and not self.is_fsdp_enabled:
            # Accelerate asked for FSDP but did not turn it on: it does so only on accelerator devices, and on CPU
            # processes it silently trains with plain data parallelism. Never let a run look sharded when it is not.
            raise UnsupportedSetupError(
                "FSDP was asked for (your accelerate config, or training.fsdp), but Accelerate turns FSDP on only on "
                "GPUs (and other accelerators): on this "
                f"{self.accelerator.distributed_type.value} setup it would train unsharded, as plain data parallelism. "
                "Drop the request (training.fsdp=false, or launch with a config "
                "without FSDP: distributed_type MULTI_CPU or MULTI_GPU) to train that way knowingly."
            )
        if self.compute_loss_func is None and loss_ignores_num_items(self.accelerator.unwrap_model(self.model)):
            # Classification heads (BERT's in transformers 5.x) accept `num_items_in_batch` but
            # return a batch mean anyway: the stock step would then skip the division by the
            # accumulation steps and make the update N times too large. Divide for them; models
            # whose loss honours `num_items_in_batch` (token-level losses) keep the stock rule.
            self.model_accepts_loss_kwargs = False
        if getattr(self, "_loss_shifts_labels", True) is False and loss_shifts_labels(
            self.accelerator.unwrap_model(self.model)
        ):
            # A causal LM whose loss_type transformers leaves unset (GPT-2's): count its step's targets over
            # labels[..., 1:], as its loss does, so the update is the mean over the targets it predicts.
            self._loss_shifts_labels = True
        self._climbing = self._resolve_climbing_parameters()
        # SAM's counters, the figures for the next log and the variant; saved in checkpoints (a stateful callback).
        self.sam_state = SAMState(self.args.variant(), rho=self.args.rho, adaptive=self.args.adaptive)
        self.add_callback(self.sam_state)
        self._processes = Processes(self._mean_over_processes, self.is_fsdp2, self.accelerator.device)  # for variants
        self._saved_weights: list[torch.Tensor] | None = None  # the copy of w, reused between CPU steps
        self._step_batches: list[tuple[dict[str, Any], Any]] = []  # a gradient-triggered step's micro-batches so far
        self._step_losses: list[torch.Tensor] = []  # ... and their losses at w
        self._nonfinite_in_step = False  # this micro-batch's loss was NaN/inf (on this process)
        self._nonfinite_in_optimizer_step = False  # ... or an earlier micro-batch's of this optimizer step
        self._nonfinite_loss = float("nan")  # the first such loss of the step, for the error message
        self._skip_optimizer_step = False
        self._nonfinite_verdict: bool | None = (
            None  # this step's `_nonfinite_anywhere`, once its last micro-batch asked
        )
        if self.args.on_nonfinite == "skip":
            self.add_callback(_StepSkipper(self))
        self.add_callback(_TrainBegin(self))

    @property
    def sam_climb_steps(self) -> int:
        """Optimizer steps that took SAM's two passes (the window, the schedule and the variants skip some)."""
        return self.sam_state.climb_steps

    @property
    def sam_perturbations_skipped(self) -> int:
        """Climbs skipped because ||g|| was not finite (on this process)."""
        return self.sam_state.perturbations_skipped

    @property
    def sam_nonfinite_skipped(self) -> int:
        """Optimizer steps skipped for a NaN/inf loss (`on_nonfinite="skip"`)."""
        return self.sam_state.nonfinite_skipped

    # ---- the step ------------------------------------------------------------------------

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """One SAM step on a micro-batch: ascent at w, descent at w + e(w), back to w."""
        self._nonfinite_in_step = False
        try:
            loss = self._micro_batch_step(model, inputs, num_items_in_batch)
        except BaseException:
            # The weights are back at w (save_and_climb_ and the restore undo the climb); drop
            # what this optimizer step had accumulated of its own, so a caller that retries
            # (auto_find_batch_size, a notebook) starts the step afresh.
            self.sam_state.abandon_step()
            self._nonfinite_in_optimizer_step, self._nonfinite_verdict = False, None
            self._step_batches, self._step_losses = [], []
            raise
        here = self._nonfinite_in_step
        self._nonfinite_in_optimizer_step = self._nonfinite_in_optimizer_step or here
        if self.accelerator.sync_gradients:
            anywhere = self._nonfinite_anywhere()
            self._nonfinite_in_optimizer_step, self._nonfinite_verdict = False, None
            if anywhere:
                if self.args.on_nonfinite == "stop":
                    raise NonFiniteLossError(self.state.global_step + 1, self._nonfinite_loss)
                self._skip_optimizer_step = True  # the optimizer step is skipped
        if here or self._skip_optimizer_step:
            return torch.tensor(float("nan"), device=loss.device)  # the Trainer's logs filter NaN out
        return loss

    def _nonfinite_anywhere(self) -> bool:
        """On a step's last micro-batch: whether a micro-batch of this optimizer step had a NaN/inf loss on any process.

        A NaN/inf loss on any process, in any micro-batch, decides for all of them, once a step (one all-reduce of a
        flag, kept until `training_step` acts on it): otherwise one replica would skip (or raise) while the others
        step (or wait in the next all-reduce until it times out). A gradient-triggered step asks before it decides,
        so that a step to be skipped neither feeds the variant's statistics nor climbs.
        """
        if self._nonfinite_verdict is None:
            self._nonfinite_verdict = self._on_any_process(self._nonfinite_in_optimizer_step or self._nonfinite_in_step)
        return self._nonfinite_verdict

    def _on_any_process(self, flag: bool) -> bool:
        """Whether `flag` holds on any data-parallel process (one all-reduce of a scalar; none on one process)."""
        if self.accelerator.num_processes <= 1:
            return flag
        votes = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(votes, reduction="sum").item() > 0)

    def _micro_batch_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None,
    ) -> torch.Tensor:
        """SAM's two passes, or the stock step where this optimizer step does not climb.

        It does not climb at rho_t = 0 (rho = 0, or the lr schedule at a learning rate of 0), outside
        the SAM window (`start`/`stop`), and on a variant's plain steps. Every one of these is a
        function of the optimizer step only: every micro-batch and every process agrees. A variant that
        decides on the gradient decides once a step, on the gradient every process holds alike
        (`_triggered_step`).
        """
        rho = self._rho_now()
        if rho == 0 or not self._in_sam_window():
            return super().training_step(model, inputs, num_items_in_batch)
        variant = self.sam_state.variant
        if variant.decides_on_gradient:
            return self._triggered_step(model, inputs, num_items_in_batch, rho)
        if variant.climbs_on(self.state.global_step):
            return self._sam_step(model, inputs, num_items_in_batch, rho)
        loss = super().training_step(model, inputs, num_items_in_batch)  # the variant's plain step
        if self.accelerator.sync_gradients:
            variant.after_plain_step(self.sam_parameters(model), self._processes)
        return loss

    def _resolve_climbing_parameters(self) -> set[str] | None:
        """The names of the parameters `params` selects (None: every trainable one); none selected is refused."""
        if self.args.params == "all":
            return None
        try:
            return set(climbing_names(self.accelerator.unwrap_model(self.model), self.args.params))
        except SelectionError as e:
            raise UnsupportedSetupError(str(e)) from e

    def sam_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters that climb (`params`), in the model's order.

        By name on the unwrapped model: FSDP2 replaces the parameters by sharded ones (same names),
        DDP wraps the model (and keeps the parameter objects).
        """
        params = trainable_parameters(model)
        if self._climbing is None:
            return params
        named = self.accelerator.unwrap_model(model).named_parameters()
        return [p for n, p in named if p.requires_grad and n in self._climbing]

    def _rho_now(self) -> float:
        """This step's radius: rho, or with `schedule="lr"` rho * lr_t / lr_0 (GSAM's rule).

        lr_0 is the optimizer's own: the rate its scheduler started from (`initial_lr`, which torch's
        schedulers record in each group; without one, the group's rate at the first step), not
        `learning_rate`, which a caller's optimizer or a group's own rate need not follow. SAM's
        neighbourhood is one ball, so there is one ratio: the first group with a positive lr_0 sets it
        (a group at rate 0 takes no step). The Trainer's schedulers scale every group by the same
        factor, so every group gives the same ratio there; a scheduler with a factor per group lets
        the first group decide.
        """
        if self.args.schedule == "constant" or self.args.rho == 0 or self.optimizer is None:
            return self.args.rho
        for group in self.optimizer.param_groups:
            peak = group.setdefault("initial_lr", group["lr"])
            if peak > 0:
                return self.args.rho * group["lr"] / peak
        return 0.0

    def _in_sam_window(self) -> bool:
        """Whether this optimizer step lies in the SAM window (`start`, `stop`; the whole run by default)."""
        if self.args.start == 0 and self.args.stop is None:
            return True
        first, end = sam_window(self.args.start, self.args.stop, self.state.max_steps)
        return first <= self.state.global_step < end

    def check_sam_window(self, total_steps: int | None = None) -> None:
        """Refuse (SAMWindowError) a SAM window that holds no step of the run, whose `total_steps` optimizer steps
        are counted as `train()` counts them when not given. `train()` checks before its first step."""
        if self.args.rho == 0 or (self.args.start == 0 and self.args.stop is None):
            return
        if total_steps is None:
            total_steps = self.set_initial_training_values(self.args, self.get_train_dataloader())[-1]
        problem = empty_window_problem(self.args.start, self.args.stop, total_steps)
        if problem:
            raise SAMWindowError(problem)

    def _sam_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None,
        rho: float,
    ) -> torch.Tensor:
        """SAM on one micro-batch: ascent at w, climb to w + e(w), the stock descent there, back to w."""
        variant = self.sam_state.variant
        last_micro_batch = self.accelerator.sync_gradients
        params = self.sam_parameters(model)
        part = variant.ascent_inputs(inputs)
        # BatchNorm's running statistics move once per micro-batch, as in the stock step: in the ascent, whose
        # forward at w is the stock step's own; where the ascent takes part of the micro-batch, in the descent.
        whole = part is None
        ascent_inputs = copy.copy(inputs) if whole else part
        if self.is_fsdp2:
            # The ascent gradient comes through FSDP's reduce-scatter (averaged over the processes: a per-process
            # ascent would need every process to hold the whole model's unsharded gradient, which is what sharding
            # avoids). The Trainer's no_sync around a step's earlier micro-batches would keep FSDP's gradients
            # unreduced between them, and the next ascent would reduce them with its own: every micro-batch of a
            # SAM step reduce-scatters instead, so `.grad` holds sharded, averaged gradients that the ascent sets
            # aside (memory: one gradient shard). Accelerate's no_sync turns reduction back on at its exit; a step
            # that does not climb keeps the stock schedule of reductions, so it is the stock step to the bit.
            model.set_requires_gradient_sync(True)
        # DDP: the ascent is this process's own (no all-reduce); FSDP2: through FSDP's reduce-scatter (above).
        with (
            contextlib.nullcontext() if self.is_fsdp2 else self.accelerator.no_sync(model),
            contextlib.nullcontext() if whole else frozen_running_stats(model),
        ):
            ascent_loss, grads = self._ascent_gradient(model, ascent_inputs, params, num_items_in_batch)
        # The variant sees g as the descent's gradient is normalised (divided by the accumulation steps or not).
        variant.after_ascent(
            grads,
            1.0 if loss_is_scaled_for_ga(self, num_items_in_batch) else 1.0 / self.current_gradient_accumulation_steps,
        )
        perturbed, e, norm = sam_perturbation(grads, params, rho, self.args.adaptive, self.args.asam_eta)
        del grads
        finite = not self._nonfinite_in_step and self._record_ascent(norm)

        saved = None
        try:
            if finite:
                # climb to the local maximum "w + e(w)"
                saved = save_and_climb_(perturbed, e, out=self._saved_weights)
            del e
            # The descent, with the stock machinery.
            with frozen_running_stats(model) if whole else contextlib.nullcontext():
                descent_loss = super().training_step(model, copy.copy(inputs), num_items_in_batch)
        finally:
            if saved is not None:
                restore_weights_(perturbed, saved)  # get back to "w" from "w + e(w)"
        # On the CPU every fresh tensor of this size is new pages from the system (about 15 ms for
        # MiniLM's 87 MB): keep the copy for the next step. GPU allocators cache blocks themselves.
        on_cpu = bool(perturbed) and perturbed[0].device.type == "cpu"
        self._saved_weights = saved if saved is not None and on_cpu else None
        # L(w + e) - L(w), both normalised as the step's loss: summed, the step's sharpness (not where the ascent
        # took part of the micro-batch: its loss is that part's).
        self.sam_state.micro_batch_done(finite, descent_loss - ascent_loss if finite and whole else None)
        if last_micro_batch:
            complete = self.sam_state.sam_step_done(rho)  # every micro-batch climbed
            variant.after_sam_step(params, complete, self._processes)
        return ascent_loss

    def _triggered_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any, rho: float
    ) -> torch.Tensor:
        """A step that a variant decides on its gradient (AE-SAM): the stock step at w on each micro-batch, which is
        the plain step; on the last, if the variant asks given ||g||^2 of the step's gradient g (in `.grad`, reduced
        over the processes), the step's micro-batches again at w + e(w), e(w) from g, whose gradient replaces g."""
        self._step_batches.append((copy.copy(inputs), num_items_in_batch))  # kept for the descent, should it climb
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._step_losses.append(loss.detach())
        if not self.accelerator.sync_gradients:
            return loss
        batches, losses, self._step_batches, self._step_losses = self._step_batches, self._step_losses, [], []
        if self._nonfinite_anywhere():
            return loss  # a NaN/inf loss: the step will be skipped (`training_step`), so it neither decides nor climbs
        variant, params = self.sam_state.variant, self.sam_parameters(model)
        grads = [p.grad for p in params]
        norm = ascent_norm(grads)  # over all shards under FSDP2; the scaler's scale is the same on every process
        scaler = self.accelerator.scaler
        unscaled = float(norm) / (float(scaler.get_scale()) if scaler is not None else 1.0)
        if not variant.climbs_given(unscaled**2, self._window_progress()):
            variant.after_plain_step(params, self._processes)
            return loss
        self.sam_state.count_ascent(unscaled)
        for p in trainable_parameters(model):
            p.grad = None  # g is kept in `grads` for e(w); the descent's gradient takes its place
        perturbed, e, _ = sam_perturbation(grads, params, rho, self.args.adaptive, self.args.asam_eta)
        del grads
        saved = None
        try:
            saved = save_and_climb_(perturbed, e, out=self._saved_weights)  # climb to "w + e(w)"
            del e
            rise = 0.0
            with frozen_running_stats(model):  # the plain pass moved BatchNorm's statistics already
                for i, (batch, items) in enumerate(batches):
                    last = i == len(batches) - 1  # its backward reduces the step's gradient, as the stock step's
                    with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                        rise = super().training_step(model, batch, items) - losses[i] + rise
        finally:
            if saved is not None:
                restore_weights_(perturbed, saved)  # get back to "w" from "w + e(w)"
        on_cpu = bool(perturbed) and perturbed[0].device.type == "cpu"
        self._saved_weights = saved if on_cpu else None
        self.sam_state.micro_batch_done(True, rise)
        variant.after_sam_step(params, self.sam_state.sam_step_done(rho), self._processes)
        return loss

    def _window_progress(self) -> float:
        """The share of the SAM window done before this optimizer step (0 at its first step)."""
        first, end = sam_window(self.args.start, self.args.stop, self.state.max_steps)
        return (self.state.global_step - first) / max(1, min(end, self.state.max_steps) - first)

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
        # Under FSDP2 the backward pass writes the gradient of every trainable parameter, those that do not climb
        # too: each one's `.grad` is set aside. Listed before the forward, which swaps the root module's unsharded
        # parameters in until the backward ends (`model.parameters()` would then list those, not the sharded ones).
        written = trainable_parameters(model) if self.is_fsdp2 else []
        with torch.enable_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        if self.args.n_gpu > 1:
            loss = loss.mean()
        # Under fp16 the GradScaler's scale keeps small gradients from underflowing; the
        # direction g/||g|| does not depend on it, and nothing is unscaled here (the Trainer's
        # clipping unscales the descent gradients, once per optimizer step).
        scaler = self.accelerator.scaler
        target = scaler.scale(loss) if scaler is not None else loss
        if self.is_fsdp2:
            self._check_sharded(params)
            grads = tuple(gradients_by_backward(target.backward, params, written))  # FSDP writes sharded .grad
        else:
            grads = torch.autograd.grad(target, params, allow_unused=True)
        if not loss_is_scaled_for_ga(self, num_items_in_batch):
            loss = loss / self.current_gradient_accumulation_steps
        return loss.detach(), grads

    def _check_sharded(self, params: list[nn.Parameter]) -> None:
        """Under FSDP2 every climbing parameter must be sharded by it (checked once: at train begin, and at the
        first ascent for a caller that steps without `train`)."""
        if getattr(self, "_sharding_checked", False):
            return
        climbing = {id(p) for p in params}
        plain = [
            n
            for n, p in self.accelerator.unwrap_model(self.model).named_parameters()
            if id(p) in climbing and not is_sharded(p)
        ]
        if plain:
            raise UnsupportedSetupError(
                f"under FSDP2 every parameter SAM perturbs must be sharded by FSDP, and {len(plain)} are not "
                f"(e.g. {plain[0]}): their ascent gradients would not be averaged over the processes and the "
                "climb would differ between them. Shard the whole model (fsdp_auto_wrap_policy and fully_shard "
                "at the root), or leave those parameters out of sam.params."
            )
        self._sharding_checked = True

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, **kw: Any):
        """The stock loss, checked for NaN/inf while training (see `on_nonfinite`)."""
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, **kw)
        if not (model.training and torch.is_grad_enabled()):
            return result
        loss = result[0] if return_outputs else result
        if not bool(torch.isfinite(loss.detach()).all()):
            if not self._nonfinite_in_optimizer_step and not self._nonfinite_in_step:
                self._nonfinite_loss = float(loss.detach().float().mean())  # the first of the step
            self._nonfinite_in_step = True
        if self._nonfinite_in_step:
            # Take no gradient from this micro-batch (both passes): a loss whose gradient is zero for
            # every trainable weight adds nothing to `.grad`, and under DDP every rank still joins
            # the all-reduce. `training_step` then stops or skips the step, on every process alike.
            loss = sum((p.reshape(-1)[:1] * 0.0).sum() for p in model.parameters() if p.requires_grad)
            result = (loss, result[1]) if return_outputs else loss
        return result

    def _record_ascent(self, norm: torch.Tensor) -> bool:
        """Count the ascent norm (unscaled) for the logs; False when it is not finite."""
        value = float(norm)
        scaler = self.accelerator.scaler
        if scaler is not None:
            value /= float(scaler.get_scale())
        return self.sam_state.count_ascent(value)

    # ---- logging -------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add SAM's own figures to the Trainer's training logs."""
        if "loss" in logs:
            logs.update(self.sam_state.log_entries(self._processes))
        super().log(logs, start_time)


class _TrainBegin(TrainerCallback):
    """Once the model is prepared (sharded under FSDP2), before any step: refuse what cannot train, and hand the
    variant its parameters (with the state a resume loaded)."""

    def __init__(self, trainer: SAMTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        params = trainer.sam_parameters(trainer.model)
        if trainer.is_fsdp2 and trainer.args.rho > 0:
            trainer._check_sharded(params)  # a climbing parameter FSDP did not shard
        trainer.check_sam_window(state.max_steps)  # an empty SAM window
        trainer.sam_state.adopt(trainer.callback_handler.callbacks, state)
        trainer.sam_state.variant.attach(params)


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
                trainer.sam_state.nonfinite_skipped += 1
                scaler = getattr(optimizer, "scaler", None)
                if scaler is not None:
                    # fp16: skip through the GradScaler, as its own overflow skip does: the step is
                    # skipped, the scale backs off and the scaler's per-step state is reset (returning
                    # here would leave it "unscaled" by the clipping, and the next step would raise).
                    record_overflow(scaler, getattr(optimizer, "optimizer", optimizer))
                    return step(*a, **kw)
                mark_stepped(optimizer)
                return None
            return step(*a, **kw)

        # Keep the LR scheduler's bookkeeping: it wrapped `step` already and checks for that mark.
        keep_scheduler_wrapper_mark(skippable_step, step)
        optimizer.step = skippable_step
        optimizer._samtune_skippable = True

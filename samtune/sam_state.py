"""SAM's own training state in one object, `SAMState`, and how a checkpoint carries it.

`SAMState` holds what SAMTrainer counts across steps (optimizer steps that climbed, climbs skipped for
a non-finite ||g||, optimizer steps skipped for a non-finite loss), what it gathers for the next log
(the mean ascent norm, the sharpness L(w + e) - L(w)) and the SAM variant (samtune.optim.variants)
with the variant's own state. `state_dict()` / `load_state_dict()` are its checkpoint form: the counters,
the variant's name and, if it has any, the variant's state (LookSAM's g_v). What it gathers for the
next log is not checkpointed (a log starts it afresh).

Where a checkpoint keeps it, and why there: the Trainer writes a checkpoint's files in a fixed order and
`trainer_state.json` last, the mark of a complete checkpoint (`resume auto` takes the newest folder that
has it). `SAMState` is an `ExportableState` callback, so the Trainer writes its record into that very
file (`stateful_callbacks["SAMState"]["attributes"]`): the counters are in a checkpoint exactly when it
is complete, with no file of their own to order or to lose, and through the Trainer's public mechanism,
not an override. A variant's state holds tensors (g_v is the size of the climbing weights) and cannot be
JSON: it goes to a torch file, `samtune_<variant>.pt` (under FSDP2 each process's shards,
`samtune_<variant>_rank<i>.pt`), written before the mark (`SAMCheckpointing._save_rng_state`, the last
save inside transformers 5.x's `_save_checkpoint` before trainer_state.json, on every process).

Resuming, SAMTrainer reads the record from the checkpoint's trainer_state.json itself (`train`): the
Trainer restores callbacks only with `restore_callback_states_from_checkpoint`, and then by creating them
anew from their record, which a SAMState, holding its variant's tensors, cannot be; SAMTrainer puts its
own back at train begin (`adopt`). Checkpoints of samtune 0.1, whose record was `samtune_state.json`,
resume as well.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState, TrainerState

from samtune.files import atomic_path
from samtune.optim.variants import Processes, Variant, variant_class
from samtune.rundir import TRAINER_STATE_FILE

LEGACY_STATE_FILE = "samtune_state.json"  # samtune 0.1's record (read, no longer written)


def variant_file(variant: str, rank: int | None = None) -> str:
    """The checkpoint file of a variant's state: one, or under FSDP2 one per process (`rank`: its shards)."""
    return f"samtune_{variant}.pt" if rank is None else f"samtune_{variant}_rank{rank}.pt"


@dataclass(eq=False)
class SAMState(TrainerCallback, ExportableState):
    """SAM's training state: counters, the figures for the next log, and the variant with its own state."""

    variant: Variant = field(default_factory=lambda: variant_class("sam")())
    rho: float = 0.0  # the configured radius and climb, for the record
    adaptive: bool = False
    climb_steps: int = 0  # optimizer steps that took SAM's two passes
    perturbations_skipped: int = 0  # climbs skipped because ||g|| was not finite (this process)
    nonfinite_skipped: int = 0  # optimizer steps skipped for a NaN/inf loss (on_nonfinite="skip")
    # Gathered for the next log (not checkpointed).
    last_rho: float | None = None  # the latest SAM step's radius (schedule="lr" moves it)
    norm_sum: float = 0.0  # ||g|| of the ascents since the last log, unscaled
    norm_count: int = 0
    sharpness_sum: torch.Tensor | float = 0.0  # the SAM steps' L(w + e) - L(w) since the last log
    sharpness_count: int = 0
    # This optimizer step's, until its last micro-batch.
    step_sharpness: torch.Tensor | float = 0.0
    step_measured: bool = False  # a micro-batch of this step measured its sharpness (a part-batch ascent cannot)
    missed_climb: bool = False  # a micro-batch of this SAM step did not climb (non-finite ||g||)

    def __post_init__(self) -> None:
        if self.last_rho is None:  # before the first SAM step, the logs show the configured radius
            self.last_rho = self.rho

    # ---- the step --------------------------------------------------------------------------

    def count_ascent(self, norm: float) -> bool:
        """Count one ascent's ||g|| (unscaled) for the logs; False, and counted as skipped, when it is not finite."""
        if not math.isfinite(norm):
            self.perturbations_skipped += 1
            return False
        self.norm_sum += norm
        self.norm_count += 1
        return True

    def micro_batch_done(self, climbed: bool, sharpness: torch.Tensor | None) -> None:
        """A SAM step's micro-batch: whether it climbed, and its L(w + e) - L(w) (None: not measured)."""
        self.missed_climb = self.missed_climb or not climbed
        if sharpness is not None:
            self.step_sharpness = sharpness + self.step_sharpness
            self.step_measured = True

    def sam_step_done(self, rho: float) -> bool:
        """A SAM step's last micro-batch: count it; True if every micro-batch of it climbed."""
        complete = not self.missed_climb
        self.climb_steps += 1
        self.last_rho = rho
        if complete and self.step_measured:
            self.sharpness_sum = self.step_sharpness + self.sharpness_sum
            self.sharpness_count += 1
        self._forget_step()
        return complete

    def _forget_step(self) -> None:
        """Clear what this optimizer step gathered, for the next one."""
        self.missed_climb, self.step_sharpness, self.step_measured = False, 0.0, False

    def abandon_step(self) -> None:
        """The optimizer step failed part-way: forget what it gathered (the variant's too)."""
        self._forget_step()
        self.variant.abandon_step()

    def log_entries(self, processes: Processes) -> dict[str, Any]:
        """SAM's figures for a training log, then gathered afresh (every process calls this at a logging step).

        `sam_sharpness` is the mean over the SAM steps since the last log and over every process's steps (the
        logged loss is averaged over the processes too; each climbs on its own micro-batches): one all-reduce.
        """
        logs: dict[str, Any] = {"sam_rho": self.last_rho}
        if self.norm_count:
            logs["sam_ascent_grad_norm"] = self.norm_sum / self.norm_count
        totals = torch.tensor(
            [float(self.sharpness_sum), float(self.sharpness_count)], dtype=torch.float32, device=processes.device
        )
        (totals,) = processes.mean([totals])
        if totals[1] > 0:
            logs["sam_sharpness"] = float(totals[0] / totals[1])
        logs["sam_perturbations_skipped"] = self.perturbations_skipped
        logs["sam_climb_steps"] = self.climb_steps
        if self.nonfinite_skipped:
            logs["sam_nonfinite_skipped"] = self.nonfinite_skipped
        self.norm_sum, self.norm_count, self.sharpness_sum, self.sharpness_count = 0.0, 0, 0.0, 0
        return logs

    # ---- checkpoint form -----------------------------------------------------------------------

    def _record(self) -> dict[str, Any]:
        return {
            "rho": self.rho,
            "adaptive": self.adaptive,
            "variant": self.variant.name,
            "climb_steps": self.climb_steps,
            "perturbations_skipped": self.perturbations_skipped,
            "nonfinite_skipped": self.nonfinite_skipped,
        }

    def state_dict(self) -> dict[str, Any]:
        """The counters, the variant's name and (when it has any) its state: what a resumed run needs."""
        own = self.variant.state_dict()
        return {**self._record(), **({"variant_state": own} if own else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back a `state_dict()`; the variant's state only if it was this variant's."""
        self.climb_steps = int(state.get("climb_steps", 0))
        self.perturbations_skipped = int(state.get("perturbations_skipped", 0))
        self.nonfinite_skipped = int(state.get("nonfinite_skipped", 0))
        same = state.get("variant", self.variant.name) == self.variant.name
        self.variant.load_state_dict(state.get("variant_state", {}) if same else {})

    def state(self) -> dict[str, Any]:
        """The record the Trainer writes into trainer_state.json (ExportableState): the counters, not the variant's
        tensors (`save_variant_state` writes those)."""
        return {"args": {}, "attributes": self._record()}

    def save_variant_state(self, folder: str, process_index: int, sharded: bool, main: bool) -> None:
        """Write the variant's own state, if any, into a checkpoint folder: the main process's, or under FSDP2 every
        process's shards of it."""
        if not (main or sharded):
            return
        own = self.variant.state_dict()
        if not own:
            return
        os.makedirs(folder, exist_ok=True)
        with atomic_path(Path(folder) / variant_file(self.variant.name, process_index if sharded else None)) as tmp:
            torch.save(own, tmp)

    def load_checkpoint(self, folder: str, process_index: int, sharded: bool) -> None:
        """Resume from a checkpoint folder: its record (trainer_state.json, or samtune 0.1's file) and the variant's
        file (without one, the variant starts afresh: LookSAM's next step computes g_v)."""
        record = dict(saved_record(folder) or {})
        path = Path(folder) / variant_file(self.variant.name, process_index if sharded else None)
        if path.is_file():
            record["variant_state"] = torch.load(path, map_location="cpu", weights_only=True)
        self.load_state_dict(record)

    def adopt(self, callbacks: list[TrainerCallback], trainer_state: TrainerState) -> None:
        """At train begin: be the SAMState among `callbacks` (the Trainer re-creates stateful callbacks from their
        record with `restore_callback_states_from_checkpoint`), and have an entry in the trainer state's records
        (a checkpoint of samtune 0.1 has none, and the Trainer's save looks ours up)."""
        for i, callback in enumerate(callbacks):
            if isinstance(callback, SAMState) and callback is not self:
                callbacks[i] = self
        trainer_state.stateful_callbacks.setdefault(type(self).__name__, self.state())


def saved_record(folder: str | Path) -> dict[str, Any] | None:
    """SAM's record in a checkpoint folder: trainer_state.json's (SAMState's attributes), else samtune 0.1's
    samtune_state.json; None if neither holds one."""
    folder = Path(folder)
    if (folder / TRAINER_STATE_FILE).is_file():
        records = json.loads((folder / TRAINER_STATE_FILE).read_text(encoding="utf-8")).get("stateful_callbacks") or {}
        entry = records.get(SAMState.__name__)
        if isinstance(entry, dict):
            return entry.get("attributes", {})
    if (folder / LEGACY_STATE_FILE).is_file():
        return json.loads((folder / LEGACY_STATE_FILE).read_text(encoding="utf-8"))
    return None

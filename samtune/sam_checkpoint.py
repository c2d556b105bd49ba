"""Checkpoint I/O beyond the Trainer's own: SAM's state, and exact weights on resume and for the best model.

`SAMCheckpointing` is a mixin for `SAMTrainer` (it sits before `transformers.Trainer` in the MRO):

- saving: SAM's counters travel in trainer_state.json, the mark of a complete checkpoint, as the record
  of the `SAMState` callback (samtune.sam_state says why there). The variant's own state, tensors
  (LookSAM's g_v), is written by `_save_rng_state`: the Trainer writes the RNG state as the last file
  before trainer_state.json, on every process, so a kill can never leave a "complete" checkpoint
  without it. That is a private method of transformers 5.x's Trainer: no public hook runs there on
  every process (`on_save` comes after the mark, a stateful callback's `state()` on the main process
  only). (With `save_only_model` the Trainer skips that save, and its checkpoints hold no optimizer
  state to resume from either.)
- resuming: `train(resume_from_checkpoint=PATH or True)` restores SAM's state and the weights (through
  `compat.renamed_weights`), then lets the Trainer resume the rest;
- the best model at the end is loaded the same exact way.

Under FSDP2 the weights come back through the Trainer's own FSDP checkpoint (Accelerate's sharded
state dicts, exact), and a variant's sharded state is written by every process as its own shards.
"""

from __future__ import annotations

from typing import Any

from transformers.trainer_utils import get_last_checkpoint

from samtune.compat.renamed_weights import reload_weights
from samtune.sam_state import SAMState


class SAMCheckpointing:
    """Checkpoint I/O of samtune's state, for a `transformers.Trainer` subclass with SAMTrainer's attributes."""

    args: Any
    state: Any
    accelerator: Any
    model: Any
    sam_state: SAMState
    is_fsdp2: bool = False

    def train(self, resume_from_checkpoint: str | bool | None = None, *a: Any, **kw: Any):
        """The Trainer's `train`, resuming samtune's state too (a checkpoint path, or True for the newest)."""
        if resume_from_checkpoint is True:
            # The Trainer's own rule for True; where there is none, the Trainer raises its own error.
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True
        if isinstance(resume_from_checkpoint, str):
            if not self.is_fsdp2:  # FSDP2: the Trainer loads its sharded checkpoint
                reload_weights(self.accelerator.unwrap_model(self.model), resume_from_checkpoint)
            self.sam_state.load_checkpoint(resume_from_checkpoint, self.args.process_index, sharded=self.is_fsdp2)
        return super().train(resume_from_checkpoint, *a, **kw)  # type: ignore[misc]

    def _save_rng_state(self, output_dir: str) -> None:
        """Write the SAM variant's state into the checkpoint, then the Trainer's RNG state (see the docstring above)."""
        self.sam_state.save_variant_state(
            output_dir, self.args.process_index, sharded=self.is_fsdp2, main=self.args.should_save
        )
        super()._save_rng_state(output_dir)  # type: ignore[misc]

    def _load_best_model(self) -> None:
        """Load the best checkpoint through `from_pretrained` (exact for renamed keys); else the Trainer's way."""
        if self.is_fsdp2 or not reload_weights(
            self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint
        ):
            super()._load_best_model()  # type: ignore[misc]

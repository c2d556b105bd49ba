"""samtune's own state in the Trainer's checkpoints: counters and LookSAM's g_v, saved and resumed.

`SAMCheckpointing` is a mixin for `SAMTrainer` (it sits before `transformers.Trainer` in the MRO):

- saving: the Trainer writes a checkpoint's files in a fixed order and `trainer_state.json` last,
  the mark of a complete checkpoint (`resume auto` takes the newest folder that has it). The RNG
  state is the last save before it, so samtune's files are written there, and a kill can never
  leave a "complete" checkpoint without them. (With `save_only_model` the Trainer skips that save,
  and its checkpoints hold no optimizer state to resume from either.)
- resuming: `train(resume_from_checkpoint=PATH or True)` restores the counters, g_v and the
  weights (through `compat.renamed_weights`), then lets the Trainer resume the rest;
- the best model at the end is loaded the same exact way.

Under FSDP2 the weights come back through the Trainer's own FSDP checkpoint (Accelerate's sharded
state dicts, exact), and LookSAM's g_v, sharded like the gradients, is written by every process as
its own shards (`samtune_looksam_rank{i}.pt`) and made a DTensor again at the first step after a
resume, once FSDP has sharded the model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_utils import get_last_checkpoint

from samtune.compat.renamed_weights import reload_weights
from samtune.files import atomic_path, write_json_atomic
from samtune.optim.shards import DTensor, local

SAM_STATE_FILE = "samtune_state.json"
LOOKSAM_STATE_FILE = "samtune_looksam.pt"
LOOKSAM_SHARD_FILE = "samtune_looksam_rank{}.pt"


class SAMCheckpointing:
    """Checkpoint I/O of samtune's state, for a `transformers.Trainer` subclass with SAMTrainer's attributes."""

    args: Any
    state: Any
    accelerator: Any
    model: Any
    is_fsdp2: bool = False
    _looksam_shards: list[torch.Tensor | None] | None = None  # this process's saved g_v shards (FSDP2 resume)

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
            if not self.is_fsdp2:  # FSDP2: the Trainer loads its sharded checkpoint
                reload_weights(self.accelerator.unwrap_model(self.model), resume_from_checkpoint)
            self._load_sam_state(resume_from_checkpoint)
            self._load_looksam_state(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *a, **kw)  # type: ignore[misc]

    def _save_rng_state(self, output_dir: str) -> None:
        """Write samtune's state into the checkpoint, then the Trainer's RNG state (see the module docstring)."""
        if self.args.should_save or self.is_fsdp2:  # under FSDP2 every process holds its own shards of g_v
            os.makedirs(output_dir, exist_ok=True)
            self.save_looksam_state(output_dir)
        if self.args.should_save:
            write_json_atomic(Path(output_dir) / SAM_STATE_FILE, self.sam_state())
        super()._save_rng_state(output_dir)  # type: ignore[misc]

    def _load_best_model(self) -> None:
        """Load the best checkpoint through `from_pretrained` (exact for renamed keys); else the Trainer's way."""
        if self.is_fsdp2 or not reload_weights(self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint):
            super()._load_best_model()  # type: ignore[misc]

    def _load_sam_state(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, SAM_STATE_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            self.sam_perturbations_skipped = int(saved.get("perturbations_skipped", 0))
            self.sam_nonfinite_skipped = int(saved.get("nonfinite_skipped", 0))
            self.sam_climb_steps = int(saved.get("climb_steps", 0))

    def _looksam_file(self) -> str:
        """g_v's file in a checkpoint: one, or under FSDP2 one per process (its shards)."""
        return LOOKSAM_SHARD_FILE.format(self.args.process_index) if self.is_fsdp2 else LOOKSAM_STATE_FILE

    def save_looksam_state(self, folder: str) -> None:
        """Write LookSAM's g_v into a checkpoint folder, so a resumed run reuses it exactly."""
        if self._looksam_v is None:
            return
        with atomic_path(Path(folder) / self._looksam_file()) as tmp:
            torch.save([local(v).cpu() if v is not None else None for v in self._looksam_v], tmp)

    def _load_looksam_state(self, checkpoint: str) -> None:
        """Read g_v back (without it, LookSAM's next step is a SAM step that computes it afresh)."""
        path = os.path.join(checkpoint, self._looksam_file())
        self._looksam_v = self._looksam_shards = None
        if self.sam_variant.name != "looksam" or not os.path.isfile(path):
            return
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if self.is_fsdp2:
            self._looksam_shards = saved  # made DTensors once FSDP has sharded the model (`looksam_from_shards`)
            return
        params = self.sam_parameters(self.model)
        if len(saved) == len(params):
            self._looksam_v = [v.to(p.device) if v is not None else None for v, p in zip(saved, params, strict=True)]

    def looksam_from_shards(self, params: list[torch.nn.Parameter]) -> None:
        """After a resume under FSDP2: g_v from this process's saved shards, sharded as the parameters are."""
        shards, self._looksam_shards = self._looksam_shards, None
        if shards is None or len(shards) != len(params):
            return
        self._looksam_v = [
            None if v is None else DTensor.from_local(v.to(local(p).device), p.device_mesh, p.placements,
                                                      shape=p.shape, stride=p.stride(), run_check=False)
            for v, p in zip(shards, params, strict=True)
        ]  # fmt: skip

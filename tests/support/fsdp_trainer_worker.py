"""Run by test_fsdp.py under torchrun (2 CPU processes, gloo): SAMTrainer under Accelerate's FSDP2.

Accelerate turns an FSDP request into FSDP only on accelerator devices; this worker lets it take the
plugin on CPU processes too (`fsdp_on_cpu.force`), as it does on GPUs.

Arguments: OUT SCENARIO[,SCENARIO...], each run in turn in the same processes; "NAME:resume" resumes NAME's run,
which must come before it. Scenarios: "sam" (exact SAM), "asam", "lora" (exact SAM on peft LoRA adapters, the
base frozen), "looksam" (k=3: steps 0 and 3 climb, 1 and 2 reuse g_v), "head" and "nobias" (exact
SAM with `params` "head" and "!*.bias": the others stay at w), "aesam" (AE-SAM, decay 0.5, c 1: steps 0 and 2
climb, 1 does not), "plainsteps" (rho > 0, every step outside
the SAM window or an every_k plain step), each with 2 micro-batches per step and a sharded checkpoint (Accelerate's
SHARDED_STATE_DICT) at step 2; with "resume", the same scenario resumed from that checkpoint into a
new folder. "rho0" and "plain": the stock Trainer under FSDP2, with its loss divided by the accumulation
steps as it does for models without loss kwargs (BERT's loss accepts `num_items_in_batch` but ignores
it, so the stock step would be 2 x 2 times too large under 2 processes and 2 micro-batches, the known
trap SAMTrainer corrects).
Each rank saves the full final weights, the micro-batches it trained on and samtune's counters.

On a GPU (test_gpu.py): WORKER_DEVICE=cuda, WORKER_PRECISION=bf16|fp32, WORKER_FSDP=0|1 (0: the same run
without FSDP), any number of processes.
"""

import os
import sys
from pathlib import Path

import fsdp_on_cpu
import torch
from accelerate.utils import DistributedType
from tiny import ListDataset, text_rows, tiny_bert
from transformers import Trainer

from samtune import SAMArguments, SAMTrainer

fsdp_on_cpu.force()


class Recording:
    seen: list

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen.append({k: v.detach().clone() for k, v in inputs.items()})
        return super().training_step(model, inputs, num_items_in_batch)


class RecordingSAMTrainer(Recording, SAMTrainer):
    pass


class RecordingTrainer(Recording, Trainer):
    pass


DEVICE = os.environ.get("WORKER_DEVICE", "cpu")
PRECISION = os.environ.get("WORKER_PRECISION", "fp32")
SHARDED = os.environ.get("WORKER_FSDP", "1") == "1"
FSDP = {
    "fsdp": "full_shard",
    "fsdp_config": {
        "version": 2,
        "transformer_layer_cls_to_wrap": ["BertLayer"],
        "state_dict_type": "SHARDED_STATE_DICT",
    },
}


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().clone()


def main(out: Path, scenario: str, resume: bool = False) -> None:
    extra = {
        "asam": dict(rho=0.5, adaptive=True),
        "rho0": dict(rho=0.0),
        "looksam": dict(sam_variant="looksam", looksam_k=3, looksam_alpha=0.7),
        "aesam": dict(sam_variant="aesam", aesam_decay=0.5, aesam_c_start=1.0, aesam_c_end=1.0),  # steps 0, 2 climb
        "head": dict(params="head"),
        "nobias": dict(params="!*.bias"),
        # every_k=2 would climb on steps 0 and 2, which lie outside the window (the 2nd step only), and
        # step 1 inside it is every_k's plain step: no step climbs, rho > 0.
        "plainsteps": dict(sam_variant="every_k", every_k=2, start=2, stop=2),
    }.get(scenario, {})
    args = SAMArguments(
        **{
            "output_dir": str(out / (f"{scenario}-resumed" if resume else scenario)),
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 2,
            "max_steps": 3 if scenario != "looksam" else 4,
            "learning_rate": 0.5,
            "optim": "sgd",
            "lr_scheduler_type": "constant",
            "max_grad_norm": 0.0,
            "train_sampling_strategy": "sequential",
            "save_strategy": "steps",
            "save_steps": 2,
            "report_to": "none",
            "disable_tqdm": True,
            "rho": 0.05,
            "sam_variant": "sam",
            "schedule": "constant",
            "start": 0.0,
            "ddp_backend": "gloo",
            "ddp_timeout": 60,
            **(FSDP if SHARDED else {}),
            "use_cpu": DEVICE == "cpu",
            "bf16": PRECISION == "bf16",
            **extra,
        }
    )
    if scenario == "lora":
        from ddp_worker import lora_bert

        model, rows = lora_bert(), text_rows(32)
    else:
        model, rows = tiny_bert(), text_rows(32)
    cls = RecordingTrainer if scenario == "plain" else RecordingSAMTrainer
    trainer = cls(model=model, args=args, train_dataset=ListDataset(rows))
    trainer.seen = []
    if scenario == "plain":
        trainer.model_accepts_loss_kwargs = False
    trainer.train(resume_from_checkpoint=str(out / scenario / "checkpoint-2") if resume else None)
    accelerator = trainer.accelerator
    if SHARDED:
        assert accelerator.distributed_type == DistributedType.FSDP and accelerator.is_fsdp2, (
            accelerator.distributed_type
        )
    assert trainer.args.world_size == int(os.environ["WORLD_SIZE"])
    sharded = type(next(trainer.model.parameters())).__name__
    state = {k: _full(v) for k, v in trainer.model.state_dict().items()}
    rank = trainer.args.process_index
    g_v = getattr(getattr(getattr(trainer, "sam_state", None), "variant", None), "g_v", None)  # LookSAM's
    torch.save(
        {
            "state": state,
            "seen": trainer.seen,
            "param_type": sharded,
            "climb_steps": getattr(trainer, "sam_climb_steps", None),
            "perturbations_skipped": getattr(trainer, "sam_perturbations_skipped", None),
            "log": trainer.state.log_history,
            "looksam_v": None if g_v is None else [_full(v) if v is not None else None for v in g_v],
            "variant_state": trainer.sam_state.variant.state_dict() if hasattr(trainer, "sam_state") else None,
        },
        out / f"{scenario}{'-resumed' if resume else ''}-rank{rank}.pt",
    )


if __name__ == "__main__":
    from accelerate.state import AcceleratorState

    for i, token in enumerate(sys.argv[2].split(",")):  # one start-up (about 12 s) for every scenario
        if i:  # a fresh Accelerate state, as a new process has; the process group stays
            AcceleratorState._reset_state(reset_partial_state=True)
        name, _, then = token.partition(":")
        main(Path(sys.argv[1]), name, resume=then == "resume")

"""Run by test_ddp.py under torchrun (2 CPU processes, gloo): SAMTrainer with GA=2, recording its inputs.

The second argument picks the scenario:
- "sam": exact SAM;
- "looksam": LookSAM k=2, whose SAM steps average the plain gradient over the processes (one extra
  all-reduce);
- "nan-skip" / "nan-stop": rank 1's loss is NaN in the first micro-batch of step 2 (rank 0 sees
  nothing wrong), with on_nonfinite "skip" / "stop";
- "window-lr": SAM from the 2nd optimizer step only, rho following a linearly decaying lr, biases
  left at w;
- "lora": exact SAM on a LoRA model (peft adapters on query/value, the head in full, the base frozen);
- "causal-lm": exact SAM on a GPT-2 language model, rows padded so that micro-batches and ranks hold
  different target counts (the Trainer's num_items_in_batch: the step's targets over both ranks);
- "aesam": AE-SAM (decay 0.5, c from 0.5 to -0.5), decided on the step's gradient reduced over the processes;
- "looksam-overflow-N": LookSAM k=2, and rank 1's N-th ascent norm (1: first micro-batch of step 0,
  2: its last) is infinite, as an fp16 ascent that overflows on one process only.

Each rank saves its final weights, the micro-batches it trained on, what it counted (or the
error it stopped with) and its logs (every step), so the test can compare the ranks with each other and with a
single-process reference. A collective that one rank never joins fails within `ddp_timeout`.
"""

import sys
from pathlib import Path

import torch
from tiny import ListDataset, causal_rows, text_rows, tiny_bert, tiny_gpt2

from samtune import SAMArguments, SAMTrainer
from samtune.trainer import NonFiniteLossError


class RecordingSAMTrainer(SAMTrainer):
    seen: list
    syncs: list  # DDP's require_backward_grad_sync at each forward pass
    overflow_ascent: int | None = None  # on rank 1, the ascent (counting from 1) whose norm is made inf
    ascents = 0

    def compute_loss(self, model, inputs, *args, **kwargs):
        self.syncs.append(model.require_backward_grad_sync)
        return super().compute_loss(model, inputs, *args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen.append({k: v.detach().clone() for k, v in inputs.items()})
        return super().training_step(model, inputs, num_items_in_batch)

    def _record_ascent(self, norm):
        self.ascents += 1
        if self.args.process_index == 1 and self.ascents == self.overflow_ascent:
            norm = norm * float("inf")  # the norm of an fp16 ascent gradient that overflowed
        return super()._record_ascent(norm)


def _nan_on_rank_1(model, forward_call: int) -> None:
    """Rank 1's classifier output is NaN at its `forward_call`-th forward pass (so is the loss)."""
    calls = [0]

    def hook(module, inputs, output):
        calls[0] += 1
        return output * float("nan") if calls[0] == forward_call else output

    model.classifier.register_forward_hook(hook)


def lora_bert() -> torch.nn.Module:
    """tiny_bert with rank-4 LoRA adapters whose B matrices are moved off 0 (so every adapter has a gradient)."""
    from samtune.modeling import apply_lora
    from samtune.tasks.classification import TEXT_CLASSIFICATION as TEXT
    from samtune.recipe import LoraSection

    model = apply_lora(tiny_bert(), LoraSection(r=4, dropout=0.0), TEXT)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    return model


def main(out: Path, scenario: str) -> None:
    extra: dict = {}
    if scenario.startswith("looksam"):
        extra = dict(sam_variant="looksam", looksam_k=2, looksam_alpha=0.7)
    if scenario == "aesam":
        extra = dict(sam_variant="aesam", aesam_decay=0.5, aesam_c_start=0.5, aesam_c_end=-0.5)
    if scenario.startswith("nan-"):
        extra = dict(on_nonfinite=scenario.removeprefix("nan-"))
    if scenario == "window-lr":  # SAM from the 2nd step, rho following a linearly decaying lr, biases at w
        extra = dict(start=2, schedule="lr", lr_scheduler_type="linear", params="!*.bias")
    args = SAMArguments(
        **{
            "output_dir": str(out / "run"),
            "use_cpu": True,
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 2,
            "max_steps": 3,
            "learning_rate": 0.5,
            "optim": "sgd",
            "lr_scheduler_type": "constant",
            "max_grad_norm": 0.0,
            "train_sampling_strategy": "sequential",
            "save_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,
            "rho": 0.05,
            "sam_variant": "sam",
            "schedule": "constant",
            "start": 0.0,
            "ddp_backend": "gloo",
            "logging_steps": 1,
            "ddp_timeout": 60,
            **extra,
        }
    )
    if scenario == "causal-lm":
        model, rows = tiny_gpt2(64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0), causal_rows(24, 64)
    else:
        model, rows = (lora_bert() if scenario == "lora" else tiny_bert()), text_rows(24)
    trainer = RecordingSAMTrainer(model=model, args=args, train_dataset=ListDataset(rows))
    trainer.seen, trainer.syncs = [], []
    rank = trainer.args.process_index
    if scenario.startswith("nan-") and rank == 1:
        _nan_on_rank_1(model, forward_call=5)  # step 1 is forwards 1-4 (ascent, descent, ascent, descent)
    if scenario.startswith("looksam-overflow-"):
        trainer.overflow_ascent = int(scenario.rsplit("-", 1)[1])
    error = None
    try:
        trainer.train()
    except NonFiniteLossError as e:
        error = {"type": type(e).__name__, "step": e.step}
    assert trainer.args.world_size == 2, trainer.args.world_size
    assert trainer.accelerator.distributed_type.value == "MULTI_CPU", trainer.accelerator.distributed_type
    torch.save(
        {
            "state": trainer.model.state_dict(),
            "seen": trainer.seen,
            "syncs": trainer.syncs,
            "error": error,
            "nonfinite_skipped": trainer.sam_nonfinite_skipped,
            "perturbations_skipped": trainer.sam_perturbations_skipped,
            "climb_steps": trainer.sam_climb_steps,
            "logs": trainer.state.log_history,
        },
        out / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "sam")

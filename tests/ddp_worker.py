"""Run by test_ddp.py under torchrun (2 CPU processes, gloo): SAMTrainer with GA=2, recording its inputs.

The second argument picks the step: "sam" (exact) or "looksam" (k=2, whose SAM steps average the
plain gradient over the processes, one extra all-reduce).

Each rank saves its final weights and the micro-batches it trained on, so the test can compare the
ranks with each other and with a single-process reference.
"""

import sys
from pathlib import Path

import torch
from tiny import ListDataset, text_rows, tiny_bert

from samtune import SAMArguments, SAMTrainer


class RecordingSAMTrainer(SAMTrainer):
    seen: list
    syncs: list  # DDP's require_backward_grad_sync at each forward pass

    def compute_loss(self, model, inputs, *args, **kwargs):
        self.syncs.append(model.require_backward_grad_sync)
        return super().compute_loss(model, inputs, *args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen.append({k: v.detach().clone() for k, v in inputs.items()})
        return super().training_step(model, inputs, num_items_in_batch)


def main(out: Path, variant: str) -> None:
    looksam = dict(sam_variant="looksam", looksam_k=2, looksam_alpha=0.7) if variant == "looksam" else {}
    args = SAMArguments(
        output_dir=str(out / "run"),
        use_cpu=True,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=3,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        train_sampling_strategy="sequential",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        rho=0.05,
        ddp_backend="gloo",
        **looksam,
    )
    trainer = RecordingSAMTrainer(model=tiny_bert(), args=args, train_dataset=ListDataset(text_rows(24)))
    trainer.seen, trainer.syncs = [], []
    trainer.train()
    rank = trainer.args.process_index
    assert trainer.args.world_size == 2, trainer.args.world_size
    assert trainer.accelerator.distributed_type.value == "MULTI_CPU", trainer.accelerator.distributed_type
    torch.save({"state": trainer.model.state_dict(), "seen": trainer.seen, "syncs": trainer.syncs}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "sam")

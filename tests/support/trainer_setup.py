"""The SAMTrainer set-up the Trainer tests share: plain SGD the hand-written loops can follow, arguments,
a run, the reference's steps, and two tiny models whose gradient or loss goes non-finite on chosen calls."""

from __future__ import annotations

import torch
from tiny import ListDataset, micro_batches
from torch import nn
from transformers import Trainer, TrainingArguments

from samtune import SAMArguments, SAMTrainer

# Plain SGD at a constant rate, no clipping, no shuffling: the reference loop can follow it exactly.
SGD_PLAIN = dict(
    optim="sgd",
    lr_scheduler_type="constant",
    max_grad_norm=0.0,
    weight_decay=0.0,
    train_sampling_strategy="sequential",
)


# The paper's SAM: a constant radius from the first step (samtune's defaults ramp it with the learning
# rate and start after 10% of the steps). The hand-written loops below are the paper's.
PAPER_SAM = dict(sam_variant="sam", schedule="constant", start=0.0)  # the paper's exact step, from step one


def _args(tmp_path, cls=SAMArguments, **kw) -> TrainingArguments:
    base = dict(
        **(PAPER_SAM if issubclass(cls, SAMArguments) else {}),
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=1,
        seed=0,
    )
    return cls(**{**base, **kw})


def _train(model, rows, args, trainer_cls=SAMTrainer) -> Trainer:
    trainer = trainer_cls(model=model, args=args, train_dataset=ListDataset(rows))
    trainer.train()
    return trainer


def _steps(rows, batch_size, accumulation, n_steps):
    batches = micro_batches(rows, batch_size)
    return [batches[i * accumulation : (i + 1) * accumulation] for i in range(n_steps)]


def _poison_rows():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(4, 4, generator=g), torch.tensor([0, 1, 2, 1])
    return [{"x": x[i], "labels": y[i]} for i in range(4)], x, y


class _NaNLoss(nn.Module):
    """A linear classifier whose loss is NaN on chosen forward calls (a diverged batch)."""

    def __init__(self, nan_calls: set[int]):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)
        self.nan_calls, self.calls = nan_calls, 0

    def forward(self, x, labels):
        from transformers.modeling_outputs import SequenceClassifierOutput

        self.calls += 1
        logits = self.linear(x)
        loss = nn.functional.cross_entropy(logits, labels)
        if self.calls in self.nan_calls:
            loss = loss * float("nan")
        return SequenceClassifierOutput(loss=loss, logits=logits)

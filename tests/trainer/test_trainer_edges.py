"""The SAM step at its edges: aliased gradients, errors mid-climb, fp16 skips, resume and best-model reloads.

Each test names the scenario it covers; each failed before the fix it guards (see the closing notes
of issue 11) or shows that the scenario is sound.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from tiny import (
    ListDataset,
    collate,
    image_rows,
    max_abs_diff,
    reference_ascent_fraction_sgd,
    reference_sam_sgd,
    text_rows,
    tiny_bert,
    tiny_vit,
)
from torch import nn
from trainer_setup import SGD_PLAIN, _args, _NaNLoss, _poison_rows, _steps, _train
from transformers import ViTForImageClassification
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.trainer_callback import TrainerState

from samtune import SAMTrainer
from samtune.optim import functional
from samtune.sam_state import variant_file

# ---- aliased ascent gradients ---------------------------------------------------------------


def test_vit_gradients_alias_at_micro_batch_one():
    """The premise: at batch 1, autograd returns the cls_token gradient as a view of another gradient."""
    model = tiny_vit()
    batch = collate(image_rows(1))
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(model(**batch).loss, params)
    storages = [g.untyped_storage().data_ptr() for g in grads]
    assert len(set(storages)) < len(storages)  # some gradients share memory


def _double(rows: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.double() if v.is_floating_point() else v for k, v in r.items()} for r in rows]


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_vit_at_micro_batch_one_matches_hand_written_sam(tmp_path, adaptive):
    """Micro-batches of one image with accumulation: e(w) is that of a loop that never writes into autograd's
    outputs."""
    # float64: the bug moves the weights by 0.1-0.6; float32 rounding alone, amplified by three
    # steps at lr 0.5, reaches 1e-6 here, float64 rounding stays near 1e-15.
    rows, rho, lr = _double(image_rows(6)), (1.0 if adaptive else 0.1), 0.5
    model = tiny_vit().double()
    reference = reference_sam_sgd(model, _steps(rows, 1, 2, 3), rho, lr, adaptive=adaptive)
    args = _args(
        tmp_path,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=2,
        max_steps=3,
        learning_rate=lr,
        rho=rho,
        adaptive=adaptive,
        **SGD_PLAIN,
    )
    trainer = _train(copy.deepcopy(model), rows, args)
    assert max_abs_diff(trainer.model, reference) <= 1e-6


def test_vit_ascent_on_one_row_matches_hand_written_ascent_fraction(tmp_path):
    """ascent_fraction on micro-batches of 4: the ascent sees one image, whose gradients alias."""
    rows, rho, lr = _double(image_rows(8)), 0.1, 0.5
    model = tiny_vit().double()
    reference = reference_ascent_fraction_sgd(model, _steps(rows, 4, 1, 2), rho, lr, rows=1)
    args = _args(
        tmp_path,
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=lr,
        rho=rho,
        sam_variant="ascent_fraction",
        ascent_fraction=0.25,
        **SGD_PLAIN,
    )
    trainer = _train(copy.deepcopy(model), rows, args)
    assert max_abs_diff(trainer.model, reference) <= 1e-6


class _SharedSum(nn.Module):
    """Two same-shape weights added directly: autograd returns one gradient tensor for both."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Parameter(torch.randn(4, 3))
        self.b = nn.Parameter(torch.randn(4, 3))
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x, labels):
        logits = x @ (self.a + self.b) + self.bias
        return SequenceClassifierOutput(loss=nn.functional.cross_entropy(logits, labels), logits=logits)


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_one_gradient_tensor_for_two_parameters_is_scaled_once(tmp_path, adaptive):
    rows, _, _ = _poison_rows()
    rows = [{"x": r["x"], "labels": r["labels"]} for r in rows]
    model = _SharedSum()
    grads = torch.autograd.grad(model(torch.ones(2, 4), torch.tensor([0, 1])).loss, [model.a, model.b])
    assert grads[0].untyped_storage().data_ptr() == grads[1].untyped_storage().data_ptr()  # the premise
    rho, lr = (0.5 if adaptive else 0.05), 0.5
    reference = reference_sam_sgd(model, _steps(rows, 4, 1, 1), rho, lr, adaptive=adaptive)
    args = _args(
        tmp_path, per_device_train_batch_size=4, max_steps=1, learning_rate=lr, rho=rho, adaptive=adaptive, **SGD_PLAIN
    )
    trainer = _train(copy.deepcopy(model), rows, args)
    assert max_abs_diff(trainer.model, reference) <= 1e-6


# ---- an error in the middle of a climb ------------------------------------------------------


def _failing_climb(monkeypatch, fail_on_call: int, message: str) -> list[int]:
    """Make functional.climb_ raise on its `fail_on_call`-th call (counting from 1), as an allocation would."""
    calls = [0]
    real = functional.climb_

    def climb(params, e):
        calls[0] += 1
        if calls[0] == fail_on_call:
            raise RuntimeError(message)
        real(params, e)

    monkeypatch.setattr(functional, "climb_", climb)
    return calls


def test_an_error_in_the_middle_of_the_climb_leaves_w_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(functional, "CHUNK_FLOOR", 1)  # many chunks, even for a tiny model
    model = tiny_bert()
    before = copy.deepcopy(model.state_dict())
    calls = _failing_climb(monkeypatch, 3, "climb failed")
    args = _args(tmp_path, per_device_train_batch_size=4, max_steps=1, rho=0.5, **SGD_PLAIN)
    trainer = SAMTrainer(model=model, args=args, train_dataset=ListDataset(text_rows(4)))
    with pytest.raises(RuntimeError, match="climb failed"):
        trainer.train()
    assert calls[0] == 3  # chunks 1 and 2 had climbed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_auto_find_batch_size_retries_from_w_after_an_out_of_memory_climb(tmp_path, monkeypatch):
    """An OOM while climbing at batch 8: the Trainer retries at batch 7, from exactly the weights it started with."""
    monkeypatch.setattr(functional, "CHUNK_FLOOR", 1)
    rows, lr, rho = text_rows(28), 0.5, 0.5
    expected = _train(
        tiny_bert(),
        rows,
        _args(tmp_path / "direct", per_device_train_batch_size=7, max_steps=2, learning_rate=lr, rho=rho, **SGD_PLAIN),
    )
    calls = _failing_climb(monkeypatch, 3, "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
    args = _args(
        tmp_path / "auto",
        per_device_train_batch_size=8,
        auto_find_batch_size=True,
        max_steps=2,
        learning_rate=lr,
        rho=rho,
        **SGD_PLAIN,
    )
    trainer = _train(tiny_bert(), rows, args)
    assert calls[0] > 3 and trainer._train_batch_size == 7  # it failed once, then trained at 7
    assert max_abs_diff(trainer.model, expected.model) <= 1e-6
    assert trainer.sam_climb_steps == 2


# ---- fp16: a skipped step goes through the GradScaler ----------------------------------------


def _as_fp16_on_a_gpu(trainer: SAMTrainer, init_scale: float = 2.0**8) -> torch.amp.GradScaler:
    """Give a CPU run the GradScaler that fp16 on a GPU has, and accelerate's fp16 unscale in clipping."""
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    accelerator = trainer.accelerator
    accelerator.scaler = scaler

    def unscale_gradients(optimizer=None):  # accelerate's own, for native_amp and fp16
        for opt in accelerator._optimizers if optimizer is None else [optimizer]:
            while hasattr(opt, "optimizer"):
                opt = opt.optimizer
            scaler.unscale_(opt)

    accelerator.unscale_gradients = unscale_gradients
    return scaler


@pytest.mark.parametrize("max_grad_norm", [0.0, 1.0], ids=["grad-norm-log", "clipping"])
def test_fp16_skip_of_a_nonfinite_step_backs_off_the_scale_and_training_goes_on(tmp_path, max_grad_norm):
    rows, _, _ = _poison_rows()
    model = _NaNLoss(nan_calls={3})  # step 2's ascent (calls 1-2 are step 1)
    args = _args(
        tmp_path,
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=0.5,
        rho=0.05,
        on_nonfinite="skip",
        **{**SGD_PLAIN, "max_grad_norm": max_grad_norm},
    )
    trainer = SAMTrainer(model=model, args=args, train_dataset=ListDataset(rows * 3))
    scaler = _as_fp16_on_a_gpu(trainer)
    trainer.train()  # before the fix: "unscale_() has already been called on this optimizer" at step 3
    assert trainer.sam_nonfinite_skipped == 1
    assert scaler.get_scale() == 2.0**7  # backed off once, as for the scaler's own overflow
    assert trainer.state.global_step == 3
    # Steps 1 and 3 are SAM steps on the same batch; step 2 did nothing.
    reference = reference_sam_sgd(_NaNLoss(set()), [[collate(rows)]] * 2, rho=0.05, lr=0.5)
    if max_grad_norm == 0.0:
        assert max_abs_diff(model, reference) <= 1e-6
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---- resume and checkpoints ---------------------------------------------------------------


def test_resume_from_checkpoint_true_restores_samtunes_state(tmp_path):
    """`train(resume_from_checkpoint=True)`, the Trainer's own API: counters, g_v and weights as uninterrupted."""
    rows, model = text_rows(8 * 5), tiny_bert()
    common = dict(
        per_device_train_batch_size=8,
        learning_rate=0.5,
        rho=0.05,
        sam_variant="looksam",
        looksam_k=3,
        save_strategy="steps",
        save_steps=2,
        **SGD_PLAIN,
    )
    whole = _train(copy.deepcopy(model), rows, _args(tmp_path / "whole", max_steps=5, **common))
    partial = _args(tmp_path / "cut", max_steps=2, **common)
    SAMTrainer(model=copy.deepcopy(model), args=partial, train_dataset=ListDataset(rows)).train()
    resumed = SAMTrainer(
        model=copy.deepcopy(model), args=_args(tmp_path / "cut", max_steps=5, **common), train_dataset=ListDataset(rows)
    )
    resumed.train(resume_from_checkpoint=True)
    assert resumed.sam_climb_steps == whole.sam_climb_steps == 2  # LookSAM k=3: steps 0 and 3
    assert max_abs_diff(resumed.model, whole.model) <= 1e-6


def _as_samtune_0_1(checkpoint) -> None:
    """Rewrite a checkpoint as samtune 0.1 wrote it: SAM's record in samtune_state.json (not in trainer_state.json),
    LookSAM's file holding the list g_v alone."""
    trainer_state = json.loads((checkpoint / "trainer_state.json").read_text())
    record = trainer_state["stateful_callbacks"].pop("SAMState")["attributes"]
    (checkpoint / "trainer_state.json").write_text(json.dumps(trainer_state))
    (checkpoint / "samtune_state.json").write_text(json.dumps(record))
    g_v = torch.load(checkpoint / "samtune_looksam.pt", weights_only=True)["g_v"]
    torch.save(g_v, checkpoint / "samtune_looksam.pt")


@pytest.mark.parametrize("how", ["samtune-0.1-checkpoint", "restore-callback-states"])
def test_resume_is_exact_from_the_old_format_and_with_the_trainers_callback_restore(tmp_path, how):
    """A checkpoint of samtune 0.1 (its own samtune_state.json) resumes as exactly as a current one; and with
    `restore_callback_states_from_checkpoint`, which makes the Trainer re-create stateful callbacks, SAM's state
    still resumes and is saved again (checkpoint-4's record counts the climb at step 3)."""
    rows, model = text_rows(8 * 5), tiny_bert()
    common = dict(
        per_device_train_batch_size=8,
        learning_rate=0.5,
        rho=0.05,
        sam_variant="looksam",
        looksam_k=3,
        save_strategy="steps",
        save_steps=2,
        **SGD_PLAIN,
        restore_callback_states_from_checkpoint=how.startswith("restore"),
    )
    whole = _train(copy.deepcopy(model), rows, _args(tmp_path / "whole", max_steps=5, **common))
    SAMTrainer(
        model=copy.deepcopy(model), args=_args(tmp_path / "cut", max_steps=2, **common), train_dataset=ListDataset(rows)
    ).train()
    if how == "samtune-0.1-checkpoint":
        _as_samtune_0_1(tmp_path / "cut" / "out" / "checkpoint-2")
    resumed = SAMTrainer(
        model=copy.deepcopy(model), args=_args(tmp_path / "cut", max_steps=5, **common), train_dataset=ListDataset(rows)
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "out" / "checkpoint-2"))
    assert resumed.sam_climb_steps == whole.sam_climb_steps == 2  # steps 0 and 3: step 2 reused the saved g_v
    assert max_abs_diff(resumed.model, whole.model) <= 1e-6
    later = json.loads((tmp_path / "cut" / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    assert later["stateful_callbacks"]["SAMState"]["attributes"]["climb_steps"] == 2


def test_samtunes_state_is_written_before_the_checkpoint_is_marked_complete(tmp_path, monkeypatch):
    """trainer_state.json marks a complete checkpoint: SAM's counters are in it (the write that marks it), and the
    variant's file (LookSAM's g_v) must already be there when it is written."""
    at_mark: list[tuple[bool, int]] = []  # (g_v's file there, the climb steps in the record written)
    real = TrainerState.save_to_json

    def save_to_json(self, json_path):
        folder = os.path.dirname(json_path)
        if os.path.basename(folder).startswith("checkpoint-"):
            record = self.stateful_callbacks["SAMState"]["attributes"]
            at_mark.append((os.path.isfile(os.path.join(folder, variant_file("looksam"))), record["climb_steps"]))
        return real(self, json_path)

    monkeypatch.setattr(TrainerState, "save_to_json", save_to_json)
    args = _args(
        tmp_path,
        per_device_train_batch_size=4,
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        sam_variant="looksam",
        looksam_k=1,
        **SGD_PLAIN,
    )
    trainer = _train(tiny_bert(), text_rows(8), args)
    assert at_mark == [(True, 1), (True, 2)]
    saved = json.loads((tmp_path / "out" / "checkpoint-2" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["SAMState"]["attributes"]["climb_steps"] == trainer.sam_climb_steps == 2


def test_best_model_at_end_is_the_best_checkpoint_exactly_for_a_vit(tmp_path):
    """load_best_model_at_end on a ViT, whose checkpoints carry renamed keys in transformers 5.x."""
    scores = iter([0.0, 1.0, 0.0, 0.0])  # the best evaluation is the second: checkpoint-2 of 4

    def compute_metrics(_):
        return {"score": next(scores)}

    rows = image_rows(8)
    args = _args(
        tmp_path,
        per_device_train_batch_size=2,
        max_steps=4,
        learning_rate=0.5,
        rho=0.05,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="score",
        greater_is_better=True,
        **SGD_PLAIN,
    )
    trainer = SAMTrainer(
        model=tiny_vit(),
        args=args,
        train_dataset=ListDataset(rows),
        eval_dataset=ListDataset(rows[:2]),
        compute_metrics=compute_metrics,
    )
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")
    best = ViTForImageClassification.from_pretrained(tmp_path / "out" / "checkpoint-2").state_dict()
    last = ViTForImageClassification.from_pretrained(tmp_path / "out" / "checkpoint-4").state_dict()
    now = trainer.model.state_dict()
    assert all(torch.equal(now[k], best[k]) for k in best)  # a copy of the saved weights: exact
    assert any(not torch.equal(best[k], last[k]) for k in best)  # and the last step's weights differ

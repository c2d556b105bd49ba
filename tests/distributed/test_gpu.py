"""What only a CUDA GPU shows: the fp16 GradScaler path, bf16 autocast and the variants on the device.

These run where a GPU is present (`pytest tests/distributed/test_gpu.py` on a GPU machine) and are skipped on
CPU-only machines such as CI; the CPU suite covers the same logic with a simulated GradScaler.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import (
    ListDataset,
    max_abs_diff,
    reference_ascent_fraction_sgd,
    reference_looksam_sgd,
    reference_sam_sgd,
    text_rows,
    tiny_bert,
)
from trainer_setup import SGD_PLAIN, _args, _steps

from samtune import SAMTrainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

RHO, LR = 0.05, 0.5


def _gpu_args(tmp_path, **kw):
    return _args(
        tmp_path, **{"use_cpu": False, "per_device_train_batch_size": 8, "learning_rate": LR, **SGD_PLAIN, **kw}
    )


def _train(model, rows, args) -> SAMTrainer:
    trainer = SAMTrainer(model=model, args=args, train_dataset=ListDataset(rows))
    trainer.train()
    return trainer


def _cpu(model):
    return copy.deepcopy(model).to("cpu")


def test_fp16_sam_uses_the_grad_scaler_and_follows_fp32_sam(tmp_path):
    rows, model = text_rows(8 * 4), tiny_bert()
    fp16 = _train(copy.deepcopy(model), rows, _gpu_args(tmp_path / "fp16", fp16=True, rho=RHO, max_steps=4))
    assert fp16.accelerator.scaler is not None
    assert fp16.sam_perturbations_skipped == 0 and fp16.sam_climb_steps == 4
    fp32 = _train(copy.deepcopy(model), rows, _gpu_args(tmp_path / "fp32", rho=RHO, max_steps=4))
    plain = _train(copy.deepcopy(model), rows, _gpu_args(tmp_path / "plain", rho=0.0, max_steps=4))
    assert all(torch.isfinite(p).all() for p in fp16.model.parameters())
    # fp16 rounding moves the weights far less than SAM's own effect does.
    assert max_abs_diff(_cpu(fp16.model), _cpu(fp32.model)) < 0.2 * max_abs_diff(_cpu(fp32.model), _cpu(plain.model))


def test_fp16_overflow_skips_the_climb_and_the_step(tmp_path):
    """A loss scale of 2^60 overflows fp16 gradients: no climb, no update, and the scale halves each step."""
    rows, model = text_rows(8 * 3), tiny_bert()
    args = _gpu_args(tmp_path, fp16=True, rho=RHO, max_steps=3, max_grad_norm=1.0)
    trainer = SAMTrainer(model=copy.deepcopy(model), args=args, train_dataset=ListDataset(rows))
    trainer.accelerator.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**60)
    trainer.train()
    assert trainer.sam_perturbations_skipped == 3
    assert trainer.accelerator.scaler.get_scale() == 2.0**57
    assert max_abs_diff(_cpu(trainer.model), model) == 0.0


def test_bf16_zero_learning_rate_leaves_weights_exactly(tmp_path):
    rows, model = text_rows(8 * 3), tiny_bert()
    trainer = _train(
        copy.deepcopy(model), rows, _gpu_args(tmp_path, bf16=True, rho=RHO, max_steps=3, learning_rate=0.0)
    )
    assert trainer.sam_climb_steps == 3
    assert max_abs_diff(_cpu(trainer.model), model) == 0.0


@pytest.mark.parametrize("variant", ["sam", "looksam", "ascent_fraction"])
def test_fp32_on_the_gpu_matches_the_hand_written_reference(tmp_path, variant):
    rows, model, n_steps = text_rows(8 * 4), tiny_bert(), 4
    steps = [[{k: v.cuda() for k, v in b.items()} for b in s] for s in _steps(rows, 4, 2, n_steps)]
    on_gpu = copy.deepcopy(model).cuda()
    settings = {
        "sam": ({}, lambda: reference_sam_sgd(on_gpu, steps, RHO, LR)),
        "looksam": (
            dict(sam_variant="looksam", looksam_k=2, looksam_alpha=0.7),
            lambda: reference_looksam_sgd(on_gpu, steps, RHO, LR, 2, 0.7),
        ),
        "ascent_fraction": (
            dict(sam_variant="ascent_fraction", ascent_fraction=0.5),
            lambda: reference_ascent_fraction_sgd(on_gpu, steps, RHO, LR, 2),
        ),
    }
    kw, reference = settings[variant]
    args = _gpu_args(
        tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, rho=RHO, max_steps=n_steps, **kw
    )
    trainer = _train(copy.deepcopy(model), rows, args)
    assert max_abs_diff(_cpu(trainer.model), _cpu(reference())) <= 1e-5


def test_fp16_skip_of_a_nonfinite_loss_goes_through_the_scaler_and_training_goes_on(tmp_path):
    """on_nonfinite=skip under real fp16: the skipped step backs the scale off once, later steps train."""
    rows, model = text_rows(8 * 4), tiny_bert()
    calls = [0]

    def nan_on_third_forward(module, inputs, output):  # step 2's ascent (step 1 is forwards 1-2)
        calls[0] += 1
        return output * float("nan") if calls[0] == 3 else output

    trained = copy.deepcopy(model)
    trained.classifier.register_forward_hook(nan_on_third_forward)
    args = _gpu_args(tmp_path, fp16=True, rho=RHO, max_steps=4, max_grad_norm=1.0, on_nonfinite="skip")
    trainer = SAMTrainer(model=trained, args=args, train_dataset=ListDataset(rows))
    scale = 2.0**10
    trainer.accelerator.scaler = torch.amp.GradScaler("cuda", init_scale=scale, growth_interval=1000)
    trainer.train()  # before the fix: "unscale_() has already been called on this optimizer" at step 3
    assert trainer.sam_nonfinite_skipped == 1 and trainer.state.global_step == 4
    assert trainer.accelerator.scaler.get_scale() == scale / 2
    assert max_abs_diff(_cpu(trainer.model), model) > 0 and all(
        torch.isfinite(p).all() for p in trainer.model.parameters()
    )


def test_vit_at_micro_batch_one_on_the_gpu_matches_the_reference(tmp_path):
    """Aliased ascent gradients (ViT, one image per micro-batch) on CUDA kernels: e(w) is scaled once."""
    from tiny import image_rows, tiny_vit

    rows, model = image_rows(6), tiny_vit()
    kw = dict(per_device_train_batch_size=1, gradient_accumulation_steps=2, rho=0.1, max_steps=3)
    fp32 = _train(copy.deepcopy(model), rows, _gpu_args(tmp_path, **kw))
    reference = reference_sam_sgd(
        copy.deepcopy(model).cuda(),
        [[{k: v.cuda() for k, v in b.items()} for b in s] for s in _steps(rows, 1, 2, 3)],
        0.1,
        LR,
    )
    assert max_abs_diff(_cpu(fp32.model), _cpu(reference)) <= 1e-5


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_samtrainer_under_accelerate_fsdp2_on_one_gpu_equals_the_run_without_fsdp(tmp_path, precision):
    """FSDP2 with world size 1 (one GPU): the sharding is trivial, so SAMTrainer's FSDP2 path (the ascent
    through FSDP's reduce-scatter, the climb on DTensors' local shards, sharded checkpoints) must train the
    weights of the run without FSDP. fp32: 1e-5 (the same maths; cuBLAS may pick other kernels for the
    all-gathered weights). bf16: FSDP2 computes with bf16 copies of the weights (MixedPrecisionPolicy) where
    the plain run autocasts, so the two round differently: within a tenth of SAM's own effect."""
    from fsdp_runs import fsdp_against_no_fsdp_on_one_process

    diff, effect = fsdp_against_no_fsdp_on_one_process(tmp_path, "cuda", precision)
    assert effect > 1e-4
    assert diff <= (1e-5 if precision == "fp32" else 0.1 * effect), (diff, effect)

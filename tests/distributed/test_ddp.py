"""DDP: a 2-process CPU run (gloo) of SAMTrainer with accumulation against a single-process reference."""

from __future__ import annotations

import pytest
import torch
from launch import torchrun
from tiny import (
    reference_aesam_sgd,
    reference_looksam_sgd,
    reference_sam_sgd,
    reference_sam_sgd_per_step,
    reference_scheduled_sam_sgd,
    reference_sharpness,
    reference_token_level_sam_sgd,
    tiny_bert,
    tiny_gpt2,
)


def _run_workers(tmp_path, variant: str) -> list[dict]:
    torchrun("ddp_worker.py", str(tmp_path), variant)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_two_process_ddp_with_accumulation_matches_reference(tmp_path):
    ranks = _run_workers(tmp_path, "sam")

    # Both ranks hold the same weights after training.
    s0, s1 = ranks[0]["state"], ranks[1]["state"]
    assert all(torch.equal(s0[k], s1[k]) for k in s0)

    # Gradients are all-reduced only in the descent of the last micro-batch of each step: the
    # ascent passes (forward and backward) ran under no_sync.
    #            ascent 1, descent 1, ascent 2, descent 2
    per_step = [False, False, False, True]
    assert ranks[0]["syncs"] == ranks[1]["syncs"] == per_step * 3

    # The ranks saw different data: each ascent was its own.
    seen0, seen1 = ranks[0]["seen"], ranks[1]["seen"]
    assert len(seen0) == len(seen1) == 3 * 2
    assert not torch.equal(seen0[0]["input_ids"], seen1[0]["input_ids"])

    # Reference: per optimizer step, the mean over ranks and micro-batches of each micro-batch's
    # own SAM gradient (ascent per micro-batch and per device, descent over the effective batch).
    steps = [seen0[2 * i : 2 * i + 2] + seen1[2 * i : 2 * i + 2] for i in range(3)]
    reference = reference_sam_sgd(tiny_bert(), steps, rho=0.05, lr=0.5).state_dict()
    worst = max((s0[k] - reference[k]).abs().max().item() for k in s0 if s0[k].is_floating_point())
    assert worst <= 1e-6

    # Had the ascent been all-reduced (or taken over the whole effective batch), the weights would differ.
    merged = [[{k: torch.cat([b[k] for b in step]) for k in step[0]}] for step in steps]
    wrong = reference_sam_sgd(tiny_bert(), merged, rho=0.05, lr=0.5).state_dict()
    assert max((s0[k] - wrong[k]).abs().max().item() for k in s0 if s0[k].is_floating_point()) > 1e-5


def test_logged_sharpness_is_the_mean_over_the_processes(tmp_path):
    """sam_sharpness, like the loss, is averaged over the processes: at every step each rank logs the mean of the
    two ranks' L(w + e(w)) - L(w), each computed here by hand from that rank's own micro-batches at the step's w."""
    ranks = _run_workers(tmp_path, "sam")
    logged = [[h["sam_sharpness"] for h in r["logs"] if "sam_sharpness" in h] for r in ranks]
    steps = _steps_seen(ranks, [0, 1, 2])
    expected, per_rank = [], []
    for t, step in enumerate(steps):
        w = reference_sam_sgd(tiny_bert(), steps[:t], rho=0.05, lr=0.5)  # the weights the step starts from
        own = [reference_sharpness(w, step[2 * r : 2 * r + 2], 0.05) for r in range(2)]  # each rank's 2 micro-batches
        per_rank.append(own)
        expected.append(sum(own) / 2)
    # 1e-6: the logged value is float32 arithmetic on the same losses (rounding near 1e-7); the ranks' own values
    # differ from their mean by far more (checked below), so a rank's own value cannot pass.
    assert logged[0] == logged[1] == [pytest.approx(e, abs=1e-6) for e in expected]
    assert all(abs(own[0] - own[1]) / 2 > 1e-4 for own in per_rank)


def test_two_process_looksam_matches_reference(tmp_path):
    """LookSAM under DDP: g_v comes from the plain gradient averaged over processes, so ranks stay equal."""
    ranks = _run_workers(tmp_path, "looksam")
    s0, s1 = ranks[0]["state"], ranks[1]["state"]
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    seen0, seen1 = ranks[0]["seen"], ranks[1]["seen"]
    steps = [seen0[2 * i : 2 * i + 2] + seen1[2 * i : 2 * i + 2] for i in range(3)]
    reference = reference_looksam_sgd(tiny_bert(), steps, rho=0.05, lr=0.5, k=2, alpha=0.7).state_dict()
    worst = max((s0[k] - reference[k]).abs().max().item() for k in s0 if s0[k].is_floating_point())
    assert worst <= 1e-6
    # Step 1 reuses g_v: only the ascent of the SAM steps 0 and 2 runs, under no_sync.
    #                 step 0: ascent, descent (x2)      step 1: plain (x2)   step 2: as step 0
    assert ranks[0]["syncs"] == [False, False, False, True] + [False, True] + [False, False, False, True]


def test_two_process_aesam_decides_alike_and_matches_reference(tmp_path):
    """AE-SAM under DDP: both ranks decide on the step's gradient averaged over them, climb from it and stay equal."""
    ranks = _run_workers(tmp_path, "aesam")
    assert _weights_equal(ranks)
    steps = _steps_seen(ranks, [0, 1, 2])
    reference, climbed = reference_aesam_sgd(tiny_bert(), steps, rho=0.05, lr=0.5, decay=0.5, c_start=0.5, c_end=-0.5)
    assert 0 < sum(climbed) < 3, climbed  # both kinds of step happen
    assert _worst(ranks[0]["state"], reference.state_dict()) <= 1e-6
    assert ranks[0]["climb_steps"] == ranks[1]["climb_steps"] == sum(climbed)
    # Every step: the plain pass (all-reduced on its last micro-batch); a climbing step: the descent again.
    plain, descent = [False, True], [False, True]
    expected = [s for c in climbed for s in plain + (descent if c else [])]
    assert ranks[0]["syncs"] == ranks[1]["syncs"] == expected
    # Had those steps climbed per micro-batch and rank (exact SAM's ascent), the weights would differ.
    per_micro_batch = reference_scheduled_sam_sgd(tiny_bert(), steps, 0.05, 0.5, climbed).state_dict()
    assert _worst(ranks[0]["state"], per_micro_batch) > 1e-5


def _weights_equal(ranks: list[dict]) -> bool:
    s0, s1 = ranks[0]["state"], ranks[1]["state"]
    return all(torch.equal(s0[k], s1[k]) for k in s0)


def _worst(state: dict, reference: dict) -> float:
    return max((state[k] - reference[k]).abs().max().item() for k in state if state[k].is_floating_point())


def _steps_seen(ranks: list[dict], steps: list[int]) -> list[list[dict]]:
    """Each optimizer step's micro-batches, both ranks' (2 per rank and step)."""
    seen0, seen1 = ranks[0]["seen"], ranks[1]["seen"]
    return [seen0[2 * i : 2 * i + 2] + seen1[2 * i : 2 * i + 2] for i in steps]


def test_a_nan_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    """on_nonfinite=skip: rank 1 alone sees a NaN loss in step 2; both ranks skip it and stay bit-identical."""
    ranks = _run_workers(tmp_path, "nan-skip")
    assert ranks[0]["nonfinite_skipped"] == ranks[1]["nonfinite_skipped"] == 1
    assert _weights_equal(ranks)
    # Expected: SAM steps 1 and 3 only (SGD without momentum at a constant rate: a skipped step is no step).
    reference = reference_sam_sgd(tiny_bert(), _steps_seen(ranks, [0, 2]), rho=0.05, lr=0.5).state_dict()
    assert _worst(ranks[0]["state"], reference) <= 1e-6


def test_a_nan_on_one_rank_stops_every_rank(tmp_path):
    """on_nonfinite=stop: both ranks raise NonFiniteLossError at step 2 (none waits for the other), no update."""
    ranks = _run_workers(tmp_path, "nan-stop")
    assert ranks[0]["error"] == ranks[1]["error"] == {"type": "NonFiniteLossError", "step": 2}
    assert _weights_equal(ranks)
    reference = reference_sam_sgd(tiny_bert(), _steps_seen(ranks, [0]), rho=0.05, lr=0.5).state_dict()
    assert _worst(ranks[0]["state"], reference) <= 1e-6


@pytest.mark.parametrize("micro_batch", [1, 2], ids=["first-micro-batch", "last-micro-batch"])
def test_looksam_with_an_ascent_overflow_on_one_rank_takes_the_same_path_on_both(tmp_path, micro_batch):
    """An fp16 ascent overflows on rank 1 only, in LookSAM's SAM step: no deadlock, no g_v on either rank."""
    ranks = _run_workers(tmp_path, f"looksam-overflow-{micro_batch}")
    assert [r["perturbations_skipped"] for r in ranks] == [0, 1]
    assert _weights_equal(ranks)
    # Step 0 did not climb everywhere, so no g_v is kept: step 1, which would have reused it, is a SAM
    # step on both ranks (as is step 2, LookSAM's next refresh with k=2).
    sam_step = [False, False, False, True]
    assert ranks[0]["syncs"] == ranks[1]["syncs"] == sam_step * 3
    assert ranks[0]["climb_steps"] == ranks[1]["climb_steps"] == 3


def test_window_and_lr_schedule_under_ddp_match_the_reference(tmp_path):
    """SAM from the 2nd step, rho_t = rho * lr_t / lr under a linear decay, biases at w: both ranks equal the
    reference."""
    ranks = _run_workers(tmp_path, "window-lr")
    assert _weights_equal(ranks)
    lrs = [0.5 * (3 - t) / 3 for t in range(3)]  # transformers' linear schedule without warmup, 3 steps
    rhos = [0.0] + [0.05 * lr / 0.5 for lr in lrs[1:]]
    model = tiny_bert()
    climbing = {n for n, _ in model.named_parameters() if not n.endswith(".bias")}
    steps = _steps_seen(ranks, [0, 1, 2])
    reference = reference_sam_sgd_per_step(model, steps, rhos, lrs, climbing=climbing).state_dict()
    assert _worst(ranks[0]["state"], reference) <= 1e-6
    assert ranks[0]["climb_steps"] == ranks[1]["climb_steps"] == 2
    plain, sam = [False, True], [False, False, False, True]
    assert ranks[0]["syncs"] == plain + sam * 2  # step 1 plain (2 micro-batches), steps 2-3 SAM


def test_two_process_ddp_with_lora_matches_the_reference_and_keeps_the_base(tmp_path):
    """DDP over a peft model: only adapters and head are in DDP's buckets; the SAM step is the reference's."""
    from ddp_worker import lora_bert

    ranks = _run_workers(tmp_path, "lora")
    s0, s1 = ranks[0]["state"], ranks[1]["state"]
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    seen0, seen1 = ranks[0]["seen"], ranks[1]["seen"]
    steps = [seen0[2 * i : 2 * i + 2] + seen1[2 * i : 2 * i + 2] for i in range(3)]
    start = lora_bert()
    reference = reference_sam_sgd(start, steps, rho=0.05, lr=0.5).state_dict()
    assert max((s0[k] - reference[k]).abs().max().item() for k in s0 if s0[k].is_floating_point()) <= 1e-6
    frozen = {n for n, p in start.named_parameters() if not p.requires_grad}
    initial = start.state_dict()
    assert frozen and all(torch.equal(s0[n], initial[n]) for n in frozen)  # the base, bit for bit
    moved = [n for n, p in start.named_parameters() if p.requires_grad]
    assert all(not torch.equal(s0[n], initial[n]) for n in moved if ".lora_A." in n or ".lora_B." in n)


def test_two_process_ddp_on_a_causal_lm_normalises_by_the_targets_of_both_ranks(tmp_path):
    """A causal LM's loss is its targets' summed NLL over the step's target count on every rank (transformers'
    average_tokens_across_devices): the update is the mean over all the step's targets, each micro-batch climbing
    on its own gradient."""
    ranks = _run_workers(tmp_path, "causal-lm")
    assert _weights_equal(ranks)
    steps = _steps_seen(ranks, [0, 1, 2])
    counts = [[int((b["labels"][:, 1:] != -100).sum()) for b in step] for step in steps]
    assert any(len(set(c)) > 1 for c in counts)  # micro-batches (and ranks) with different target counts
    model = tiny_gpt2(64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    reference = reference_token_level_sam_sgd(model, steps, rho=0.05, lr=0.5).state_dict()
    assert _worst(ranks[0]["state"], reference) <= 1e-6

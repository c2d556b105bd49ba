"""DDP: a 2-process CPU run (gloo) of SAMTrainer with accumulation against a single-process reference."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from tiny import reference_looksam_sgd, reference_sam_sgd, tiny_bert

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(tmp_path, variant: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(HERE)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(HERE / "ddp_worker.py"), str(tmp_path), variant,
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
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

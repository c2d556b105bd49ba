"""Reading the FSDP workers' results, and the world-size-1 comparison test_fsdp.py and test_gpu.py share."""

from __future__ import annotations

from pathlib import Path

import torch
from launch import torchrun


def _worst(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point())


def _run(out: Path, name: str, rank: int = 0) -> dict:
    return torch.load(out / f"{name}-rank{rank}.pt", weights_only=False)


def fsdp_against_no_fsdp_on_one_process(tmp_path: Path, device: str, precision: str) -> tuple[float, float]:
    """SAMTrainer under FSDP2 at world size 1 against the same run without FSDP: (the largest weight
    difference, SAM's own effect: the largest difference between the run without FSDP and rho=0)."""
    runs = {}
    for sharded in ("1", "0"):
        out = tmp_path / f"fsdp{sharded}"
        env = {"WORKER_DEVICE": device, "WORKER_PRECISION": precision, "WORKER_FSDP": sharded}
        torchrun("fsdp_trainer_worker.py", str(out), "sam", nproc=1, env=env, timeout=300)
        runs[sharded] = _run(out, "sam")
        if sharded == "1":
            torchrun("fsdp_trainer_worker.py", str(out), "rho0", nproc=1, env=env, timeout=300)
            runs["rho0"] = _run(out, "rho0")
    assert runs["1"]["param_type"] == "DTensor" and runs["0"]["param_type"] == "Parameter"
    assert runs["1"]["climb_steps"] == runs["0"]["climb_steps"] == 3
    fsdp, plain, rho0 = runs["1"]["state"], runs["0"]["state"], runs["rho0"]["state"]
    return _worst(fsdp, plain), _worst(plain, rho0)

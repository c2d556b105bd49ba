"""benchmarks/gpu.sh (the GPU figures of issue 16) runs end to end with --dry-run on a CPU-only machine."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_script_dry_run_measures_every_arm_of_both_models(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (result,) = [json.loads(p.read_text()) for p in tmp_path.glob("gpu-*.json")]
    assert result["dry_run"] and sorted(result["models"]) == ["bert-base", "vit-b16"]
    for model in result["models"].values():
        arms = model["arms"]
        assert set(arms) == {"adamw", "sam", "sam-second-half"}
        assert arms["adamw"]["ratio"] == 1.0 and all(a["step_s"] > 0 and a["peak_bytes"] > 0 for a in arms.values())
        # The late window's step is the mean of the two measured ones (it takes each for half the run).
        assert arms["sam-second-half"]["step_s"] == (arms["adamw"]["step_s"] + arms["sam"]["step_s"]) / 2
    assert "Dry run" in done.stdout and "| sam |" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_script_without_a_gpu_says_so(tmp_path):
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "needs a CUDA GPU" in done.stderr and "--dry-run" in done.stderr

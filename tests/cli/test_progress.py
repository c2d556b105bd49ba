"""Training logs without a terminal (a pipe, CI, nohup): one line per logging step, never wrapped whatever the
width, `key value` pairs or JSON lines; the terminal keeps its progress bar."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from conftest import pythonpath

NUMBER = r"-?[\d.]+(?:e[+-]?\d+)?"
STEP_LINE = re.compile(
    rf"step (\d+)/(\d+)  epoch {NUMBER}  loss {NUMBER}  lr {NUMBER}(  \|g\| {NUMBER})?(  sharpness {NUMBER})?"
)


def _train_through_a_pipe(text_model_dir, text_csv, out, *extra):
    """`samtune train` with its output read from a pipe (not a terminal), in a 40-column environment."""
    env = {**os.environ, "COLUMNS": "40", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath()}
    cmd = [
        sys.executable,
        "-m",
        "samtune",
        "train",
        "--model",
        str(text_model_dir),
        "--dataset",
        str(text_csv),
        "--output-dir",
        str(out),
        "--max-steps",
        "6",
        "training.logging_steps=1",
        "training.batch_size=8",
        "sam.start=0",
        "sam.variant=sam",  # the exact step logs its sharpness (the default's quarter-batch climb cannot)
        *extra,
    ]
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_pipe_gets_one_whole_line_per_logging_step_at_any_width(text_model_dir, text_csv, tmp_path):
    lines = _train_through_a_pipe(text_model_dir, text_csv, tmp_path / "run").splitlines()
    steps = [STEP_LINE.fullmatch(line) for line in lines if line.startswith("step ")]
    assert len(steps) == 6 and all(steps), lines  # every step's line whole, values never split
    assert [int(m.group(1)) for m in steps] == [1, 2, 3, 4, 5, 6]
    assert all(m.group(3) for m in steps)  # SAM's sharpness on every line (sam.start=0: every step climbs)
    # nothing of a step's line went to a line of its own (a wrapped value would start a line with a number)
    assert not [line for line in lines if re.fullmatch(rf"\s*{NUMBER}\s*", line)], lines


def test_json_lines_carry_every_logged_value(text_model_dir, text_csv, tmp_path):
    out = _train_through_a_pipe(text_model_dir, text_csv, tmp_path / "run", "--log-format", "json")
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6] and all(r["max_steps"] == 6 for r in train)
    assert all({"learning_rate", "sam_rho", "sam_sharpness", "sam_climb_steps"} <= r.keys() for r in train)
    assert any("eval_loss" in r for r in records)

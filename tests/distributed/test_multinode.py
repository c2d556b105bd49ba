"""Two "nodes" on one machine: two torchrun launches (node ranks 0 and 1, one process each) over loopback.

These are the multi-node launches the README documents (`torchrun --nnodes 2 --node_rank R ...
-m samtune train ...` and `accelerate launch --num_machines 2 --machine_rank R ...`), with the
real CLI: the run must equal a one-node run of the same world size (`--nproc 2`) to the bit (the
same ops in the same order: one process per rank, gloo's all-reduce), node 0 alone writes the run
directory, and a Ctrl-C on one node stops both at the same step with a checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import text_examples, write_csv
from safetensors.torch import load_file
from launch import _free_port


def _node(rank: int, port: int, train: list[str], cwd: Path, log: Path, launcher: str = "torchrun") -> subprocess.Popen:
    """Machine `rank`'s launch command, as the README gives it (one process per machine)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if launcher == "torchrun":
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--node_rank",
            str(rank),
            "--nproc_per_node",
            "1",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
        ]
    else:  # accelerate launch runs torchrun underneath (--multi_gpu: its multi-process launcher; CPU processes here)
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_machines",
            "2",
            "--machine_rank",
            str(rank),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            str(port),
            "--num_processes",
            "2",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
    cmd += ["-m", "samtune", *train]
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _train_args(tmp_path: Path, model_dir: Path, out: Path, *extra: str) -> list[str]:
    data = tmp_path / "reviews.csv"
    if not data.exists():
        write_csv(data, text_examples(64))
    return [
        "train",
        "--model",
        str(model_dir),
        "--dataset",
        str(data),
        "--batch-size",
        "4",
        "--learning-rate",
        "5e-3",
        "--output-dir",
        str(out),
        "training.eval_strategy=no",
        "sam.start=0",
        *extra,
    ]


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_nodes_over_loopback_equal_one_node_with_two_processes(tmp_path, text_model_dir, launcher):
    two_nodes, one_node = tmp_path / "two-nodes", tmp_path / "one-node"
    port = _free_port()
    train = _train_args(tmp_path, text_model_dir, two_nodes, "--max-steps", "4")
    nodes = [_node(r, port, train, tmp_path, tmp_path / f"node{r}.log", launcher) for r in (0, 1)]
    codes = [n.wait(timeout=300) for n in nodes]
    logs = [(tmp_path / f"node{r}.log").read_text() for r in (0, 1)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert logs[0].count("done") == 1 and "done" not in logs[1]  # the main process (node 0) reports

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "samtune",
        *_train_args(tmp_path, text_model_dir, one_node, "--max-steps", "4"),
        "--nproc",
        "2",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    a, b = load_file(two_nodes / "model.safetensors"), load_file(one_node / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["one-node", "two-nodes"]


def test_ctrl_c_on_one_node_stops_both_at_the_same_step_with_a_checkpoint(tmp_path, text_model_dir):
    run = tmp_path / "run"
    port = _free_port()
    train = _train_args(tmp_path, text_model_dir, run, "--epochs", "200")
    nodes = [_node(r, port, train, tmp_path, tmp_path / f"node{r}.log") for r in (0, 1)]
    log0 = tmp_path / "node0.log"
    deadline = time.time() + 240
    while "step" not in log0.read_text() and time.time() < deadline and nodes[0].poll() is None:
        time.sleep(0.5)  # until training is under way (the progress line names the step)
    time.sleep(2)
    nodes[0].send_signal(signal.SIGINT)  # Ctrl-C in node 0's terminal: torchrun forwards it to its process
    codes = [n.wait(timeout=240) for n in nodes]
    logs = [(tmp_path / f"node{r}.log").read_text() for r in (0, 1)]
    # Each torchrun exits 1 (its code for any worker that did not exit 0, or for its own SIGINT); the workers
    # finished the step together (the stop request is all-reduced at each step's end) and saved one checkpoint.
    assert codes == [1, 1], codes
    checkpoints = sorted(run.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "trainer_state.json").is_file(), logs[0][-3000:]
    assert "training stopped: a checkpoint at step" in logs[0] and "--resume auto" in logs[0], logs[0][-3000:]

"""SAM under FSDP2: 2 CPU processes (gloo), parameters sharded with `fully_shard`, against single-process SAM.

Under FSDP2 the ascent gradient goes through FSDP's reduce-scatter, so it is the mean over the
processes: the reference is single-process SAM on every process's micro-batch m together (not
the per-process m-sharpness of DDP, which the Trainer test shows it is not).

Tolerances: the workers' standalone scenarios run in float64, where the only difference from the
reference is the order of the sums (the reduce-scatter, the per-shard norms): 1e-12. The Trainer
runs a float32 BERT: 1e-6, as the DDP tests (an update off by any real amount, say e(w) not
normalised globally, is off by 3e-3 to 1e-2 here: measured with the all-reduce taken out). Bit-equality only
where the ops are the same sequence: rho=0 against plain FSDP2, a resumed run against the uninterrupted one,
restore by copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fsdp_runs import _run, _worst, fsdp_against_no_fsdp_on_one_process
from launch import torchrun
from tiny import reference_aesam_sgd, reference_looksam_sgd, reference_sam_sgd, reference_scheduled_sam_sgd, tiny_bert


# ---- the SAM maths on sharded parameters (no Trainer) ----------------------------------------------


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    torchrun("fsdp_worker.py", str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


class _WithLoss(torch.nn.Module):
    """The workers' MLP with the interface tests/support/tiny.py's hand-written SAM loops take: model(**batch).loss."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, y):
        from fsdp_worker import loss_of

        return SimpleNamespace(loss=loss_of(self.net, x, y))


def _together(ga: int = 1) -> list[list[dict[str, torch.Tensor]]]:
    """The workers' steps as one process sees them: micro-batch m (rows m::ga of each process's half) of
    both processes together."""
    from fsdp_worker import BATCH, data

    return [
        [
            {"x": torch.cat([x[:BATCH][m::ga], x[BATCH:][m::ga]]), "y": torch.cat([y[:BATCH][m::ga], y[BATCH:][m::ga]])}
            for m in range(ga)
        ]
        for x, y in data()
    ]


def _hand_written_sam(rho: float, adaptive: bool = False, ga: int = 1) -> dict[str, torch.Tensor]:
    """SAM with SGD by the paper's formulas on one process (tests/support/tiny.py), the processes' batches together."""
    from fsdp_worker import LR, mlp

    return reference_sam_sgd(_WithLoss(mlp()), _together(ga), rho=rho, lr=LR, adaptive=adaptive).net.state_dict()


def _hand_written_looksam(rho: float, k: int, alpha: float) -> dict[str, torch.Tensor]:
    """LookSAM (Liu et al. 2022, Algorithm 1; tests/support/tiny.py) with SGD on one process, the batches together."""
    from fsdp_worker import LR, mlp

    return reference_looksam_sgd(_WithLoss(mlp()), _together(), rho=rho, lr=LR, k=k, alpha=alpha).net.state_dict()


@pytest.mark.parametrize(("scenario", "rho", "adaptive"), [("sam", 0.05, False), ("asam", 0.5, True)])
def test_standalone_sam_on_fsdp2_shards_equals_single_process_sam(standalone, scenario, rho, adaptive):
    """`samtune.optim.SAM` (first_step / second_step) on fully_shard-ed parameters, uneven shards."""
    r0, r1 = standalone
    assert _worst(r0[scenario], r1[scenario]) == 0.0  # both processes gathered the same weights
    assert _worst(r0[scenario], _hand_written_sam(rho, adaptive)) <= 1e-12
    # It trained: SAM's update differs from plain SGD's.
    assert _worst(r0[scenario], r0["plain"]) > 1e-3


def test_hsdp_sums_the_norm_over_shards_not_over_replicas(tmp_path):
    """HSDP (4 processes: 2 replicas x 2 shards): each replica holds the whole gradient, so summing the
    squared shard norms over the replicas too would make ||g|| sqrt(2) times too large."""
    from hsdp_worker import BATCH, PROCESSES, data
    from fsdp_worker import LR, mlp

    torchrun("hsdp_worker.py", str(tmp_path), nproc=PROCESSES, timeout=240)
    result = torch.load(tmp_path / "hsdp.pt", weights_only=False)
    assert result["placements"] == ["(Replicate(), Shard(dim=0))"]
    together = [[{"x": x, "y": y}] for x, y in data()]  # the four quarters in rank order: the whole batch
    assert all(len(step[0]["x"]) == PROCESSES * BATCH for step in together)
    for name, rho, adaptive in (("sam", 0.05, False), ("asam", 0.5, True)):
        reference = reference_sam_sgd(_WithLoss(mlp()), together, rho=rho, lr=LR, adaptive=adaptive).net.state_dict()
        assert _worst(result[name], reference) <= 1e-12


def test_trainer_step_functions_on_fsdp2_with_accumulation(standalone):
    """The Trainer's per-micro-batch step under FSDP2 (ascent through FSDP's reduce-scatter with the
    accumulated descent gradients set aside, sharded climb, restore by copy), 2 micro-batches a step."""
    r0, r1 = standalone
    assert _worst(r0["steps-ga2"], _hand_written_sam(0.05, ga=2)) <= 1e-12
    # A per-process ascent (m-sharpness) or an ascent over the whole step would give other weights.
    assert _worst(r0["steps-ga2"], _hand_written_sam(0.05, ga=1)) > 1e-4
    for r in (r0, r1):
        assert r["measured"]["grads_kept_between"]  # the ascent never touched the accumulated .grad


def test_looksam_on_fsdp2_shards(standalone):
    """LookSAM's <g, g_s>, ||g|| and ||g_v|| over all shards: g_v sharded like the gradients.

    1e-6, not 1e-12: LookSAM keeps g_v in float32 by design (samtune.optim.variants), so the reused
    steps carry float32 rounding (measured 5e-8); norms and dots of one shard alone put it 9e-3 off."""
    assert _worst(standalone[0]["looksam"], _hand_written_looksam(0.05, k=2, alpha=0.7)) <= 1e-6


def test_rho0_is_plain_fsdp2_to_the_bit(standalone):
    r0 = standalone[0]
    assert all(torch.equal(r0["rho0"][k], r0["plain"][k]) for k in r0["plain"])


def test_the_saved_copy_of_w_is_one_shard_per_process(standalone):
    """Memory: each process saves its own shard of w, not the model (the two shards make one copy)."""
    m0, m1 = standalone[0]["measured"], standalone[1]["measured"]
    assert m0["saved_bytes"] + m1["saved_bytes"] == m0["param_bytes"]
    assert max(m0["saved_bytes"], m1["saved_bytes"]) < m0["param_bytes"]


def test_bf16_mixed_precision_policy_climbs_and_restores_in_the_parameters_dtype(standalone):
    """FSDP2 computes in bf16 but keeps the sharded weights in their own dtype: the copy of w is in that
    dtype and the restore by copy gives w back to the bit (lr=0, so w must not move at all)."""
    for r in standalone:
        assert r["bf16"]["restored"]
        assert r["bf16"]["saved_dtypes"] == ["torch.float64"]


# ---- SAMTrainer under Accelerate's FSDP2 ----------------------------------------------------------


# Every scenario of fsdp_trainer_worker.py, and two resumed from their sharded checkpoints.
SCENARIOS = ("sam", "asam", "looksam", "rho0", "plain", "lora", "head", "nobias", "aesam", "plainsteps")
RESUMED = ("sam", "looksam")


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory):
    """The folder of every scenario's runs: one torchrun launch, the scenarios in turn in the same two processes
    (each with a fresh Accelerate state)."""
    out = tmp_path_factory.mktemp("fsdp-trainer")
    every = [*SCENARIOS, *(f"{s}:resume" for s in RESUMED)]
    torchrun("fsdp_trainer_worker.py", str(out), ",".join(every), timeout=600)
    return out


def _merged_micro_batches(out: Path, name: str, ga: int = 2) -> list[list[dict[str, torch.Tensor]]]:
    """Per optimizer step, micro-batch m of both processes together (what FSDP2's averaged ascent sees)."""
    s0, s1 = _run(out, name, 0)["seen"], _run(out, name, 1)["seen"]
    return [
        [{k: torch.cat([s0[ga * i + m][k], s1[ga * i + m][k]]) for k in s0[0]} for m in range(ga)]
        for i in range(len(s0) // ga)
    ]


@pytest.mark.parametrize(("scenario", "rho", "adaptive"), [("sam", 0.05, False), ("asam", 0.5, True)])
def test_samtrainer_under_fsdp2_equals_single_process_sam(trainer_runs, scenario, rho, adaptive):
    r0, r1 = _run(trainer_runs, scenario, 0), _run(trainer_runs, scenario, 1)
    assert r0["param_type"] == "DTensor"  # the model really was sharded
    assert _worst(r0["state"], r1["state"]) == 0.0
    assert r0["climb_steps"] == 3 and len(r0["seen"]) == 6
    steps = _merged_micro_batches(trainer_runs, scenario)
    assert (
        _worst(r0["state"], reference_sam_sgd(tiny_bert(), steps, rho=rho, lr=0.5, adaptive=adaptive).state_dict())
        <= 1e-6
    )
    if scenario == "sam":
        # Not DDP's per-process ascent: FSDP2 averages the ascent gradient over the processes.
        s0, s1 = r0["seen"], r1["seen"]
        per_process = [s0[2 * i : 2 * i + 2] + s1[2 * i : 2 * i + 2] for i in range(3)]
        other = reference_sam_sgd(tiny_bert(), per_process, rho=rho, lr=0.5).state_dict()
        assert _worst(r0["state"], other) > 1e-4


@pytest.mark.parametrize(("scenario", "params"), [("head", "head"), ("nobias", "!*.bias")])
def test_samtrainer_under_fsdp2_climbs_only_the_chosen_parameters(trainer_runs, scenario, params):
    """`sam.params` sharded: the parameters left out stay at w in the descent, and their `.grad` holds the descent
    gradients only (the ascent's backward pass writes theirs too: it must be set aside with the climbing ones')."""
    out = trainer_runs
    r0, r1 = _run(out, scenario, 0), _run(out, scenario, 1)
    assert r0["param_type"] == "DTensor" and r0["climb_steps"] == 3
    assert _worst(r0["state"], r1["state"]) == 0.0
    model, steps = tiny_bert(), _merged_micro_batches(out, scenario)
    names = [n for n, _ in model.named_parameters()]
    climbing = (
        {n for n in names if n.startswith("classifier.")}
        if params == "head"
        else {n for n in names if not n.endswith(".bias")}
    )
    reference = reference_sam_sgd(model, steps, rho=0.05, lr=0.5, climbing=climbing).state_dict()
    assert _worst(r0["state"], reference) <= 1e-6
    # The choice matters here: SAM on every parameter ends elsewhere.
    assert _worst(reference, reference_sam_sgd(model, steps, rho=0.05, lr=0.5).state_dict()) > 1e-4


def test_samtrainer_lora_under_fsdp2(trainer_runs):
    """LoRA adapters (peft) on a sharded BERT: the adapters and the head climb and train as single-process SAM
    says (1e-6); the frozen base comes back bit for bit."""
    from ddp_worker import lora_bert

    r0 = _run(trainer_runs, "lora")
    assert r0["param_type"] == "DTensor" and r0["climb_steps"] == 3
    start = lora_bert()
    reference = reference_sam_sgd(start, _merged_micro_batches(trainer_runs, "lora"), rho=0.05, lr=0.5).state_dict()
    assert _worst(r0["state"], reference) <= 1e-6
    initial = start.state_dict()
    frozen = {n for n, p in start.named_parameters() if not p.requires_grad}
    assert frozen and all(torch.equal(r0["state"][n], initial[n]) for n in frozen)


def test_samtrainer_looksam_under_fsdp2(trainer_runs):
    r0 = _run(trainer_runs, "looksam")
    steps = _merged_micro_batches(trainer_runs, "looksam")
    reference = reference_looksam_sgd(tiny_bert(), steps, rho=0.05, lr=0.5, k=3, alpha=0.7).state_dict()
    assert _worst(r0["state"], reference) <= 1e-6
    assert r0["climb_steps"] == 2  # steps 0 and 3 climb; 1 and 2 reuse g_v


def test_samtrainer_aesam_under_fsdp2_decides_alike_and_equals_its_unsharded_run(trainer_runs, tmp_path):
    """AE-SAM under FSDP2: ||g||^2 over every shard of the step's reduced gradient, so both processes decide alike
    (the same climbs, the same statistics), one climb per step from that gradient (sharded e(w)); the weights are
    those of the hand-written Algorithm 1 on both processes' micro-batches together and of the same run unsharded
    (DDP on 2 processes). 1e-6 as the tests above: float32, the sums in another order."""
    out = trainer_runs
    r0, r1 = _run(out, "aesam", 0), _run(out, "aesam", 1)
    assert r0["param_type"] == "DTensor" and len(r0["seen"]) == 6
    assert _worst(r0["state"], r1["state"]) == 0.0
    assert r0["variant_state"] == r1["variant_state"] and r0["variant_state"]["seen"] == 3
    steps = _merged_micro_batches(out, "aesam")
    reference, climbed = reference_aesam_sgd(tiny_bert(), steps, rho=0.05, lr=0.5, decay=0.5, c_start=1.0, c_end=1.0)
    assert climbed == [True, False, True], climbed  # both kinds of step happen
    assert r0["climb_steps"] == r1["climb_steps"] == sum(climbed)
    assert _worst(r0["state"], reference.state_dict()) <= 1e-6
    # Had those steps climbed per micro-batch (exact SAM's ascent under FSDP2), the weights would differ.
    per_micro_batch = reference_scheduled_sam_sgd(tiny_bert(), steps, 0.05, 0.5, climbed).state_dict()
    assert _worst(r0["state"], per_micro_batch) > 1e-5
    torchrun("fsdp_trainer_worker.py", str(tmp_path), "aesam", env={"WORKER_FSDP": "0"})
    unsharded = _run(tmp_path, "aesam")
    assert unsharded["param_type"] == "Parameter" and unsharded["climb_steps"] == r0["climb_steps"]
    assert unsharded["variant_state"]["seen"] == 3
    assert unsharded["variant_state"]["mean"] == pytest.approx(r0["variant_state"]["mean"], rel=1e-5)
    assert _worst(r0["state"], unsharded["state"]) <= 1e-6


@pytest.mark.parametrize("scenario", ["rho0", "plainsteps"])
def test_samtrainer_steps_that_do_not_climb_under_fsdp2_are_the_stock_step_to_the_bit(trainer_runs, scenario):
    """rho=0, and at rho > 0 the steps outside the SAM window and a variant's plain steps: the stock step, with the
    stock schedule of reductions (gradients accumulated unreduced over the micro-batches, reduced once)."""
    out = trainer_runs
    assert _run(out, scenario)["climb_steps"] == 0
    plain, mine = _run(out, "plain")["state"], _run(out, scenario)["state"]
    assert all(torch.equal(plain[k], mine[k]) for k in plain), _worst(plain, mine)


@pytest.mark.parametrize("scenario", ["sam", "looksam"])
def test_resume_from_a_sharded_checkpoint_equals_the_uninterrupted_run(trainer_runs, scenario):
    """The checkpoint at step 2 holds FSDP's sharded model and optimizer (Accelerate's SHARDED_STATE_DICT),
    samtune's counters and, for LookSAM, each process's shards of g_v; resumed, the run ends where the
    uninterrupted one did (step 2 of LookSAM k=3 reuses the saved g_v: without it, it would climb)."""
    checkpoint = trainer_runs / scenario / "checkpoint-2"
    records = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and records["SAMState"]["attributes"]["variant"] == scenario
    if scenario == "looksam":
        assert {p.name for p in checkpoint.glob("samtune_looksam_rank*.pt")} == {
            "samtune_looksam_rank0.pt",
            "samtune_looksam_rank1.pt",
        }
    for rank in (0, 1):
        whole, resumed = _run(trainer_runs, scenario, rank), _run(trainer_runs, f"{scenario}-resumed", rank)
        assert len(resumed["seen"]) < len(whole["seen"])  # it did resume
        assert all(torch.equal(whole["state"][k], resumed["state"][k]) for k in whole["state"])
        assert resumed["climb_steps"] == whole["climb_steps"]


def test_samtrainer_under_fsdp2_on_one_process_equals_the_run_without_fsdp(tmp_path):
    """World size 1 (as on one GPU, test_gpu.py): FSDP2's sharding is trivial, so its path trains the weights of
    the run without it. 1e-6: the same maths in float32, FSDP's all-gathered copies of the weights computed
    with other kernels (measured 1.1e-8; SAM's own effect here is 3e-2)."""
    diff, effect = fsdp_against_no_fsdp_on_one_process(tmp_path, "cpu", "fp32")
    assert effect > 1e-3 and diff <= 1e-6, (diff, effect)


# ---- the command line: samtune train --nproc 2 with training.fsdp=true ------------------------------


def test_samtune_train_with_fsdp_writes_a_whole_run_and_resumes_from_sharded_checkpoints(tmp_path, text_model_dir):
    """The product path under FSDP2 (Accelerate made to shard on CPU processes, see fsdp_on_cpu): the run's
    checkpoints are sharded, the finished run is the whole model (from_pretrained, `samtune eval` gives the
    run's accuracy), and a run resumed from a sharded checkpoint ends with the uninterrupted run's weights."""
    from conftest import pythonpath, text_examples, write_csv
    from fsdp_on_cpu import sitecustomize
    from safetensors.torch import load_file

    from samtune.rundir import RUN_MARK
    from samtune.runner import evaluate_run

    train_csv = write_csv(tmp_path / "train.csv", text_examples(48))
    valid_csv = write_csv(tmp_path / "valid.csv", text_examples(12, seed=3))
    site = sitecustomize(tmp_path / "site")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath(site)}

    def train(out: Path, *extra: str) -> subprocess.CompletedProcess:
        cmd = [
            sys.executable,
            "-m",
            "samtune",
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(train_csv),
            f"data.eval_file={valid_csv}",
            "--batch-size",
            "4",
            "--learning-rate",
            "5e-3",
            "--output-dir",
            str(out),
            "training.fsdp=true",
            "training.eval_strategy=steps",
            "training.eval_steps=3",
            "training.save_total_limit=3",
            "training.load_best_model_at_end=false",
            "sam.start=0",
            "--nproc",
            "2",
            *extra,
        ]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    whole = tmp_path / "whole"
    train(whole, "--max-steps", "6")
    first = whole / "checkpoint-3"
    assert (first / "pytorch_model_fsdp_0").is_dir() and not (first / "model.safetensors").exists()  # sharded
    metrics = json.loads((whole / "metrics.json").read_text())
    assert metrics["train_steps"] == 6 and metrics["sam_climb_steps"] == 6
    assert metrics["fsdp"] is True and metrics["processes"] == 2
    # The card says where each climb's gradient came from: with the default climb, the first quarter of each
    # process's micro-batch of 4, both processes' averaged.
    card = (whole / "README.md").read_text()
    assert "2: the first 1 of each micro-batch of 4 on each of 2 processes (FSDP2: averaged over them)" in card
    again = evaluate_run(whole, str(valid_csv))
    assert again["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-12)

    # Resume from the sharded checkpoint at step 3 (a copy of the run as it stood then) to step 6.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(first, resumed / "checkpoint-3")
    for name in ("config.yaml", RUN_MARK):
        shutil.copy(whole / name, resumed / name)
    train(resumed, "--max-steps", "6", "--resume", "auto")
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fsdp_shards_the_layers_but_not_a_module_holding_the_input_embeddings():
    """Accelerate shards the input embeddings on their own after the layer classes; BERT's and ViT's
    `_no_split_modules` name their `*Embeddings`, which hold them, and a second fully_shard would fail."""
    from tiny import tiny_vit

    from samtune.modeling import fsdp_wrap_classes

    assert fsdp_wrap_classes(tiny_bert()) == ["BertLayer"]
    assert fsdp_wrap_classes(tiny_vit()) == ["ViTLayer"]


def test_a_climbing_parameter_fsdp_did_not_shard_is_refused(tmp_path):
    """Under FSDP2 a plain (unsharded) trainable parameter would get a per-process ascent gradient and a
    different climb on each process: refused before the first climb, naming it."""
    from samtune import SAMArguments, SAMTrainer
    from samtune.trainer import UnsupportedSetupError

    model = tiny_bert()
    trainer = SAMTrainer(model=model, args=SAMArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    trainer.is_fsdp2 = True  # as under FSDP2, with none of the parameters sharded
    with pytest.raises(UnsupportedSetupError, match="must be sharded by FSDP") as err:
        trainer._check_sharded(list(model.parameters()))
    assert "bert.embeddings.word_embeddings.weight" in str(err.value)

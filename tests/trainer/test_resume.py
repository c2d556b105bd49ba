"""Interrupted runs: exact resume after a crash or Ctrl-C, --init-from, and the run-directory lock."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import SUPPORT, pythonpath, text_examples, write_csv, write_jsonl
from safetensors.torch import load_file

from samtune.optim.settings import default_of, sam_window


# A SAM window across the kill (SAM on steps 4-10 of 12), a radius that follows the learning rate,
# and biases left at w.
WINDOW_LR = {"schedule": "lr", "start": 0.25, "stop": 10, "params": "!*.bias"}
# AE-SAM's trigger, whose running statistics cross the kill (a fast decay: a mix of both kinds of step in 12).
AESAM = {"variant": "aesam", "aesam_decay": 0.5, "aesam_c_start": 0.5, "aesam_c_end": -0.5}


def _recipe(
    tmp_path: Path,
    model_dir: Path,
    accumulation: int,
    data: Path | None = None,
    sam: dict | None = None,
    lora: dict | None = None,
    label_column: str | None = None,
) -> Path:
    """12 optimizer steps, a checkpoint and an evaluation every 3; dropout on (the RNG state matters)."""
    data = data or write_csv(tmp_path / "train.csv", text_examples(96))
    path = tmp_path / f"recipe-ga{accumulation}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"name": str(model_dir), "max_length": 16, **({"lora": lora} if lora is not None else {})},
                "data": {"dataset": str(data), **({"label_column": label_column} if label_column else {})},
                "sam": {"rho": 0.05, **(sam or {})},
                "training": {
                    "max_steps": 12,
                    "batch_size": 8 // accumulation,
                    "gradient_accumulation_steps": accumulation,
                    "learning_rate": 3e-3,
                    "eval_strategy": "steps",
                    "eval_steps": 3,
                    "save_steps": 3,
                    "save_strategy": "steps",
                    "save_total_limit": 10,
                    "load_best_model_at_end": False,
                    "logging_steps": 1,
                },
            }
        )
    )
    return path


def _samtune(args: list, interrupt: str = "", at_step: int = 4) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "SAMTUNE_TEST_INTERRUPT": interrupt,
        "SAMTUNE_TEST_STEP": str(at_step),
        "PYTHONPATH": pythonpath(),
        "COLUMNS": "300",
    }
    cmd = [sys.executable, str(SUPPORT / "interrupt_driver.py"), *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    adapters = run_dir / "adapter_model.safetensors"  # a LoRA run saves its adapters and head only
    return load_file(adapters if adapters.is_file() else run_dir / "model.safetensors")


def _evals(run_dir: Path) -> list[tuple]:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    # Each task's first metric: accuracy, regression's MSE, multi-label's micro F1, token classification's entity F1,
    # a causal LM's perplexity.
    score = next(
        k
        for k in ("eval_accuracy", "eval_mse", "eval_micro_f1", "eval_entity_f1", "eval_perplexity")
        if any(k in h for h in history)
    )
    return [(h["step"], h["eval_loss"], h[score]) for h in history if "eval_loss" in h]


def _image_folder(root: Path) -> Path:
    """Class folders of 24 small PNGs each (mirrors conftest.image_folder, at module scope)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, channel in (("red", 0), ("blue", 2)):
        (root / "images" / name).mkdir(parents=True)
        for i in range(24):
            pixels = rng.integers(0, 80, (20, 20, 3), dtype=np.uint8)
            pixels[..., channel] = rng.integers(170, 255, (20, 20), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / name / f"{i}.png")
    return root / "images"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, text_model_dir, image_model_dir, causal_model_dir):
    """Reference runs, one per (task, accumulation), never interrupted: `get` starts one in the background and
    returns its recipe and a call that waits for it and gives its run directory. Each run is one thread
    (OMP_NUM_THREADS=1), so the reference trains beside the interrupted run on a second core; the two share only
    the model folder and data they read."""
    made = {}
    pool = ThreadPoolExecutor(max_workers=2)

    def get(accumulation: int, task: str = "text") -> tuple[Path, Callable[[], Path]]:
        if (task, accumulation) not in made:
            root = tmp_path_factory.mktemp(f"reference-{task}-ga{accumulation}")
            if task in ("text", "text-window-lr", "text-aesam"):
                sam = {"text": None, "text-window-lr": WINDOW_LR, "text-aesam": AESAM}[task]
                recipe = _recipe(root, text_model_dir, accumulation, sam=sam)
            elif task == "text-lora":  # adapter dropout on: the RNG state across the kill matters
                recipe = _recipe(root, text_model_dir, accumulation, lora={"r": 4, "dropout": 0.1})
            elif task == "text-regression":
                from task_examples import score_examples

                scores = write_csv(root / "scores.csv", score_examples(96))
                recipe = _recipe(root, text_model_dir, accumulation, scores, label_column="score")
            elif task == "text-multi-label":
                from task_examples import topic_examples

                topics = write_jsonl(root / "topics.jsonl", topic_examples(96))
                recipe = _recipe(root, text_model_dir, accumulation, topics, label_column="tags")
            elif task == "token":
                from task_examples import tagged_examples

                tagged = write_jsonl(root / "ner.jsonl", tagged_examples(96))
                recipe = _recipe(root, text_model_dir, accumulation, tagged)
            elif task == "causal-lm":  # prompts and responses: padding, so micro-batches hold different target counts
                from conftest import review_texts

                rows = [
                    {"prompt": " ".join(r["prompt"].split()[i % 4 :]), "response": r["response"]}
                    for i, r in enumerate(review_texts(96))
                ]  # prompts of 7-10 tokens
                prompts = write_jsonl(root / "prompts.jsonl", rows)
                recipe = _recipe(root, causal_model_dir, accumulation, prompts)
            else:
                recipe = _recipe(root, image_model_dir, accumulation, _image_folder(root))
            pending = pool.submit(_samtune, ["train", recipe, "--output-dir", root / "run"])
            made[(task, accumulation)] = (recipe, root / "run", pending)
        recipe, run, pending = made[(task, accumulation)]

        def reference() -> Path:
            done = pending.result()
            assert done.returncode == 0, done.stderr[-3000:]
            return run

        return recipe, reference

    yield get
    pool.shutdown(wait=True)


def _assert_same_run(ours: Path, reference: Path) -> None:
    a, b = _weights(ours), _weights(reference)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    ours_evals, ref_evals = _evals(ours), _evals(reference)
    assert [e[0] for e in ours_evals] == [e[0] for e in ref_evals]
    for (_, loss, acc), (_, ref_loss, ref_acc) in zip(ours_evals, ref_evals):
        assert loss == pytest.approx(ref_loss, abs=1e-6) and acc == pytest.approx(ref_acc, abs=1e-6)
    m, ref = json.loads((ours / "metrics.json").read_text()), json.loads((reference / "metrics.json").read_text())
    assert m["eval_loss"] == pytest.approx(ref["eval_loss"], abs=1e-6) and m["train_steps"] == ref["train_steps"] == 12


@pytest.mark.parametrize(
    ("task", "accumulation"),
    [
        ("text", 1),
        ("text", 2),
        ("image", 1),
        ("text-window-lr", 2),
        ("text-aesam", 2),
        ("text-lora", 2),
        ("text-regression", 2),
        ("text-multi-label", 2),
        ("token", 2),
        ("causal-lm", 2),
    ],
    ids=[
        "text-ga1",
        "text-ga2",
        "image-ga1",
        "text-window-lr-ga2",
        "text-aesam-ga2",
        "text-lora-ga2",
        "text-regression-ga2",
        "text-multi-label-ga2",
        "token-ga2",
        "causal-lm-ga2",
    ],
)
def test_sigkill_after_the_second_checkpoint_then_resume_auto(tmp_path, uninterrupted, task, accumulation):
    """The image run checks the augmentation too: random crops and flips resume where they were."""
    recipe, reference = uninterrupted(accumulation, task)
    run = tmp_path / "run"
    killed = _samtune(["train", recipe, "--output-dir", run], interrupt="kill")
    assert killed.returncode == -9
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert not (run / "metrics.json").exists()
    assert (run / ".samtune.lock").exists()  # left by the dead process; the OS dropped its lock
    resumed = _samtune(["train", recipe, "--output-dir", run, "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(run, reference())
    if task == "text-window-lr":  # SAM ran on steps 4-10 only, across the kill
        assert json.loads((run / "metrics.json").read_text())["sam_climb_steps"] == 7
    if task == "text-aesam":  # its statistics came back from the checkpoint; both kinds of step, after the kill too
        state = torch.load(run / "checkpoint-6" / "samtune_aesam.pt", weights_only=True)
        assert state["seen"] == 6 - math.ceil(0.1 * 12) and state["var"] > 0  # steps 3-6 (SAM from 10% of 12)
        history = json.loads((run / "trainer_state.json").read_text())["log_history"]
        climbed = {h["step"]: h["sam_climb_steps"] for h in history if "sam_climb_steps" in h}
        assert 0 < climbed[12] < 12 - math.ceil(0.1 * 12) and climbed[12] > climbed[6]
    from samtune.rundir import lock_is_held

    assert lock_is_held(run) is None


def test_sigint_saves_prints_the_resume_command_and_resuming_finishes_the_run(tmp_path, uninterrupted):
    recipe, reference = uninterrupted(1)
    run = tmp_path / "run"
    stopped = _samtune(["train", recipe, "--output-dir", run], interrupt="sigint")
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    assert (run / "checkpoint-4" / "trainer_state.json").is_file()  # the step in flight, saved
    assert not (run / "metrics.json").exists()
    command = next(line.strip() for line in stopped.stderr.splitlines() if line.strip().startswith("samtune train"))
    assert command.endswith("--resume auto")
    resumed = _samtune(shlex.split(command)[1:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(run, reference())


def test_sigterm_exits_143_with_a_checkpoint(tmp_path, text_model_dir, text_csv):
    """With the default checkpointing (the best one kept, at each epoch) the stop's checkpoint survives."""
    run = tmp_path / "run"
    stopped = _samtune(
        [
            "train",
            "--model",
            text_model_dir,
            "--dataset",
            text_csv,
            "--output-dir",
            run,
            "--epochs",
            "3",
            "--batch-size",
            "4",
        ],
        interrupt="sigterm",
        at_step=20,
    )
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    # 18 steps an epoch: checkpoint-18 is the best so far, checkpoint-20 the stop's.
    assert (run / "checkpoint-18").is_dir() and (run / "checkpoint-20" / "trainer_state.json").is_file()


def test_a_second_sigint_stops_at_once(tmp_path, text_model_dir):
    recipe = _recipe(tmp_path, text_model_dir, 1)
    stopped = _samtune(["train", recipe, "--output-dir", tmp_path / "run"], interrupt="sigint2")
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "Interrupted" in stopped.stderr and "Traceback" not in stopped.stderr
    assert not (tmp_path / "run" / "checkpoint-4").exists()  # it did not wait to save


def test_checkpoints_carry_samtunes_state(tmp_path, text_model_dir):
    recipe = _recipe(tmp_path, text_model_dir, 1)
    assert _samtune(["train", recipe, "--output-dir", tmp_path / "run"], interrupt="kill").returncode == -9
    # In trainer_state.json, the file whose presence marks the checkpoint complete (SAMState's record).
    trainer_state = json.loads((tmp_path / "run" / "checkpoint-6" / "trainer_state.json").read_text())
    state = trainer_state["stateful_callbacks"]["SAMState"]["attributes"]
    first, _ = sam_window(default_of("start"), None, 12)  # the default window: from 10% of the 12 steps
    assert first == 2
    assert state == {
        "rho": 0.05,  # the recipe's
        "adaptive": False,
        "variant": default_of("sam_variant"),  # samtune's default
        "climb_steps": 6 - first,
        "perturbations_skipped": 0,
        "nonfinite_skipped": 0,
    }


def test_a_diverging_run_stops_with_the_step_and_the_last_good_checkpoint(tmp_path, text_model_dir, text_csv):
    from typer.testing import CliRunner

    from samtune.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(text_csv),
            "--output-dir",
            str(out),
            "--learning-rate",
            "1e12",
            "--max-steps",
            "8",
            "training.optimizer=sgd",
            "training.max_grad_norm=0",
            "training.save_strategy=steps",
            "training.save_steps=1",
            "training.load_best_model_at_end=false",
            "training.batch_size=8",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "the training loss became" in result.output and "at step" in result.output
    assert "checkpoint-" in result.output and "--resume auto" in result.output
    assert not (out / "metrics.json").exists() and (out / "config.yaml").exists()


def test_resume_warns_when_the_recipe_changed_the_run(tmp_path, text_model_dir):
    recipe = _recipe(tmp_path, text_model_dir, 1)
    run = tmp_path / "run"
    assert _samtune(["train", recipe, "--output-dir", run], interrupt="kill").returncode == -9
    resumed = _samtune(["train", recipe, "--output-dir", run, "--resume", "auto", "sam.rho=0.1", "--seed", "7"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "sam.rho: 0.05 -> 0.1" in resumed.stderr and "training.seed: 42 -> 7" in resumed.stderr
    assert "the recipe's values win" in resumed.stderr


def test_resume_without_a_checkpoint_says_so(tmp_path, text_model_dir, text_csv):
    from typer.testing import CliRunner

    from samtune.cli import app

    result = CliRunner().invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(text_csv),
            "--output-dir",
            str(tmp_path / "run"),
            "--resume",
            "auto",
        ],
    )
    assert result.exit_code == 2 and "no checkpoint to resume" in result.output
    assert not (tmp_path / "run").exists()


def test_init_from_starts_at_step_zero_from_the_finished_weights(tmp_path, text_model_dir, text_csv):
    from transformers import TrainerCallback

    from samtune.recipe import build_recipe
    from samtune.runner import train

    def recipe(out, **kw):
        return build_recipe(
            {
                "model": {"name": str(text_model_dir), **kw},
                "data": {"dataset": str(text_csv)},
                "training": {"max_steps": 3, "batch_size": 8, "learning_rate": 5e-3},
                "output": {"dir": str(tmp_path / out)},
            }
        )

    first = train(recipe("first"))
    finished = _weights(first.run_dir)

    class Start(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            self.step = state.global_step
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    start = Start()
    second = train(recipe("second", init_from=str(first.run_dir)), callbacks=[start])
    assert start.step == 0 and second.steps == 3  # a new schedule of its own
    assert all(torch.equal(start.weights[k], finished[k]) for k in finished)
    assert not torch.equal(_weights(second.run_dir)["classifier.weight"], finished["classifier.weight"])


def test_a_second_run_on_the_same_directory_is_refused_while_the_first_lives(tmp_path, text_model_dir):
    """The first run is slowed by a long training; the second starts while it holds the lock."""
    data = write_csv(tmp_path / "train.csv", text_examples(400))
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath()}
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "samtune",
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(data),
            "--output-dir",
            str(run),
            "--epochs",
            "4",
            "--batch-size",
            "4",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (run / "config.yaml").exists() and time.time() < deadline:  # training has started
        time.sleep(0.2)
    from typer.testing import CliRunner

    from samtune.cli import app

    second = CliRunner().invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(data),
            "--output-dir",
            str(run),
            "--overwrite",
            "--max-steps",
            "1",
        ],
    )
    assert second.exit_code == 2, second.output
    assert "another samtune run" in second.output and str(first.pid) in second.output
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_steps"] == 4 * 90  # 360 training rows in batches of 4, four epochs: intact


def test_resume_auto_skips_a_checkpoint_whose_save_did_not_finish(tmp_path):
    from samtune.rundir import find_checkpoint

    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-10" / "model.safetensors").write_text("half written")
    assert find_checkpoint(tmp_path, "auto") == str(tmp_path / "checkpoint-2")


def test_the_lock_is_the_operating_systems(tmp_path):
    """A lock file left by a dead process (even one with this very pid) does not block; a live holder does."""
    from samtune.errors import UsageError
    from samtune.rundir import LOCK_FILE, RunLock

    (tmp_path / LOCK_FILE).write_text(f"{os.getpid()} on this-host\n")  # stale: nobody holds it
    with RunLock(tmp_path):
        with pytest.raises(UsageError, match="another samtune run"):
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()  # free again


def test_ctrl_c_under_nproc_saves_once_and_exits_130(tmp_path, text_model_dir):
    """The parent forwards the signal to the launcher and waits: the processes stop at one step and save."""
    import signal

    data = write_csv(tmp_path / "train.csv", text_examples(400))
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "300"}
    parent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "samtune",
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(data),
            "--output-dir",
            str(run),
            "--epochs",
            "20",
            "--batch-size",
            "4",
            "--nproc",
            "2",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (run / "config.yaml").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # some steps in
    parent.send_signal(signal.SIGINT)
    out, err = parent.communicate(timeout=120)
    assert parent.returncode == 130, err[-3000:]
    assert "--nproc 2 --resume auto" in err
    from samtune.rundir import last_complete_checkpoint

    step = int(Path(last_complete_checkpoint(run)).name.split("-")[1])
    assert f"a checkpoint at step {step}" in err


# ---- what a resume accepts, and what it leaves untouched -----------------------------------


class _Crash(Exception):
    """A crash between two steps, as a killed process leaves its run directory."""


def _interrupted(tmp_path: Path, model_dir: Path, data: Path) -> tuple[Path, Path]:
    """A recipe (4 steps, a checkpoint after each) and its run, crashed after checkpoint-2; (recipe, run)."""
    from transformers import TrainerCallback

    from samtune.recipe import load_recipe
    from samtune.runner import train

    recipe = tmp_path / "four-steps.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": {"name": str(model_dir), "max_length": 16},
                "data": {"dataset": str(data)},
                "training": {
                    "max_steps": 4,
                    "batch_size": 8,
                    "learning_rate": 5e-3,
                    "eval_strategy": "no",
                    "save_strategy": "steps",
                    "save_steps": 1,
                    "save_total_limit": 5,
                    "logging_steps": 1,
                },
            }
        )
    )

    class CrashAtStep3(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise _Crash

    run = tmp_path / "run"
    with pytest.raises(_Crash):
        train(
            load_recipe(str(recipe), flags={"output.dir": str(run)}), callbacks=[CrashAtStep3()], notify=lambda _: None
        )
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    return recipe, run


def _cli(*args: object):
    from typer.testing import CliRunner

    from samtune.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _files(run: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a run directory (but its lock, which each command takes): its bytes and modification time."""
    return {
        str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != ".samtune.lock"
    }


def test_a_resume_on_another_model_or_data_is_refused_and_leaves_the_run_as_it_was(tmp_path, text_model_dir, text_csv):
    import shutil

    from tiny import tiny_bert

    from samtune.errors import EXIT_USAGE

    recipe, run = _interrupted(tmp_path, text_model_dir, text_csv)
    other_model = tmp_path / "wider-bert"
    shutil.copytree(text_model_dir, other_model)
    tiny_bert(vocab_size=64, num_labels=2, hidden_size=48).save_pretrained(other_model)
    other_data = write_csv(tmp_path / "other.csv", text_examples(80, seed=7))
    before = _files(run)
    for flag, value, key in (("--model", other_model, "model.name"), ("--dataset", other_data, "data.dataset")):
        result = _cli("train", recipe, "--output-dir", run, "--resume", "auto", flag, value)
        assert result.exit_code == EXIT_USAGE, result.output
        assert key in result.output and str(value) in result.output and "Traceback" not in result.output
        assert _files(run) == before  # config.yaml included: nothing is written before a resume is accepted


def test_resume_auto_on_a_finished_run_says_so_and_changes_nothing(tmp_path, text_model_dir, text_csv):
    """Exit 0 with the same command (a re-queued job that finished is not an error); refused with other settings."""
    from samtune.errors import EXIT_USAGE

    recipe, run = _interrupted(tmp_path, text_model_dir, text_csv)
    finished = _cli("train", recipe, "--output-dir", run, "--resume", "auto")
    assert finished.exit_code == 0, finished.output
    before = _files(run)
    assert "metrics.json" in before and "model.safetensors" in before
    again = _cli("train", recipe, "--output-dir", run, "--resume", "auto")
    assert again.exit_code == 0, again.output
    assert "finished" in again.output and "nothing" in again.output
    assert _files(run) == before
    changed = _cli("train", recipe, "--output-dir", run, "--resume", "auto", "--max-steps", "8")
    assert changed.exit_code == EXIT_USAGE, changed.output
    assert "training.max_steps: 4 -> 8" in changed.output and "--init-from" in changed.output
    assert _files(run) == before


def _damage(path: Path) -> None:
    """Bytes changed in a file's middle: a JSON that no longer parses, a torch file whose data fails its checksum
    (torch.load itself reads it: NaN where the bytes land), a safetensors header that no longer fits its file."""
    data = bytearray(path.read_bytes())
    middle = 8 if path.suffix == ".safetensors" else len(data) // 2  # safetensors: its header's first bytes
    data[middle : middle + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damaged", ["model.safetensors", "trainer_state.json", "optimizer.pt"])
def test_a_damaged_checkpoint_is_named_with_the_complete_one_before_it(tmp_path, text_model_dir, text_csv, damaged):
    from samtune.errors import EXIT_USAGE

    recipe, run = _interrupted(tmp_path, text_model_dir, text_csv)
    _damage(run / "checkpoint-2" / damaged)
    before = _files(run)
    result = _cli("train", recipe, "--output-dir", run, "--resume", "auto", "sam.rho=0.1")
    assert result.exit_code == EXIT_USAGE, result.output
    said = " ".join(result.output.split())
    assert str(run / "checkpoint-2" / damaged) in said and "Traceback" not in said
    assert f"--resume {run / 'checkpoint-1'}" in said
    assert _files(run) == before  # config.yaml still says rho 0.05: the resume was not accepted
    if damaged == "optimizer.pt":  # the advice works
        resumed = _cli("train", recipe, "--output-dir", run, "--resume", run / "checkpoint-1", "sam.rho=0.1")
        assert resumed.exit_code == 0, resumed.output
        assert yaml.safe_load((run / "config.yaml").read_text())["sam"]["rho"] == 0.1
        assert json.loads((run / "metrics.json").read_text())["train_steps"] == 4

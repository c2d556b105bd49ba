"""The real command line, end to end, on tiny offline models and data."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import text_examples, write_csv
from typer.testing import CliRunner

from samtune.optim.settings import default_of
from samtune.cli import app
from samtune.recipe import ModelSection

runner = CliRunner()
FAST = ["training.logging_steps=2", "training.batch_size=8"]


def cli(*args: str):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result


def _ok(result) -> None:
    assert result.exit_code == 0, result.output


def _load_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _assert_run_dir(run_dir: Path, task: str) -> dict:
    from transformers import AutoConfig

    for name in ("config.json", "model.safetensors", "config.yaml", "metrics.json", "README.md", "trainer_state.json"):
        assert (run_dir / name).is_file(), name
    metrics = _load_metrics(run_dir)
    for key in ("eval_accuracy", "eval_f1", "eval_loss", "train_loss", "train_runtime"):
        assert key in metrics, key
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    config = AutoConfig.from_pretrained(run_dir)
    assert set(config.label2id) == set(config.id2label.values())
    assert "samtune" in (run_dir / "README.md").read_text()
    return metrics


def test_text_csv_with_recipe_file(tmp_path, text_model_dir, text_csv):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "reviews",
                "model": {"name": str(text_model_dir), "max_length": 16},
                "data": {"dataset": str(text_csv)},
                "sam": {"rho": 0.05},
                "training": {"epochs": 2, "learning_rate": 5e-3, "batch_size": 8, "logging_steps": 2},
                "output": {"dir": str(tmp_path / "run")},
            }
        )
    )
    result = cli("train", recipe)
    _ok(result)
    metrics = _assert_run_dir(tmp_path / "run", "text-classification")
    assert metrics["train_steps"] == 2 * 9  # 72 training rows (90% of 80) in batches of 8, two epochs
    assert metrics["eval_samples"] == 8
    assert "eval_accuracy" in result.output and str(tmp_path / "run") in result.output
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["name"] == "reviews" and config["model"]["max_length"] == 16
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "run").id2label == {0: "neg", 1: "pos"}


def test_sentence_pairs(tmp_path, text_model_dir, pair_jsonl):
    out = tmp_path / "run"
    result = cli(
        "train", "--model", text_model_dir, "--dataset", pair_jsonl, "--output-dir", out, "--max-steps", "4", *FAST
    )
    _ok(result)
    _assert_run_dir(out, "text-classification")
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["dataset"] == str(pair_jsonl)
    # Both sentences reached the tokenizer: the saved run tokenizes pairs with two [SEP].
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok("good film", "bad film")["input_ids"].count(tok.sep_token_id) == 2


def test_image_folder(tmp_path, image_model_dir, image_folder):
    out = tmp_path / "run"
    result = cli(
        "train", "--model", image_model_dir, "--dataset", image_folder, "--output-dir", out, "--epochs", "1", *FAST
    )
    _ok(result)
    metrics = _assert_run_dir(out, "image-classification")
    assert metrics["train_samples"] == 36 and metrics["eval_samples"] == 4  # 10% of 40, stratified
    from transformers import AutoConfig, AutoImageProcessor

    assert set(AutoConfig.from_pretrained(out).label2id) == {"red", "blue"}
    assert AutoImageProcessor.from_pretrained(out, backend="pil") is not None


def test_plain_model_and_dataset_flags_without_recipe(tmp_path, text_model_dir, text_csv, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("train", "--model", text_model_dir, "--dataset", text_csv, "--max-steps", "3")
    _ok(result)
    run_dir = tmp_path / "runs" / f"{text_model_dir.name}-reviews"
    _assert_run_dir(run_dir, "text-classification")


def test_overrides_and_flag_precedence(tmp_path, text_model_dir, text_csv):
    out = tmp_path / "run"
    result = cli(
        "train",
        "--model",
        text_model_dir,
        "--dataset",
        text_csv,
        "--output-dir",
        out,
        "sam.rho=0.2",
        "sam.adaptive=true",
        "training.max_steps=9",
        "--max-steps",
        "3",
        "training.learning_rate=5e-3",
        "data.max_train_samples=40",
        "training.logging_steps=1",
    )
    _ok(result)
    config = yaml.safe_load((out / "config.yaml").read_text())
    # SAM's general settings at their defaults (the radius follows the lr, from 10% of the steps); no other variant's
    assert config["sam"] == {
        "rho": 0.2,
        "adaptive": True,
        "asam_eta": 0.01,
        "variant": "ascent_fraction",  # the default: the climb on a quarter of each batch
        "ascent_fraction": 0.25,
        "params": "all",
        "schedule": "lr",
        "start": 0.1,
        "stop": None,
    }
    assert config["training"]["max_steps"] == 3  # the flag beats the override
    assert config["training"]["learning_rate"] == 5e-3  # '5e-3' read as a number
    metrics = _load_metrics(out)
    assert metrics["train_steps"] == 3 and metrics["train_samples"] == 40
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "sam_rho" in h]
    # 3 steps, linear decay from lr 5e-3 without warmup; SAM from step index ceil(0.1 * 3) = 1 with
    # rho_t = 0.2 * lr_t / lr. The first log (a plain step, no SAM step yet) shows the configured radius.
    assert [h["sam_rho"] for h in logged] == pytest.approx([0.2, 0.2 * 2 / 3, 0.2 * 1 / 3])


def test_variant_flag_runs_a_cheaper_sam_and_the_card_says_which(tmp_path, text_model_dir, text_csv):
    out = tmp_path / "run"
    result = cli(
        "train",
        "--model",
        text_model_dir,
        "--dataset",
        text_csv,
        "--output-dir",
        out,
        "--max-steps",
        "4",
        "--variant",
        "every_k",
        "sam.every_k=2",
        "data.max_train_samples=40",
    )
    _ok(result)
    metrics = _load_metrics(out)
    assert metrics["sam_variant"] == "every_k"
    assert metrics["sam_climb_steps"] == 1  # step 2 of 4: step 0 (every_k's other) lies before the default window
    assert "SAM every 2 steps" in (out / "README.md").read_text()
    saved = yaml.safe_load((out / "config.yaml").read_text())["sam"]
    assert saved == {
        "rho": 0.1,  # the default radius
        "adaptive": False,
        "asam_eta": 0.01,
        "variant": "every_k",
        "every_k": 2,
        "params": "all",
        "schedule": "lr",
        "start": 0.1,
        "stop": None,
    }
    _ok(cli("validate", out / "config.yaml", "--schema-only"))  # the saved recipe loads back


def test_builtin_recipe_with_overrides(tmp_path, text_model_dir, text_csv):
    out = tmp_path / "run"
    result = cli(
        "train",
        "quickstart",
        f"model.name={text_model_dir}",
        f"data.dataset={text_csv}",
        "data.text_column=text",
        "data.label_column=label",
        "data.labels=[neg, pos]",
        "data.max_train_samples=16",
        "training.max_steps=2",
        "--output-dir",
        out,
    )
    _ok(result)
    assert _load_metrics(out)["train_steps"] == 2


def test_saved_run_predicts_like_the_in_memory_model(tmp_path, text_model_dir, text_csv):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from samtune.recipe import build_recipe
    from samtune.runner import train

    recipe = build_recipe(
        {
            "model": {"name": str(text_model_dir)},
            "data": {"dataset": str(text_csv)},
            "training": {"max_steps": 4, "batch_size": 8, "learning_rate": 5e-3},
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    result = train(recipe)
    in_memory = result.trainer.model.eval()
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run")
    batch = tokenizer([r["text"] for r in text_examples(10, seed=5)], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(in_memory(**batch).logits, loaded(**batch).logits)
    # And the saved metrics are those of the saved model.
    assert result.metrics["eval_accuracy"] == _load_metrics(tmp_path / "run")["eval_accuracy"]
    # model.max_length was left to its default (128), more than the tiny BERT's positions: lowered to them, saved so.
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["max_length"]
    assert saved == loaded.config.max_position_embeddings < 128


def test_eval_command_scores_a_saved_run(tmp_path, text_model_dir, text_csv):
    out = tmp_path / "run"
    _ok(cli("train", "--model", text_model_dir, "--dataset", text_csv, "--output-dir", out, "--max-steps", "2"))
    held_out = write_csv(tmp_path / "held_out.csv", text_examples(20, seed=9))
    result = cli("eval", out, "--dataset", held_out)
    _ok(result)
    assert "eval_accuracy" in result.output and "eval_f1" in result.output


def test_recipes_list_show_copy(tmp_path):
    result = cli("recipes", "list")
    _ok(result)
    for name in ("quickstart", "vit-beans", "bert-sst2"):
        assert name in result.output
    _ok(cli("recipes", "show", "quickstart"))
    _ok(cli("recipes", "copy", "quickstart", tmp_path))
    assert (tmp_path / "quickstart.yaml").is_file()


def test_recipes_show_and_copy_take_only_builtin_names(tmp_path):
    """A file path is not a built-in name: `show` would print any file, `copy` copy it."""
    secret = tmp_path / "secret.yaml"
    secret.write_text("token: hunter2\n")
    for args in (["show", secret], ["copy", secret, tmp_path / "out.yaml"], ["show", "/etc/hostname"]):
        result = cli("recipes", *args)
        assert result.exit_code == 2 and "not a built-in recipe" in result.output, result.output
        assert "hunter2" not in result.output
    assert not (tmp_path / "out.yaml").exists()
    typo = cli("recipes", "show", "quickstrat")
    assert typo.exit_code == 2 and "did you mean 'quickstart'" in typo.output.lower()


def test_recipes_copy_into_a_missing_folder_and_never_over_a_file(tmp_path):
    """`copy NAME dir/` (the slash says a folder) creates dir/ and writes dir/NAME.yaml; an existing file is kept."""
    _ok(cli("recipes", "copy", "quickstart", f"{tmp_path / 'dir'}/"))
    copied = tmp_path / "dir" / "quickstart.yaml"
    assert copied.is_file() and "name: quickstart" in copied.read_text()
    copied.write_text("my edits\n")
    for dest in (copied, copied.parent, f"{copied.parent}/"):  # the file itself, or its folder with or without /
        result = cli("recipes", "copy", "quickstart", dest)
        assert result.exit_code == 2 and "exists" in result.output, result.output
    assert copied.read_text() == "my edits\n"
    _ok(cli("recipes", "copy", "bert-sst2", tmp_path / "mine.yaml"))  # a file name is taken as given
    assert "name: bert-sst2" in (tmp_path / "mine.yaml").read_text()


def test_a_recipe_name_with_a_path_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    (work / "r.yaml").write_text("name: ../../x\n")
    result = cli("train", "r.yaml", "--model", "m", "--dataset", "d.csv")
    assert result.exit_code == 2 and "name: " in result.output and "--output-dir" in result.output, result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "r.yaml"]  # no runs/, no x


def test_an_alias_bomb_recipe_fails_fast_with_a_short_message(tmp_path):
    """A 1 KB "billion laughs" (9**9 strings in data.labels by YAML aliases) is a recipe error within seconds.
    The child runs under a time limit and a 2 GiB address-space limit: a regression fails, it does not hang."""
    from bombs import _alias_bomb

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb(9))
    assert bomb.stat().st_size < 1100

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "samtune", "validate", str(bomb), "--schema-only"],
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=limit_memory,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the alias bomb still ran after 60 s")
    elapsed = time.perf_counter() - started
    assert done.returncode == 2, (done.returncode, done.stderr[-500:])
    assert "alias" in done.stderr and len(done.stdout + done.stderr) < 2000, done.stderr[:2000]
    assert elapsed < 10  # about 0.5 s here; 10 s leaves room for a loaded machine, far from the minutes it took


def test_every_builtin_recipe_validates():
    from samtune.recipe import builtin_recipes

    names = list(builtin_recipes())
    assert len(names) >= 8
    for name in names:
        result = cli("validate", name, "--schema-only")
        assert result.exit_code == 0, (name, result.output)


def test_validate_runs_a_data_preflight(text_csv, text_model_dir):
    result = cli("validate", f"model.name={text_model_dir}", f"data.dataset={text_csv}")
    _ok(result)
    assert "data ok" in result.output and "neg, pos" in result.output


def test_validate_checks_the_train_command_line_as_typed(tmp_path, text_csv, text_model_dir):
    """`validate` takes train's arguments and flags: the same recipe results, and the output directory is checked."""
    overrides = ["training.save_strategy=no", "training.load_best_model_at_end=false"]
    args = [
        "--model",
        str(text_model_dir),
        "--dataset",
        str(text_csv),
        "--rho",
        "0.1",
        "--epochs",
        "2",
        "--lora",
        "--nproc",
        "2",
        *overrides,
    ]
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("someone's files")
    refused = cli("validate", *args, "--output-dir", taken)
    assert refused.exit_code == 2 and "exists and is not empty" in refused.output  # as train would refuse it
    result = cli("validate", *args, "--output-dir", tmp_path / "new")
    _ok(result)
    assert "data ok" in result.output
    from samtune.cli import _run_recipe_args
    from samtune.recipe import load_recipe

    from samtune.cli import RUN_OPTIONS

    run = {name: default for name, (_, default) in RUN_OPTIONS.items()}
    run.update(lora=True, model=str(text_model_dir), dataset=str(text_csv), rho=0.1, epochs=2.0)
    ref, items, flags = _run_recipe_args(None, overrides, run)
    recipe = load_recipe(ref, items, flags)
    assert recipe.sam.rho == 0.1 and recipe.training.epochs == 2 and recipe.model.adapters() is not None
    assert recipe.training.save_strategy == "no"


def test_version_env_and_help():
    from samtune import __version__

    assert __version__ in cli("--version").output
    _ok(cli("env"))
    help_text = cli("train", "--help").output
    for panel in ("Model and data", "SAM", "Training", "Run"):
        assert panel in help_text


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "samtune", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and "samtune" in done.stdout


def test_two_processes_write_one_run_directory(tmp_path, text_model_dir):
    """`samtune train --nproc 2` re-launches through Accelerate; rank 0 alone writes the run."""
    train_csv = write_csv(tmp_path / "train.csv", text_examples(64))
    valid_csv = write_csv(tmp_path / "valid.csv", text_examples(12, seed=3))
    out = tmp_path / "runs" / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
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
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--learning-rate",
        "5e-3",
        "--output-dir",
        str(out),
        "--nproc",
        "2",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp"]
    assert done.stdout.count("done") == 1  # one summary: only the main process prints it
    metrics = _load_metrics(out)
    assert metrics["train_steps"] == 4
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 4
    from samtune.runner import evaluate_run

    again = evaluate_run(out, str(valid_csv))
    assert again["eval_samples"] == metrics["eval_samples"] == 12
    assert again["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"])
    assert again["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)


def test_a_learnable_task_is_learned(tmp_path, text_model_dir):
    """The whole path (columns, label encoding, tokenisation, SAM step, best checkpoint) really trains:
    the label is carried by one sentiment word, which a tiny BERT learns in a few epochs."""
    data = write_csv(tmp_path / "big.csv", text_examples(400))
    out = tmp_path / "run"
    _ok(
        cli(
            "train",
            "--model",
            text_model_dir,
            "--dataset",
            data,
            "--epochs",
            "4",
            "--batch-size",
            "16",
            "--learning-rate",
            "2e-3",
            "--output-dir",
            out,
            "training.logging_steps=50",
        )
    )
    metrics = _load_metrics(out)
    assert metrics["eval_accuracy"] >= 0.9  # chance is 0.5
    # with samtune's default SAM: the climb on a quarter of each batch
    assert metrics["sam_variant"] == "ascent_fraction" and metrics["sam_rho"] == default_of("rho") == 0.1
    assert metrics["sam_perturbations_skipped"] == 0


def test_two_processes_report_a_data_error_once_with_its_exit_code(tmp_path, text_model_dir):
    rows = [{"text": r["text"], "note": f"seen on day {i}"} for i, r in enumerate(text_examples(20))]
    bad = write_csv(tmp_path / "nolabel.csv", rows)  # no label by name, none by content
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "samtune",
        "train",
        "--model",
        str(text_model_dir),
        "--dataset",
        str(bad),
        "--output-dir",
        str(tmp_path / "run"),
        "--nproc",
        "2",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("no label column found") == 1


def test_a_list_inside_a_list_is_a_recipe_error_not_a_crash():
    """`training.report_to: [[x]]` ended in a TypeError (exit 1); it is a recipe error (exit 2) naming the key."""
    result = cli("validate", "training.report_to=[[tensorboard]]", "--schema-only")
    assert result.exit_code == 2, result.output
    assert "training.report_to.0" in result.output and "Recipe error" in result.output


def _old_run(path: Path) -> dict[str, str]:
    """A previous run's directory that --overwrite may replace; its files and their contents."""
    from samtune.rundir import mark_as_run

    path.mkdir(parents=True)
    mark_as_run(path)
    (path / "metrics.json").write_text('{"eval_accuracy": 0.9}')
    return _files(path)


def _files(path: Path) -> dict[str, str]:
    """A run directory's files and their contents, but the lock (which a refused run leaves, as every run does)."""
    from samtune.rundir import LOCK_FILE

    return {p.name: p.read_text() for p in sorted(path.iterdir()) if p.name != LOCK_FILE}


def test_unmatched_sam_params_patterns_are_refused_before_the_old_run_is_replaced(tmp_path, text_model_dir, text_csv):
    """Every pattern that matches no parameter is named in one message (exit 2); --overwrite has removed nothing."""
    out = tmp_path / "run"
    old = _old_run(out)
    result = cli(
        "train",
        "--model",
        text_model_dir,
        "--dataset",
        text_csv,
        "--output-dir",
        out,
        "--overwrite",
        "--max-steps",
        "2",
        "sam.params=!*.Bias,bert.encoder.*,classifer.*",
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.count("Usage error") == 1
    for text in ("'!*.Bias' (did you mean '!*.bias'?)", "'classifer.*' (did you mean 'classifier.*'?)"):
        assert text in " ".join(result.output.split()), result.output
    assert _files(out) == old


def test_max_length_beyond_the_models_positions_is_refused_before_the_old_run_is_replaced(tmp_path, text_model_dir):
    """The tiny BERT has 64 positions: model.max_length=100 passed validate, then the first batch of long texts
    crashed training (exit 1) after --overwrite had removed the old run. Refused first, both numbers and the fix
    named; the default (128) is lowered to the model's 64 instead, and saved so."""
    import re

    from samtune.modeling import load_config

    positions = load_config(ModelSection(name=str(text_model_dir))).max_position_embeddings
    long_rows = [{"text": " ".join([r["text"]] * 20), "label": r["label"]} for r in text_examples(16)]  # ~100 tokens
    data = write_csv(tmp_path / "long.csv", long_rows)
    says = [f"model.max_length is 100, but the model takes at most {positions} tokens", f"model.max_length={positions}"]

    refused = cli("validate", "--model", text_model_dir, "--dataset", data, "model.max_length=100")
    assert refused.exit_code == 2 and all(s in " ".join(refused.output.split()) for s in says), refused.output
    out = tmp_path / "run"
    old = _old_run(out)
    result = cli(
        "train",
        "--model",
        text_model_dir,
        "--dataset",
        data,
        "--output-dir",
        out,
        "--overwrite",
        "--max-steps",
        "1",
        "model.max_length=100",
    )
    assert result.exit_code == 2 and all(s in " ".join(result.output.split()) for s in says), result.output
    assert _files(out) == old

    by_default = cli("validate", "--model", text_model_dir, "--dataset", data)
    _ok(by_default)
    assert re.search(rf"max_length\W+{positions} tokens", by_default.output), by_default.output


def test_train_and_validate_take_the_same_run_options_from_one_definition():
    """`validate` checks the command `train` will run: both take every option of RUN_OPTIONS, in its order."""
    import typer.main

    from samtune.cli import RUN_OPTIONS

    group = typer.main.get_command(app)
    names = {}
    for command in ("train", "validate"):
        params = group.commands[command].params
        names[command] = [p.name for p in params if p.name in RUN_OPTIONS]
        assert [p.name for p in params][:2] == ["recipe", "overrides"]
    assert names["train"] == names["validate"] == list(RUN_OPTIONS)

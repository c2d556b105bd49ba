"""Bad input ends in one clear message that names the problem, a documented exit code, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from bombs import _decompression_bomb
from conftest import text_examples, write_csv
from typer.testing import CliRunner

from samtune.cli import app
from samtune.errors import EXIT_DATA, EXIT_TRAINING, EXIT_USAGE

runner = CliRunner()


def _fails(args: list, code: int, *says: str):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for text in says:
        assert text in result.output, (text, result.output)
    return result


@pytest.fixture
def train_args(text_model_dir, text_csv, tmp_path):
    return ["train", "--model", text_model_dir, "--dataset", text_csv, "--output-dir", tmp_path / "run"]


def test_missing_recipe_file(tmp_path):
    _fails(["train", tmp_path / "nope.yaml"], EXIT_USAGE, "recipe file not found", "nope.yaml")


def test_invalid_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: [unclosed\n")
    _fails(["train", bad], EXIT_USAGE, "invalid YAML", "line")


def test_unknown_key_suggests_the_right_one(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("training:\n  learnig_rate: 0.001\n")
    _fails(
        ["validate", bad, "--schema-only"], EXIT_USAGE, "training.learnig_rate", "did you mean 'training.learning_rate'"
    )


def test_all_problems_are_reported_together(tmp_path):
    bad = tmp_path / "many.yaml"
    bad.write_text("trainig: {}\ntraining:\n  batch_size: zero\n  optimizer: adam\nsam:\n  rho: -1\n")
    result = _fails(["validate", bad, "--schema-only"], EXIT_USAGE, "4 problems", "did you mean 'training'")
    for key in ("training.batch_size", "training.optimizer", "sam.rho"):
        assert key in result.output


def test_wrong_type(tmp_path):
    _fails(["validate", "training.epochs=three", "--schema-only"], EXIT_USAGE, "training.epochs", "valid number")


def test_negative_rho_flag(train_args):
    _fails([*train_args, "--rho", "-0.1"], EXIT_USAGE, "sam.rho", "greater than or equal to 0")


def test_zero_batch_size(train_args):
    _fails([*train_args, "--batch-size", "0"], EXIT_USAGE, "training.batch_size", "greater than 0")


def test_unknown_builtin_recipe():
    _fails(["train", "quickstrat"], EXIT_USAGE, "unknown recipe 'quickstrat'", "Did you mean 'quickstart'")


def test_malformed_override():
    _fails(["validate", "training.seed=1", "not-an-override", "--schema-only"], EXIT_USAGE, "not KEY=VALUE")


def test_override_without_equals_is_refused():
    _fails(["validate", "quickstart", "sam.rho", "--schema-only"], EXIT_USAGE, "'sam.rho' is not KEY=VALUE")


def test_model_folder_not_found(text_csv, tmp_path):
    _fails(["train", "--model", tmp_path / "no-model", "--dataset", text_csv], EXIT_USAGE, "not found", "no-model")


def test_hub_model_offline(text_csv, tmp_path):
    _fails(
        ["train", "--model", "someone/no-such-model-xyz", "--dataset", text_csv, "--output-dir", tmp_path / "r"],
        EXIT_USAGE,
        "someone/no-such-model-xyz",
        "HF_HUB_OFFLINE",
    )


def test_folder_that_is_not_a_model(text_csv, tmp_path):
    folder = tmp_path / "empty-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("hi")
    _fails(["train", "--model", folder, "--dataset", text_csv], EXIT_USAGE, "not a model")


def test_dataset_file_not_found(text_model_dir, tmp_path):
    _fails(["train", "--model", text_model_dir, "--dataset", tmp_path / "missing.csv"], EXIT_DATA, "dataset not found")


def test_hub_dataset_offline(text_model_dir, tmp_path):
    _fails(
        [
            "train",
            "--model",
            text_model_dir,
            "--dataset",
            "someone/no-such-dataset-xyz",
            "--output-dir",
            tmp_path / "r",
        ],
        EXIT_DATA,
        "no-such-dataset-xyz",
        "HF_HUB_OFFLINE",
    )


def test_unknown_format(text_model_dir, tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("hello\n")
    _fails(["train", "--model", text_model_dir, "--dataset", f], EXIT_DATA, "cannot tell the format")


def test_missing_label_column(text_model_dir, tmp_path):
    # No column named as a label, and none whose values repeat (a note per row): nothing to pick.
    rows = [{"text": r["text"], "note": f"seen on day {i}"} for i, r in enumerate(text_examples(20))]
    f = write_csv(tmp_path / "nolabel.csv", rows)
    _fails(["train", "--model", text_model_dir, "--dataset", f], EXIT_DATA, "no label column", "data.label_column")


def test_named_column_that_does_not_exist(train_args):
    _fails([*train_args, "data.text_column=review"], EXIT_DATA, "data.text_column is 'review'", "text, label")


def test_missing_text_column(text_model_dir, tmp_path):
    # No column named as text, and none of sentences (codes without spaces): nothing to pick.
    rows = [{"code": f"x{i:04d}", "label": r["label"]} for i, r in enumerate(text_examples(20))]
    f = write_csv(tmp_path / "notext.csv", rows)
    _fails(["train", "--model", text_model_dir, "--dataset", f], EXIT_DATA, "no text column", "data.text_column")


def test_unknown_split(train_args):
    _fails([*train_args, "data.eval_split=dev"], EXIT_DATA, "unknown split 'dev'", "train")


def test_labels_that_are_not_classes(text_model_dir, tmp_path):
    """Fractions are a regression target unless the recipe says classification: then they are not classes."""
    rows = [{"text": r["text"], "label": i / 7} for i, r in enumerate(text_examples(20))]
    _fails(
        [
            "train",
            "--model",
            text_model_dir,
            "--dataset",
            write_csv(tmp_path / "f.csv", rows),
            "--output-dir",
            tmp_path / "run",
            "task=text-classification",
        ],
        EXIT_DATA,
        "not classes",
        "set task to text-regression",
    )


def test_a_single_class(text_model_dir, tmp_path):
    rows = [{"text": r["text"], "label": "pos"} for r in text_examples(20)]
    _fails(
        ["train", "--model", text_model_dir, "--dataset", write_csv(tmp_path / "f.csv", rows)],
        EXIT_DATA,
        "1 class",
        "at least two classes",
    )


def test_empty_dataset(text_model_dir, tmp_path):
    f = tmp_path / "empty.csv"
    f.write_text("text,label\n")
    _fails(["train", "--model", text_model_dir, "--dataset", f], EXIT_DATA, "empty")


def test_existing_output_dir_is_refused_without_overwrite(train_args, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("precious")
    _fails(train_args, EXIT_USAGE, "not empty", "--overwrite")
    assert (tmp_path / "run" / "keep.txt").read_text() == "precious"


def test_fp16_without_a_gpu(train_args):
    _fails([*train_args, "training.precision=fp16"], EXIT_USAGE, "fp16 needs a CUDA GPU")


def test_image_model_on_text_data(image_model_dir, text_csv, tmp_path):
    _fails(
        ["train", "--model", image_model_dir, "--dataset", text_csv, "--output-dir", tmp_path / "r"], EXIT_DATA, "image"
    )


def test_no_partial_run_directory_after_an_early_failure(text_model_dir, tmp_path):
    out = tmp_path / "run"
    _fails(["train", "--model", text_model_dir, "--dataset", tmp_path / "missing.csv", "--output-dir", out], EXIT_DATA)
    assert not out.exists()


def test_unreadable_json(text_model_dir, tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_text('{"text": "good", "label": 1}\n{"text": \n')
    _fails(["train", "--model", text_model_dir, "--dataset", f], EXIT_DATA, "cannot read", "broken.jsonl")


def test_a_single_listed_label(train_args):
    _fails([*train_args, "data.labels=[pos]"], EXIT_USAGE, "data.labels", "at least two different labels")


def test_unsupported_scheduler():
    _fails(["validate", "training.scheduler=cosine_with_min_lr", "--schema-only"], EXIT_USAGE, "training.scheduler")


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(text_model_dir, text_csv, tmp_path):
    precious = tmp_path / "documents"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    _fails(
        ["train", "--model", text_model_dir, "--dataset", text_csv, "--output-dir", precious, "--overwrite"],
        EXIT_USAGE,
        "not a samtune run directory",
    )
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_unreadable_recipe(tmp_path):
    bad = tmp_path / "binary.yaml"
    bad.write_bytes(b"\xff\xfe\x00model: \x80\x81")
    _fails(["train", bad], EXIT_USAGE, "cannot read recipe", "not UTF-8")


def test_zero_learning_rate(train_args):
    _fails([*train_args, "--learning-rate", "0"], EXIT_USAGE, "training.learning_rate", "greater than 0")


def test_fp16_and_bf16_together():
    _fails(
        ["validate", "training.fp16=true", "training.bf16=true", "--schema-only"],
        EXIT_USAGE,
        "training.precision",
        "exclude each other",
    )


def test_deepspeed_with_sam():
    _fails(
        ["validate", "training.deepspeed=ds_config.json", "--schema-only"],
        EXIT_USAGE,
        "does not train with DeepSpeed",
        "FSDP2",
        "training.fsdp=true",
        "--nproc",
    )


def test_a_deepspeed_accelerate_config_is_refused_without_a_traceback(train_args, monkeypatch):
    """`accelerate launch --config_file ds.yaml -m samtune train ...` sets ACCELERATE_USE_DEEPSPEED."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    _fails(train_args, EXIT_USAGE, "does not support DeepSpeed", "FSDP2")


def test_fsdp_on_one_process_is_refused(train_args):
    """FSDP shards over several processes; asked for on one, it is refused before training (not a traceback)."""
    _fails([*train_args, "training.fsdp=true"], EXIT_USAGE, "FSDP shards the model over several processes", "--nproc")


def test_fsdp_on_cpu_processes_is_refused_not_trained_unsharded(train_args, tmp_path):
    """On CPU processes Accelerate would drop training.fsdp and train plain DDP: refused, exit 2, one message."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "samtune", *map(str, train_args), "training.fsdp=true", "--nproc", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == EXIT_USAGE, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout + done.stderr
    assert "would train unsharded" in out and "training.fsdp=false" in out and "Traceback" not in out


def test_output_dir_that_cannot_be_created(train_args, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    args = [a if a != tmp_path / "run" else blocker / "run" for a in train_args]
    _fails(args, EXIT_USAGE, "cannot be created", "is a file")


def test_corrupt_image_is_named(image_model_dir, image_folder, tmp_path):
    broken = image_folder / "red" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    out = tmp_path / "run"
    _fails(
        ["train", "--model", image_model_dir, "--dataset", image_folder, "--output-dir", out],
        EXIT_DATA,
        "cannot read the image",
        "broken.png",
    )
    assert not out.exists()


def test_an_image_over_the_decompression_bomb_limit_is_a_data_error_naming_it(
    image_model_dir, image_folder, tmp_path, monkeypatch
):
    _decompression_bomb(image_folder / "red" / "huge.png", monkeypatch)
    out = tmp_path / "run"
    _fails(
        ["train", "--model", image_model_dir, "--dataset", image_folder, "--output-dir", out],
        EXIT_DATA,
        "cannot read the image",
        "huge.png",
        "decompression bomb",
    )
    assert not out.exists()


def test_non_image_files_in_an_image_folder(image_model_dir, image_folder):
    (image_folder / "blue" / "notes.txt").write_text("remember to label more")
    _fails(["train", "--model", image_model_dir, "--dataset", image_folder], EXIT_DATA, "not images", "notes.txt")


def test_init_from_a_run_on_other_labels(text_model_dir, text_csv, tmp_path):
    from samtune.recipe import build_recipe
    from samtune.runner import train

    rows = [{"text": r["text"], "label": {"pos": "yes", "neg": "no"}[r["label"]]} for r in text_examples(40)]
    other = write_csv(tmp_path / "other.csv", rows)
    first = train(
        build_recipe(
            {
                "model": {"name": str(text_model_dir)},
                "data": {"dataset": str(other)},
                "training": {"max_steps": 1},
                "sam": {"start": 0},  # one step: SAM from the first
                "output": {"dir": str(tmp_path / "first")},
            }
        )
    )
    _fails(
        [
            "train",
            "--model",
            text_model_dir,
            "--init-from",
            first.run_dir,
            "--dataset",
            text_csv,
            "--output-dir",
            tmp_path / "second",
        ],
        EXIT_DATA,
        "trained on 2 labels (no, yes)",
        "neg, pos",
    )
    assert not (tmp_path / "second").exists()


def test_empty_after_dropping_rows_without_text(text_model_dir, tmp_path):
    f = tmp_path / "blank.csv"
    f.write_text("text,label\n,pos\n,neg\n")
    _fails(["train", "--model", text_model_dir, "--dataset", f], EXIT_DATA, "empty")


def test_missing_image_column(image_model_dir, tmp_path):
    f = write_csv(tmp_path / "paths.csv", [{"picture": f"{i}.png", "label": i % 2} for i in range(10)])
    _fails(["train", "--model", image_model_dir, "--dataset", f], EXIT_DATA, "no image column", "data.image_column")


def test_model_not_found_online_wording(monkeypatch):
    from samtune import modeling

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    err = modeling._not_found("someone/no-such-model", OSError("404"))
    assert "could not be loaded from the Hub" in err.message and "huggingface.co/models" in err.hint
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE=1" in modeling._not_found("someone/no-such-model", OSError("offline")).hint


def test_resume_and_overwrite_together(train_args):
    _fails([*train_args, "--resume", "auto", "--overwrite"], EXIT_USAGE, "contradict")


def test_overwrite_never_deletes_a_folder_that_only_has_a_config_yaml(text_model_dir, text_csv, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text("my: project\n")
    (project / "notes.md").write_text("keep me")
    _fails(
        ["train", "--model", text_model_dir, "--dataset", text_csv, "--output-dir", project, "--overwrite"],
        EXIT_USAGE,
        "not a samtune run directory",
    )
    assert (project / "notes.md").exists() and (project / "config.yaml").exists()


def test_resume_from_a_checkpoint_of_another_directory(train_args, tmp_path):
    ckpt = tmp_path / "other" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    _fails([*train_args, "--resume", ckpt], EXIT_USAGE, "belongs to", "--output-dir")


def _unreachable_hub(*args, **kwargs):
    """What transformers raises with no network: an OSError over huggingface_hub's error over a DNS failure."""
    import socket

    try:
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except socket.gaierror as dns:
            raise RuntimeError("An error happened while trying to locate the file on the Hub") from dns
    except RuntimeError as hub_error:
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from hub_error


def test_no_network_says_the_hub_could_not_be_reached_not_that_the_model_is_unknown(monkeypatch, tmp_path, text_csv):
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", _unreachable_hub)
    result = _fails(
        ["train", "--model", "org/some-model", "--dataset", text_csv, "--output-dir", tmp_path / "run"],
        EXIT_USAGE,
        "the Hugging Face Hub could not be reached (Name or service not known)",
        "HF_HUB_OFFLINE=1 uses what is already in the local cache",
    )
    assert "not found" not in result.output


def test_an_id_the_hub_does_not_know_is_still_not_found(monkeypatch, tmp_path, text_csv):
    import transformers

    def unknown(*args, **kwargs):
        raise OSError(
            "org/typo is not a local folder and is not a valid model identifier listed on 'https://huggingface.co/models'"
        )

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", unknown)
    # The Hub's name resolves (as where there is a network): the Hub itself answers that it does not know the id.
    import socket

    from samtune import network

    monkeypatch.setattr(
        socket, "getaddrinfo", lambda *a, **kw: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 443))]
    )
    monkeypatch.setattr(network, "_found", [])
    _fails(
        ["train", "--model", "org/typo", "--dataset", text_csv, "--output-dir", tmp_path / "run"],
        EXIT_USAGE,
        "model 'org/typo' not found",
        "huggingface.co/models",
    )


# ---- where results are written: a read-only run, a full disk -------------------------------

MEASURE_SMALL = ["--batches", "1", "--batch-size", "4", "--grid", "3", "--samples", "2", "--rho", "0.05"]


@pytest.fixture
def finished_run(text_model_dir, text_csv, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(text_csv),
            "--output-dir",
            str(run),
            "--max-steps",
            "2",
            "training.batch_size=8",
        ],
    )
    assert result.exit_code == 0, result.output
    return run


def _samtune(*args, wrapper: tuple[str, ...] = (), file_limit: int | None = None) -> subprocess.CompletedProcess:
    """`python -m samtune ARGS`, under `wrapper` (a command that runs the rest) and a file-size limit in bytes."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "300"}
    return subprocess.run(
        [*wrapper, sys.executable, "-m", "samtune", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit if file_limit else None,
    )


def test_eval_and_sharpness_refuse_a_read_only_run_before_loading_anything(finished_run, tmp_path, text_csv):
    """The run is mounted read-only (a user and mount namespace: root or not, writing there fails). With data that
    does not exist, the refusal still comes first: nothing was loaded before it."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("user namespaces are not available here (unshare -rm)")
    mount = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && shift && exec "$@"'
    read_only = ("unshare", "-rm", "sh", "-c", mount, str(finished_run), "_")
    missing = tmp_path / "missing.csv"
    commands = (
        ["eval", finished_run, "--dataset", text_csv],
        ["eval", finished_run, "--dataset", missing],
        ["sharpness", finished_run, *MEASURE_SMALL],
        ["sharpness", finished_run, "--dataset", missing],
    )
    with ThreadPoolExecutor(max_workers=2) as pool:  # one thread each (OMP_NUM_THREADS=1): two at a time
        finished = list(pool.map(lambda args: _samtune(*args, wrapper=read_only), commands))
    for args, done in zip(commands, finished):
        said = " ".join((done.stdout + done.stderr).split())
        assert done.returncode == EXIT_USAGE, (args, said)
        assert "read-only" in said.lower() and str(finished_run) in said and "Traceback" not in said, said
    assert not (finished_run / "sharpness.json").exists()


def test_a_full_disk_while_saving_a_checkpoint_names_the_file(text_model_dir, text_csv, tmp_path):
    """A file-size limit (ulimit -f) that the model's weights fit under and its optimizer state (AdamW's two moments:
    about twice the weights) does not; torch.save's own message names neither the cause nor the file."""
    run = tmp_path / "run"
    done = _samtune(
        "train",
        "--model",
        text_model_dir,
        "--dataset",
        text_csv,
        "--output-dir",
        run,
        "--max-steps",
        "2",
        "training.batch_size=8",
        "training.eval_strategy=steps",
        "training.eval_steps=1",
        file_limit=(text_model_dir / "model.safetensors").stat().st_size * 3 // 2,
    )
    said = " ".join(done.stderr.split())
    assert done.returncode == EXIT_TRAINING, said
    assert str(run / "checkpoint-1" / "optimizer.pt") in said and "File too large" in said, said
    assert "inline_container" not in said and "Traceback" not in said


def test_a_full_disk_while_writing_results_names_the_file_and_keeps_the_numbers(finished_run, text_csv, monkeypatch):
    import errno

    from matplotlib.figure import Figure

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", no_space)
    evaluated = _fails(["eval", finished_run, "--dataset", text_csv], EXIT_TRAINING, os.strerror(errno.ENOSPC))
    said = " ".join(evaluated.output.split())
    assert "eval_accuracy" in said  # the table was printed before the figure
    assert f"{finished_run}/eval-reviews-" in said and "confusion_matrix.png" in said
    measured = _fails(["sharpness", finished_run, *MEASURE_SMALL], EXIT_TRAINING, os.strerror(errno.ENOSPC))
    assert str(finished_run / "landscape_1d.png") in " ".join(measured.output.split())
    assert json.loads((finished_run / "sharpness.json").read_text())["settings"]["examples"] == 4  # the numbers kept
    assert not [p for p in finished_run.iterdir() if p.name.endswith(".tmp.png")]  # no half-written figure left


def test_a_full_disk_while_saving_the_finished_run_says_its_metrics_and_how_to_finish(
    text_model_dir, text_csv, tmp_path, monkeypatch
):
    """The card is written after the model; metrics.json, the mark of a finished run, last of all."""
    import errno

    import samtune.card

    def no_space(run_dir, facts):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run_dir / "README.md"))

    monkeypatch.setattr(samtune.card, "write_model_card", no_space)
    run = tmp_path / "run"
    result = _fails(
        [
            "train",
            "--model",
            text_model_dir,
            "--dataset",
            text_csv,
            "--output-dir",
            run,
            "--max-steps",
            "2",
            "training.batch_size=8",
        ],
        EXIT_TRAINING,
        os.strerror(errno.ENOSPC),
    )
    said = " ".join(result.output.split())
    assert f"could not write {run / 'README.md'}" in said and "eval_accuracy 0." in said and "--resume auto" in said
    assert not (run / "metrics.json").exists()


def test_an_empty_sam_window_is_refused_before_the_run_directory_is_written(train_args, tmp_path):
    """sam.stop=5 with the default start (after 10% of the steps) on a 60-step run: SAM would take no step."""
    _fails(
        [*train_args, "--max-steps", "60", "sam.stop=5"],
        EXIT_USAGE,
        "start=0.1 puts its first step at step 7",
        "stop=5 its last at step 5",
        "sam.start",
    )
    assert not (tmp_path / "run").exists()


def test_a_folder_that_is_no_run_is_refused_before_torch_loads(tmp_path):
    """eval, predict and sharpness on a mistyped or unfinished run directory: exit 2 naming it, without importing
    torch or transformers first (about 12 s on 2 cores, before a refusal that reads one file)."""
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    (folder / "config.yaml").write_text("task: auto\n")  # an unfinished run has its recipe, no model
    script = f"""
import sys
from typer.testing import CliRunner
from samtune.cli import app

folder, typo = {str(folder)!r}, {str(folder) + "s"!r}
for args, named, what in (
    (["eval", folder, "--dataset", "reviews.csv"], folder, "is not a samtune run directory"),
    (["predict", folder, "--text", "a text"], folder, "is not a samtune run directory"),
    (["sharpness", folder], "RUN_DIR " + folder, "is not a samtune run directory"),
    (["eval", typo, "--dataset", "reviews.csv"], typo, "does not exist"),
):
    done = CliRunner().invoke(app, args)
    said = " ".join(done.output.split())
    assert done.exit_code == 2 and f"{{named}} {{what}}" in said and "Traceback" not in said, (args, said)
loaded = sorted({{"torch", "transformers", "datasets", "peft"}} & set(sys.modules))
assert not loaded, loaded
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "300"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

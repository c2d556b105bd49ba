"""training.report_to: the Trainer's tracker integrations, with SAM's own values in the logs."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from samtune.optim.settings import default_of
from samtune.cli import app
from samtune.errors import RecipeError
from samtune.recipe import build_recipe
from samtune.runner import training_arguments

runner = CliRunner()


def test_tensorboard_gets_the_loss_and_sams_values(tmp_path, text_model_dir, text_csv):
    pytest.importorskip("tensorboard", reason="the test extra installs tensorboard; without it there is no reader")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(text_csv),
            "--output-dir",
            str(out),
            "--max-steps",
            "4",
            "training.logging_steps=2",
            "training.report_to=tensorboard",
            "training.run_name=tb-check",
            "sam.variant=sam",  # the exact step logs its sharpness (the default's quarter-batch climb cannot)
        ],
    )
    assert result.exit_code == 0, result.output
    events = sorted(out.glob("runs/*/events.out.tfevents.*"))
    assert events, sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    scalars: dict[str, list[float]] = {}
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    assert {"train/loss", "train/sam_rho", "train/sam_sharpness"} <= set(scalars)
    assert len(scalars["train/sam_rho"]) == 2 and all(
        0 <= v <= default_of("rho") + 1e-9 for v in scalars["train/sam_rho"]
    )


def test_the_trainer_receives_the_trackers_and_the_run_name(tmp_path):
    recipe = build_recipe({"name": "mine", "training": {"report_to": ["tensorboard"]}})
    args, _ = training_arguments(recipe, tmp_path, "text-classification")
    assert args.report_to == ["tensorboard"] and args.run_name == "mine"
    quiet, _ = training_arguments(build_recipe({}), tmp_path, "text-classification")
    assert quiet.report_to == []


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("tensorbord", "did you mean 'tensorboard'"),
        ("wandb", "pip install wandb"),
        ("mlflow", "pip install mlflow"),
    ],
)
def test_unknown_or_missing_trackers_are_recipe_errors(value, says, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("wandb", "mlflow") else real(name, *a)
    )
    with pytest.raises(RecipeError, match=says):
        build_recipe({}, [f"training.report_to={value}"])

"""`samtune compare`: arms trained on the same seeds and data order, compared from their own files."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import text_examples, write_csv
from typer.testing import CliRunner

from samtune.analysis.compare import DEFAULT_ARMS, arm_sam, parse_arms, plan_runs, rank_arms, read_arms
from samtune.analysis.comparison import QUALITY, RunRef, best_arm_line, build_report, comparison_table
from samtune.analysis.comparison import curves_pixel_size
from samtune.analysis.paired import bootstrap_interval, paired_difference, paired_t_test, summarise
from samtune.cli import app
from samtune.errors import EXIT_DATA, EXIT_INTERRUPTED, EXIT_USAGE, RecipeError, UsageError
from samtune.optim.settings import default_of, sam_window
from samtune.recipe import SAMSection

runner = CliRunner()
SEEDS = (42, 43)
ARMS = ("adamw", "sam")
# Four optimizer steps on 32 examples (one epoch of batches of 8), evaluated at steps 2 and 4.
TINY = {
    "training": {
        "max_steps": 4,
        "batch_size": 8,
        "learning_rate": 5e-3,
        "eval_strategy": "steps",
        "eval_steps": 2,
        "logging_steps": 1,
        "save_strategy": "no",
        "load_best_model_at_end": False,
    },
}


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _recipe(folder: Path, model_dir: Path, csv: Path) -> Path:
    recipe = folder / "tiny.yaml"
    raw = {
        "name": "tiny",
        "model": {"name": str(model_dir), "max_length": 16},
        "data": {"dataset": str(csv), "max_train_samples": 32},
        **TINY,
    }
    recipe.write_text(yaml.safe_dump(raw))
    return recipe


@pytest.fixture(scope="module")
def compared(tmp_path_factory, text_model_dir):
    """One real comparison, 2 arms x 2 seeds, recording the first two batches each run trained on."""
    from samtune.trainer import SAMTrainer

    folder = tmp_path_factory.mktemp("compare")
    recipe = _recipe(folder, text_model_dir, write_csv(folder / "reviews.csv", text_examples(80)))
    out = folder / "cmp"
    seen: dict[Path, list[tuple[list, list]]] = {}
    original = SAMTrainer.training_step

    def recording(self, model, inputs, *args, **kwargs):
        batches = seen.setdefault(Path(self.args.output_dir).relative_to(out), [])
        if len(batches) < 2:
            batches.append((inputs["input_ids"].tolist(), inputs["labels"].tolist()))
        return original(self, model, inputs, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SAMTrainer, "training_step", recording)
        result = cli("compare", recipe, "--arms", ",".join(ARMS), "--seeds", len(SEEDS), "--output-dir", out)
    assert result.exit_code == 0, result.output
    return out, recipe, result.output, seen


def _metrics(out: Path, arm: str, seed: int) -> dict:
    return json.loads((out / arm / f"seed-{seed}" / "metrics.json").read_text())


def test_comparison_numbers_come_from_each_runs_metrics_json(compared):
    out, _, output, _ = compared
    report = json.loads((out / "comparison.json").read_text())
    assert report["settings"]["seeds"] == list(SEEDS) and report["settings"]["arms"] == list(ARMS)
    assert "paired t-test" in report["settings"]["test"] and "bootstrap" in report["settings"]["interval"]
    for record in report["runs"]:
        assert record["metrics"] == _metrics(out, record["arm"], record["seed"])
        assert Path(record["run_dir"]) == out / record["arm"] / f"seed-{record['seed']}"
    for arm in ARMS:
        computed = [m for m in QUALITY if m.startswith("eval_") and m in report["arms"][arm]["metrics"]]
        assert computed == ["eval_accuracy", "eval_f1", "eval_loss"]  # a classification run's
        for metric in (*computed, "train_loss", "train_runtime", "wall_time"):
            values = [_metrics(out, arm, seed)[metric] for seed in SEEDS]
            summary = report["arms"][arm]["metrics"][metric]
            assert summary["values"] == values
            assert summary["mean"] == pytest.approx(statistics.fmean(values))
            assert summary["std"] == pytest.approx(statistics.stdev(values))
            if arm != "adamw":  # paired by seed with the baseline
                diffs = [a - b for a, b in zip(values, [_metrics(out, "adamw", s)[metric] for s in SEEDS])]
                paired = summary["vs_baseline"]
                assert paired["differences"] == pytest.approx(diffs)
                assert paired["mean"] == pytest.approx(statistics.fmean(diffs))
                assert paired["beyond_noise"] == (paired["p_value"] < 0.05)
            if metric.startswith("eval_"):  # the table prints the same numbers
                assert f"{summary['mean']:.4f} ± {summary['std']:.4f}" in output
        mean_time = statistics.fmean(_metrics(out, arm, s)["train_runtime"] for s in SEEDS)
        base_time = statistics.fmean(_metrics(out, "adamw", s)["train_runtime"] for s in SEEDS)
        assert report["arms"][arm]["cost_ratio"] == pytest.approx(mean_time / base_time)
        assert f"{mean_time / base_time:.2f}x" in output
    # the sam arm: exact SAM at the recipe's rho (here samtune's default, 0.1)
    assert report["arms"]["adamw"]["sam"]["rho"] == 0.0 and report["arms"]["sam"]["sam"]["rho"] == default_of("rho")
    assert report["arms"]["sam"]["sam"]["variant"] == "sam"
    for seed in SEEDS:  # the baseline never climbs, SAM at every one of its 4 steps in the default window
        assert _metrics(out, "adamw", seed)["sam_climb_steps"] == 0
        assert _metrics(out, "sam", seed)["sam_climb_steps"] == 4 - sam_window(default_of("start"), None, 4)[0]
    assert "comparison.json" in output and "learning_curves.png" in output


def test_arms_see_the_same_batches_on_a_seed_and_other_batches_on_another(compared):
    _, _, _, seen = compared
    assert set(seen) == {Path(arm) / f"seed-{seed}" for arm in ARMS for seed in SEEDS}
    for seed in SEEDS:
        first = seen[Path("adamw") / f"seed-{seed}"]
        assert len(first) == 2
        assert all(seen[Path(arm) / f"seed-{seed}"] == first for arm in ARMS)
    assert seen[Path("adamw") / f"seed-{SEEDS[0]}"] != seen[Path("adamw") / f"seed-{SEEDS[1]}"]


def test_learning_curves_png_has_its_pixel_size(compared):
    from PIL import Image

    out = compared[0]
    with Image.open(out / "learning_curves.png") as png:
        assert png.format == "PNG"
        assert png.size == curves_pixel_size() == (1350, 380)
        pixels = np.asarray(png.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # drawn on, not a blank canvas


def test_a_finished_comparison_is_refused_then_resumed_without_training(compared):
    out, recipe, _, _ = compared
    args = ("compare", recipe, "--arms", ",".join(ARMS), "--seeds", len(SEEDS), "--output-dir", out)
    again = cli(*args)
    assert again.exit_code == EXIT_USAGE and "exists and is not empty" in again.output and "--resume" in again.output
    before = json.loads((out / "comparison.json").read_text())
    resumed = cli(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.count("finished earlier, kept") == len(ARMS) * len(SEEDS)
    assert json.loads((out / "comparison.json").read_text())["arms"] == before["arms"]
    changed = cli(*args, "--resume", "training.learning_rate=1e-3")
    assert changed.exit_code == EXIT_USAGE and "training.learning_rate" in changed.output


def test_unknown_arm_exits_2_naming_the_valid_arms(tmp_path, text_model_dir):
    recipe = _recipe(tmp_path, text_model_dir, write_csv(tmp_path / "r.csv", text_examples(40)))
    result = cli("compare", recipe, "--arms", "adamw,sharp,asm", "--output-dir", tmp_path / "cmp")
    assert result.exit_code == EXIT_USAGE
    assert "unknown arm 'sharp'" in result.output and "unknown arm 'asm'" in result.output
    for name in ("adamw", "sam", "asam", "every_k", "looksam", "ascent_fraction", "rst", "aesam"):
        assert name in result.output
    assert "Traceback" not in result.output and not (tmp_path / "cmp").exists()


def test_overwrite_deletes_only_a_comparison(tmp_path, text_model_dir):
    recipe = _recipe(tmp_path, text_model_dir, write_csv(tmp_path / "r.csv", text_examples(40)))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = cli("compare", recipe, "--output-dir", tmp_path / "mine", "--overwrite")
    assert result.exit_code == EXIT_USAGE and "not a samtune comparison" in result.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def _previous_comparison(out: Path) -> dict[Path, str]:
    """A finished comparison's files (its mark, comparison.json, a run of an arm the next one may not have)."""
    from samtune.analysis.compare import COMPARE_MARK
    from samtune.rundir import RUN_MARK

    files = {
        out / COMPARE_MARK: "written by samtune compare; --overwrite may replace this folder\n",
        out / "comparison.json": '{"arms": {"sam": {}}}',
        out / "sam-rho=0.3" / "seed-42" / RUN_MARK: "x",
        out / "sam-rho=0.3" / "seed-42" / "metrics.json": "{}",
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return files


def test_overwrite_keeps_the_previous_comparison_when_the_new_data_is_refused(tmp_path, text_model_dir):
    one_class = write_csv(tmp_path / "one.csv", [{**row, "label": "pos"} for row in text_examples(40)])
    out = tmp_path / "cmp"
    previous = _previous_comparison(out)
    result = cli("compare", _recipe(tmp_path, text_model_dir, one_class), "--output-dir", out, "--overwrite")
    assert result.exit_code == EXIT_DATA, result.output
    assert {p: p.read_text() for p in previous if p.is_file()} == previous


def test_overwrite_replaces_the_previous_comparison_once_the_first_run_is_accepted(tmp_path, text_model_dir):
    out = tmp_path / "cmp"
    _previous_comparison(out)
    recipe = _recipe(tmp_path, text_model_dir, write_csv(tmp_path / "r.csv", text_examples(40)))
    result = cli("compare", recipe, "--arms", "adamw", "--seeds", 1, "--output-dir", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (out / "sam-rho=0.3").exists()
    assert list(json.loads((out / "comparison.json").read_text())["arms"]) == ["adamw"]
    assert (out / "adamw" / "seed-42" / "metrics.json").is_file()


def test_a_failed_run_is_named_by_arm_and_seed_with_its_exit_code(tmp_path, text_model_dir):
    csv = write_csv(tmp_path / "r.csv", [{"words": row["text"], "label": row["label"]} for row in text_examples(40)])
    recipe = _recipe(tmp_path, text_model_dir, csv)
    result = cli("compare", recipe, "data.text_column=text", "--output-dir", tmp_path / "cmp")
    assert result.exit_code == EXIT_DATA, result.output
    assert "adamw, seed 42:" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "cmp").exists()  # nothing was written: the fixed command runs without --resume


def test_ctrl_c_keeps_finished_runs_and_says_how_to_continue(tmp_path, text_model_dir, monkeypatch):
    import samtune.runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(samtune.runner, "train", interrupted)
    recipe = _recipe(tmp_path, text_model_dir, write_csv(tmp_path / "r.csv", text_examples(40)))
    result = cli("compare", recipe, "--output-dir", tmp_path / "cmp")
    assert result.exit_code == EXIT_INTERRUPTED
    assert "stopped during adamw, seed 42" in result.output and "--resume" in result.output


# ---- the arms, without training ------------------------------------------------------------


def test_arms_parse_in_order_with_the_baseline_first():
    assert parse_arms("sam, asam,sam") == ["adamw", "sam", "asam"]
    assert parse_arms(["looksam", "adamw"]) == ["looksam", "adamw"]
    with pytest.raises(UsageError, match="did you mean 'asam'|Did you mean 'asam'"):
        parse_arms("adamw,assam")


def test_each_arm_takes_its_sam_settings_from_the_recipe():
    plain, asam_recipe, none = SAMSection(rho=0.1), SAMSection(rho=1.0, adaptive=True), SAMSection(rho=0.0)
    assert arm_sam("adamw", plain) == {"rho": 0.0, "adaptive": False, "variant": "sam"}
    assert arm_sam("sam", plain) == {"rho": 0.1, "adaptive": False, "variant": "sam"}
    assert arm_sam("sam", none)["rho"] == 0.05  # a rho-0 recipe still compares against SAM
    assert arm_sam("asam", plain) == {"rho": 0.5, "adaptive": True, "variant": "sam"}
    assert arm_sam("asam", asam_recipe) == {"rho": 1.0, "adaptive": True, "variant": "sam"}
    assert arm_sam("looksam", plain) == {"rho": 0.1, "adaptive": False, "variant": "looksam"}
    # the recipe arm: the recipe's SAM as train runs it, its variant included
    assert arm_sam("recipe", plain) == {"rho": 0.1, "adaptive": False, "variant": "ascent_fraction"}
    every = SAMSection(rho=0.2, variant="every_k", every_k=3)
    assert arm_sam("recipe", every) == {"rho": 0.2, "adaptive": False, "variant": "every_k"}


def test_by_default_compare_trains_the_recipe_as_it_stands_against_adamw():
    """`samtune compare RECIPE` with no --arms: AdamW against what `samtune train RECIPE` trains (samtune's default
    is the quarter-batch climb), its own settings (of its variant too) kept; a recipe arm's settings go on top."""
    plan = plan_runs(RAW, ["sam.ascent_fraction=0.5"], DEFAULT_ARMS, seeds=1)
    sam = {r.arm: r.recipe.sam for r in plan.runs}
    assert list(sam) == ["adamw", "recipe"]
    recipe = sam["recipe"]
    assert (recipe.variant, recipe.ascent_fraction, recipe.rho) == ("ascent_fraction", 0.5, default_of("rho"))
    assert (recipe.schedule, recipe.start) == (default_of("schedule"), default_of("start"))
    looksam = {**RAW, "sam": {"variant": "looksam", "looksam_k": 3, "rho": 0.07}}
    runs = plan_runs(looksam, [], "adamw,recipe:looksam_k=4,start=0.5", seeds=1).runs
    mine = runs[1].recipe.sam
    assert (mine.variant, mine.looksam_k, mine.rho, mine.start) == ("looksam", 4, 0.07, 0.5)


def test_a_variant_setting_reaches_only_its_own_arm(tmp_path):
    raw = {"name": "r", "model": {"name": "m"}, "data": {"dataset": "d.csv"}, "sam": {"rho": 0.1}}
    plan = plan_runs(raw, ["sam.looksam_k=3", "training.seed=7"], "adamw,sam,looksam", seeds=2)
    out, runs = plan.output_dir, plan.runs
    assert out == Path("runs") / "r-compare"
    assert [(r.arm, r.seed) for r in runs] == [(a, s) for s in (7, 8) for a in ("adamw", "sam", "looksam")]
    by_arm = {r.arm: r.recipe.sam for r in runs}
    assert by_arm["looksam"].looksam_k == 3 and by_arm["looksam"].rho == 0.1
    assert by_arm["sam"].variant == "sam" and "looksam_k" not in by_arm["sam"].model_fields_set
    assert runs[-1].run_dir == out / "looksam" / "seed-8"


# ---- arms with their own settings -----------------------------------------------------------

RAW = {"name": "r", "model": {"name": "m"}, "data": {"dataset": "d.csv"}, "sam": {"rho": 0.1, "schedule": "lr"}}


def test_arms_with_settings_parse_a_comma_after_an_arm_as_its_setting():
    arms, problems = read_arms("adamw,sam:rho=0.01,sam:schedule=lr,start=0.1,looksam:looksam_k=3,sam")
    assert problems == []
    assert [a.name for a in arms] == [
        "adamw",
        "sam:rho=0.01",
        "sam:schedule=lr,start=0.1",
        "looksam:looksam_k=3",
        "sam",
    ]
    assert arms[2].values() == {"schedule": "lr", "start": 0.1} and arms[1].folder == "sam-rho=0.01"
    params, problems = read_arms(["sam:params=encoder.*,!*.bias,rho=0.02", "asam:sam.rho=1"])
    assert problems == [] and [a.name for a in params] == [
        "adamw",
        "sam:params=encoder.*,!*.bias,rho=0.02",
        "asam:rho=1",
    ]
    assert params[1].values() == {"params": "encoder.*,!*.bias", "rho": 0.02}


def test_each_arm_trains_the_recipe_with_its_own_settings_on_top():
    plan = plan_runs(
        RAW,
        ["training.seed=3"],
        "sam,sam:rho=0.02,start=0.25,sam:schedule=constant,every_k:every_k=4,asam:rho=1.5",
        seeds=1,
    )
    sam = {r.arm: r.recipe.sam for r in plan.runs}
    assert list(sam) == [
        "adamw",
        "sam",
        "sam:rho=0.02,start=0.25",
        "sam:schedule=constant",
        "every_k:every_k=4",
        "asam:rho=1.5",
    ]
    assert sam["adamw"].rho == 0.0
    assert (sam["sam"].rho, sam["sam"].schedule, sam["sam"].start) == (0.1, "lr", default_of("start"))  # the recipe's
    assert (sam["sam:rho=0.02,start=0.25"].rho, sam["sam:rho=0.02,start=0.25"].start) == (0.02, 0.25)
    assert sam["sam:rho=0.02,start=0.25"].schedule == "lr"  # not set by the arm: the recipe's
    assert sam["sam:schedule=constant"].schedule == "constant" and sam["sam:schedule=constant"].rho == 0.1
    assert (sam["every_k:every_k=4"].variant, sam["every_k:every_k=4"].every_k) == ("every_k", 4)
    assert (sam["asam:rho=1.5"].adaptive, sam["asam:rho=1.5"].rho) == (True, 1.5)
    dirs = {r.arm: r.run_dir for r in plan.runs}
    assert dirs["sam:rho=0.02,start=0.25"] == Path("runs") / "r-compare" / "sam-rho=0.02,start=0.25" / "seed-3"
    assert len(set(dirs.values())) == len(dirs)


def test_every_problem_in_every_arm_is_reported_at_once():
    arms = (
        "sharp,sam:rho=-1,sam:looksam_k=3,adamw:rho=0.1,sam:rhoo=1,sam:schedule=cosine,asam:adaptive=false,"
        "sam:start=0.5,stop=0.2,every_k:every_k=0,sam:variant=rst,sam:rho"
    )
    with pytest.raises(RecipeError) as caught:
        plan_runs(RAW, [], arms, seeds=1)
    problems = caught.value.problems
    expected = [
        "unknown arm 'sharp'",
        "arm 'sam:rho=-1': rho: should be greater than or equal to 0 (got -1)",
        "'looksam_k' is a setting of the looksam arm",
        "the adamw arm is the baseline",
        "unknown SAM setting 'rhoo' in arm 'sam'",
        "schedule: must be 'constant' or 'lr' (got 'cosine')",
        "asam arm is adaptive by definition",
        "arm 'sam:start=0.5,stop=0.2': stop (0.2) must come after start",
        "every_k: should be greater than or equal to 1 (got 0)",
        "the arm's name sets its variant",
        "'rho' is not KEY=VALUE",
    ]
    for text in expected:
        assert sum(text in p for p in problems) == 1, (text, problems)
    assert len(problems) == len(expected) and "(did you mean 'rho'?)" in problems[3]
    assert any(p.startswith("arm 'sam:schedule=cosine': ") for p in problems)  # a value problem names its arm


def test_a_bad_arm_exits_2_with_every_problem_and_writes_nothing(tmp_path, text_model_dir):
    recipe = _recipe(tmp_path, text_model_dir, write_csv(tmp_path / "r.csv", text_examples(40)))
    result = cli("compare", recipe, "--arms", "adamw,sam:rho=-1,sam:schedul=lr", "--output-dir", tmp_path / "cmp")
    assert result.exit_code == EXIT_USAGE
    assert (
        "2 problems in --arms" in result.output and "rho: should be" in result.output and "'schedul'" in result.output
    )
    assert "Traceback" not in result.output and not (tmp_path / "cmp").exists()


def _fake_runs(root: Path, metrics: dict[str, list[dict[str, float]]]) -> list[RunRef]:
    """Run folders holding only a metrics.json each: arm -> one metrics mapping per seed."""
    refs = []
    for arm, per_seed in metrics.items():
        for seed, values in enumerate(per_seed):
            folder = root / arm.replace(":", "-") / f"seed-{seed}"
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps({**values, "sam_rho": 0.05}))
            refs.append(RunRef(arm, seed, folder))
    return refs


def test_arms_are_ranked_on_validation_never_on_test(tmp_path):
    # sam:rho=0.02 is best on validation, sam:rho=0.1 on test: the ranking follows validation only.
    evals = {
        "adamw": [0.70, 0.72, 0.71],
        "sam": [0.70, 0.72, 0.74],
        "sam:rho=0.02": [0.74, 0.75, 0.73],
        "sam:rho=0.1": [0.60, 0.62, 0.61],
    }
    tests = {"adamw": 0.70, "sam": 0.70, "sam:rho=0.02": 0.65, "sam:rho=0.1": 0.90}
    metrics = {
        a: [{"eval_accuracy": v, "eval_loss": 1 - v, "test_accuracy": tests[a] + i / 100} for i, v in enumerate(vals)]
        for a, vals in evals.items()
    }
    report = build_report(_fake_runs(tmp_path, metrics), {"recipe": "r"})
    ranking = rank_arms(report, "accuracy")
    assert ranking["order"] == ["sam:rho=0.02", "sam", "adamw", "sam:rho=0.1"]  # means 0.74, 0.72, 0.71, 0.61
    assert ranking["best"] == "sam:rho=0.02" and ranking["metric"] == "eval_accuracy"
    assert rank_arms(report, "loss")["order"] == ranking["order"]  # lower loss first: the same order here
    report["ranking"] = ranking
    line = best_arm_line(report)
    assert line.startswith("best on validation: sam:rho=0.02 (eval_accuracy 0.7400 ± 0.0100 over 3 seeds")
    assert "adamw 0.7100" in line and "paired Δ +0.0300" in line
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(comparison_table(report))
    valid = console.export_text()
    console.print(comparison_table(report, split="test"))
    test = console.export_text()  # what was printed since the first export
    assert "test_accuracy" not in valid and "eval_accuracy" in valid
    said = " ".join(test.split())  # the caption wraps at the table's width
    assert "test_accuracy" in test and "eval_accuracy" not in test and "not used to rank or choose" in said
    rows = [line for line in valid.splitlines() if "eval_accuracy" in line and line.split()[0].isdigit()]
    assert [r.split()[1] for r in rows] == ranking["order"]  # printed in rank order, numbered 1..4
    report["arms"]["sam"]["cost_ratio"] = 1.85  # its training time / adamw's: printed beside its gain
    console.print(comparison_table(report))
    rows = [line for line in console.export_text().splitlines() if "eval_accuracy" in line]
    assert next(r for r in rows if r.split()[1] == "sam").rstrip().endswith("1.85x")


def test_a_comparison_of_arms_with_settings_trains_each_and_names_the_best(tmp_path, text_model_dir):
    recipe = _recipe(tmp_path, text_model_dir, write_csv(tmp_path / "r.csv", text_examples(80)))
    out = tmp_path / "cmp"
    result = cli("compare", recipe, "--arms", "sam:rho=0.02,schedule=lr,start=0.5", "--seeds", 1, "--output-dir", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "comparison.json").read_text())
    arm = "sam:rho=0.02,schedule=lr,start=0.5"
    assert report["settings"]["arms"] == ["adamw", arm]
    assert (report["arms"][arm]["sam"]["rho"], report["arms"][arm]["sam"]["schedule"]) == (0.02, "lr")
    saved = yaml.safe_load((out / "sam-rho=0.02,schedule=lr,start=0.5" / "seed-42" / "config.yaml").read_text())
    assert saved["sam"]["rho"] == 0.02 and saved["sam"]["start"] == 0.5 and saved["sam"]["schedule"] == "lr"
    metrics = json.loads((out / "sam-rho=0.02,schedule=lr,start=0.5" / "seed-42" / "metrics.json").read_text())
    assert metrics["sam_climb_steps"] == 2  # SAM on the second half of the 4 steps only
    assert report["ranking"]["best"] in ("adamw", arm) and set(report["ranking"]["order"]) == {"adamw", arm}
    assert "best on validation: " + report["ranking"]["best"] in result.output


# ---- the statistics, against independent computations -------------------------------------


def _student_t3_cdf(t: float) -> float:
    """Student's t CDF with 3 degrees of freedom, in closed form."""
    x = t / math.sqrt(3)
    return 0.5 + (x / (1 + x * x) + math.atan(x)) / math.pi


def test_paired_t_test_matches_the_hand_computation():
    # d = 1, 2, 3, 4: mean 2.5, sample variance 5/3, so t = 2.5 / sqrt(5/3 / 4) = sqrt(15), 3 degrees of freedom.
    t, p = paired_t_test([1.0, 2.0, 3.0, 4.0])
    assert t == pytest.approx(math.sqrt(15))
    assert p == pytest.approx(2 * (1 - _student_t3_cdf(math.sqrt(15))))
    arm, base = [0.81, 0.84, 0.80, 0.86], [0.80, 0.82, 0.81, 0.83]
    from scipy.stats import ttest_rel

    ours = paired_difference(arm, base)
    theirs = ttest_rel(arm, base)
    assert ours.t == pytest.approx(theirs.statistic) and ours.p_value == pytest.approx(theirs.pvalue)
    assert ours.beyond_noise == (theirs.pvalue < 0.05)


def test_no_test_with_one_seed_and_exact_answers_without_spread():
    one = paired_difference([0.9], [0.8])
    assert one.p_value is None and one.beyond_noise is None and one.ci_low is None and one.std is None
    assert one.mean == pytest.approx(0.1)
    assert paired_t_test([0.0, 0.0, 0.0]) == (None, 1.0)  # the same numbers on every seed: no difference
    assert paired_t_test([0.5, 0.5, 0.5]) == (None, 0.0)  # the same difference on every seed: beyond any noise


def test_bootstrap_interval_against_its_exact_distribution():
    # Two seeds: the resampled mean is a (1/4), (a+b)/2 (1/2) or b (1/4), so the 2.5% and 97.5% points are a and b.
    assert bootstrap_interval([-0.02, 0.06]) == pytest.approx((-0.02, 0.06))
    assert bootstrap_interval([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))
    assert bootstrap_interval([0.1]) is None
    d = [0.01, 0.03, -0.02, 0.05, 0.02, 0.04]
    low, high = bootstrap_interval(d)
    assert min(d) <= low < statistics.fmean(d) < high <= max(d)
    assert bootstrap_interval(d) == (low, high)  # seeded: the same interval every time


def test_summary_is_the_mean_and_sample_std():
    s = summarise([0.7, 0.8, 0.75])
    assert s.mean == pytest.approx(0.75) and s.std == pytest.approx(statistics.stdev([0.7, 0.8, 0.75]))
    assert summarise([0.7]).std is None


def test_an_arm_without_settings_of_its_own_shows_the_recipes_schedule_window_and_params():
    """`sam` under samtune's defaults is not the paper's SAM: its table label says so (a paper arm shows rho only)."""
    from samtune.analysis.comparison import _arm_label

    defaults = {
        "rho": 0.05,
        "adaptive": False,
        "variant": "sam",
        "schedule": "lr",
        "start": 0.1,
        "stop": None,
        "params": "all",
    }
    assert _arm_label("sam", defaults) == "sam\n[dim]rho=0.05 schedule=lr start=0.1[/dim]"
    paper = {**defaults, "schedule": "constant", "start": 0.0}
    assert _arm_label("sam", paper) == "sam\n[dim]rho=0.05[/dim]"
    body = {**paper, "params": "body", "stop": 0.5}
    assert _arm_label("asam", {**body, "adaptive": True}) == "asam\n[dim]rho=0.05 ASAM stop=0.5 params=body[/dim]"
    assert _arm_label("sam:rho=0.02", defaults) == "sam:rho=0.02"  # an arm with settings names them itself

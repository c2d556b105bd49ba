"""The cost-gain frontier (benchmarks/frontier.py): pass counts, the Pareto front, shares, run reuse, the report.

Climbing steps are counted here by hand from the window's arithmetic (`sam_window`: a fraction f of T steps
starts at step ceil(f T)) and each variant's rule, and checked once against what SAMTrainer itself counted
in a real (tiny) run. Run records are written by hand.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

frontier = pytest.importorskip("benchmarks.frontier")
finetune = frontier.finetune

PAPER = {"rho": 0.05, "sam_variant": "sam", "schedule": "constant", "start": 0.0}
T, WARMUP = 20, 2  # a 20-step run, linear schedule with 2 warmup steps (lr factor 0 at step 0 only)


def _climbs(**settings) -> int | None:
    return frontier.replay_climbs({**PAPER, **settings}, T, WARMUP, "linear", seed=0)


@pytest.mark.parametrize(
    ("settings", "hand"),
    [
        ({"rho": 0.0}, 0),  # AdamW
        ({}, 20),  # the paper's SAM: every step
        ({"schedule": "lr"}, 19),  # rho follows the lr: 0 at the warmup's first step, no climb there
        ({"schedule": "lr", "start": 0.1}, 18),  # today's default: steps 2..19
        ({"start": 0.5}, 10),  # steps 10..19
        ({"start": 0.7}, 6),  # 14..19
        ({"start": 0.8}, 4),  # 16..19
        ({"start": 0.5, "stop": 0.75}, 5),  # 10..14
        ({"start": 0.5, "sam_variant": "every_k", "every_k": 2}, 5),  # 10, 12, 14, 16, 18
        ({"start": 0.55, "sam_variant": "every_k", "every_k": 2}, 4),  # from 11: 12, 14, 16, 18
        ({"start": 0.5, "sam_variant": "looksam", "looksam_k": 5}, 2),  # 10, 15
        ({"start": 0.3, "sam_variant": "looksam", "looksam_k": 5}, 3),  # 6 (no direction yet), 10, 15
    ],
)
def test_replayed_climbs_are_the_hand_count(settings, hand):
    assert _climbs(**settings) == hand


def test_a_variant_deciding_on_the_gradient_needs_the_recorded_count():
    assert _climbs(sam_variant="aesam") is None
    record = {
        "task": {"batch_size": 16},
        "settings": {**PAPER, "sam_variant": "aesam"},
        "result": {"climb_steps": 7, "optimizer_steps": 20},
    }
    assert frontier.run_passes(record) == (1 + 7 / 20, "recorded")


@pytest.mark.parametrize(("batch", "rows"), [(16, 4), (10, 3), (3, 1)])
def test_an_ascent_on_part_of_the_batch_costs_that_part_of_a_pass(batch, rows):
    # ascent_fraction 0.25: each climb's forward/backward sees ceil(0.25 x batch) examples (4 of 16, 3 of 10, 1 of 3),
    # so 18 climbs in 20 steps cost 18 x rows / batch passes more than AdamW's 20, not 18.
    settings = {**PAPER, "schedule": "lr", "start": 0.1, "sam_variant": "ascent_fraction", "ascent_fraction": 0.25}
    record = {"task": {"batch_size": batch}, "settings": settings, "result": {"climb_steps": 18, "optimizer_steps": 20}}
    passes, how = frontier.run_passes(record)
    assert passes == pytest.approx(1 + 18 * rows / batch / 20) and how == "recorded"


def test_replay_counts_what_the_trainer_counted(monkeypatch):
    """A tiny digits run per deterministic mode: the count train_one records is the replay's."""
    import dataclasses

    from benchmarks.accuracy import TaskConfig, train_one

    task = TaskConfig(
        name="tiny",
        data="digits",
        model="vit",
        epochs=1,
        batch_size=128,  # 1,078 training digits: 9 steps
        lr_scheduler_type="linear",
        warmup_ratio=0.25,  # 2 warmup steps
        model_kwargs=dict(patch_size=4, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8),
    )
    modes = [
        {"schedule": "lr", "start": 0.1},
        {"start": 0.2, "sam_variant": "looksam", "looksam_k": 3},
        {"sam_variant": "rst", "rst_probability": 0.5},
    ]
    for mode in modes:
        settings = finetune.resolved_settings({**PAPER, **mode})
        result = train_one(task, settings, seed=1)
        record = {"task": dataclasses.asdict(task), "settings": settings, "seed": 1, "result": result}
        steps = frontier.optimizer_steps(task)
        assert result["optimizer_steps"] == steps == 9
        replayed = frontier.replay_climbs(settings, steps, int(task.warmup_ratio * steps), "linear", seed=1)
        assert result["climb_steps"] == replayed, mode
        stored = {**record, "result": {k: v for k, v in result.items() if k != "climb_steps"}}
        assert frontier.run_passes(stored) == (1 + replayed / 9, "replayed")


def test_pareto_front_keeps_what_nothing_cheaper_matches():
    points = {
        "adamw": (1.0, 0.0),
        "cheap": (1.2, 0.5),
        "dominated": (1.5, 0.4),  # dearer than cheap and worse
        "tie-dearer": (1.3, 0.5),  # as good as cheap, dearer: beaten
        "good": (1.6, 0.9),
        "sam": (2.0, 1.0),
        "worse-than-free": (1.1, -0.1),  # dearer than AdamW and below it
    }
    assert frontier.pareto_front(points) == ["adamw", "cheap", "good", "sam"]
    assert frontier.pareto_front({"a": (1.0, 1.0), "b": (1.0, 1.0)}) == ["a", "b"]  # equal points beat neither


def test_share_of_the_paper_gain_and_when_it_is_undefined():
    assert frontier.gain_share(0.02, 0.04) == (0.5, "")
    assert frontier.gain_share(-0.01, 0.04) == (-0.25, "")
    for paper in (0.0, -0.01):
        share, why = frontier.gain_share(0.01, paper)
        assert share is None and "not positive" in why
    assert frontier.gain_share(0.01, None) == (None, "no paper-SAM runs")


def _record(task: str, arm: str, seed: int, test: float, settings: dict, climbs: int | None = None) -> dict:
    epochs = [{"epoch": 1, "train_time": 10.0 + 10 * (climbs or 0) / 20, "val_acc": test, "test_acc": test}]
    result = {"epochs": epochs, "train_time": epochs[0]["train_time"], "last_val": test, "last_test": test}
    result.update(best_test=test, optimizer_steps=20)
    if climbs is not None:
        result["climb_steps"] = climbs
    stored = {"machine": {"cpu": "test cpu"}, "finished": "2026-12-02T00:00:00"}
    return {"task": {"name": task}, "arm": arm, "settings": settings, "seed": seed, "result": result, **stored}


def _write(runs: Path, rec: dict) -> None:
    path = finetune.run_path(runs, rec["task"]["name"], rec["arm"], rec["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))


def _old(kwargs: dict) -> dict:
    """Settings as a run of 2026-12-02 stored them: without the settings added since (AE-SAM's, ASAM's eta)."""
    return {k: v for k, v in finetune.resolved_settings(kwargs).items() if not k.startswith(("aesam", "asam_eta"))}


def test_a_stored_run_is_not_trained_again(tmp_path):
    seeds = [0, 1]
    for s in seeds:  # stored by the suite under its own name, before AE-SAM's settings existed
        _write(tmp_path, _record("zz", "sam-second-half", s, 0.7, _old(finetune.ARMS["sam-second-half"][0])))
    assert frontier.plan(tmp_path, ["zz"], ["late-0.5", "late-0.7"], seeds) == [
        ("zz", "late-0.7", 0),
        ("zz", "late-0.7", 1),
    ]
    assert finetune.plan(tmp_path, ["zz"], ["sam-second-half"], seeds, redo_changed=False) == []
    # the mode's own file holding other settings is neither reused nor overwritten
    _write(tmp_path, _record("zz", "late-0.7", 0, 0.7, finetune.resolved_settings({"rho": 0.3})))
    with pytest.raises(SystemExit, match="other settings"):
        frontier.plan(tmp_path, ["zz"], ["late-0.7"], seeds)


def test_report_writes_the_table_and_a_figure_per_task(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "frontier"
    arms = {  # mode -> (test accuracy per seed, climbing steps of 20)
        "adamw": ([0.70, 0.71, 0.72], 0),
        "sam": ([0.74, 0.75, 0.75], 20),
        "default": ([0.74, 0.74, 0.74], 18),
        "late-0.5": ([0.72, 0.74, 0.74], 10),
        "aesam": ([0.73, 0.74, 0.75], None),  # no recorded count: cost unknown
    }
    for arm, (tests, climbs) in arms.items():
        for s, acc in enumerate(tests):
            settings = finetune.resolved_settings(frontier.ARMS[arm][0])
            _write(runs, _record("zz", arm, s, acc, settings, climbs))
    path, summary = frontier.report(runs, out, ["zz"], list(arms), [0, 1, 2], "20261206")
    t = summary["tasks"]["zz"]
    # Δ sam = 0.0367 (mean of 0.04, 0.04, 0.03), Δ late-0.5 = 0.0233: a share of 0.07 / 0.11
    assert t["arms"]["late-0.5"]["share"] == pytest.approx(0.07 / 0.11)
    assert t["arms"]["late-0.5"]["passes"] == pytest.approx(1.5)
    assert t["arms"]["aesam"]["passes"] is None
    text = path.read_text()
    assert "| late-0.5 |" in text and "Not plotted (cost unknown): aesam" in text
    # the default (the quarter-batch climb: 1 + 18 x 4/16 / 20 passes) keeps more than late-0.5 for less
    assert t["arms"]["default"]["passes"] == pytest.approx(1.225)
    assert "Pareto front: adamw, default, sam." in text
    assert (out / "frontier-zz-20261206.png").stat().st_size > 10_000

    for s in range(3):  # the paper SAM loses: the share is undefined, the figure plots Δ points
        _write(runs, _record("zz", "sam", s, 0.69, finetune.resolved_settings(frontier.ARMS["sam"][0]), 20))
    path, summary = frontier.report(runs, out, ["zz"], list(arms), [0, 1, 2], "20261207")
    assert summary["tasks"]["zz"]["arms"]["late-0.5"]["share"] is None
    assert "Share undefined: the paper SAM's gain is not positive" in path.read_text()
    assert frontier.plotted(summary["tasks"]["zz"])[2].startswith("Δ test")
    assert (out / "frontier-zz-20261207.png").is_file()


def test_a_timing_sitting_refuses_a_busy_cpu(monkeypatch):
    monkeypatch.setattr(frontier.os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    monkeypatch.setattr(frontier.os, "cpu_count", lambda: 2)
    with pytest.raises(SystemExit, match="CPU is busy"):
        frontier.check_quiet(force=False)
    assert frontier.check_quiet(force=True) == [3.0, 3.0, 3.0]


def test_a_timing_sitting_times_adamw_between_every_mode_and_the_report_uses_it(tmp_path, monkeypatch):
    """AdamW runs before the first mode, between each two and after the last; each mode's ratio is to the mean of
    the two AdamW runs beside it, and the report says how far those two drifted apart."""
    from benchmarks import accuracy

    runs, out = tmp_path / "runs", tmp_path / "frontier"
    for arm, tests in {"adamw": [0.70, 0.71], "sam": [0.74, 0.75], "late-0.5": [0.73, 0.73]}.items():
        for s, acc in enumerate(tests):
            settings = finetune.resolved_settings(frontier.ARMS[arm][0])
            _write(runs, _record("zz", arm, s, acc, settings, climbs={"adamw": 0, "sam": 20}.get(arm, 10)))
    # AdamW 10, sam 21, AdamW 12, late-0.5 19.5, AdamW 14: sam / mean(10, 12) = 21/11; late-0.5 / mean(12, 14) = 1.5
    times = iter([10.0, 21.0, 12.0, 19.5, 14.0])
    trained = []

    def fake_train_one(task, settings, seed):
        trained.append((task.epochs, task.n_train, settings["rho"], settings["start"], seed))
        return {"train_time": next(times), "optimizer_steps": 50, "climb_steps": 0}

    with monkeypatch.context() as m:
        m.setattr(accuracy, "train_one", fake_train_one)
        m.setattr(frontier.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
        m.setitem(finetune.TASKS, "zz", accuracy.TaskConfig(name="zz", data="digits", model="vit", batch_size=8))
        path = frontier.time_arms(out, ["zz"], ["adamw", "sam", "late-0.5"], 50, force=False, date="20261206")
    adamw, sam, late = (1, 400, 0.0, 0.1, 0), (1, 400, 0.05, 0.0, 0), (1, 400, 0.05, 0.5, 0)  # 50 steps of 8
    assert trained == [adamw, sam, adamw, late, adamw]
    sitting = json.loads(path.read_text())["tasks"]["zz"]
    assert sitting["adamw_times"] == [10.0, 12.0, 14.0]
    assert sitting["arms"]["sam"]["adamw_beside"] == [10.0, 12.0]
    assert sitting["arms"]["late-0.5"]["adamw_beside"] == [12.0, 14.0]
    assert sitting["ratios"]["sam"] == pytest.approx(21 / 11) and sitting["ratios"]["late-0.5"] == pytest.approx(1.5)

    md, summary = frontier.report(runs, out, ["zz"], ["adamw", "sam", "late-0.5"], [0, 1], "20261206")
    late_row = summary["tasks"]["zz"]["arms"]["late-0.5"]
    assert late_row["time_measured"] == pytest.approx(1.5)
    assert late_row["time_drift"] == pytest.approx(2 / 13)  # the two AdamW beside it: 12 and 14, 2 s on 13 s
    text = md.read_text()
    assert "measured in `timing-20261206.json`" in text and "rough" not in text.split("|---")[1]
    assert "| 1.50 (AdamW ±7.7%) |" in text  # half the drift either way
    assert frontier.plotted(summary["tasks"]["zz"])[1].startswith("training time")


def test_a_sitting_from_before_interleaving_drifts_between_its_first_and_last_adamw(tmp_path):
    late = finetune.resolved_settings(frontier.ARMS["late-0.5"][0])
    old = {
        "tasks": {
            "zz": {
                "adamw_times": [148.2, 168.5],
                "arms": {"adamw": {"settings": {"rho": 0.0}}, "late-0.5": {"settings": late}},
                "ratios": {"adamw": 1.0, "late-0.5": 1.54},
            }
        }
    }
    (tmp_path / "timing-20261207.json").write_text(json.dumps(old))
    ratio, name, drift = frontier.measured_time(tmp_path, "zz", "late-0.5", late)
    assert (ratio, name) == (1.54, "timing-20261207.json") and drift == pytest.approx(20.3 / 158.35)


def test_each_mode_takes_the_newest_sitting_that_timed_its_work(tmp_path):
    """A later sitting that timed one mode does not hide the modes an earlier one timed; a mode is matched by the
    work its settings do (a sitting stores them), and a sitting from before that by the arm's name; a sitting whose
    entry of that name trained other settings does not count for the mode."""
    late = finetune.resolved_settings(frontier.ARMS["late-0.5"][0])
    old = {"tasks": {"zz": {"arms": {"adamw": {}, "sam": {}, "late-0.5": {}}, "ratios": {"sam": 1.8, "late-0.5": 1.5}}}}
    new = {
        "tasks": {
            "zz": {
                "arms": {"adamw": {"settings": {"rho": 0.0}}, "cheap": {"settings": late}, "sam": {"settings": late}},
                "ratios": {"adamw": 1.0, "cheap": 1.4, "sam": 1.45},
            }
        }
    }
    (tmp_path / "timing-20261206.json").write_text(json.dumps(old))
    (tmp_path / "timing-20261206-2110.json").write_text(json.dumps(new))  # the same day, later: read first
    paper = finetune.resolved_settings(frontier.ARMS["sam"][0])
    assert frontier.measured_time(tmp_path, "zz", "late-0.5", late)[:2] == (1.4, "timing-20261206-2110.json")
    # the new sitting's 'sam' trained other settings: the old one's, by name, is the paper SAM's
    assert frontier.measured_time(tmp_path, "zz", "sam", paper)[:2] == (1.8, "timing-20261206.json")
    assert frontier.measured_time(tmp_path, "zz", "late-0.7", late | {"start": 0.7}) is None
    assert frontier.measured_time(tmp_path, "other", "sam", paper) is None


def test_the_radius_does_no_work_so_a_sitting_at_another_rho_times_the_mode(tmp_path):
    """rho scales the climb, it does not add passes: a sitting that timed late-0.5 at rho 0.1 times it at 0.05 too.
    rho 0 (AdamW) does no climb at all, and AE-SAM's climbs follow the gradient, which rho moves: neither matches."""
    settings = {a: finetune.resolved_settings(frontier.ARMS[a][0]) for a in ("late-0.5", "late-0.5-rho-0.1")}
    aesam = finetune.resolved_settings(frontier.ARMS["aesam-late-0.5"][0])
    sitting = {
        "tasks": {
            "zz": {
                "arms": {
                    "late-0.5-rho-0.1": {"settings": settings["late-0.5-rho-0.1"]},
                    "aesam-late-0.5": {"settings": aesam | {"rho": 0.1}},
                },
                "ratios": {"late-0.5-rho-0.1": 1.54, "aesam-late-0.5": 1.1},
            }
        }
    }
    (tmp_path / "timing-20261207-0709.json").write_text(json.dumps(sitting))
    assert frontier.measured_time(tmp_path, "zz", "late-0.5", settings["late-0.5"])[:2] == (
        1.54,
        "timing-20261207-0709.json",
    )
    assert frontier.measured_time(tmp_path, "zz", "x", settings["late-0.5"] | {"rho": 0.0}) is None
    assert frontier.measured_time(tmp_path, "zz", "aesam-late-0.5", aesam) is None
    assert frontier.same_work(settings["late-0.5"], settings["late-0.5-rho-0.1"])
    assert not frontier.same_work(settings["late-0.5"], settings["late-0.5"] | {"start": 0.7})


def _task(**arms):
    """A summary's task: arm -> (Δ test in points, p, passes)."""
    return {
        "arms": {
            arm: {"vs_adamw_test": {"mean": d / 100, "p_value": p}, "passes": passes, "time_measured": None}
            for arm, (d, p, passes) in arms.items()
        }
    }


def test_the_acceptance_table_checks_each_bar_of_the_issue():
    # the bar is a share of the previous default's gain (the one the issue measured)
    base = {"previous-default": (2.0, 0.01, 1.9), "late-0.7": (1.9, 0.02, 1.3)}  # 95% of its gain, p < 0.05
    tasks = {t: _task(**base) for t in ("d", "f", "g", "h")}
    tasks["a"] = _task(**{"late-0.7": (-0.4, 0.30, 1.3)})  # a loss within seed noise: no harm
    tasks["e"] = _task(**{"late-0.7": (0.1, 0.9, 1.3)})
    rows = {r["mode"]: r for r in frontier.acceptance({"tasks": tasks})}
    assert rows["late-0.7"]["fails"] == [] and rows["late-0.7"]["missing"] == []
    assert rows["previous-default"]["fails"] == ["cost"] and rows["previous-default"]["missing"] == ["a", "e"]

    previous = {"previous-default": (2.0, 0.01, 1.9)}
    tasks["g"] = _task(**previous, **{"late-0.7": (1.7, 0.01, 1.3)})  # 85% kept: misses
    tasks["h"] = _task(**previous, **{"late-0.7": (2.5, 0.08, 1.3)})  # more gain, p 0.08: misses
    tasks["a"] = _task(**{"late-0.7": (-0.6, 0.04, 1.3)})  # a loss beyond seed noise: harm
    tasks["d"] = _task(**previous, **{"late-0.7": (2.0, 0.01, 1.31)})  # over 1.3x: misses
    row = next(r for r in frontier.acceptance({"tasks": tasks}) if r["mode"] == "late-0.7")
    assert row["fails"] == ["cost", "g", "h", "a"]
    assert "85% of previous default's" in row["cells"]["g"] and row["cells"]["g"].endswith("✗")
    text = "\n".join(frontier.acceptance_markdown([row]))
    assert "misses: cost, g, h, a" in text


def test_a_share_under_the_bar_is_tested_against_the_previous_default_paired_by_seed():
    previous = {"previous-default": (2.0, 0.01, 1.9), "late-0.7": (1.6, 0.01, 1.3)}  # 80% kept
    tasks = {t: _task(**previous) for t in ("d", "f", "g", "h")}
    # per-seed test accuracies; the mode ran seeds 0-3, the previous default 1-4: paired on 1, 2, 3
    tasks["g"]["arms"]["late-0.7"] |= {"seeds": [0, 1, 2, 3], "test": {"values": [0.5, 0.80, 0.70, 0.62]}}
    tasks["g"]["arms"]["previous-default"] |= {"seeds": [1, 2, 3, 4], "test": {"values": [0.81, 0.73, 0.62, 0.9]}}
    rows = {r["mode"]: r for r in frontier.acceptance({"tasks": tasks})}
    row = rows["late-0.7"]
    # by hand: differences -1, -3, 0 points, mean -4/3, sd sqrt(7/3), t = mean / (sd / sqrt(3)) with 2 degrees of
    # freedom; two-sided p = 1 - |t| / sqrt(2 + t^2) (Student's t with 2 df has that closed form)
    t = (-4 / 3) / (math.sqrt(7 / 3) / math.sqrt(3))
    p = 1 - abs(t) / math.sqrt(2 + t * t)
    assert row["cells"]["g"].endswith(f"✗ (against it, paired: -1.3, p {p:.3f})")
    assert "paired" not in row["cells"]["f"]  # no per-seed values: nothing to pair
    assert "paired" not in rows["previous-default"]["cells"]["g"]  # the bar's own reference

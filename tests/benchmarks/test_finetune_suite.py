"""The fine-tune suite's summary (benchmarks/finetune.py), on run records written by hand.

The paired statistics are checked against numbers worked out here, not against the summary's own
output: an arm is paired with AdamW on the seeds both ran, and an arm still being measured (fewer
seeds) neither shrinks the other arms' seeds nor ranks above an arm measured on every seed.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

finetune = pytest.importorskip("benchmarks.finetune")


def _record(task: str, arm: str, seed: int, val: float, test: float, first_share: float) -> dict:
    epochs = [
        {"epoch": 1, "train_time": 10.0, "val_acc": 0.6, "test_acc": 0.58, "test_top_share": first_share},
        {"epoch": 2, "train_time": 20.0, "val_acc": val - 0.01, "test_acc": test - 0.01, "test_top_share": 0.6},
        {
            "epoch": 3,
            "train_time": 30.0 if arm == "adamw" else 60.0,
            "val_acc": val,
            "test_acc": test,
            "test_top_share": 0.55,
        },
    ]
    result = {
        "seed": seed,
        "epochs": epochs,
        "train_time": epochs[-1]["train_time"],
        "last_val": val,
        "last_test": test,
        "best_epoch": 3,
        "best_val": val,
        "best_test": test,
    }
    settings = finetune.resolved_settings(finetune.ARMS[arm][0])
    return {
        "task": {"name": task},
        "arm": arm,
        "settings": settings,
        "seed": seed,
        "result": result,
        "machine": {"cpu": "test cpu"},
    }


def _write(out: Path, rec: dict) -> None:
    path = finetune.run_path(out, rec["task"]["name"], rec["arm"], rec["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))


def test_arms_are_paired_with_adamw_on_the_seeds_they_share(tmp_path: Path) -> None:
    task = "zz"  # not one of TASKS: no task-definition check
    adamw_test = [0.70, 0.72, 0.71, 0.69, 0.73]
    sam_test = [0.74, 0.73, 0.75, 0.72, 0.76]  # every seed
    partial_test = {0: 0.80, 1: 0.79}  # two seeds only, better than everything on validation
    for s in range(5):
        _write(tmp_path, _record(task, "adamw", s, 0.70 + s / 100, adamw_test[s], 0.5))
        _write(tmp_path, _record(task, "sam", s, 0.75 + s / 100, sam_test[s], 0.99))
    for s, t in partial_test.items():
        _write(tmp_path, _record(task, "sam-0.02-lr-after-warmup", s, 0.90, t, 0.7))

    t = finetune.summarise(tmp_path)["tasks"][task]
    assert t["seeds"] == [0, 1, 2, 3, 4]
    assert t["arms"]["adamw"]["seeds"] == [0, 1, 2, 3, 4]
    assert t["arms"]["sam"]["seeds"] == [0, 1, 2, 3, 4]
    assert t["arms"]["sam-0.02-lr-after-warmup"]["seeds"] == [0, 1]
    # full-seed arms first (by validation), then the partial one, although its validation mean is the highest
    assert t["ranked_by_validation"] == ["sam", "adamw", "sam-0.02-lr-after-warmup"]

    # the paired test by hand: differences, their mean, t = mean / (sd / sqrt(n)), two-sided p from Student's t
    diffs = [a - b for a, b in zip(sam_test, adamw_test)]
    d = t["arms"]["sam"]["vs_adamw_test"]
    assert d["mean"] == pytest.approx(statistics.fmean(diffs), abs=1e-12)
    tstat = statistics.fmean(diffs) / (statistics.stdev(diffs) / math.sqrt(5))
    scipy_stats = pytest.importorskip("scipy.stats")
    assert d["p_value"] == pytest.approx(2 * scipy_stats.t.sf(abs(tstat), df=4), rel=1e-9)
    partial = t["arms"]["sam-0.02-lr-after-warmup"]["vs_adamw_test"]
    assert partial["mean"] == pytest.approx(statistics.fmean([0.80 - 0.70, 0.79 - 0.72]), abs=1e-12)
    assert t["arms"]["sam"]["time_ratio"] == pytest.approx(2.0)
    # the first epoch at one class (share 0.99 >= 0.95) is counted per seed; the last epoch is not collapsed
    assert t["arms"]["sam"]["first_epoch_collapsed_seeds"] == [0, 1, 2, 3, 4]
    assert t["arms"]["sam"]["collapsed_seeds"] == []

    md = finetune.markdown(finetune.summarise(tmp_path))
    row = next(line for line in md.splitlines() if line.startswith("| 1 | sam |"))
    assert "| 0-4 |" in row and "(5 of 5 at one class)" in row
    assert next(line for line in md.splitlines() if "sam-0.02-lr-after-warmup |" in line).startswith("| 3 |")
    assert "| 0, 1 |" in md

"""What `samtune compare` reports, read only from the runs' own files: numbers, learning curves, a table.

`build_report` reads each run's metrics.json and summarises every metric per arm over seeds, with
the paired difference to the baseline (`samtune.analysis.paired`); `plot_learning_curves` reads
each run's trainer_state.json; `comparison_table` renders a report with rich.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
from rich import box
from rich.markup import escape
from rich.table import Table

from samtune import tasks
from samtune.analysis.paired import (
    ALPHA,
    BOOTSTRAP_NAME,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    TEST_NAME,
    paired_difference,
    summarise,
)
from samtune.rundir import METRICS_FILE, TRAINER_STATE_FILE

BASELINE = "adamw"
COMPARISON_FILE = "comparison.json"
CURVES_FILE = "learning_curves.png"
# Summarised when every run has them; the table shows QUALITY, and TIME in its cost columns.
# Every task's metrics (samtune.tasks), the loss last; a report shows those its runs computed.
QUALITY = tuple(f"{split}_{m}" for split in ("eval", "test") for m in tasks.all_metrics())
METRICS = (*QUALITY, "train_loss", "train_runtime", "wall_time")
TIME = "train_runtime"  # the training loop's wall-clock time (no loading, no final evaluation): the cost's measure
CURVES = (("loss", "training loss"), ("eval_loss", "eval loss"), ("eval_accuracy", "eval accuracy"))
# A regression run has no accuracy: its third panel is the correlation of predictions and targets.
CURVE_STANDINS = {"eval_accuracy": (("eval_pearson", "eval Pearson r"), ("eval_micro_f1", "eval micro F1"))}
DPI = 100
CURVES_SIZE = (13.5, 3.8)  # inches: 1350 x 380 pixels


@dataclass(frozen=True)
class RunRef:
    """Where one arm's run on one seed lives."""

    arm: str
    seed: int
    run_dir: Path


def curves_pixel_size() -> tuple[int, int]:
    """Width and height in pixels of learning_curves.png."""
    return round(CURVES_SIZE[0] * DPI), round(CURVES_SIZE[1] * DPI)


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats as None (JSON has no NaN or infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def build_report(runs: Sequence[RunRef], settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The comparison, from the runs' own metrics.json files: per-run metrics, per-arm summaries and paired tests.

    Every arm must have run on the same seeds, the baseline among the arms. A metric is summarised
    when every run reports it.
    """
    arms = list(dict.fromkeys(r.arm for r in runs))
    seeds = list(dict.fromkeys(r.seed for r in runs))
    records = [
        {
            "arm": r.arm,
            "seed": r.seed,
            "run_dir": str(r.run_dir),
            "metrics": json.loads((Path(r.run_dir) / METRICS_FILE).read_text(encoding="utf-8")),
        }
        for r in runs
    ]
    found = {(rec["arm"], rec["seed"]): rec["metrics"] for rec in records}
    if BASELINE not in arms or len(found) != len(arms) * len(seeds):
        raise ValueError(f"every arm, {BASELINE} among them, needs one run on every seed")
    present = [m for m in METRICS if all(isinstance(rec["metrics"].get(m), int | float) for rec in records)]
    summary: dict[str, Any] = {}
    for arm in [BASELINE, *[a for a in arms if a != BASELINE]]:
        first = found[(arm, seeds[0])]
        entry: dict[str, Any] = {
            "sam": {
                "rho": first.get("sam_rho"),
                "adaptive": first.get("sam_adaptive"),
                "variant": first.get("sam_variant"),
            },
            "metrics": {},
        }
        for metric in present:
            values = [found[(arm, s)][metric] for s in seeds]
            entry["metrics"][metric] = summarise(values).to_dict()
            if arm != BASELINE:
                baseline = [found[(BASELINE, s)][metric] for s in seeds]
                entry["metrics"][metric]["vs_baseline"] = paired_difference(values, baseline).to_dict()
        if TIME in present:
            base_time = (
                summary[BASELINE]["metrics"][TIME]["mean"] if arm != BASELINE else entry["metrics"][TIME]["mean"]
            )
            entry["cost_ratio"] = entry["metrics"][TIME]["mean"] / base_time if base_time > 0 else None
        summary[arm] = entry
    described = {
        **(settings or {}),
        "arms": arms,
        "baseline": BASELINE,
        "seeds": seeds,
        "metrics": present,
        "std": "sample standard deviation over seeds (ddof 1); null with one seed",
        "test": f"{TEST_NAME}; beyond noise when p < {ALPHA}; none with one seed",
        "interval": f"{BOOTSTRAP_NAME} ({BOOTSTRAP_RESAMPLES} resamples, numpy seed {BOOTSTRAP_SEED})",
        "cost_ratio": f"mean {TIME} of the arm / mean {TIME} of {BASELINE}",
    }
    return {"settings": described, "runs": records, "arms": {a: summary[a] for a in arms}, "figure": CURVES_FILE}


def read_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    """Training loss, eval loss and eval accuracy by step, from a run's trainer_state.json ({} where absent).

    At a step logged twice (the end of training re-evaluates the model it keeps), the first value
    counts: the evaluation made while training.
    """
    path = Path(run_dir) / TRAINER_STATE_FILE
    history = json.loads(path.read_text(encoding="utf-8")).get("log_history", []) if path.is_file() else []
    series: dict[str, dict[int, float]] = {key: {} for key, _ in CURVES}
    series.update({standin: {} for options in CURVE_STANDINS.values() for standin, _ in options})
    for entry in history:
        for key in series:
            if isinstance(entry.get(key), int | float) and "step" in entry:
                series[key].setdefault(int(entry["step"]), float(entry[key]))
    return series


def plot_learning_curves(curves: Mapping[str, Sequence[Mapping[str, Mapping[int, float]]]], path: Path) -> Path:
    """One panel per curve, one line per arm: the mean over its seeds, with a min-max band (steps all seeds logged)."""
    matplotlib.use("Agg")
    fig, axes = plt.subplots(1, len(CURVES), figsize=CURVES_SIZE, dpi=DPI)
    for ax, (key, title) in zip(axes, CURVES):
        if not any(r.get(key) for runs in curves.values() for r in runs):  # not logged: the task's own measure
            for standin, standin_title in CURVE_STANDINS.get(key, ()):
                if any(r.get(standin) for runs in curves.values() for r in runs):
                    key, title = standin, standin_title
                    break
        for i, (arm, runs) in enumerate(curves.items()):
            steps = sorted(set.intersection(*[set(r.get(key, {})) for r in runs])) if runs else []
            if not steps:
                continue
            values = np.array([[r[key][s] for s in steps] for r in runs])
            colour = f"C{i % 10}"
            ax.plot(
                steps,
                values.mean(axis=0),
                color=colour,
                marker="." if len(steps) <= 30 else None,
                label=f"{arm} ({len(runs)} seed{'s' if len(runs) > 1 else ''})",
            )
            if len(runs) > 1:
                ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.2, linewidth=0)
        ax.set(xlabel="step", title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.suptitle("mean over seeds; the band spans the lowest to the highest seed", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


def _num(x: float | None, digits: int = 4) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _mean_std(m: Mapping[str, Any], digits: int = 4) -> str:
    return _num(m["mean"], digits) + ("" if m["std"] is None else f" ± {_num(m['std'], digits)}")


def _judgement(metric: str, diff: Mapping[str, Any]) -> str:
    """'better' / 'worse' where the paired test says the difference is beyond seed noise, else 'no' (or '—': no
    test)."""
    beyond = diff.get("beyond_noise")
    if beyond is None:
        return "—"
    if not beyond:
        return "no"
    name = metric.split("_", 1)[1] if metric.startswith(("eval_", "test_", "train_")) else metric
    known = tasks.all_metrics().get(name)
    better = (diff["mean"] > 0) if known is not None and known.greater_is_better else (diff["mean"] < 0)
    return "[green]better[/green]" if better else "[red]worse[/red]"


def _arm_label(arm: str, sam: Mapping[str, Any]) -> str:
    if arm == BASELINE or ":" in arm:  # an arm with its own settings names them
        return escape(arm)
    extra = ("" if sam.get("variant") in (None, "sam") else f" {sam['variant']}") + (
        " ASAM" if sam.get("adaptive") else ""
    )
    # the radius schedule, the window and the climbing parameters where they are not the paper's
    for key, paper in (("schedule", "constant"), ("start", 0), ("stop", None), ("params", "all")):
        if sam.get(key, paper) != paper:
            extra += f" {key}={sam[key]}"
    return f"{arm}\n[dim]rho={sam.get('rho')}{extra}[/dim]"


def _table(title: str, caption: str, headers: Sequence[str], left: int) -> Table:
    table = Table(title=title, caption=caption, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i < left else "right")
    return table


def comparison_table(report: Mapping[str, Any], split: str = "eval") -> Table:
    """Each arm's metrics on one split (a row per metric): mean ± std over seeds, Δ to the baseline, the paired test.

    split "eval": the validation metrics, the arms in their rank order (best first, `rank_arms`);
    split "test": the test split's, in the same order, captioned as never used to choose.
    """
    s = report["settings"]
    n = len(s["seeds"])
    ranking = report.get("ranking") or {}
    order = [a for a in ranking.get("order", []) if a in report["arms"]] or list(report["arms"])
    order += [a for a in report["arms"] if a not in order]
    what = "validation" if split == "eval" else "test split"
    ranked = f", ranked by {ranking['metric']}" if split == "eval" and ranking.get("metric") else ""
    note = " Test numbers are shown for the record: they were not used to rank or choose." if split == "test" else ""
    table = _table(
        f"{s.get('recipe', 'comparison')}, {what}: {len(s['arms'])} arms x {n} seed{'s' if n > 1 else ''} "
        f"({', '.join(map(str, s['seeds']))}){ranked}",
        f"mean ± sample std over seeds. Δ: arm - {BASELINE}, paired by seed, with the 95% percentile bootstrap "
        f"interval of its mean. p: two-sided paired t-test on the per-seed Δ; beyond noise when p < {ALPHA} "
        f"(no test with one seed).{note}",
        (
            "#" if split == "eval" else "",
            "arm",
            "metric",
            "mean ± std",
            f"Δ vs {BASELINE}\n[95% CI]",
            "p",
            "beyond\nnoise?",
            f"cost vs\n{BASELINE}",
        ),
        left=3,
    )
    shown = [m for m in QUALITY if m in s["metrics"] and m.startswith(f"{split}_")]
    for rank, arm in enumerate(order, 1):
        entry = report["arms"][arm]
        for i, metric in enumerate(shown):
            m = entry["metrics"][metric]
            diff = m.get("vs_baseline")
            cells = [_mean_std(m)]
            if diff is None:
                cells += ["", "", ""]
            else:
                ci = "" if diff["ci_low"] is None else f"\n[{_num(diff['ci_low'])}, {_num(diff['ci_high'])}]"
                p = "—" if diff["p_value"] is None else f"{diff['p_value']:.3g}"
                cells += [f"{diff['mean']:+.4f}{escape(ci)}", p, _judgement(metric, diff)]
            label = _arm_label(arm, entry["sam"]) if i == 0 else ""
            number = str(rank) if i == 0 and split == "eval" else ""
            cost = entry.get("cost_ratio") if i == 0 else None  # its training time / the baseline's (cost_table)
            cells.append("" if cost is None else f"{cost:.2f}x")
            table.add_row(number, label, metric, *cells, end_section=i == len(shown) - 1)
    return table


def has_test_metrics(report: Mapping[str, Any]) -> bool:
    """Whether the runs were scored on a test split."""
    return any(m.startswith("test_") for m in report["settings"]["metrics"])


def best_arm_line(report: Mapping[str, Any]) -> str:
    """'best on validation: sam:rho=0.02 (eval_accuracy 0.8123 ± 0.0100 over 5 seeds; adamw 0.8000)'."""
    ranking = report.get("ranking") or {}
    best, key = ranking.get("best"), ranking.get("metric")
    if best is None:
        return "no arm could be ranked: no validation metric in every run"
    m = report["arms"][best]["metrics"][key]
    base = report["arms"][BASELINE]["metrics"][key]
    n = len(report["settings"]["seeds"])
    line = f"best on validation: {best} ({key} {_mean_std(m)} over {n} seed{'s' if n > 1 else ''}"
    if best != BASELINE:
        diff = m["vs_baseline"]
        p = "" if diff["p_value"] is None else f", p = {diff['p_value']:.3g}"
        line += f"; {BASELINE} {_num(base['mean'])}, paired Δ {diff['mean']:+.4f}{p}"
        if not diff.get("beyond_noise"):
            line += ": not beyond seed noise"
    return line + ")"


def cost_table(report: Mapping[str, Any]) -> Table:
    """Each arm's time: the training loop's and the whole run's (mean ± std over seeds), and the cost ratio."""
    table = _table(
        "time per run, mean ± std over seeds",
        f"train: the training loop ({TIME}); whole run: with loading and evaluation (wall_time)",
        ("arm", "train (s)", "whole run (s)", f"cost vs {BASELINE}\n(train time)"),
        left=1,
    )
    for arm, entry in report["arms"].items():
        m = entry["metrics"]
        cost = entry.get("cost_ratio")
        cells = [_mean_std(m[k], 1) if k in m else "—" for k in (TIME, "wall_time")]
        table.add_row(arm, *cells, "—" if cost is None else f"{cost:.2f}x")
    return table

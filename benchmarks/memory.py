"""How much extra peak memory a SAM step takes over AdamW's, against the parameter bytes.

Part 3 of issue 6's measurements (`run_memory`, rendered as markdown by `memory_markdown`);
`benchmarks/run.py` is the entry point.

**Memory** (`run_memory`). The peak memory of one optimizer step above what was allocated when
it started, for SAM and ASAM minus AdamW's, against the trainable parameters' bytes; with one
micro-batch and with gradient accumulation over two. On CPU through
`torch.distributed._tools.mem_tracker.MemTracker` (a dispatch mode that sees every tensor
PyTorch allocates), on CUDA through `torch.cuda.max_memory_allocated`. Measured after a warm-up
step, so the optimizer's state exists in every arm.
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

import torch

if __package__ in (None, ""):  # run as `python benchmarks/<file>.py`: the root holds the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.models import _to_device, bench_models, param_stats  # noqa: E402
from benchmarks.report import _checks_md, _header  # noqa: E402
from benchmarks.steps import BASELINE, make_trainer, optimizer_step  # noqa: E402
from torch import nn

# The acceptance bound of issue 6.
MAX_EXTRA_MEMORY_SHARE = 1.1


def _step_tracker() -> Any:
    """A `MemTracker` for whole-step peaks: its per-module statistics are off.

    SAM runs the model's forward twice per step, which MemTracker's per-module bookkeeping refuses
    ("multiple iterative calls"); the global peak, updated after every dispatched op, needs none of it.
    """
    from torch.distributed._tools.mem_tracker import MemTracker

    class StepMemTracker(MemTracker):
        def _pre_fw_hook(self, module: nn.Module, inputs: Any) -> None:
            pass

        def _post_fw_hook(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
            pass

        def _pre_bw_hook(self, module: nn.Module, args: Any) -> None:
            pass

        def _post_bw_hook(self, module: nn.Module, args: Any) -> None:
            pass

    return StepMemTracker()


def step_peak_bytes(trainer: Any, micro_batches: Sequence[dict[str, torch.Tensor]], device: str) -> dict[str, Any]:
    """Peak bytes of one optimizer step above the bytes allocated when it starts (and the peak's breakdown)."""
    # SAMTrainer keeps its copy of w between CPU steps (allocated once, reused); drop it, so the
    # measured step allocates it again and the copy counts in this step's peak, as it does in the
    # process's peak memory.
    if hasattr(trainer, "_saved_weights"):
        trainer._saved_weights = None
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        optimizer_step(trainer, micro_batches)
        torch.cuda.synchronize()
        return {"start": start, "peak": torch.cuda.max_memory_allocated(), "breakdown": {}}

    gc.collect()
    tracker = _step_tracker()
    tracker.track_external(trainer.model, trainer.optimizer)
    with tracker:
        start = tracker.get_tracker_snapshot("current")
        optimizer_step(trainer, micro_batches)
        peak = tracker.get_tracker_snapshot("peak")
    dev = torch.device(device)
    key = next((d for d in peak if torch.device(d) == dev), None)
    if key is None:
        raise RuntimeError(f"MemTracker saw no allocation on {device}")
    start_total = next((v["Total"] for d, v in start.items() if torch.device(d) == dev), 0)
    breakdown = {str(k): int(v) for k, v in peak[key].items() if k != "Total"}
    return {"start": int(start_total), "peak": int(peak[key]["Total"]), "breakdown": breakdown}


def run_memory(
    *,
    device: str = "cpu",
    precision: str = "fp32",
    quick: bool = False,
    models: Sequence[str] | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Part 3: the extra peak memory of a SAM (and ASAM) step over AdamW's, against the parameter bytes."""
    results: dict[str, Any] = {
        "suite": "memory",
        "device": device,
        "precision": precision,
        "quick": quick,
        "machine": machine_info(device),
        "method": "torch.cuda.max_memory_allocated" if device == "cuda" else "torch MemTracker (dispatch mode)",
        "models": {},
    }
    started = time.perf_counter()
    cases = [("adamw", 1), ("sam", 1), ("asam", 1), ("adamw", 2), ("sam", 2)]
    for spec in bench_models(quick, device):
        if models and spec.name not in models:
            continue
        if log:
            log(f"memory: {spec.name}")
        base = spec.build()
        batch = _to_device(spec.batch(), device)
        batch_size = next(iter(batch.values())).shape[0]
        stats = param_stats(base)
        measured: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for arm, ga in cases:
                trainer = make_trainer(
                    copy.deepcopy(base),
                    arm,
                    device=device,
                    precision=precision,
                    batch_size=batch_size,
                    accumulation=ga,
                    output_dir=tmp,
                )
                micro = [batch] * ga
                optimizer_step(trainer, micro)  # warm-up: the optimizer's state exists from here on
                m = step_peak_bytes(trainer, micro, device)
                m["step_bytes"] = m["peak"] - m["start"]
                measured[f"{arm}/ga{ga}"] = m
                del trainer
                gc.collect()
        del base
        entry: dict[str, Any] = {"description": spec.description, "batch": spec.batch_desc, "params": stats}
        entry["steps"] = measured
        entry["extra"] = {}
        for arm, ga in cases:
            if arm == BASELINE:
                continue
            extra = measured[f"{arm}/ga{ga}"]["step_bytes"] - measured[f"{BASELINE}/ga{ga}"]["step_bytes"]
            entry["extra"][f"{arm}/ga{ga}"] = {"bytes": extra, "share_of_params": extra / stats["bytes"]}
        results["models"][spec.name] = entry
    results["checks"] = memory_checks(results)
    results["elapsed_s"] = time.perf_counter() - started
    return results


def memory_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """SAM's extra peak at most 1.1 x the parameter bytes (plus one gradient copy when accumulating)."""
    checks = []
    for name, m in results["models"].items():
        for case, extra in m["extra"].items():
            if not case.startswith("sam/"):
                continue
            ga = int(case.split("ga")[1])
            # One gradient copy: the gradient has the parameters' dtype and size.
            bound = MAX_EXTRA_MEMORY_SHARE + (1.0 if ga > 1 else 0.0)
            value = extra["share_of_params"]
            checks.append(
                {
                    "check": f"SAM extra peak / parameter bytes (GA={ga})",
                    "model": name,
                    "value": value,
                    "bound": f"<= {bound:g}",
                    "passed": value <= bound,
                }
            )
    return checks


def memory_markdown(results: dict[str, Any], date: str) -> str:
    """Part 3 as markdown."""
    lines = _header("Memory: extra peak of a SAM step over AdamW's, against the parameter bytes", results, date)
    lines.append(
        f"Per optimizer step: peak allocated minus allocated at the step's start ({results['method']}), after a "
        "warm-up step; 'extra' = the arm's minus AdamW's, same accumulation (GA). Bound: 1.1 x params "
        "(+ one gradient copy with GA > 1)."
    )
    lines.append("")
    lines.append("| model | param MB | GA | AdamW step peak MB | arm | arm step peak MB | extra MB | extra / params |")
    lines.append("|---|---:|---:|---:|---|---:|---:|---:|")
    for name, m in results["models"].items():
        mb = m["params"]["bytes"] / 2**20
        for case, extra in m["extra"].items():
            arm, ga = case.split("/ga")
            base = m["steps"][f"{BASELINE}/ga{ga}"]["step_bytes"] / 2**20
            own = m["steps"][case]["step_bytes"] / 2**20
            lines.append(
                f"| {name} | {mb:.1f} | {ga} | {base:.1f} | {arm} | {own:.1f} | {extra['bytes'] / 2**20:.1f} "
                f"| {extra['share_of_params']:.3f} |"
            )
    lines.append("")
    return "\n".join(lines + _checks_md(results["checks"]))

"""The machine a benchmark ran on, and how much CPU other processes took while it ran."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, threads, library versions (and the GPU's name on CUDA)."""
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One line for a report's header."""
    parts = [f"{info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads"]
    if "gpu" in info:
        parts.append(f"GPU {info['gpu']} (CUDA {info['cuda']})")
    parts.append(f"torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}")
    return "; ".join(parts)


class CpuMonitor:
    """How much CPU other processes used while a suite ran (Linux `/proc/stat`; None elsewhere).

    Timings want an idle machine: `others_cores` is the average number of cores busy with anything
    but this process (0.0 on an idle machine, 1.0 if another process kept one core busy).
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        busy = (sum(fields[:8]) - idle) / ticks  # user nice system idle iowait irq softirq steal
        own = os.times()
        return time.monotonic(), busy, own.user + own.system

    def result(self) -> dict[str, float] | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        wall = max(end[0] - self.start[0], 1e-9)
        own = (end[2] - self.start[2]) / wall
        others = max(0.0, (end[1] - self.start[1]) / wall - own)
        return {"wall_s": wall, "own_cores": own, "others_cores": others}


def contention_line(contention: dict[str, float] | None) -> str | None:
    """A header line on other processes' CPU use during the suite, with a warning when it was high."""
    if not contention:
        return None
    line = (
        f"CPU during the run: this process {contention['own_cores']:.2f} cores on average, "
        f"other processes {contention['others_cores']:.2f} cores"
    )
    if contention["others_cores"] > 0.25:
        line += " -- **the machine was not idle: timings are unreliable, rerun on an idle machine**"
    return line

"""The header (date, device, machine, CPU contention) and the checks table of every suite's markdown."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/<file>.py`: the root holds the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import contention_line, machine_line  # noqa: E402


def _header(title: str, results: dict[str, Any], date: str) -> list[str]:
    lines = [f"## {title}", "", f"{date}; {results['device']}, {results['precision']}"]
    if results.get("quick"):
        lines[-1] += "; **--quick** (smoke-test sizes and repeats: not for the acceptance numbers)"
    lines += ["", f"Machine: {machine_line(results['machine'])}", ""]
    contention = contention_line(results.get("contention"))
    if contention:
        lines += [contention, ""]
    return lines


def _checks_md(checks: list[dict[str, Any]]) -> list[str]:
    if not checks:
        return []
    lines = ["| check | model | value | bound | result |", "|---|---|---:|---|---|"]
    for c in checks:
        result = "pass" if c["passed"] else "**FAIL**"
        lines.append(f"| {c['check']} | {c['model']} | {c['value']:.3f} | {c['bound']} | {result} |")
    return lines + [""]

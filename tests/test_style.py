"""The code is what ruff formats and lints it to (configured in pyproject.toml), checked in every test run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["samtune", "tests", "benchmarks", "docs"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args, *CHECKED], cwd=ROOT, capture_output=True, text=True)


def test_ruff_format_leaves_the_code_as_it_is():
    done = _ruff("format", "--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_check_finds_nothing():
    done = _ruff("check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_fmt_skip_only_where_an_aligned_table_is_clearer():
    files = [p for folder in CHECKED for p in (ROOT / folder).rglob("*.py")]
    markers = [p for p in files if "fmt: skip" in p.read_text(encoding="utf-8")]
    assert len(markers) <= 10, markers

"""The code is what ruff formats and lints it to (configured in pyproject.toml), checked in every test run."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
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


# ---- imports: at the top of each module, except the heavy ones `samtune --help` must not load -------------------
HEAVY = {"torch", "transformers", "datasets", "accelerate", "peft", "sklearn", "matplotlib", "huggingface_hub"}
HEAVY |= {"numpy", "scipy", "seqeval"}  # numpy ~0.06 s, scipy and seqeval ~1 s: a third of `--help` and more
# Function-body imports that break an import cycle, each saying so on its line: (module, imported module) pairs.
CYCLES = [
    ("samtune.analysis", "samtune.analysis.report"),  # report imports samtune.analysis
    ("samtune.hub", "samtune.runner"),  # runner imports hub
    ("samtune.optim.settings", "samtune.optim.variants"),  # variants imports settings
    ("samtune.optim.settings", "samtune.optim.variants"),
]


def _help_path() -> set[str]:
    """The samtune modules `import samtune.cli` loads (the registries of tasks and variants, for the choices)."""
    code = "import sys, samtune.cli; print(' '.join(m for m in sys.modules if m.split('.')[0] == 'samtune'))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def _submodule(package: str, name: str) -> str:
    """`package.name` where that is a module of samtune, else `package`."""
    where = ROOT.joinpath(*package.split("."), name)
    return f"{package}.{name}" if where.with_suffix(".py").exists() or where.is_dir() else package


def _function_body_imports() -> list[tuple[str, str, int]]:
    """(module, imported module, line) of every import inside a function in samtune/."""
    found = []
    for path in sorted((ROOT / "samtune").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found += [(module, alias.name, node.lineno) for alias in node.names]
                elif isinstance(node, ast.ImportFrom):  # `from samtune import runner`: samtune.runner
                    found += [(module, _submodule(node.module or "", alias.name), node.lineno) for alias in node.names]
    # an import in a nested function is seen from each enclosing one: once each
    return sorted(set(found))


def test_cli_import_loads_no_heavy_library():
    code = (
        "import sys, samtune.cli; print(' '.join(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == []
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "samtune", "--help"], cwd=ROOT, capture_output=True, check=True)
    print(f"samtune --help: {time.perf_counter() - start:.2f} s")  # shown with -s; no bound: machines differ


def test_imports_inside_functions_only_where_help_stays_light_or_a_cycle_needs_it():
    help_path = _help_path()
    unexplained = []
    for module, imported, line in _function_body_imports():
        heavy = imported.split(".")[0] in HEAVY or (imported.startswith("samtune.") and imported not in help_path)
        if not (module in help_path and heavy):
            unexplained.append((module, imported, line))
    assert sorted((m, i) for m, i, _ in unexplained) == sorted(CYCLES), unexplained

"""The front door and the manual: README.md stays short and links every docs page; the MkDocs site builds in
strict mode (a broken link or anchor fails), with the CLI reference generated from the Typer app."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from samtune.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_the_readme_is_a_short_front_door_that_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    assert "make quickstart" in readme and "make test" in readme
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", readme))
    assert linked == {p.name for p in DOCS.glob("*.md")}
    for command in ("train", "validate", "recipes", "compare", "sharpness", "eval", "predict", "push", "runs", "env"):
        assert re.search(rf"^samtune {command}\b", readme, re.M), command  # each command, one line


def test_the_docs_build_in_strict_mode_with_every_command_in_the_cli_reference(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    page = (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")
    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f"samtune {name}" in page, name
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--"):
                    assert opt in page, (name, opt)

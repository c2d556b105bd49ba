"""MkDocs hook: the CLI reference page is generated from samtune's Typer app at build time (typer's own docs
generator, the one `typer samtune.cli utils docs` runs), so it never drifts from the code."""

from __future__ import annotations

import click
import typer.main
from typer.cli import get_docs_for_click

MARKER = "<!-- samtune-cli-reference -->"


def cli_reference() -> str:
    """Markdown for every samtune command and option."""
    from samtune.cli import app

    command = typer.main.get_command(app)
    with click.Context(command, info_name="samtune") as ctx:
        docs = get_docs_for_click(obj=command, ctx=ctx, name="samtune", title="samtune")
    body = docs.split("\n", 1)[1] if docs.startswith("# ") else docs  # the page has its own title
    return body.replace("\n## ", "\n## ").strip() + "\n"


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())

"""What a run shows while it trains: a rich progress bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _line(logs: dict[str, Any], state: Any) -> str:
    """A training or evaluation log as `key value` pairs, two spaces apart, keys in a fixed order."""
    if "loss" in logs:
        line = (
            f"step {state.global_step}/{state.max_steps}  epoch {logs.get('epoch', 0):.2f}  "
            f"loss {_fmt(logs['loss'])}  lr {_fmt(logs.get('learning_rate', 0.0))}"
        )
        if "sam_ascent_grad_norm" in logs:
            line += f"  |g| {_fmt(logs['sam_ascent_grad_norm'])}"
        if "sam_sharpness" in logs:
            line += f"  sharpness {_fmt(logs['sam_sharpness'])}"
        if logs.get("sam_perturbations_skipped"):
            line += f"  skipped {logs['sam_perturbations_skipped']}"
        return line
    parts = [f"{k[5:]} {_fmt(v)}" for k, v in logs.items() if k.startswith("eval_") and "per_second" not in k]
    return f"eval  epoch {logs.get('epoch', 0):.2f}  " + "  ".join(parts)


class ProgressCallback(TrainerCallback):
    """Training progress and logs on the main process: a progress bar on a terminal; elsewhere (a pipe, a file, CI)
    one line per logging step, never wrapped, flushed (`log_format` "text": `key value` pairs; "json": JSON lines
    with every logged value)."""

    def __init__(self, console: Console, log_format: str = "text"):
        self.console = console
        self.log_format = log_format
        self.progress: Progress | None = None
        self.task: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.console.is_terminal and self.log_format == "text":
            self.progress = Progress(
                TextColumn("[bold]training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=self.console,
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=state.max_steps, status="")
        elif self.log_format == "text":
            self._write(f"training: {state.max_steps} steps")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or not ("loss" in logs or "eval_loss" in logs):
            return
        if self.log_format == "json":
            self._write(json.dumps({"step": state.global_step, "max_steps": state.max_steps, **logs}))
            return
        line = _line(logs, state)
        if self.progress is not None:
            self.progress.update(self.task, status=line.split("  ", 1)[1] if "loss" in logs else "")
            self.progress.console.print(line)
        else:
            self._write(line)

    def _write(self, line: str) -> None:
        """One whole line, flushed: never wrapped at the console's width (logs are read by grep and parsers)."""
        out = self.console.file
        out.write(line + "\n")
        out.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

"""What a run shows while it trains: a rich progress bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class ProgressCallback(TrainerCallback):
    """Training progress and logs on the main process, through one rich console."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.console.is_terminal:
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
        else:
            self.console.print(f"training: {state.max_steps} steps")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
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
        elif "eval_loss" in logs:
            parts = [f"{k[5:]} {_fmt(v)}" for k, v in logs.items() if k.startswith("eval_") and "per_second" not in k]
            line = f"eval  epoch {logs.get('epoch', 0):.2f}  " + "  ".join(parts)
        else:
            return
        if self.progress is not None:
            self.progress.update(self.task, status=line.split("  ", 1)[1] if "loss" in logs else "")
            self.progress.console.print(line)
        else:
            self.console.print(line, highlight=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

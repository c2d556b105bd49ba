"""`samtune sharpness`: measure a run directory (and optionally a second run beside it), write the results.

For each run: the loss at w, the Hessian's top eigenvalue and trace, SAM sharpness for a few rho,
and the 1-D and 2-D loss landscapes, all on the same batches of the same examples. Written into
the first run's directory: sharpness.json (numbers and settings), landscape_1d.png,
landscape_2d.png; its model card, if it has one, gains a "Sharpness" section.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from samtune import __version__
from samtune.analysis.landscape import filter_normalize, grid, loss_curve, loss_surface, random_directions
from samtune.analysis.objective import Objective, Vector
from samtune.analysis.plots import Landscape, plot_curves, plot_surfaces
from samtune.analysis.runs import load_batches, load_examples, open_run, pick_rows
from samtune.analysis.sharpness import hessian_top_eigenvalue, hessian_trace, sam_sharpness
from samtune.card import LANDSCAPE_1D_FILE, LANDSCAPE_2D_FILE, SHARPNESS_FILE, update_card_sharpness
from samtune.errors import DataError, DiskFullError, TrainingError, UsageError
from samtune.files import atomic_path, writable_problem, write_json_atomic
from samtune.modeling import quiet_transformers
from samtune.saved import SavedRun

DEFAULT_RHOS = (0.01, 0.05, 0.1, 0.2)
MODE = "eval mode: dropout off, BatchNorm normalises with its running statistics (left unchanged)"
DIRECTIONS = "filter-normalised random directions (Li et al. 2018); biases and 1-D parameters held fixed"


class _Steps:
    """Each measurement as a rich progress bar on a terminal, a plain line elsewhere, nothing without a console."""

    def __init__(self, console: Console | None):
        self.console = console
        self.progress: Progress | None = None

    def __enter__(self) -> _Steps:
        if self.console is not None and self.console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()

    @contextlib.contextmanager
    def step(self, description: str, total: int) -> Iterator[Any]:
        """A callback (done, total) for one measurement; the bar ends full even if the measurement stops early."""
        started = time.perf_counter()
        if self.progress is None:
            if self.console is not None:
                self.console.print(f"{description} ...")
            yield lambda done, total: None
            if self.console is not None:
                self.console.print(f"{description}: done in {time.perf_counter() - started:.1f} s")
            return
        task = self.progress.add_task(description, total=total)
        yield lambda done, total: self.progress.update(task, completed=done, total=total)  # type: ignore[union-attr]
        self.progress.update(task, completed=self.progress.tasks[task].total)


def _labels(runs: Sequence[SavedRun]) -> list[str]:
    """What the figures and tables call each run: its folder's name, or its path where the names clash."""
    names = [r.run_dir.name for r in runs]
    return names if len(set(names)) == len(names) else [str(r.run_dir) for r in runs]


def _json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON has no NaN or infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _measure(
    run: SavedRun, label: str, objective: Objective, raw: list[Vector], settings: dict[str, Any], steps: _Steps
) -> dict[str, Any]:
    """Every measure of one run, as the JSON entry for it."""
    seed, alphas = settings["seed"], settings["alphas"]
    with steps.step(f"{label}: loss", 1):
        loss = objective.loss()
    if not math.isfinite(loss):
        raise TrainingError(f"the loss of {run.run_dir} is {loss} on these batches", "Check the run and the data.")
    with steps.step(f"{label}: top Hessian eigenvalue", settings["power_max_iter"]) as report:
        top = hessian_top_eigenvalue(
            objective, max_iter=settings["power_max_iter"], tol=settings["power_tol"], seed=seed, progress=report
        )
    with steps.step(f"{label}: Hessian trace", settings["trace_samples"]) as report:
        trace = hessian_trace(objective, samples=settings["trace_samples"], seed=seed, progress=report)
    with steps.step(f"{label}: SAM sharpness", len(settings["rhos"])) as report:
        sam = sam_sharpness(objective, settings["rhos"], progress=report)
    params = objective.params
    d1, d2 = (filter_normalize(d, params) for d in raw)
    with steps.step(f"{label}: 1-D landscape", len(alphas)) as report:
        curve = loss_curve(objective, d1, alphas, progress=report)
    with steps.step(f"{label}: 2-D landscape", len(alphas) ** 2) as report:
        surface = loss_surface(objective, d1, d2, alphas, progress=report)
    return {
        "name": label,
        "run_dir": str(run.run_dir),
        "parameters": sum(p.numel() for p in params),
        "loss": loss,
        "hessian_top_eigenvalue": top.value,
        "power_iterations": top.iterations,
        "power_converged": top.converged,
        "hessian_trace": trace.value,
        "hessian_trace_stderr": trace.stderr,
        "sam_sharpness": [{"rho": rho, "loss_increase": v} for rho, v in sam.items()],
        "landscape": {
            "alphas": alphas,
            "loss_1d": curve,
            "betas": alphas,
            "loss_2d": surface,
        },
    }


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def measure_sharpness(
    run_dir: Path,
    dataset: str | None = None,
    split: str | None = None,
    *,
    batches: int = 4,
    batch_size: int | None = None,
    against: Path | None = None,
    seed: int = 0,
    grid_points: int = 21,
    span: float = 1.0,
    rhos: Sequence[float] = DEFAULT_RHOS,
    trace_samples: int = 32,
    power_max_iter: int = 100,
    power_tol: float = 1e-4,
    device: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Measure a run's sharpness (and `against`'s, on the same examples and random directions); write the results.

    `dataset`/`split` default to the run's own eval split; `batches` batches of `batch_size`
    examples (default: the run's eval batch size), drawn from it in a seeded order. Writes
    sharpness.json and the two landscape PNGs into `run_dir`, updates its card if it has one,
    and returns what sharpness.json holds.
    """
    _check_options(batches, batch_size, grid_points, span, trace_samples, rhos)
    quiet_transformers()
    run = open_run(Path(run_dir))
    if (why := writable_problem(run.run_dir)) is not None:  # before minutes of measuring, not after
        raise UsageError(
            f"cannot write the measurements into {run.run_dir}: {why}",
            "Measure a copy of the run in a writable place (cp -r RUN_DIR COPY).",
        )
    other = open_run(Path(against), "--against") if against is not None else None
    if other is not None and (other.task, other.labels) != (run.task, run.labels):
        raise UsageError(
            f"--against {other.run_dir} is a {other.task} model on the labels {', '.join(other.labels[:10])}; "
            f"{run.run_dir} is a {run.task} model on {', '.join(run.labels[:10])}",
            "Compare two runs of the same task and labels.",
        )
    batch_size = batch_size or run.recipe.training.eval_batch_size or run.recipe.training.batch_size
    examples = load_examples(run, dataset, split)
    if len(examples.rows) == 0:
        raise DataError(f"the '{examples.split}' split of {examples.dataset} has no labelled examples")
    rows = pick_rows(len(examples.rows), batches * batch_size, seed)
    device = device or _default_device()
    settings: dict[str, Any] = {
        "dataset": examples.dataset,
        "split": examples.split,
        "examples": len(rows),
        "batches": math.ceil(len(rows) / batch_size),
        "batch_size": batch_size,
        "seed": seed,
        "rhos": list(rhos),
        "grid": grid_points,
        "span": span,
        "alphas": grid(grid_points, span),
        "trace_samples": trace_samples,
        "power_max_iter": power_max_iter,
        "power_tol": power_tol,
        "mode": MODE,
        "directions": DIRECTIONS,
        "device": device,
        "samtune": __version__,
    }

    # Both runs loaded (on the CPU) before anything is measured: a mismatch fails in seconds, not after run 1.
    runs = [run, *([other] if other else [])]
    loaded = [(which, *load_batches(which, examples, rows, batch_size)) for which in runs]
    shapes = [[tuple(p.shape) for p in model.parameters() if p.requires_grad] for _, model, _, _ in loaded]
    if shapes[-1] != shapes[0]:
        raise UsageError(
            f"--against {other.run_dir if other else ''} has another architecture than {run.run_dir} "
            "(parameter shapes differ)",
            "Compare two runs of the same model, so that they share the random directions.",
        )
    results = _measure_each(runs, loaded, settings, seed, device, console)
    return _write_report(run.run_dir, results, settings)


def _check_options(
    batches: int, batch_size: int | None, grid_points: int, span: float, trace_samples: int, rhos: Sequence[float]
) -> None:
    """Every problem with the command's options at once, as one UsageError."""
    problems = [
        *(["--batches must be at least 1"] if batches < 1 else []),
        *(["--batch-size must be at least 1"] if batch_size is not None and batch_size < 1 else []),
        *(["--grid must be at least 3"] if grid_points < 3 else []),
        *(["--span must be a positive number"] if not (math.isfinite(span) and span > 0) else []),
        *(["--samples must be at least 2"] if trace_samples < 2 else []),
        *(
            ["--rho must be positive numbers"]
            if not rhos or any(not (math.isfinite(r) and r > 0) for r in rhos)
            else []
        ),
    ]
    if problems:
        raise UsageError("; ".join(problems), "Fix the options above.")


def _measure_each(
    runs: list[Any], loaded: list[Any], settings: dict[str, Any], seed: int, device: str, console: Console | None
) -> list[dict[str, Any]]:
    """Each run's measures, one model on the device at a time, along the same raw random directions."""
    results: list[dict[str, Any]] = []
    raw: list[Vector] | None = None
    with _Steps(console) as steps:
        for label, (which, model, batch_list, sizes) in zip(_labels(runs), loaded):
            model.to(device)  # one model on the device at a time
            on_device = [{k: v.to(device) for k, v in b.items()} for b in batch_list]
            objective = Objective(model, on_device, weights=sizes)
            if raw is None:  # the same raw directions for both runs, each normalised to its own weights
                raw = random_directions(objective.params, 2, seed)
            try:
                results.append(_measure(which, label, objective, raw, settings, steps))
            except ValueError as e:
                raise TrainingError(f"measuring {which.run_dir} failed: {e}") from e
            finally:
                model.to("cpu")
            del objective, on_device
    return results


def _write_report(out_dir: Path, results: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """The landscape figures, sharpness.json and the card's Sharpness section, in the run directory."""
    alphas = settings["alphas"]
    report = {
        **results[0],
        "settings": settings,
        "figures": {"landscape_1d": LANDSCAPE_1D_FILE, "landscape_2d": LANDSCAPE_2D_FILE},
    }
    if len(results) > 1:
        report["against"] = results[1]
    report = _json_safe(report)
    write_json_atomic(out_dir / SHARPNESS_FILE, report)  # the numbers first: a full disk then loses a figure at most
    lands = [
        Landscape(r["name"], alphas, r["landscape"]["loss_1d"], alphas, r["landscape"]["loss_2d"]) for r in results
    ]
    try:
        for name, plot in ((LANDSCAPE_1D_FILE, plot_curves), (LANDSCAPE_2D_FILE, plot_surfaces)):
            with atomic_path(out_dir / name) as tmp:
                plot(lands, tmp)
    except DiskFullError as e:
        e.hint = f"The numbers are saved in {out_dir / SHARPNESS_FILE}. {e.hint}"
        raise
    update_card_sharpness(out_dir)
    return report

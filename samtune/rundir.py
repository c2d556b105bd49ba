"""The layout of a run directory: its file names, its mark, its lock and its checkpoints.

What `samtune train` writes into a run directory (the model and processor beside them):

    config.yaml         the resolved recipe (CONFIG_FILE)
    metrics.json        flat final metrics (METRICS_FILE)
    config.json         the model's config, saved with the model at the end (MODEL_CONFIG_FILE)
    trainer_state.json  the Trainer's state and log history (TRAINER_STATE_FILE)
    checkpoint-N/       checkpoints; complete once their trainer_state.json is written (it is last)
    .samtune-run        the mark: only a folder that carries it may be replaced by --overwrite
    .samtune.lock       held (an OS lock) by the one live process writing the directory
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError, safe_open

from samtune import tasks
from samtune.errors import UsageError
from samtune.files import Locked, lock_exclusively, lock_holder, unlock

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
MODEL_CONFIG_FILE = "config.json"
TRAINER_STATE_FILE = "trainer_state.json"
CHECKPOINT_PREFIX = "checkpoint-"  # transformers' PREFIX_CHECKPOINT_DIR
RUN_MARK = ".samtune-run"  # written into every run directory: what --overwrite may delete
LOCK_FILE = ".samtune.lock"


def contents(path: Path) -> list[Path]:
    """What a directory holds besides its lock ([] if it is not a directory)."""
    return [p for p in path.iterdir() if p.name != LOCK_FILE] if path.is_dir() else []


def check_output_dir(path: Path, overwrite: bool, resume: str | None = None) -> None:
    """Refuse a non-empty run directory unless overwriting or resuming; refuse one that cannot be written."""
    if overwrite and resume:
        raise UsageError("--overwrite and --resume contradict each other", "Resume a run, or replace it: not both.")
    blocker = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not blocker.is_dir():
        raise UsageError(
            f"output directory {path} cannot be created: {blocker} is a file", "Choose another --output-dir."
        )
    if not os.access(blocker, os.W_OK):
        raise UsageError(f"output directory {path} is not writable", "Choose a writable --output-dir.")
    if resume:
        if resume != "auto" and Path(resume).resolve().parent != path.resolve():
            raise UsageError(
                f"checkpoint {resume} belongs to {Path(resume).parent}, not to the output directory {path}",
                f"Resume in its own run directory: --output-dir {Path(resume).parent}.",
            )
        return
    if contents(path):
        if not overwrite:
            raise UsageError(
                f"output directory {path} exists and is not empty",
                "Pass --overwrite to replace it, --resume auto to continue it, or choose another --output-dir.",
            )
        if not looks_like_a_run(path):
            raise UsageError(
                f"output directory {path} is not a samtune run directory, so --overwrite will not delete it",
                "Choose an empty or new --output-dir.",
            )


def looks_like_a_run(path: Path) -> bool:
    """Whether a folder was written by samtune train (the only kind --overwrite may delete)."""
    return (path / RUN_MARK).is_file()


def mark_as_run(path: Path) -> None:
    """Mark a folder as samtune train's, so that a later --overwrite may replace it."""
    (path / RUN_MARK).write_text("written by samtune train; --overwrite may replace this folder\n")


def clear_output_dir(path: Path, keep: Path | None = None) -> None:
    """Remove a previous run's files (not the lock this run holds); with `keep`, a folder inside `path`, all but it."""
    kept = [keep.resolve(), *keep.resolve().parents] if keep is not None else []
    for entry in contents(path):
        if entry.resolve() in kept:
            if entry.resolve() != kept[0]:
                clear_output_dir(entry, keep)
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def holds_model(run_dir: Path) -> bool:
    """Whether a run directory holds a saved model (what a finished run leaves)."""
    return (Path(run_dir) / MODEL_CONFIG_FILE).is_file()


def require_model(run_dir: Path, option: str = "") -> None:
    """Refuse a folder without a saved model: a UsageError (exit 2) that names the option it came from, if any."""
    if not holds_model(run_dir):
        what = (
            "does not exist"
            if not Path(run_dir).exists()
            else f"is not a samtune run directory (no {MODEL_CONFIG_FILE})"
        )
        raise UsageError(f"{option} {run_dir} {what}".lstrip(), "Give the folder `samtune train` wrote.")


def _is_complete(checkpoint: Path) -> bool:
    # The Trainer writes a checkpoint's trainer_state.json last: without it the save did not finish.
    return (checkpoint / TRAINER_STATE_FILE).is_file()


def find_checkpoint(run_dir: Path, resume: str) -> str:
    """The checkpoint `--resume` names: the newest in the run directory for 'auto', else the path given.

    A checkpoint with a damaged file is refused (UsageError, exit 2), naming the file and the complete, intact
    checkpoint before it: resuming it would fail to load, or (a torch file's changed bytes load as other numbers)
    train into NaN. `--resume auto` does not step back by itself: the steps since that one would be lost unseen.
    """
    if resume == "auto":
        found = last_complete_checkpoint(run_dir)
        if found is None:
            raise UsageError(
                f"no checkpoint to resume in {run_dir}",
                "Start the run without --resume, or give a checkpoint folder: --resume PATH.",
            )
    else:
        found = resume
        if not _is_complete(Path(found)):
            raise UsageError(
                f"{resume} is not a checkpoint (no {TRAINER_STATE_FILE})",
                f"Give a {CHECKPOINT_PREFIX}N folder, or auto.",
            )
    if (damage := damaged_file(Path(found))) is not None:
        file, why = damage
        before = [c for c in complete_checkpoints(run_dir) if _step(c) < _step(Path(found))]
        earlier = next((c for c in before if damaged_file(c) is None), None)
        raise UsageError(
            f"checkpoint {found} cannot be resumed: {file} is damaged ({why})",
            f"Continue from the complete checkpoint before it: --resume {earlier} (or move {found} away: --resume "
            f"auto then takes {earlier.name})."
            if earlier
            else "No earlier checkpoint is complete and intact: train the run again with --overwrite.",
        )
    return str(found)


def _step(checkpoint: Path) -> int:
    """A checkpoint folder's step (checkpoint-N); -1 for another name."""
    m = re.fullmatch(re.escape(CHECKPOINT_PREFIX) + r"(\d+)", checkpoint.name)
    return int(m.group(1)) if m else -1


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints whose save finished (trainer_state.json is written last), newest first."""
    if not run_dir.is_dir():
        return []
    numbered = [p for p in run_dir.iterdir() if _step(p) >= 0 and _is_complete(p)]
    return sorted(numbered, key=_step, reverse=True)


def last_complete_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint whose save finished (trainer_state.json is written last); None if none."""
    found = complete_checkpoints(run_dir)
    return str(found[0]) if found else None


def last_written(folder: Path) -> Path:
    """The file modified last under `folder` (checkpoints included): where a save that was cut short stopped."""
    files = [p for p in Path(folder).rglob("*") if p.is_file() and p.name != LOCK_FILE]
    return max(files, key=lambda p: p.stat().st_mtime_ns, default=Path(folder))


def damaged_file(checkpoint: Path) -> tuple[Path, str] | None:
    """The first file of a checkpoint that does not read back whole, and why; None if every one does.

    JSON files must parse, a safetensors file's header must parse and fit its file, and a torch file (.pt, .pth,
    .bin: a zip) must match the checksums its zip keeps, which torch.load does not check. Reads each torch file
    once more (about a second per GB), so a resume never starts from bytes that changed on disk.
    """
    for path in sorted(p for p in Path(checkpoint).rglob("*") if p.is_file()):
        if (why := _why_damaged(path)) is not None:
            return path, why
    return None


def _why_damaged(path: Path) -> str | None:
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as f:
                f.keys()
        elif path.suffix in (".pt", ".pth", ".bin"):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"its part {bad} does not match the checksum saved with it"
    except (OSError, ValueError, zipfile.BadZipFile, SafetensorError) as e:  # ValueError: JSON, UTF-8
        return (str(e).strip().splitlines() or [type(e).__name__])[0]
    return None


class RunLock:
    """An exclusive lock on a run directory, held by one live process (an OS lock: it dies with its owner).

    Creates the directory if needed; on release, removes the directory too if the run left nothing
    in it (a failure before training leaves no partial run directory behind).
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.created_dir = False
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise UsageError (exit 2) naming the process that holds it."""
        self.created_dir = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._fd = lock_exclusively(self.path)
        except Locked as e:
            raise UsageError(
                f"another samtune run (process {e.owner}) is using {self.run_dir}",
                "Wait for it to finish, or choose another --output-dir.",
            ) from None
        except OSError as e:
            self._cleanup_dir()
            raise UsageError(
                f"the output directory {self.run_dir} is not writable: {e.strerror or e}",
                "Choose a writable --output-dir.",
            ) from e
        return self

    def _cleanup_dir(self) -> None:
        if self.created_dir and self.run_dir.is_dir() and not contents(self.run_dir):
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
                self.run_dir.rmdir()

    def release(self) -> None:
        """Drop the lock (and the directory, if this run created it and left nothing else in it)."""
        if self._fd is not None:
            self._cleanup_dir()
            unlock(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_is_held(run_dir: Path) -> str | None:
    """Who holds a run directory's lock right now, or None."""
    return lock_holder(Path(run_dir) / LOCK_FILE)


def refuse_if_in_use(run_dir: Path, hint: str) -> None:
    """A UsageError (exit 2) if a samtune run holds the directory's lock; `hint` says when to try again."""
    holder = lock_is_held(run_dir)
    if holder:
        raise UsageError(f"{run_dir} is in use by a samtune run (process {holder})", hint)


class Unreadable(ValueError):
    """A run directory's config.yaml or metrics.json that cannot be read as what samtune wrote there."""


def _read_mapping(path: Path, parse: Any) -> dict[str, Any]:
    """A YAML/JSON file holding a mapping ({} if the file is missing or empty); `Unreadable` naming it if not."""
    if not path.exists():
        return {}
    try:
        value = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as e:  # ValueError: UnicodeDecodeError, JSONDecodeError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise Unreadable(f"{path.name}: {first}") from e
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Unreadable(f"{path.name}: a {type(value).__name__}, not a mapping")
    return value


def _number(metrics: dict[str, Any], key: str | None) -> float | int | None:
    """A number metrics.json holds under `key` (None where it has none); `Unreadable` if it holds something else."""
    value = metrics.get(key) if key else None
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise Unreadable(f"{METRICS_FILE}: {key} is {value!r}, not a number")
    return value


def run_summary(run_dir: Path, root: Path) -> dict[str, Any]:
    """What `samtune runs` shows of a run directory: name, model, data, SAM, its metric, steps, time, status.

    Status: "running" (a live process holds its lock), "finished" (metrics.json), "interrupted at step N" (a
    complete checkpoint, no metrics), "failed" (it stopped before its first checkpoint), or "unreadable: FILE: why"
    (a config.yaml or metrics.json that is not what samtune writes: the rest of the row stays empty).
    """
    run_dir = Path(run_dir)
    summary: dict[str, Any] = {
        "run": str(run_dir.relative_to(root)) if run_dir != root else run_dir.name,
        "path": str(run_dir),
        **dict.fromkeys(("model", "data", "sam", "metric", "value", "steps", "wall_time")),
    }
    try:
        summary.update(_describe(run_dir))
    except Unreadable as e:
        summary["status"] = f"unreadable: {e}"
    if lock_is_held(run_dir):
        summary["status"] = "running"
    summary["modified"] = max(p.stat().st_mtime for p in [run_dir, *run_dir.iterdir()])
    return summary


def _describe(run_dir: Path) -> dict[str, Any]:
    """`run_summary`'s fields read from the run's config.yaml, metrics.json and checkpoints (`Unreadable` if not)."""
    recipe = _read_mapping(run_dir / CONFIG_FILE, yaml.safe_load)
    section = lambda key: recipe.get(key) if isinstance(recipe.get(key), dict) else {}  # noqa: E731
    model, data, sam, training = section("model"), section("data"), section("sam"), section("training")
    metrics = _read_mapping(run_dir / METRICS_FILE, json.loads)
    steps, status = _number(metrics, "train_steps"), "failed"
    if metrics:
        status = "finished"
    elif (checkpoint := last_complete_checkpoint(run_dir)) is not None:
        steps = int(Path(checkpoint).name.removeprefix(CHECKPOINT_PREFIX))
        status = f"interrupted at step {steps}"
    metric = training.get("metric_for_best_model") or next(
        (m for m in tasks.default_metrics() if f"eval_{m}" in metrics), None
    )
    task = recipe.get("task")
    if metric is None and task in tasks.names():
        metric = tasks.get(task).default_metric
    variant = sam.get("variant", "sam")
    rho = sam.get("rho", 0.05)
    return {
        "model": model.get("name"),
        "data": data.get("dataset"),
        "sam": "none (rho 0)" if rho == 0 else f"{variant} rho {rho}" + (" ASAM" if sam.get("adaptive") else ""),
        "metric": f"eval_{metric}" if metric else None,
        "value": _number(metrics, f"eval_{metric}" if metric else None),
        "steps": steps,
        "wall_time": _number(metrics, "wall_time"),
        "status": status,
    }


def find_runs(root: Path) -> list[dict[str, Any]]:
    """Every run directory under `root` (samtune train's mark; a comparison's runs included), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [
        run_summary(mark.parent, root)
        for mark in root.rglob(RUN_MARK)
        if CHECKPOINT_PREFIX not in str(mark.parent.name)
    ]
    return sorted(runs, key=lambda r: r["modified"], reverse=True)

"""Files a run writes: atomically (temporary file + rename), and a lock on the run directory."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from samtune.errors import UsageError

LOCK_FILE = ".samtune.lock"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`; renamed over it when the block succeeds, removed if not."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file so that readers see the old content or the new, never half of it."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """`write_text_atomic` for JSON."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run directory, held by one live process; a dead owner's lock is taken over.

    Creates the directory if needed; on release, removes the lock and the directory too if the run
    left nothing in it (a failure before training leaves no partial run directory behind).
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.created_dir = False

    def acquire(self) -> RunLock:
        """Take the lock, or raise UsageError (exit 2) naming the live process that holds it."""
        self.created_dir = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(
                f"cannot create the output directory {self.run_dir}: {e.strerror or e}", "Choose a writable --output-dir."
            ) from e
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None:
                    pid, host = owner
                    if host != socket.gethostname() or _alive(pid):
                        self._cleanup_dir()
                        raise UsageError(
                            f"another samtune run (process {pid} on {host}) is using {self.run_dir}",
                            "Wait for it to finish, or choose another --output-dir.",
                        ) from None
                self.path.unlink(missing_ok=True)  # a stale lock from a dead process: take it over
                continue
            except OSError as e:
                self._cleanup_dir()
                raise UsageError(
                    f"the output directory {self.run_dir} is not writable: {e.strerror or e}",
                    "Choose a writable --output-dir.",
                ) from e
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return self
        raise UsageError(f"could not lock {self.run_dir}", "Try again, or choose another --output-dir.")

    def _owner(self) -> tuple[int, str] | None:
        try:
            pid, host = self.path.read_text().split()
            return int(pid), host
        except (OSError, ValueError):
            return None

    def _cleanup_dir(self) -> None:
        if self.created_dir:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()

    def release(self) -> None:
        """Drop the lock (and the directory, if this run created it and left it empty)."""
        owner = self._owner()
        if owner is not None and owner[0] == os.getpid():
            self.path.unlink(missing_ok=True)
        self._cleanup_dir()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

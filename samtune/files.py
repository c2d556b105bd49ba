"""Files a run writes: atomically (temporary file + rename), and a lock on the run directory."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from samtune.errors import UsageError

LOCK_FILE = ".samtune.lock"
RUN_MARK = ".samtune-run"  # written into every run directory: what --overwrite may delete


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`; renamed over it when the block succeeds, removed if not."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # as a plain write would leave it (mkstemp makes it 0600)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
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
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as e:
            self._cleanup_dir()
            raise UsageError(
                f"the output directory {self.run_dir} is not writable: {e.strerror or e}",
                "Choose a writable --output-dir.",
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(
                f"another samtune run (process {owner}) is using {self.run_dir}",
                "Wait for it to finish, or choose another --output-dir.",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def _cleanup_dir(self) -> None:
        if self.created_dir and self.run_dir.is_dir():
            if [p.name for p in self.run_dir.iterdir()] in ([], [LOCK_FILE]):
                with contextlib.suppress(OSError):
                    self.path.unlink(missing_ok=True)
                    self.run_dir.rmdir()

    def release(self) -> None:
        """Drop the lock (and the directory, if this run created it and left nothing else in it)."""
        if self._fd is not None:
            self._cleanup_dir()
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_is_held(run_dir: Path) -> str | None:
    """Who holds a run directory's lock right now, or None."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return os.read(fd, 200).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)
    return None

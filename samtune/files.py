"""Files written atomically (temporary file + rename), and exclusive OS locks on files."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from samtune.errors import FREE_SPACE_HINT, DiskFullError, disk_full


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`; renamed over it when the block succeeds, removed if not.

    A write cut short (a full disk, a file-size limit) raises one DiskFullError naming `path`.
    """
    path = Path(path)
    with naming_a_full_disk(str(path)):
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


@contextlib.contextmanager
def naming_a_full_disk(what: str, hint: str | None = None) -> Iterator[None]:
    """Inside the block, a write cut short (no space, a quota, a file-size limit) becomes one DiskFullError (exit 1)
    naming `what`, with `hint` (default: free space and run the command again)."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        if (reason := disk_full(e)) is None:
            raise
        raise DiskFullError(f"could not write {what}: {reason}", hint or f"{FREE_SPACE_HINT}, and run it again.") from e


def writable_problem(folder: Path) -> str | None:
    """Why no file can be written into `folder` ('read-only file system', ...), None if one can; writes nothing."""
    folder = Path(folder)
    if not folder.is_dir():
        return "no such folder"
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return "read-only file system"
    if not os.access(folder, os.W_OK):
        return "permission denied"
    return None


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file so that readers see the old content or the new, never half of it."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """`write_text_atomic` for JSON."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


class Locked(Exception):
    """Another live process holds the lock; `owner` is what it wrote into the lock file."""

    def __init__(self, owner: str):
        super().__init__(owner)
        self.owner = owner


def _owner(fd: int) -> str:
    return os.read(fd, 200).decode(errors="replace").strip() or "unknown"


def lock_exclusively(path: Path) -> int:
    """Open (or create) `path` and hold an exclusive OS lock on it, naming this process in it; the descriptor.

    An OS lock dies with its owner, so a crashed process never leaves a stale lock. Raises OSError
    if the file cannot be opened, `Locked` if another process holds the lock.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = _owner(fd)
        os.close(fd)
        raise Locked(owner) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
    except OSError:
        unlock(fd)
        raise
    return fd


def unlock(fd: int) -> None:
    """Drop a lock `lock_exclusively` took and close its descriptor."""
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def lock_holder(path: Path) -> str | None:
    """Who holds the OS lock on `path` right now (what it wrote there), or None."""
    path = Path(path)
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _owner(fd)
    finally:
        os.close(fd)
    return None


def installed_path(package: str, relative: str) -> Path | None:
    """Where `relative` lies inside the installed Python package `package`, found without importing it (None: the
    package is not installed)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / relative

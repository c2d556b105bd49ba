"""Errors a user can cause, each with the exit code the command line ends with.

Exit codes: 0 success; 1 training failed (or a file could not be written whole: a full disk); 2 usage or
recipe error; 3 data error; 4 push failed (local results kept); 130 interrupted (SIGINT), 143 terminated
(SIGTERM): a checkpoint is saved.
"""

from __future__ import annotations

import errno
import os
import re
import resource

EXIT_OK = 0
EXIT_TRAINING = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_PUSH = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class SamtuneError(Exception):
    """A problem the user can fix: a message naming it, an optional hint saying how, an exit code."""

    exit_code = EXIT_TRAINING
    title = "Error"

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class UsageError(SamtuneError):
    """Bad options, an unknown model, an output directory in the way."""

    exit_code = EXIT_USAGE
    title = "Usage error"


class RecipeError(UsageError):
    """A recipe that does not validate; `problems` holds every problem found, one line each."""

    title = "Recipe error"

    def __init__(self, problems: list[str], source: str | None = None, hint: str | None = None):
        where = f" in {source}" if source else ""
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{count}{where}:\n" + "\n".join(f"  - {p}" for p in problems), hint)
        self.problems = problems


class DataError(SamtuneError):
    """Missing column, unreadable file, empty split, labels that are not classes."""

    exit_code = EXIT_DATA
    title = "Data error"


class TrainingError(SamtuneError):
    """Training started and failed."""

    exit_code = EXIT_TRAINING
    title = "Training failed"


class Interrupted(SamtuneError):
    """Training stopped on SIGINT (exit 130) or SIGTERM (exit 143) after saving a checkpoint."""

    title = "Interrupted"

    def __init__(self, message: str, hint: str | None = None, exit_code: int = EXIT_INTERRUPTED):
        super().__init__(message, hint)
        self.exit_code = exit_code


class PushError(SamtuneError):
    """The upload to the Hub failed; the local run directory is intact."""

    exit_code = EXIT_PUSH
    title = "Push failed"


class DiskFullError(SamtuneError):
    """A file could not be written whole: no space left on its disk, a disk quota, or a file-size limit."""

    exit_code = EXIT_TRAINING
    title = "Disk full"


_WRITE_CUT_SHORT = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_full(error: BaseException) -> str | None:
    """Why a write was cut short ('No space left on device', 'File too large', ...), if that is what `error` comes
    from, anywhere in its chain; None otherwise.

    Besides an OSError's errno: safetensors says "(os error 28)", and torch.save no errno at all
    ("[enforce fail at inline_container.cc:...] ... file write failed" or "unexpected pos N vs M", its writer's
    check that a record was written whole).
    """
    for e in chain(error):
        if isinstance(e, OSError) and e.errno in _WRITE_CUT_SHORT:
            return os.strerror(e.errno)
        text = str(e)
        if (code := re.search(r"\(os error (\d+)\)", text)) and int(code.group(1)) in _WRITE_CUT_SHORT:
            return os.strerror(int(code.group(1)))
        if "inline_container.cc" in text and ("write" in text or "unexpected pos" in text):
            return _torch_write_cut_short()
    return None


def chain(error: BaseException) -> list[BaseException]:
    """An exception, then the ones it was raised from or during."""
    found: list[BaseException] = []
    e: BaseException | None = error
    while e is not None and all(e is not f for f in found):
        found.append(e)
        e = e.__cause__ or e.__context__
    return found


def _torch_write_cut_short() -> str:
    """Why torch.save could not write whole, which it does not say: a file-size limit if one is set, else the disk."""
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit != resource.RLIM_INFINITY:
        return f"{os.strerror(errno.EFBIG)} (the file-size limit is {limit} bytes: ulimit -f)"
    return f"{os.strerror(errno.ENOSPC)} (or a disk quota)"


FREE_SPACE_HINT = "Free space on its disk (or raise the file-size limit: ulimit -f)"


# Exceptions (by class name, anywhere in the chain) that mean the network, not the id, failed.
_UNREACHABLE = ("ConnectError", "ConnectionError", "ConnectTimeout", "gaierror", "NameResolutionError")
OFFLINE_HINT = "HF_HUB_OFFLINE=1 uses what is already in the local cache (models and datasets loaded before)"


def hub_unreachable(error: BaseException) -> str | None:
    """Why the Hub could not be reached ('Name or service not known', ...), if that is what `error` comes from;
    None when the Hub answered (an id it does not know, a gated repo, ...)."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__.endswith(_UNREACHABLE) or "couldn't connect to" in str(e).lower():
            innermost = e
            while innermost.__cause__ is not None or innermost.__context__ is not None:
                innermost = innermost.__cause__ or innermost.__context__  # type: ignore[assignment]
            text = str(innermost).strip().splitlines()
            reason = text[0] if text else type(innermost).__name__
            return reason.split("] ", 1)[-1] if reason.startswith("[Errno") else reason
        e = e.__cause__ or e.__context__
    return None

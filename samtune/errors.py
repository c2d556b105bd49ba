"""Errors a user can cause, each with the exit code the command line ends with.

Exit codes: 0 success; 1 training failed; 2 usage or recipe error; 3 data error; 4 push failed
(local results kept); 130 interrupted (SIGINT), 143 terminated (SIGTERM): a checkpoint is saved.
"""

from __future__ import annotations

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

"""Clean stops: SIGINT or SIGTERM finish the current optimizer step, save a checkpoint and stop.

A second Ctrl-C stops at once. In multi-process runs every process stops at the same step: the
request is shared with an all-reduce at each step end.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch
from transformers import TrainerCallback

from samtune.errors import EXIT_INTERRUPTED, EXIT_TERMINATED


class GracefulStop(TrainerCallback):
    """Turns SIGINT/SIGTERM into "save a checkpoint after this step, then stop training"."""

    def __init__(self, announce: Any = print):
        self.signum: int | None = None
        self.announce = announce
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return EXIT_TERMINATED if self.signum == signal.SIGTERM else EXIT_INTERRUPTED

    def install(self) -> None:
        """Take over SIGINT and SIGTERM (main thread only; elsewhere signals stay as they were)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Give SIGINT and SIGTERM back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            self.uninstall()
            raise KeyboardInterrupt  # the second Ctrl-C: stop at once
        self.signum = signum
        self.announce(
            f"{signal.Signals(signum).name}: finishing this step and saving a checkpoint"
            + (" (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "")
        )

    def on_step_end(self, args, state, control, **kwargs):
        requested = self.requested
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([1.0 if requested else 0.0], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            requested = bool(flag.item())
            if requested and self.signum is None:
                self.signum = signal.SIGTERM  # another process was told to stop
        if requested:
            control.should_save = True
            control.should_training_stop = True
            if args.save_total_limit == 1:
                # With a limit of 1 the Trainer deletes, at the end, every checkpoint but the best:
                # the one saved for this stop must survive it.
                args.save_total_limit = 2
        return control

"""Which process of a multi-process run speaks and writes: rank 0, as the launcher numbers them.

The launcher (`--nproc`, `accelerate launch`, torchrun) gives each process its RANK before any
library starts; a process without one is a run of its own. Read here, and only here, so that the
command line and the runner agree on which process is the main one before the Trainer exists.
"""

from __future__ import annotations

import os


def process_rank() -> int:
    """This process's rank in a multi-process run (0 outside one)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True outside multi-process runs, and on rank 0 inside them."""
    return process_rank() == 0

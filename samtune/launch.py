"""`--nproc N`: the same command again on N local processes through Accelerate's launcher.

The parent launches, forwards Ctrl-C/SIGTERM once, filters the launcher's own traceback about a
failed child (unless --debug) and returns the exit code the processes left in a file (the
launcher itself only says 1). Each child writes that file through `report_exit`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from samtune.processes import is_main_process

EXIT_FILE = "SAMTUNE_EXIT_FILE"  # where a re-launched process leaves its exit code for --nproc's parent
NPROC_ENV = "SAMTUNE_NPROC"  # how many processes --nproc started (for the resume command)


def launched() -> bool:
    """Whether this process is one that a launcher started (so it must not launch again)."""
    return "LOCAL_RANK" in os.environ


def report_exit(code: int) -> None:
    """Leave this process's exit code where --nproc's parent reads it (the main process's wins)."""
    exit_file = os.environ.get(EXIT_FILE)
    if exit_file and (is_main_process() or not Path(exit_file).exists()):
        with contextlib.suppress(OSError):  # the parent may be gone
            Path(exit_file).write_text(str(code))


def relaunch(argv: list[str], nproc: int, debug: bool, say: Callable[[str], None], warn: Callable[[str], None]) -> int:
    """Run `samtune *argv` on `nproc` local processes with Accelerate's launcher; its exit code."""
    import torch

    # --multi_gpu selects torchrun; without CUDA the processes meet over gloo on the CPU.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc)]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port()), "-m", "samtune", *argv]
    env = dict(os.environ)
    env[NPROC_ENV] = str(nproc)
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    say(f"launching {nproc} processes: {shlex.join(['samtune', *argv])}")
    with tempfile.TemporaryDirectory(prefix="samtune-") as tmp:
        exit_file = Path(tmp) / "exit"
        env[EXIT_FILE] = str(exit_file)
        # The launcher gets its own session: a Ctrl-C (or a SIGTERM to this process) reaches it
        # once, through us, and we keep reading its output until its processes have saved and ended.
        proc = subprocess.Popen(
            launch, env=env, stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True
        )
        forward = lambda signum, frame: proc.send_signal(signum)  # noqa: E731
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            assert proc.stderr is not None
            hiding = False
            for line in proc.stderr:
                hiding = hiding or (not debug and line.startswith("Traceback (most recent call last)"))
                if not hiding or line.startswith("samtune "):  # a resume command always comes through
                    sys.stderr.write(line)
            code = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if exit_file.is_file():
            return int(exit_file.read_text() or code)
        if code != 0 and hiding:
            warn(f"the {nproc} processes failed (exit {code}); --debug shows the launcher's report")
        return code


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def without(args: list[str], flags: set[str], valued: set[str]) -> list[str]:
    """`args` without the given flags (and the values of those that take one)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in valued:
            skip = True
        elif arg in flags or arg.split("=", 1)[0] in valued:
            pass
        else:
            out.append(arg)
    return out


def resume_command(argv: list[str]) -> str:
    """This command as it would continue from its newest checkpoint (under --nproc, with it)."""
    args = without(argv, {"--overwrite"}, {"--resume", "--nproc"})
    if os.environ.get(NPROC_ENV):
        args += ["--nproc", os.environ[NPROC_ENV]]
    return shlex.join(["samtune", *args, "--resume", "auto"])

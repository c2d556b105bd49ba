"""Runs the real `samtune` command line, interrupting it as the test asks (SAMTUNE_TEST_INTERRUPT).

kill:    SIGKILL right after the second checkpoint is saved (a crash, a pre-empted machine)
sigint:  SIGINT at step 4 (SAMTUNE_TEST_STEP) (Ctrl-C): samtune must finish the step, save and exit 130
sigterm: SIGTERM at step 4: the same, exit 143
sigint2: two SIGINTs at step 4: the second stops at once, without waiting for the checkpoint
"""

import os
import signal
import sys

from samtune import progress

MODE = os.environ.get("SAMTUNE_TEST_INTERRUPT", "")
AT_STEP = int(os.environ.get("SAMTUNE_TEST_STEP", "4"))
_saves = 0
_step_end = progress.ProgressCallback.on_step_end


def on_save(self, args, state, control, **kwargs):
    global _saves
    _saves += 1
    if MODE == "kill" and _saves == 2:
        os.kill(os.getpid(), signal.SIGKILL)


def on_step_end(self, args, state, control, **kwargs):
    _step_end(self, args, state, control, **kwargs)
    if MODE in ("sigint", "sigterm", "sigint2") and state.global_step == AT_STEP:
        os.kill(os.getpid(), signal.SIGTERM if MODE == "sigterm" else signal.SIGINT)
        if MODE == "sigint2":
            os.kill(os.getpid(), signal.SIGINT)


progress.ProgressCallback.on_save = on_save
progress.ProgressCallback.on_step_end = on_step_end

if __name__ == "__main__":
    from samtune.cli import main

    sys.argv = ["samtune", *sys.argv[1:]]
    main()

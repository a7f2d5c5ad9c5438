"""A clean stop for training loops: SIGTERM / SIGINT set a flag that the loop reads at the end of a step
(it checkpoints, then stops), and the kill-test hook that SIGKILLs a run after a number of steps.

Shared by the segmenter's loop (pipeline.segment.fit) and tiny-SD pretraining (pipeline.tiny.train_sd),
so both stop and resume the same way."""

from __future__ import annotations

import os
import signal

KILL_AFTER_STEPS_ENV = "DICLIP_KILL_AFTER_STEPS"  # tests: SIGKILL this process after that many steps


class Interrupt:
    """SIGTERM/SIGINT set `raised` (the signal number) instead of stopping the process; `restore()` puts
    the previous handlers back."""

    def __init__(self) -> None:
        self.raised: int | None = None
        self._old = {s: signal.signal(s, self._set) for s in (signal.SIGTERM, signal.SIGINT)}

    def _set(self, signum, _frame) -> None:
        self.raised = signum

    def restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


def kill_after_steps() -> int:
    """The step count after which a kill test wants this process SIGKILLed (0: never)."""
    return int(os.environ.get(KILL_AFTER_STEPS_ENV, 0))


_steps_run = 0  # training steps this process has run, over every loop and phase (the kill tests' count)


def step_done() -> None:
    """Count one finished training step; SIGKILL the process once a kill test's count is reached."""
    global _steps_run
    _steps_run += 1
    due = kill_after_steps()
    if due and _steps_run >= due:
        kill_now()


def kill_now() -> None:
    """SIGKILL this process: no handler, no cleanup, as a crash or an OOM kill would leave it."""
    os.kill(os.getpid(), signal.SIGKILL)

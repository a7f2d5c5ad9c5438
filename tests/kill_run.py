"""Kill -9 a stage run at a known point: the shared half of the resume-after-kill tests.

No sleeps or polling: the runner's own hook (DICLIP_KILL_AFTER_IMAGES) sends SIGKILL to the run's
process group (the driver and its dask workers) once that many images are staged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.runner import KILL_AFTER_ENV

ROOT = Path(__file__).resolve().parent.parent


def run_killed_after(args: list[str], images: int, *, timeout: float = 600) -> None:
    """Run `python args...` in its own session, killed by the runner after `images` images are staged."""
    env = {**os.environ, KILL_AFTER_ENV: str(images)}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, start_new_session=True, timeout=timeout,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed (exit {proc.returncode}):\n{proc.stderr.decode()}"

"""Kill -9 a stage run part-way: the shared half of the resume-after-kill tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.store.image_store import ImageStore


def kill_when_part_way(proc: subprocess.Popen, store_path: Path, *, min_done: int, min_staged: int, timeout: float) -> None:
    """Wait until `min_done` images are packed and `min_staged` staged, then SIGKILL the run's process group.

    `proc` must be started with start_new_session=True so its dask workers die with it.
    """
    staging = store_path.with_name(store_path.name + ".staging")
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            done = ImageStore.open(store_path, require_complete=False).done().sum() if (store_path / "zarr.json").exists() else 0
            staged = len(list(staging.glob("*.npz"))) if staging.exists() else 0
            if done >= min_done and staged >= min_staged:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail("the run never got part-way")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 of the run: the driver and its dask workers
        proc.wait()

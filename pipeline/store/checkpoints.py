"""Training checkpoints: saved atomically every few steps and on interruption, resumed from the newest.

Each checkpoint is one file `step_<n>.pt` (torch.save of a state dict, written to a temporary sibling
and renamed), stamped with the run's key; `latest()` ignores checkpoints of another key (other params
or code), so a resumed run never continues someone else's training. The newest `keep` are kept.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Mapping

from pipeline import atomic

_NAME = re.compile(r"step_(\d{9})\.pt")


class CheckpointStore:
    """A folder of checkpoints of one training run (identified by `key`)."""

    def __init__(self, folder: str | Path, *, key: str, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.folder, self.key, self.keep = Path(folder), key, keep

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        """Write `state` as the checkpoint of `step`, then drop all but the newest `keep`."""
        import torch

        buf = io.BytesIO()
        torch.save({"key": self.key, "step": int(step), "state": dict(state)}, buf)
        path = atomic.write_bytes(self.folder / f"step_{int(step):09d}.pt", buf.getvalue())
        for old in self.steps()[: -self.keep]:
            (self.folder / f"step_{old:09d}.pt").unlink(missing_ok=True)
        return path

    def steps(self) -> list[int]:
        """Steps with a checkpoint file, oldest first (temporary files of an interrupted save excluded)."""
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.fullmatch(p.name)))

    def latest(self) -> tuple[int, dict[str, Any]] | None:
        """(step, state) of the newest checkpoint of this key, or None."""
        import torch

        for step in reversed(self.steps()):
            saved = torch.load(self.folder / f"step_{step:09d}.pt", map_location="cpu", weights_only=False)
            if saved.get("key") == self.key:
                return int(saved["step"]), saved["state"]
        return None

    def clear(self) -> None:
        """Remove this folder's checkpoint files (any key), then the folder if nothing else is in it."""
        for step in self.steps():
            (self.folder / f"step_{step:09d}.pt").unlink(missing_ok=True)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()

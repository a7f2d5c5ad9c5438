"""Picklable per-image tasks with known answers, for runner tests (imported by dask workers too)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.store.image_store import ArraySpec

SPECS = (ArraySpec("x", (4, 3), "float16"), ArraySpec("k", (), "int32", -1))


def expected(image_id: str, version: str = "") -> dict[str, np.ndarray]:
    """The planted answer for an id: values derived only from the id's digest (and an input version)."""
    seed = int.from_bytes(hashlib.sha256((image_id + version).encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((4, 3)).astype("float16"), "k": np.int32(seed % 1000)}


@dataclass(frozen=True)
class PlantedTask:
    """Computes `expected(id)`; fails on chosen ids; logs each computation; `changed` ids have new inputs."""

    fail_ids: tuple[str, ...] = ()
    log_dir: str | None = None
    changed: tuple[str, ...] = ()

    def _version(self, image_id: str) -> str:
        return "v2" if image_id in self.changed else ""

    def build(self):
        def fn(image_id: str):
            if image_id in self.fail_ids:
                raise ValueError(f"image {image_id!r}: planted failure")
            if self.log_dir:
                with open(Path(self.log_dir) / f"{os.getpid()}.log", "a") as f:
                    f.write(image_id + "\n")
            return expected(image_id, self._version(image_id))

        return fn

    def input_digest(self, image_id: str) -> bytes:
        return hashlib.sha256((image_id + self._version(image_id)).encode()).digest()


def computed_ids(log_dir: str | Path) -> list[str]:
    return [line for p in Path(log_dir).glob("*.log") for line in p.read_text().split()]

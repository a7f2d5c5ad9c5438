"""Rows of several finished per-image stores by image id, for a per-image task on a worker.

A later stage reads earlier stages' stores (e.g. the CAM stage reads `diffusion.zarr`). The stage
records each input store's fingerprint when it starts (`AlignedInputs.of`); a worker opens each store
once per process and refuses it if its fingerprint differs from the recorded one (the store was
rewritten mid-run), so no image is ever computed from a mix of two versions of an input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from pipeline.store.errors import StoreError
from pipeline.store.image_store import ImageStore

_OPEN: dict[tuple[str, str], tuple[ImageStore, dict[str, int]]] = {}  # per worker process


@dataclass(frozen=True)
class AlignedInputs:
    """(name, path, fingerprint) of each input store; picklable, opened lazily where it is used."""

    stores: tuple[tuple[str, str, str], ...]

    @classmethod
    def of(cls, paths: Mapping[str, str | Path]) -> "AlignedInputs":
        """Open each store now (complete, or StoreError naming it) and record its fingerprint."""
        return cls(tuple((name, str(p), ImageStore.open(p).fingerprint) for name, p in paths.items()))

    @property
    def fingerprints(self) -> dict[str, str]:
        return {name: fp for name, _, fp in self.stores}

    def row(self, image_id: str) -> dict[str, dict[str, np.ndarray]]:
        """{store name: {array: value}} of one image from every input store."""
        out = {}
        for name, path, fingerprint in self.stores:
            store, rows = _opened(path, fingerprint)
            if image_id not in rows:
                raise StoreError(f"{path}: image {image_id!r} is not in this input store")
            i = rows[image_id]
            out[name] = {spec.name: store.read(spec.name, i) for spec in store.specs}
        return out


def _opened(path: str, fingerprint: str) -> tuple[ImageStore, dict[str, int]]:
    key = (path, fingerprint)
    if key not in _OPEN:
        store = ImageStore.open(path)
        if store.fingerprint != fingerprint:
            raise StoreError(f"{path}: changed while this stage ran (fingerprint {store.fingerprint}, "
                             f"expected {fingerprint}); rerun the stage")
        _OPEN[key] = (store, {image_id: i for i, image_id in enumerate(store.ids())})
    return _OPEN[key]

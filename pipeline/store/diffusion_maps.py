"""Read access to stage A's `diffusion.zarr` by image id (layout: stages/diffusion_attention.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.store.errors import StoreError
from pipeline.store.image_store import ImageStore

STAGE = "diffusion_attention"


class DiffusionMaps:
    """Clusters and attention of a finished `diffusion.zarr`, by image id."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store
        self.attrs = store.attrs
        self._rows = {image_id: i for i, image_id in enumerate(store.ids())}

    @classmethod
    def open(cls, path: str | Path, *, index_fingerprint: str | None = None) -> "DiffusionMaps":
        """Open a complete store; with `index_fingerprint`, refuse one computed from another dataset index."""
        maps = cls(ImageStore.open(path, stage=STAGE))
        if index_fingerprint is not None and maps.attrs.get("index_fingerprint") != index_fingerprint:
            raise StoreError(f"{maps.store.path}: computed from another dataset index than the one given "
                             "(rerun `dvc repro diffusion_attention`)")
        return maps

    @property
    def cluster_grid(self) -> int:
        return int(self.attrs["cluster_grid"])

    @property
    def attention_grid(self) -> int:
        return int(self.attrs["attention_grid"])

    @property
    def ids(self) -> list[str]:
        return list(self._rows)

    def row(self, image_id: str) -> int:
        try:
            return self._rows[image_id]
        except KeyError:
            raise StoreError(f"{self.store.path}: image {image_id!r} is not in the store (splits: {self.attrs['splits']})") from None

    def clusters(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(soft (k, G, G) float32, hard (G, G) int64) of one image."""
        i = self.row(image_id)
        k = int(self.store.read("k", i))
        return self.store.read("soft", i)[:k].astype(np.float32), self.store.read("hard", i).astype(np.int64)

    def attention(self, image_id: str) -> np.ndarray:
        """(g^2, g^2) float32 aggregated attention at the attention grid (rows sum to 1)."""
        if "attention" not in {s.name for s in self.store.specs}:
            raise StoreError(f"{self.store.path}: no attention stored (diffusion_attention.store_attention was false)")
        a = self.store.read("attention", self.row(image_id)).astype(np.float32)
        return a / np.maximum(a.sum(1, keepdims=True), 1e-12)

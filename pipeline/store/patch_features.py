"""The adapter's training set, stored per image so that round 2 never holds the train split in memory.

Layout of `artifacts/tsa_features.zarr` (a per-image store over the train split; the `tsa_adapt`
stage's working state: kept for resuming, never pushed):

```
features (N, g*g, E) float16   the base scale's patch tokens, L2-normalised (as the cache's keys are made)
labels   (N, S, S)   uint8     the round-1 pseudo-label at the CLIP input size S (nearest), 255 ignored
image_id, _done, _input        see pipeline.store.image_store
attrs    provenance, key, grid g, complete
```
At g = 20 and E = 512 that is 400 KB per image: 4.3 GB for VOC's train_aug, 34 GB for COCO's train,
which `StoredPatches` reads a training batch at a time.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.store.image_store import ArraySpec, ImageStore

# Images per shard of the features store. It is working state, never pushed, so its file count does not
# matter, while packing a shard holds about three times one array's block: 256 images keep that near
# 0.3 GB at g = 20 whatever the train split's size (a 4,096-image shard took 1.6 GB at VOC's sizes).
SHARD_IMAGES = 256


def patch_specs(grid: int, dim: int, size: int) -> list[ArraySpec]:
    """The arrays of one image: its (g*g, E) float16 patch features and its (S, S) uint8 label."""
    return [ArraySpec("features", (grid * grid, dim), "float16"), ArraySpec("labels", (size, size), "uint8")]


class StoredPatches:
    """A finished features store as the adapter's training set: `take(rows)` reads only those images."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store
        specs = {s.name: s for s in store.specs}
        self.grid = int(round(specs["features"].shape[0] ** 0.5))
        self._n = len(store.ids())

    def __len__(self) -> int:
        return self._n

    def take(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, g*g, E) float32, labels (B, S, S) uint8) of image rows `rows`, in that order."""
        features = np.stack([self.store.read("features", int(i)) for i in rows])
        labels = np.stack([self.store.read("labels", int(i)) for i in rows])
        return torch.from_numpy(features).float(), torch.from_numpy(labels)

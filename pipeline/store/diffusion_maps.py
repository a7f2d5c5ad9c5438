"""Read access to stage A's `diffusion.zarr` by image id.

Layout (a per-image store, pipeline.store.image_store, over the computed splits: the train split
first, then the eval split's images not already there; written by stage `diffusion_attention`):
```
clusters              (N, g, g) uint8          cluster id of every CLIP patch (ids < k)
k                     (N,) int32               clusters of the image
rows                  (N, max_k, g^2) float32  R's row for each cluster, zero after k: R[i] = rows[clusters[i]]
transition_values     (N, t^2, k_t) float16    P's top-k_t entries per row, renormalised (only with transition.topk > 0;
                                                float32 with transition.store_dtype float32)
transition_index      (N, t^2, k_t) int16      their column ids on the t x t grid of the transition layer
transition_kept       (N,) float32             mean over rows of the mass the kept entries held
transition_truncated  (N,) float32             fraction of rows with more than k_t non-zeros
image_id, _done, _input                        see pipeline.store.image_store
attrs  provenance, key, recipe, model, weights, precision, timestep, image_size, latent_size, grid g,
       max_clusters, correlation and transition layers and heads (t, k_t), splits, index_fingerprint, complete
```
R comes back dense at the store's grid g (resample it to another grid with
pipeline.diffusion.correlation.resample_correlation), P dense at its own grid t. Numpy only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.store.errors import StoreError
from pipeline.store.image_store import ImageStore

STAGE = "diffusion_attention"


class DiffusionMaps:
    """Clusters, refined correlation R and transition P of a finished `diffusion.zarr`, by image id."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store
        self.attrs = store.attrs
        self._rows = {image_id: i for i, image_id in enumerate(store.ids())}
        self._names = {s.name for s in store.specs}

    @classmethod
    def open(cls, path: str | Path, *, index_fingerprint: str | None = None) -> "DiffusionMaps":
        """Open a complete store; with `index_fingerprint`, refuse one computed from another dataset index."""
        maps = cls(ImageStore.open(path, stage=STAGE))
        if index_fingerprint is not None and maps.attrs.get("index_fingerprint") != index_fingerprint:
            raise StoreError(f"{maps.store.path}: computed from another dataset index than the one given "
                             "(rerun `dvc repro diffusion_attention`)")
        return maps

    @property
    def grid(self) -> int:
        """The CLIP patch grid g of the clusters and of R."""
        return int(self.attrs["grid"])

    @property
    def transition_grid(self) -> int | None:
        """The token grid t of P (None when no transition was stored)."""
        transition = self.attrs.get("transition")
        return None if not transition else int(transition["grid"])

    @property
    def ids(self) -> list[str]:
        return list(self._rows)

    def row(self, image_id: str) -> int:
        try:
            return self._rows[image_id]
        except KeyError:
            raise StoreError(f"{self.store.path}: image {image_id!r} is not in the store (splits: {self.attrs['splits']})") from None

    def require_splits(self, splits_ids: dict[str, list[str]], reader: str) -> None:
        """StoreError unless every image of `splits_ids` ({split: its image ids}) is stored: stage A may be
        computed for some splits only (`diffusion_attention.splits`), and `reader` (the params key that
        reads R or P, e.g. `cams.vce`) needs them all."""
        missing = [split for split, ids in splits_ids.items() if any(i not in self._rows for i in ids)]
        if missing:
            raise StoreError(f"{self.store.path}: {reader} reads stage A's maps of split(s) {missing}, but stage A was "
                             f"computed for {self.attrs.get('splits')} only; set diffusion_attention.splits to [] "
                             f"(the train and eval splits) and rerun stage A (`dvc repro diffusion_attention`)")

    def clusters(self, image_id: str) -> tuple[np.ndarray, int]:
        """(cluster ids (g, g) int64, K) of one image."""
        i = self.row(image_id)
        return self.store.read("clusters", i).astype(np.int64), int(self.store.read("k", i))

    def correlation(self, image_id: str) -> np.ndarray:
        """Dense R (g^2, g^2) float32: row i is the mean correlation row of patch i's cluster."""
        from pipeline.diffusion.correlation import dense_correlation

        clusters, k = self.clusters(image_id)
        return dense_correlation(clusters, self.store.read("rows", self.row(image_id))[:k])

    def transition(self, image_id: str) -> np.ndarray:
        """Dense P (t^2, t^2) float32 from the stored top-k entries (rows sum to 1)."""
        if "transition_values" not in self._names:
            raise StoreError(f"{self.store.path}: no transition stored (diffusion_attention.transition.topk was 0)")
        from pipeline.diffusion.transition import dense_transition

        i = self.row(image_id)
        return dense_transition(self.store.read("transition_values", i), self.store.read("transition_index", i))

    def transition_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per image: mean kept mass of P's rows, and the fraction of rows truncated to top-k."""
        if "transition_kept" not in self._names:
            raise StoreError(f"{self.store.path}: no transition stored (diffusion_attention.transition.topk was 0)")
        return self.store.read("transition_kept"), self.store.read("transition_truncated")

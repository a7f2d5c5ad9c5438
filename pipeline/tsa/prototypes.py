"""Keys and values of the TSA cache from generated images' patch features and masks (method.md B3).

Per image: one foreground prototype (mean feature of the patches inside its mask) and one background
prototype (outside). Per class, scikit-learn KMeans over the class's foreground prototypes gives its
keys; one KMeans over every background prototype gives the background keys. Keys are ordered
[background, class 0, ..., class C-1]; values are one-hot over C + 1 columns, background first.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def patch_mask(label: np.ndarray, grid: int) -> np.ndarray:
    """(H, W) 0/1 foreground label -> (grid*grid,) bool, nearest-neighbour (PyTorch 'nearest')."""
    t = torch.from_numpy((label > 0).astype(np.float32))[None, None]
    return F.interpolate(t, size=(grid, grid), mode="nearest")[0, 0].reshape(-1).numpy() > 0


def prototypes(features: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(N, E) patch features and (N,) bool mask -> (fg prototype or None if the mask is empty,
    bg prototype or None if the mask is full)."""
    fg = features[inside].mean(0) if inside.any() else None
    bg = features[~inside].mean(0) if (~inside).any() else None
    return fg, bg


def cluster_keys(points: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """(M, E) prototypes -> (min(k, M), E) KMeans centres (n_init pinned to 10, as DiCLIP's
    scikit-learn gave; 'auto' means one run since 1.4). Fewer points than k: the points themselves."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    if len(points) <= k:
        return points.astype(np.float32)
    with threadpool_limits(limits=1):
        km = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(points.astype(np.float64))
    return km.cluster_centers_.astype(np.float32)


def build_keys(fg: dict[int, np.ndarray], bg: np.ndarray, num_classes: int, *, per_class: int,
               background: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground prototypes by class (M_c, E) and background prototypes (M_bg, E) ->
    (keys (K, E) float32, values (K, C + 1) float32 one-hot, key_class (K,) int64 with -1 = background)."""
    blocks = [cluster_keys(bg, background, seed=seed)] if len(bg) else []
    owners = [np.full(len(blocks[0]), -1)] if blocks else []
    for c in range(num_classes):
        if c in fg and len(fg[c]):
            blocks.append(cluster_keys(fg[c], per_class, seed=seed))
            owners.append(np.full(len(blocks[-1]), c))
    keys = np.concatenate(blocks).astype(np.float32)
    key_class = np.concatenate(owners).astype(np.int64)
    values = np.zeros((len(keys), num_classes + 1), dtype=np.float32)
    values[np.arange(len(keys)), key_class + 1] = 1.0
    return keys, values, key_class

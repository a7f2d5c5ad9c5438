"""DiCLIP's patch correlation from one self-attention layer, and its cluster-mean refinement R.

method.md, Stage A 2 and 4 (D). For the selected heads of the correlation layer, queries and keys
are resampled to the CLIP patch grid g and multiplied without scale or softmax; each head's map is
column-max normalised, thresholded and row-normalised, and the heads' maps are multiplied in order:
A (g^2 x g^2), row-stochastic. After clustering (kl_assign), R replaces every row of A by the mean
row of its cluster: R stays row-stochastic and is constant within a cluster, so it is stored exactly
as cluster ids plus one row per cluster. CAMs at other scales resample R (both axes bilinear, rows
renormalised; mirrored for flips). Pure torch, no files, no models.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-5  # DiCLIP's epsilon in both normalisations


def resize_tokens(x: torch.Tensor, grid_hw: tuple[int, int], size: int) -> torch.Tensor:
    """(..., n, d) tokens of an (h, w) grid -> (..., size^2, d), bilinear (align_corners=False, no antialias)."""
    h, w = grid_hw
    *lead, n, d = x.shape
    if n != h * w:
        raise ValueError(f"{n} tokens do not fill an {h}x{w} grid")
    maps = x.reshape(-1, h, w, d).permute(0, 3, 1, 2)  # (B, d, h, w)
    if (h, w) != (size, size):
        maps = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
    return maps.permute(0, 2, 3, 1).reshape(*lead, size * size, d)


def head_scores(query: torch.Tensor, key: torch.Tensor, grid_hw: tuple[int, int], size: int) -> torch.Tensor:
    """(heads, n, d) queries and keys -> (heads, size^2, size^2) unscaled products q~ k~^T at the grid."""
    q, k = resize_tokens(query.float(), grid_hw, size), resize_tokens(key.float(), grid_hw, size)
    return q @ k.transpose(-1, -2)


def normalise_scores(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Each column over its max across queries (+eps), entries below `threshold` zeroed (negatives
    too), rows renormalised (+eps): a (..., n, n) matrix of non-negative rows summing to ~1."""
    s = scores / (scores.amax(dim=-2, keepdim=True) + EPS)
    s = torch.where(s < threshold, torch.zeros_like(s), s)
    return s / (s.sum(dim=-1, keepdim=True) + EPS)


def head_product(maps: torch.Tensor) -> torch.Tensor:
    """(heads, n, n) -> their matrix product in head order (a single head is returned as is)."""
    return functools.reduce(torch.matmul, maps.unbind(0))


def layer_correlation(query: torch.Tensor, key: torch.Tensor, grid_hw: tuple[int, int], size: int,
                      threshold: float) -> torch.Tensor:
    """DiCLIP's A (size^2, size^2) float32 from the selected heads' (heads, n, d) queries and keys."""
    return head_product(normalise_scores(head_scores(query, key, grid_hw, size), threshold))


def cluster_rows(a: torch.Tensor, ids: torch.Tensor, k: int) -> torch.Tensor:
    """(k, n) mean row of `a` (n, n) over the members of each cluster (`ids` (n,) in [0, k))."""
    one_hot = F.one_hot(ids.long(), k).to(a.dtype)  # (n, k)
    return (one_hot.T @ a) / one_hot.sum(0).clamp_min(1)[:, None]


def refine(a: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """R = diag(sizes)^-1 C A: every row of `a` becomes its cluster's mean row (n, n)."""
    k = int(ids.max()) + 1
    return cluster_rows(a, ids, k)[ids.long()]


def resample_correlation(r: torch.Tensor, grid: int, size: int, *, flip: bool = False) -> torch.Tensor:
    """R (g^2, g^2) on a g x g grid -> (size^2, size^2) for a CAM scale's patch grid; `flip` mirrors both
    axes (for a flipped image). At another size, keys and queries are resampled bilinearly
    (align_corners=False) and rows renormalised; at the same size R is returned as stored (mirrored by a
    permutation), rows untouched: a row DiCLIP's threshold emptied stays empty."""
    n = grid * grid
    if r.shape != (n, n):
        raise ValueError(f"R must be ({n}, {n}) for grid {grid}, got {tuple(r.shape)}")
    if size == grid:
        if not flip:
            return r
        perm = torch.arange(n).reshape(grid, grid).flip(-1).reshape(-1)
        return r[perm][:, perm]
    x = r.float().reshape(n, grid, grid)  # each row as a key map
    if flip:
        x = x.flip(-1)
    x = F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    x = x.reshape(grid, grid, size * size).permute(2, 0, 1)  # (size^2 keys, g, g query grid)
    if flip:
        x = x.flip(-1)
    x = F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    out = x.reshape(size * size, size * size).T.contiguous()  # (queries, keys)
    return out / out.sum(-1, keepdim=True).clamp_min(1e-12)


def dense_correlation(clusters: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Stage A's stored R (cluster ids (g, g), cluster rows (max_k, g^2)) -> dense (g^2, g^2) float32:
    row i is the row of patch i's cluster."""
    return rows.astype(np.float32)[np.asarray(clusters).reshape(-1).astype(np.int64)]

"""Patch correlation from stored diffusion cluster maps, for any CLIP patch grid (the VCE bias).

method.md: resize the K cluster maps to the g x g patch grid, M (K x g^2), C = normalised M^T M:
patches in the same diffusion cluster correlate. Normalisation here is cosine: every patch's
membership vector (a column of M) is L2-normalised, so C[i, j] in [0, 1], C[i, i] = 1 (a patch
with no mass anywhere has a zero row/column), and for hard (one-hot) maps C[i, j] is 1 exactly when
patches i and j share a cluster. Pure torch, no files.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.diffusion.capture import resize_grids


def cluster_correlation(maps: np.ndarray | torch.Tensor, grid: int | tuple[int, int]) -> np.ndarray | torch.Tensor:
    """(..., K, H, W) cluster maps -> (..., g^2, g^2) float32 symmetric patch correlation.

    `maps` are soft cluster maps (any non-negative weights; zero maps, i.e. the padding after an
    image's K clusters, contribute nothing) or one-hot hard maps. `grid` is the patch grid g (or
    (gh, gw)); patch index i is (i // gw, i % gw). Returns the input's type (numpy or torch).
    """
    as_numpy = not isinstance(maps, torch.Tensor)
    x = torch.as_tensor(np.asarray(maps) if as_numpy else maps).float()
    if x.ndim < 3:
        raise ValueError(f"maps must be (..., K, H, W), got shape {tuple(x.shape)}")
    gh, gw = (grid, grid) if isinstance(grid, (int, np.integer)) else grid
    lead, (K, H, W) = x.shape[:-3], x.shape[-3:]
    m = resize_grids(x.reshape(-1, H, W), (gh, gw)).reshape(-1, K, gh * gw)  # (B, K, g^2): M per image
    m = m / m.norm(dim=1, keepdim=True).clamp_min(1e-12)  # unit membership vector per patch
    corr = m.transpose(1, 2) @ m  # (B, g^2, g^2) = M^T M
    corr = 0.5 * (corr + corr.transpose(1, 2))  # exact symmetry despite rounding
    corr = corr.reshape(*lead, gh * gw, gh * gw)
    return corr.numpy() if as_numpy else corr


def one_hot_maps(hard: np.ndarray, k: int) -> np.ndarray:
    """(H, W) cluster ids -> (k, H, W) float32 one-hot maps (for correlation from the hard map)."""
    hard = np.asarray(hard)
    return (hard[None] == np.arange(k)[:, None, None]).astype(np.float32)

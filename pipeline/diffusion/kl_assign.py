"""DiCLIP's clustering of a patch correlation (its ACR, method.md Stage A 3): KL assignment to anchors.

Patch j is described by column j of A (the attention it receives; zeros -> 1e-6, not normalised).
Anchors start at the patches on a regular lattice (stride `anchor_stride`: DiCLIP's g // 3, i.e.
positions {0, 6, 12, 18} on its 20 x 20 grid); each round assigns every patch to its nearest
anchor by symmetric KL and moves every anchor to the mean of its members; anchors that win no
patch drop out. No merge threshold, no k-means stage. Computed in float32 (DiCLIP: float16).
Pure torch, no files, no models.
"""

from __future__ import annotations

import torch

KL_EPS = 1e-5  # added to both distributions (DiCLIP)
ZERO_FILL = 1e-6  # replaces exact zeros of the descriptors (DiCLIP)


def default_anchor_stride(grid: int) -> int:
    """DiCLIP's stride: grid // 3 (it asks for 9 anchors and gets 16 on a 20 x 20 grid)."""
    return max(1, grid // 3)


def anchor_positions(grid: int, stride: int) -> torch.Tensor:
    """Flat indices (row-major) of the anchor lattice range(0, grid, stride)^2."""
    side = torch.arange(0, grid, stride)
    return (side[:, None] * grid + side[None, :]).reshape(-1)


def symmetric_kl(a: torch.Tensor, b: torch.Tensor, eps: float = KL_EPS) -> torch.Tensor:
    """(n1, p), (n2, p) non-negative rows -> (n1, n2): 1/2 KL(a'||b') + 1/2 KL(b'||a'), x' = x + eps.

    Equals 1/2 sum_p (a' - b') (log a' - log b'), expanded into matrix products.
    """
    a, b = a.float() + eps, b.float() + eps
    la, lb = a.log(), b.log()
    return 0.5 * ((a * la).sum(-1)[:, None] + (b * lb).sum(-1)[None, :] - a @ lb.T - la @ b.T)


def kl_assign(a: torch.Tensor, grid: int, *, anchor_stride: int | None, rounds: int) -> tuple[torch.Tensor, int]:
    """Cluster the g^2 patches of A (g^2, g^2): (ids (g^2,) int64 numbered 0..K-1 in anchor order, K)."""
    n = grid * grid
    if a.shape != (n, n):
        raise ValueError(f"A must be ({n}, {n}) for grid {grid}, got {tuple(a.shape)}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    x = a.float().T.contiguous()  # row j: column j of A
    x = torch.where(x == 0, torch.full_like(x, ZERO_FILL), x)
    anchors = x[anchor_positions(grid, anchor_stride or default_anchor_stride(grid))]
    for _ in range(rounds):
        ids = symmetric_kl(anchors, x).argmin(0)  # nearest anchor per patch (first on ties)
        used, ids = torch.unique(ids, return_inverse=True)  # empty anchors drop out, ids renumbered
        one_hot = torch.nn.functional.one_hot(ids, len(used)).float()
        anchors = (one_hot.T @ x) / one_hot.sum(0)[:, None]
    return ids, len(used)

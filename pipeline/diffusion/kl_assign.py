"""DiCLIP's clustering of a patch correlation (its ACR, method.md Stage A 3): KL assignment to anchors.

Patch j is described by column j of A (the attention it receives; zeros -> 1e-6, not normalised).
Anchors start at the patches on a regular lattice (stride `anchor_stride`: DiCLIP's g // 3, i.e.
positions {0, 6, 12, 18} on its 20 x 20 grid); each round assigns every patch to its nearest
anchor by symmetric KL and moves every anchor to the mean of its members; anchors that win no
patch drop out. No merge threshold, no k-means stage.

`precision` says how the distance is computed. `float16` is DiCLIP's: the descriptors are cast to
float16 before the epsilon is added and every product, sum and difference is a float16 operation, so
near-ties round alike and `torch.min` (first index on ties) gives DiCLIP's ids (tests/test_diclip_parity.py:
identical ids on its reference). `float32` is ours: the same distance as matrix products in float32,
which separates near-ties DiCLIP's rounding merges (ARI 0.997 against DiCLIP's ids on its chelsea).
Pure torch, no files, no models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from pipeline.diffusion.config import KL_PRECISIONS as PRECISIONS

KL_EPS = 1e-5  # added to both distributions (DiCLIP)
ZERO_FILL = 1e-6  # replaces exact zeros of the descriptors (DiCLIP)
_CHUNK_ELEMENTS = 1 << 24  # float16 distance: anchors per block so that a block's (anchors, n, d) terms stay ~32 MB


@dataclass(frozen=True)
class KlRound:
    """One assignment round: the anchors it started from (A, d) float32, the distances (A, n) in the
    round's precision, and each patch's nearest anchor (n,) (an index into this round's anchors)."""

    anchors: torch.Tensor
    distances: torch.Tensor
    assign: torch.Tensor


def default_anchor_stride(grid: int) -> int:
    """DiCLIP's stride: grid // 3 (it asks for 9 anchors and gets 16 on a 20 x 20 grid)."""
    return max(1, grid // 3)


def anchor_positions(grid: int, stride: int) -> torch.Tensor:
    """Flat indices (row-major) of the anchor lattice range(0, grid, stride)^2."""
    side = torch.arange(0, grid, stride)
    return (side[:, None] * grid + side[None, :]).reshape(-1)


def symmetric_kl(a: torch.Tensor, b: torch.Tensor, eps: float = KL_EPS) -> torch.Tensor:
    """(n1, p), (n2, p) non-negative rows -> (n1, n2) float32: 1/2 KL(a'||b') + 1/2 KL(b'||a'), x' = x + eps.

    Equals 1/2 sum_p (a' - b') (log a' - log b'), expanded into matrix products.
    """
    a, b = a.float() + eps, b.float() + eps
    la, lb = a.log(), b.log()
    return 0.5 * ((a * la).sum(-1)[:, None] + (b * lb).sum(-1)[None, :] - a @ lb.T - la @ b.T)


def symmetric_kl_half(a: torch.Tensor, b: torch.Tensor, eps: float = KL_EPS) -> torch.Tensor:
    """(n1, p), (n2, p) -> (n1, n2) float16, DiCLIP's arithmetic: a' = half(a) + eps, b' = half(b) + eps,
    q = log a' - log b', 1/2 sum_p a' q - 1/2 sum_p b' q, each step in float16.

    Written out term by term rather than as matrix products because the rounding of each float16 term
    decides DiCLIP's ties; blocks of anchors bound the (anchors, n2, p) temporaries."""
    a16, b16 = a.half() + eps, b.half() + eps
    lb = b16.log()[None]  # (1, n2, p)
    step = max(1, _CHUNK_ELEMENTS // max(1, b16.numel()))
    out = []
    for s in range(0, a16.shape[0], step):  # over blocks of anchors, not over patches
        blk = a16[s:s + step, None, :]  # (A', 1, p)
        q = blk.log() - lb
        out.append(0.5 * (blk * q).sum(-1) - 0.5 * (b16[None] * q).sum(-1))
    return torch.cat(out)


def descriptors(a: torch.Tensor) -> torch.Tensor:
    """(n, n) A -> (n, n) float32: row j is column j of A, exact zeros replaced by ZERO_FILL."""
    x = a.float().T.contiguous()
    return torch.where(x == 0, torch.full_like(x, ZERO_FILL), x)


def kl_rounds(a: torch.Tensor, grid: int, *, anchor_stride: int | None, rounds: int,
              precision: str) -> Iterator[KlRound]:
    """The assignment rounds of A (g^2, g^2), one KlRound each; anchors move to their members' means
    (float32, ascending anchor order; anchors that win nothing drop out) between rounds."""
    n = grid * grid
    if a.shape != (n, n):
        raise ValueError(f"A must be ({n}, {n}) for grid {grid}, got {tuple(a.shape)}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    distance = symmetric_kl_half if precision == "float16" else symmetric_kl
    x = descriptors(a)
    anchors = x[anchor_positions(grid, anchor_stride or default_anchor_stride(grid))]
    for _ in range(rounds):
        d = distance(anchors, x)
        assign = d.min(0).indices  # nearest anchor per patch (the first on ties)
        yield KlRound(anchors, d, assign)
        # the mean of each non-empty cluster, one cluster at a time (DiCLIP's sums, to the last bit)
        anchors = torch.stack([x[assign == u].mean(0) for u in torch.unique(assign)])


def kl_assign(a: torch.Tensor, grid: int, *, anchor_stride: int | None, rounds: int,
              precision: str) -> tuple[torch.Tensor, int]:
    """Cluster the g^2 patches of A (g^2, g^2): (ids (g^2,) int64 numbered 0..K-1 in anchor order, K)."""
    for last in kl_rounds(a, grid, anchor_stride=anchor_stride, rounds=rounds, precision=precision):
        pass
    used, ids = torch.unique(last.assign, return_inverse=True)
    return ids, len(used)

"""DiCLIP's random-walk transition P from one high-resolution self-attention layer (method.md Stage A 5-6).

P0 is the mean of the selected heads' softmax probabilities (n x n). DiCLIP sharpens it: every
column is divided by its max, non-zero entries get + strength * log10(e * p) and are clamped at
zero (with strength 0.02 this drops entries below about 0.024 of their column max), and rows are
renormalised. Stored sparsely: the top-k entries of each row (values renormalised), exact for rows
with at most k non-zeros; the kept mass tells what truncation dropped. Pure torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def head_softmax(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """Each head's softmax(q k^T * scale): (heads, n, d) queries and keys -> (heads, n, n) float32."""
    return (query.float() @ key.float().transpose(-1, -2) * scale).softmax(-1)


def head_probabilities(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """Mean over heads of softmax(q k^T * scale): (heads, n, d) queries and keys -> (n, n) float32."""
    return head_softmax(query, key, scale).mean(0)


def sharpen_transition(p0: torch.Tensor, strength: float) -> torch.Tensor:
    """DiCLIP's transition from head-mean probabilities (..., n, n): rows sum to 1 (a row that the
    clamp empties stays zero)."""
    p = p0.float() / p0.float().amax(dim=-2, keepdim=True).clamp_min(1e-30)
    p = torch.where(p == 0, p, p + strength * torch.log10(math.e * p))
    p = p.clamp_min(0)
    return p / p.sum(-1, keepdim=True).clamp_min(1e-30)


@dataclass(frozen=True)
class SparseRows:
    """Top-k entries of every row of an (n, n) matrix: values renormalised per row, column ids."""

    values: torch.Tensor  # (n, k) float32, each non-empty row sums to 1
    index: torch.Tensor  # (n, k) int64 column ids
    kept: torch.Tensor  # (n,) float32 mass of the row the kept entries held before renormalising
    truncated: torch.Tensor  # (n,) bool: the row had more than k non-zeros


def top_k_rows(p: torch.Tensor, k: int) -> SparseRows:
    """Keep the k largest entries of every row of `p` (n, n) (k is capped at n)."""
    k = min(int(k), p.shape[-1])
    values, index = p.float().topk(k, dim=-1)
    total = p.float().sum(-1)
    kept = values.sum(-1)
    truncated = (p != 0).sum(-1) > k
    values = values / kept.clamp_min(1e-30)[:, None]
    return SparseRows(values, index, torch.where(total > 0, kept / total.clamp_min(1e-30), torch.ones_like(kept)), truncated)


def dense_transition(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Stage A's stored P (top-k values (n, k) and their columns (n, k)) -> dense (n, n) float32."""
    dense = np.zeros((values.shape[0], values.shape[0]), dtype=np.float32)
    np.put_along_axis(dense, index.astype(np.int64), values.astype(np.float32), axis=1)
    return dense

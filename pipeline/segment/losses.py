"""Stage D's training losses (method.md Stage D): segmentation + 0.1 affinity."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.tsa.adapter import balanced_cross_entropy  # the same balanced CE trains the adapter

IGNORE = 255


def affinity_targets(labels: torch.Tensor, grid: int, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) labels -> (same-label pairs, different-label pairs), each (B, N, N) bool over the g x g
    grid (labels nearest-resized), only pairs within `radius` patches of each other (Chebyshev) and
    with neither patch ignored."""
    small = F.interpolate(labels[:, None].float(), size=(grid, grid), mode="nearest")[:, 0].long().flatten(1)
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    near = ((ys[:, None] - ys[None]).abs() <= radius) & ((xs[:, None] - xs[None]).abs() <= radius)
    valid = (small != IGNORE)[:, :, None] & (small != IGNORE)[:, None, :] & near[None]
    same = small[:, :, None] == small[:, None, :]
    return valid & same, valid & ~same


def affinity_loss(affinity: torch.Tensor, labels: torch.Tensor, grid: int, radius: int = 8) -> torch.Tensor:
    """0.5 mean(1 - p) over same-label pairs + 0.5 mean(p) over different-label pairs."""
    same, different = affinity_targets(labels, grid, radius)
    part = lambda values, mask: values[mask].mean() if mask.any() else values.sum() * 0  # noqa: E731
    return 0.5 * part(1 - affinity, same) + 0.5 * part(affinity, different)


def segmenter_loss(logits: torch.Tensor, affinity: torch.Tensor, labels: torch.Tensor, grid: int, *,
                   affinity_weight: float = 0.1, radius: int = 8) -> torch.Tensor:
    """seg (balanced CE of the logits upsampled to the labels) + affinity_weight * affinity loss."""
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return balanced_cross_entropy(up, labels) + affinity_weight * affinity_loss(affinity, labels, grid, radius)

"""Stage D's training losses (method.md Stage D): segmentation + 0.1 affinity.

Each term is a mean over a set of pixels or pairs of the whole global batch (background-labelled pixels,
foreground-labelled pixels, same-label pairs, different-label pairs). With DDP a rank holds only part of
the batch, so the terms are computed as sums over the rank's part divided by the counts summed over all
ranks (`total`), and scaled by the number of ranks: DDP's gradient average then equals the gradient of
the global batch's loss on one process (a test runs 2 gloo processes against one).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from pipeline.metrics import IGNORE

#: sums a tensor over the DDP ranks (all_reduce); the identity on one process
Total = Callable[[torch.Tensor], torch.Tensor]


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


def loss_sums(logits: torch.Tensor, affinity: torch.Tensor, labels: torch.Tensor, grid: int,
              radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums, counts), each (4,): CE over background pixels, CE over foreground pixels (logits upsampled
    bilinearly to the labels), 1 - p over same-label pairs, p over different-label pairs; 255 ignored."""
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(up, labels.long(), ignore_index=IGNORE, reduction="none")
    bg, fg = labels == 0, (labels != 0) & (labels != IGNORE)
    same, different = affinity_targets(labels, grid, radius)
    sums = torch.stack([ce[bg].sum(), ce[fg].sum(), (1 - affinity)[same].sum(), affinity[different].sum()])
    counts = torch.stack([bg.sum(), fg.sum(), same.sum(), different.sum()]).to(sums.dtype)
    return sums, counts


def combine(sums: torch.Tensor, counts: torch.Tensor, *, affinity_weight: float) -> torch.Tensor:
    """0.5 (bg CE + fg CE) + affinity_weight * 0.5 (same + different); a term without pixels adds 0."""
    means = sums / counts.clamp(min=1)
    return 0.5 * (means[0] + means[1]) + affinity_weight * 0.5 * (means[2] + means[3])


def segmenter_loss(logits: torch.Tensor, affinity: torch.Tensor, labels: torch.Tensor, grid: int, *,
                   affinity_weight: float, radius: int, total: Total | None = None, world: int = 1) -> torch.Tensor:
    """seg (balanced CE of the logits upsampled to the labels) + affinity_weight * affinity loss, over the
    global batch: counts summed over ranks by `total`, the loss scaled by `world` (see the module doc)."""
    sums, counts = loss_sums(logits, affinity, labels, grid, radius)
    if total is not None:
        counts = total(counts.detach())
    return world * combine(sums, counts, affinity_weight=affinity_weight)

"""Multi-scale + flip inference of a segmenter (method.md Stage D, DiCLIP's evaluation).

The image is resized to `size * s` for every scale s (square, as the CLIP input); at every scale but
1.0 the mirrored image runs too and its logits are flipped back and averaged with the plain ones;
each scale's logits go bilinearly to `fraction` of the image size, are averaged over scales, then
brought to the image size. Pure: `logits_of` is any (B, 3, S, S) -> (B, K, h, w) function.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

DICLIP_SCALES: tuple[float, ...] = (0.7, 1.0, 1.2, 1.5)


def multiscale_logits(logits_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: tuple[int, int], *,
                      base: int, patch: int, scales: tuple[float, ...] = DICLIP_SCALES, flip: bool = True,
                      fraction: float = 0.4) -> torch.Tensor:
    """x (B, 3, h, w) normalised image(s) -> (B, K, H, W) logits averaged over scales (and flips) at `size`."""
    H, W = size
    mid = (max(1, int(round(H * fraction))), max(1, int(round(W * fraction))))
    total = None
    for s in scales:
        side = max(patch, int(round(base * s / patch)) * patch)
        xs = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        out = logits_of(xs)
        if flip and s != 1.0:
            out = (out + logits_of(xs.flip(-1)).flip(-1)) / 2
        out = F.interpolate(out, size=mid, mode="bilinear", align_corners=False)
        total = out if total is None else total + out
    return F.interpolate(total / len(scales), size=(H, W), mode="bilinear", align_corners=False)

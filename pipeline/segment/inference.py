"""Multi-scale + flip inference of a segmenter (method.md Stage D, DiCLIP's evaluation).

The image is resized to `size * s` for every scale s (square, as the CLIP input); at every scale but
1.0 the mirrored image runs too and its logits are flipped back and averaged with the plain ones;
each scale's logits go bilinearly to `fraction` of the image size, are averaged over scales, then
brought to the image size. Pure: `logits_of` is any (B, 3, S, S) -> (B, K, h, w) function.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.segment.config import InferenceConfig
from pipeline.segment.decoder import clip_block_tokens

def multiscale_logits(logits_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: tuple[int, int], *,
                      base: int, patch: int, scales: tuple[float, ...], flip: bool, fraction: float) -> torch.Tensor:
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


@torch.no_grad()
def segment_logits(decoder: nn.Module, visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) normalised input -> (B, C + 1, g, g) logits of the decoder in eval mode."""
    decoder.eval()
    tokens, grid = clip_block_tokens(visual, x)
    return decoder(tokens, grid)[0]


def predict(decoder: nn.Module, visual: nn.Module, image: torch.Tensor, size: int, *, patch: int) -> torch.Tensor:
    """A normalised image (3, H, W) -> (H, W) int64 class indices (0 background), at one scale around a
    `size` x `size` input, no flip, logits brought to the image through the evaluation's default
    fraction (the training loop's quick validation; `evaluate` runs the full inference)."""
    H, W = image.shape[-2:]
    logits = multiscale_logits(lambda xs: segment_logits(decoder, visual, xs), image[None], (H, W),
                               base=size, patch=patch, scales=(1.0,), flip=False, fraction=InferenceConfig.fraction)
    return logits[0].argmax(0)


def normalise(image: np.ndarray, mean_255: Sequence[float], std_255: Sequence[float]) -> torch.Tensor:
    """uint8 (H, W, 3) -> (3, H, W) float32, normalised on the 0-255 scale (as the CAM path feeds CLIP)."""
    x = (np.asarray(image, dtype=np.float32) - np.asarray(mean_255, np.float32)) / np.asarray(std_255, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def segment_image(decoder: torch.nn.Module, visual: torch.nn.Module, saved: dict, config: InferenceConfig,
                  image: np.ndarray) -> np.ndarray:
    """A uint8 (H, W, 3) image -> (H, W) uint8 class indices through `config`'s inference: multi-scale
    (+ flip) logits around `config.size`, then DenseCRF on the softmax when `config.crf`. `saved` is the
    segmenter's config (its input normalisation and patch)."""
    x = normalise(image, saved["mean_255"], saved["std_255"]).to(next(visual.parameters()).device)
    logits = multiscale_logits(lambda xs: segment_logits(decoder, visual, xs), x[None], image.shape[:2],
                               base=config.size, patch=saved["patch"], scales=tuple(config.scales), flip=config.flip,
                               fraction=config.fraction)[0].float().cpu()
    if not config.crf:
        return logits.argmax(0).numpy().astype(np.uint8)
    from pipeline.segment.crf import dense_crf

    return dense_crf(torch.softmax(logits, 0).numpy(), image, config).argmax(0).astype(np.uint8)

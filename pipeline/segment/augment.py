"""Training augmentation of Stage D (method.md: random rescale, crop, horizontal flip; no colour jitter).

Every sample is a pure function of (seed, step, slot): which image it shows and how it is rescaled,
cropped and flipped. So the global batch of a step is the same on one process or split over DDP ranks,
and a run resumed from a checkpoint at step s continues with exactly the batches it would have drawn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.metrics import IGNORE


@dataclass(frozen=True)
class SamplePlan:
    """What one training sample is: image `index`, rescale factor, crop origin as fractions, flip."""

    index: int
    scale: float
    crop_y: float
    crop_x: float
    flip: bool


def _generator(*parts: int) -> np.random.Generator:
    digest = hashlib.sha256(".".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def epoch_order(seed: int, epoch: int, n_images: int) -> np.ndarray:
    """The images' order in `epoch`: a permutation seeded by (seed, epoch)."""
    return _generator(seed, epoch, n_images).permutation(n_images)


def sample_plan(seed: int, step: int, slot: int, batch: int, n_images: int, rescale: tuple[float, float],
                flip: bool = True) -> SamplePlan:
    """Sample `slot` of the global batch of `step`: images in epoch order, each seen once per epoch; mirrored
    with probability 0.5 when `flip` (the draw is made either way, so the other choices do not depend on it)."""
    position = step * batch + slot
    epoch, at = divmod(position, n_images)
    rng = _generator(seed, step, slot)
    low, high = rescale
    scale, crop_y, crop_x, mirrored = float(rng.uniform(low, high)), float(rng.random()), float(rng.random()), rng.random() < 0.5
    return SamplePlan(int(epoch_order(seed, epoch, n_images)[at]), scale, crop_y, crop_x, flip and bool(mirrored))


def augment(image: torch.Tensor, label: torch.Tensor, plan: SamplePlan, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised image (3, H, W) and its labels (H, W) -> a (3, crop, crop) crop and its (crop, crop) labels.

    The pair is rescaled by `plan.scale` (bilinear / nearest), padded to at least `crop` (image 0 = the mean
    colour after normalisation, labels 255 = ignored), cropped at the plan's origin and mirrored if asked.
    """
    H, W = label.shape
    h, w = max(1, round(H * plan.scale)), max(1, round(W * plan.scale))
    x = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    y = F.interpolate(label[None, None].float(), size=(h, w), mode="nearest")[0, 0].to(torch.uint8)
    ph, pw = max(0, crop - h), max(0, crop - w)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=0.0)
        y = F.pad(y, (0, pw, 0, ph), value=IGNORE)
    top = int(plan.crop_y * (x.shape[1] - crop + 1))
    left = int(plan.crop_x * (x.shape[2] - crop + 1))
    x, y = x[:, top:top + crop, left:left + crop], y[top:top + crop, left:left + crop]
    if plan.flip:
        x, y = x.flip(-1), y.flip(-1)
    return x.contiguous(), y.contiguous()

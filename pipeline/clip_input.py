"""The CLIP input as ExCEL and DiCLIP make it, shared by the CAM path and DiCLIP's SD input.

DiCLIP feeds Stable Diffusion from its CLIP input (normalised, resized, then de-normalised), so both
stage A and stage C start from this one function. Pure numpy/torch, no models.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)  # ImageNet mean/std on the 0-255 scale (ExCEL's and DiCLIP's CLIP input)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


def normalise_then_resize(image: np.ndarray, size: int, *, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (H, W, 3) -> (1, 3, size, size) float32 as ExCEL and DiCLIP feed CLIP (method.md, Inputs):
    normalised on the 0-255 scale in float64 (`mean`, `std`: pipeline.models.clip.input_normalisation),
    then resized bilinearly (align_corners=False, no antialias) to a square, the aspect ratio not kept."""
    x = (np.asarray(image, dtype=np.float64) - np.asarray(mean)) / np.asarray(std)
    t = torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)

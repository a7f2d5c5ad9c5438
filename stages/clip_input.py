"""The normalisation of every CLIP input, the CAM path's and the segmenter's, decided in one place."""

from __future__ import annotations

from typing import Any


def input_normalisation(normalise: str, clip: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on the 0-255 scale, as `cams.normalise` says: the CLIP's own (DiCLIP, ExCEL; resolved
    from `models.clip` without loading weights) or ImageNet's."""
    from pipeline.cam.images import IMAGENET_MEAN_255, IMAGENET_STD_255
    from pipeline.models.clip import clip_normalisation

    if normalise != "model":
        return IMAGENET_MEAN_255, IMAGENET_STD_255
    mean, std = clip_normalisation(clip.model, clip.pretrained)
    return tuple(255 * m for m in mean), tuple(255 * s for s in std)

"""Load the models named in the `models` params section: the one entry point stages use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.models.clip import LoadedClip, load_clip
from pipeline.models.diffusion import load_stable_diffusion

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

    from pipeline.params.sections import ModelsParams


def clip_from_params(models: "ModelsParams") -> LoadedClip:
    """The frozen CLIP of `models.clip` on `models.device` at `models.precision`."""
    return load_clip(models.clip.model, models.clip.pretrained, device=models.device, precision=models.precision)


def stable_diffusion_from_params(models: "ModelsParams") -> "StableDiffusionPipeline":
    """The Stable Diffusion pipeline of `models.sd` on `models.device` at `models.precision`."""
    return load_stable_diffusion(models.sd.model, device=models.device, precision=models.precision)

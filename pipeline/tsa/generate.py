"""Class images from Stable Diffusion, reproducible per image and extendable.

Each image's starting noise comes from a generator seeded by (seed, class, index), so image i of a
class is the same whatever else is drawn. Images are drawn in fixed groups of `batch` consecutive
indices (always the whole group, even past the requested count), so a batch never holds different
neighbours in two runs: on the CPU that keeps every image byte-identical when N is raised.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
import torch


def generation_seed(seed: int, class_index: int, sample: int) -> int:
    """A 63-bit seed for image `sample` of class `class_index` under the run's `seed` (stable across
    processes and platforms: sha256 of the three numbers, not Python's hash)."""
    digest = hashlib.sha256(f"tsa/{seed}/{class_index}/{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def group_of(sample: int, batch: int) -> range:
    """The fixed group of indices drawn together with `sample`."""
    start = sample // batch * batch
    return range(start, start + batch)


@torch.no_grad()
def generate(pipe: Any, prompt: str, seeds: Sequence[int], *, steps: int, guidance: float, size: int) -> np.ndarray:
    """(len(seeds), size, size, 3) uint8 images of `prompt`. Each image's starting latent is drawn on the
    CPU from its own seeded generator (the same noise on any device), then handed to the pipeline."""
    channels = pipe.unet.config.in_channels
    side = size // 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    latents = torch.stack([torch.randn(channels, side, side, generator=torch.Generator().manual_seed(int(s)))
                           for s in seeds])
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=[prompt] * len(seeds), height=size, width=size, num_inference_steps=steps,
               guidance_scale=guidance, latents=latents.to(pipe.device, pipe.unet.dtype), output_type="np").images
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


#: `tsa_cache.scheduler` names -> diffusers scheduler classes (built from the model's own scheduler config)
SCHEDULERS = {"ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "euler": "EulerDiscreteScheduler",
              "dpm": "DPMSolverMultistepScheduler"}


def use_scheduler(pipe: Any, name: str) -> Any:
    """`pipe` with the named sampler ('default' keeps the model's own), configured from its scheduler config."""
    if name == "default":
        return pipe
    import diffusers

    pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)
    return pipe

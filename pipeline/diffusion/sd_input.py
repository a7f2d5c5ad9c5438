"""What one UNet forward of stage A is fed: the image as DiCLIP gives it to the VAE, the latent, the noise.

Each step is a function of tensors, so a caller can supply its own noise or text embedding (DiCLIP's
reference run stores both) and check each step on its own (tests/test_diclip_parity.py):

- `sd_pixels`: uint8 image -> (1, 3, s, s) VAE input in [-1, 1]. `diclip` is DiCLIP's chain (method.md
  Stage A 1): the ImageNet-normalised CLIP input at s px is de-normalised, truncated to uint8, /255, cast
  to float16, and VaeImageProcessor's 2x - 1 runs in float16. `antialias` resizes the uint8 image with
  antialiasing and maps it to [-1, 1] in float32 (ours: no truncation, no float16 rounding).
- `encode_latents`: the VAE's posterior mean times its scaling factor.
- `seeded_noise` / `add_noise`: noise drawn per image from its own seed (DiCLIP's is unseeded), added at
  the timestep with diffusers' own arithmetic (`scheduler.add_noise`).
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.clip_input import IMAGENET_MEAN_255, IMAGENET_STD_255, normalise_then_resize
from pipeline.diffusion.config import RESIZES

# SD's training noise schedule (scaled-linear betas 0.00085..0.012 over 1000 steps): used to add
# noise when no scheduler is given.
_SD_BETAS = (0.00085, 0.012, 1000)


def sd_alphas_cumprod() -> torch.Tensor:
    """(1000,) float64 cumulative alphas of SD's scaled-linear schedule."""
    start, end, steps = _SD_BETAS
    betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def image_noise_seed(base_seed: int, image_id: str) -> int:
    """A per-image seed from the base seed and the image id (independent of order and workers)."""
    digest = hashlib.sha256(f"{int(base_seed)}\0{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def seeded_noise(shape: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
    """(len(seeds), *shape) float32 standard normal noise, image b drawn from its own CPU generator."""
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s)), dtype=torch.float32)
                        for s in seeds])


def add_noise(latents: torch.Tensor, timestep: int, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0) = sqrt(a_t) x0 + sqrt(1 - a_t) eps, in the latents' dtype as diffusers' schedulers
    compute it (the schedule cast to that dtype first)."""
    a = alphas_cumprod.to(device=latents.device, dtype=latents.dtype)[int(timestep)]
    return a**0.5 * latents + (1 - a) ** 0.5 * noise.to(latents.device, latents.dtype)


def diclip_sd_image(clip_input: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN_255,
                    std: Sequence[float] = IMAGENET_STD_255) -> torch.Tensor:
    """DiCLIP's SD image from its CLIP input (B, 3, s, s): x std + mean, truncated to uint8, / 255, float16.

    The truncation is DiCLIP's (`.type(torch.uint8)`): a pixel that the normalisation round trip puts a
    hair below an integer loses a whole 1/255, so the input has to be made exactly this way to match."""
    x = clip_input.float() * torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) \
        + torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    return (x.type(torch.uint8) / 255).half()


def vae_preprocess(image: torch.Tensor) -> torch.Tensor:
    """diffusers' VaeImageProcessor on a (B, 3, s, s) tensor in [0, 1]: 2x - 1 in the tensor's own dtype."""
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor().preprocess(image, height=image.shape[-2], width=image.shape[-1])


def sd_pixels(image: np.ndarray, size: int, resize: str) -> torch.Tensor:
    """uint8 (H, W, 3) -> (1, 3, size, size) VAE input in [-1, 1] (float32 values; `diclip`'s are float16
    values, as DiCLIP makes them)."""
    if resize == "diclip":
        clip_input = normalise_then_resize(image, size, mean=IMAGENET_MEAN_255, std=IMAGENET_STD_255)
        return vae_preprocess(diclip_sd_image(clip_input)).float()
    if resize != "antialias":
        raise ValueError(f"resize must be one of {', '.join(RESIZES)}, got {resize!r}")
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None]  # (1, 3, H, W) in 0..255
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.div_(127.5).sub_(1.0)


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor) -> torch.Tensor:
    """(B, C, s/f, s/f) VAE posterior mean x scaling factor of (B, 3, s, s) pixels in [-1, 1]."""
    param = next(vae.parameters())
    return vae.encode(pixels.to(param.device, param.dtype)).latent_dist.mean * vae.config.scaling_factor


def encode_images(vae, images: Sequence[np.ndarray], size: int, *, resize: str = "antialias") -> torch.Tensor:
    """Scaled VAE latents (B, C, size/f, size/f) of uint8 (H, W, 3) images (`sd_pixels` each)."""
    return encode_latents(vae, torch.cat([sd_pixels(image, size, resize) for image in images]))


def vae_factor_from_config(vae_config: Mapping) -> int:
    """The VAE's spatial downsampling from its config (``vae/config.json`` as a dict, or the model's
    ``.config``): 2 per block after the first (8 for SD, 4 for the tiny SD)."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def vae_factor(pipe) -> int:
    """The pipeline's VAE downsampling (:func:`vae_factor_from_config` of ``pipe.vae.config``)."""
    return vae_factor_from_config(pipe.vae.config)


def native_image_size(pipe) -> int:
    """The square input size the pipeline was trained at: UNet sample_size x VAE downsampling."""
    return int(pipe.unet.config.sample_size) * vae_factor(pipe)


@torch.no_grad()
def encode_prompt(pipe, prompt: str = "") -> torch.Tensor:
    """(1, L, D) text-encoder hidden states of `prompt` (padded to the tokenizer's max length)."""
    tok = pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    device = next(pipe.text_encoder.parameters()).device
    return pipe.text_encoder(tok.input_ids.to(device))[0]

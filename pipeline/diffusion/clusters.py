"""One image -> the arrays stage A stores: SD self-attention captured at the cluster grid, ACR clusters,
and optionally the attention resampled to the CLIP patch grid. Pure given a loaded pipeline."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.diffusion.acr import ACRConfig, acr, pad_soft
from pipeline.diffusion.capture import ImageAttention, image_noise_seed, resample_attention


class ImageClusterer:
    """`(image (H, W, 3) uint8, image id) -> {soft, hard, k[, attention]}` arrays of fixed shapes.

    soft (max_clusters, G, G) float16, hard (G, G) uint8, k () int32, attention (g^2, g^2) float16
    (only when `attention_grid` is given). The noise of image `id` is seeded by (noise_seed, id).
    """

    def __init__(self, pipe: Any, *, acr_config: ACRConfig, timestep: int, prompt: str, image_size: int,
                 cluster_grid: int, add_noise: bool, noise_seed: int, block_bytes: int,
                 attention_grid: int | None, unet: Any = None) -> None:
        import torch

        self.extract = ImageAttention(pipe, timestep=timestep, prompt=prompt, image_size=image_size,
                                      grid=cluster_grid, add_noise=add_noise, block_bytes=block_bytes, unet=unet)
        self.acr_config, self.grid = acr_config, cluster_grid
        self.noise_seed, self.attention_grid = noise_seed, attention_grid
        self.threads = torch.get_num_threads()

    def __call__(self, image: np.ndarray, image_id: str) -> dict[str, np.ndarray]:
        G = self.grid
        attention = self.extract([image], [image_noise_seed(self.noise_seed, image_id)])  # (1, G^2, G^2)
        result = acr(attention[0].cpu().numpy(), G, self.acr_config, threads=self.threads)
        out = {
            "soft": pad_soft(result.soft, self.acr_config.max_clusters).astype(np.float16),
            "hard": result.hard.astype(np.uint8),
            "k": np.int32(result.k),
        }
        if self.attention_grid is not None:
            g = self.attention_grid
            out["attention"] = resample_attention(attention, (G, G), g)[0].cpu().numpy().astype(np.float16)
        return out

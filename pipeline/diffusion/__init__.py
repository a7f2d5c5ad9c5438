"""Stage A of DiCLIP: Stable Diffusion self-attention capture, aggregation and ACR clustering.

- `capture`: attention processors that aggregate every self-attention layer on the fly at one
  token grid (`capture_self_attention`), and the image-level helper (`ImageAttention`).
- `acr`: attention clustering refinement (anchor merging by symmetric KL, then k-means).
- `correlation`: the patch-correlation matrix for any CLIP patch grid, from stored cluster maps.
- `config`: the `diffusion_attention` params section; `stage`: the stage and the store reader
  (`DiffusionMaps`).

Names are imported lazily, so reading params (`pipeline.diffusion.config`) does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ACRResult": "acr", "acr": "acr", "anchor_indices": "acr", "merge_proposals": "acr", "symmetric_kl": "acr",
    "AggregatingSelfAttnProcessor": "capture", "AttentionAggregator": "capture", "ImageAttention": "capture",
    "capture_self_attention": "capture", "encode_images": "capture", "encode_prompt": "capture",
    "image_noise_seed": "capture", "resample_attention": "capture",
    "DiffusionAttentionParams": "config",
    "cluster_correlation": "correlation", "one_hot_maps": "correlation",
    "DiffusionMaps": "stage", "run_diffusion_attention": "stage",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"pipeline.diffusion.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'pipeline.diffusion' has no attribute {name!r}")

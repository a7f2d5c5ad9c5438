"""Image side of a CLIP: uint8 images to model input, image-text scores and surgery CAMs in batches.

Pure functions of an open_clip ``CLIP`` model, uint8 image arrays and text embeddings (see
:mod:`pipeline.cam.text`); no files, no datasets.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .surgery import surgery_forward
from .text_cam import cams_to_image, text_cams


def to_clip_input(images: np.ndarray | torch.Tensor, visual: nn.Module) -> torch.Tensor:
    """uint8 images (N, H, W, 3) -> (N, 3, H, W) float32 normalised with the model's mean/std.

    Equivalent to ``LoadedClip.preprocess`` for images already at the model's input size, without PIL.
    """
    cfg = visual.preprocess_cfg
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, H, W)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def presence_scores(model: nn.Module, images: np.ndarray, text: torch.Tensor, *, batch_size: int = 250) -> np.ndarray:
    """(N, C) cosine between each image embedding and each (normalised) text embedding (C, E).

    ``images``: uint8 (N, H, W, 3) at the model's input size (no resizing here); they reach the model
    in its patch embedding's dtype, on ``text``'s device.
    """
    conv = getattr(model.visual, "conv1", None)
    dtype = conv.weight.dtype if conv is not None else torch.float32
    out = []
    for start in range(0, len(images), batch_size):
        x = to_clip_input(images[start:start + batch_size], model.visual).to(text.device, dtype)
        out.append(F.normalize(model.encode_image(x).float(), dim=-1) @ text.T)
    return torch.cat(out).cpu().numpy()


@torch.no_grad()
def surgery_cams(
    model: nn.Module,
    images: np.ndarray,
    text: torch.Tensor,
    *,
    surgery_blocks: int,
    cls_weighting: bool,
    head_reduce: str = "none",
    self_similarity: str = "qkv",
    cls_temperature: float = 2.0,
    token_norm: str = "feature",
    batch_size: int = 250,
) -> torch.Tensor:
    """(N, C, H, W) feature-surgery CAMs in [0, 1] of every text, upsampled to the image size (on the CPU).

    ``images``: uint8 (N, H, W, 3); ``text``: (C, E) text embeddings. Per batch of ``batch_size``
    images: :func:`to_clip_input`, :func:`~pipeline.cam.surgery.surgery_forward` with
    ``surgery_blocks``/``head_reduce``/``self_similarity``, :func:`~pipeline.cam.text_cam.text_cams`
    with class-token weighting ``cls_weighting`` at ``cls_temperature`` and ``token_norm``, and
    :func:`~pipeline.cam.text_cam.cams_to_image` (bilinear).
    """
    size = images.shape[1:3]
    out = []
    for start in range(0, len(images), batch_size):
        x = to_clip_input(images[start:start + batch_size], model.visual).to(text.device)
        res = surgery_forward(model.visual, x, surgery_blocks=surgery_blocks, head_reduce=head_reduce,
                              self_similarity=self_similarity)
        cams = text_cams(res.tokens, text, image_embedding=res.image_embedding, cls_weighting=cls_weighting,
                         temperature=cls_temperature, token_norm=token_norm)
        out.append(cams_to_image(cams, res.grid, size).cpu())
    return torch.cat(out)

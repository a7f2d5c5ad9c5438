"""DiCLIP's segmentation decoder on a frozen CLIP (method.md Stage D; ExCEL's decoder), behind a registry.

Every block's original-stream patch tokens go through their own MLP (D -> dim -> dim); the results
are concatenated, fused by a 1x1 convolution to `dim`, dropped out per channel, refined by a small
transformer over the g x g tokens, and classified by a 1x1 convolution into C + 1 logits (background
first). The affinity the training loss uses is sigmoid(3 (cos(f_i, f_j) - its global mean)) of the
refined `dim`-d features. Run on CLIP without diffusion input, as DiCLIP's test path does.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.segment.config import ARCHITECTURE_NAMES


class DiclipDecoder(nn.Module):
    def __init__(self, in_dim: int, blocks: int, num_classes: int, *, dim: int, layers: int, heads: int,
                 dropout: float) -> None:
        super().__init__()
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Linear(dim, dim))
                                  for _ in range(blocks))
        self.fuse = nn.Conv2d(blocks * dim, dim, kernel_size=1)
        self.drop = nn.Dropout2d(dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.classify = nn.Conv2d(dim, num_classes + 1, kernel_size=1)

    def forward(self, tokens: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, blocks, g*g, D) -> (logits (B, C + 1, g, g), features (B, g*g, dim))."""
        B = tokens.shape[0]
        per_block = [mlp(tokens[:, i]) for i, mlp in enumerate(self.mlps)]  # each (B, N, dim)
        x = torch.cat(per_block, dim=-1).transpose(1, 2).reshape(B, -1, grid, grid)
        x = self.drop(self.fuse(x))
        features = self.transformer(x.flatten(2).transpose(1, 2))  # (B, N, dim)
        logits = self.classify(features.transpose(1, 2).reshape(B, -1, grid, grid))
        return logits, features


def feature_affinity(features: torch.Tensor) -> torch.Tensor:
    """(B, N, dim) -> (B, N, N) sigmoid(3 (cosine affinity - its global mean per image))."""
    f = F.normalize(features, dim=-1)
    cos = f @ f.transpose(1, 2)
    return torch.sigmoid(3 * (cos - cos.mean(dim=(1, 2), keepdim=True)))


#: `train.architecture` names -> decoder factories (in_dim, blocks, num_classes, **options)
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"diclip": DiclipDecoder}
assert tuple(sorted(ARCHITECTURES)) == tuple(sorted(ARCHITECTURE_NAMES)), "register the name in pipeline/segment/config.py too"


def build_decoder(name: str, in_dim: int, blocks: int, num_classes: int, **options) -> nn.Module:
    if name not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(sorted(ARCHITECTURES))}, got {name!r}")
    return ARCHITECTURES[name](in_dim, blocks, num_classes, **options)


def clip_block_tokens(visual: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B, 3, S, S) normalised CLIP input at any size (a multiple of the patch) -> ((B, blocks, g*g, width),
    g): every residual block's output patch tokens (class token dropped), the position embedding resized
    to the g x g grid as the CAM path does. Frozen: no gradient flows back into CLIP."""
    from pipeline.cam.surgery import embed_images

    with torch.no_grad():
        h, (gh, gw) = embed_images(visual, x)
        batch_first = getattr(visual.transformer, "batch_first", True)
        h = h if batch_first else h.transpose(0, 1)
        outputs = []
        for block in visual.transformer.resblocks:
            h = block(h)
            outputs.append(h if batch_first else h.transpose(0, 1))
    if gh != gw:
        raise ValueError(f"the segmenter reads square inputs, got a {gh} x {gw} token grid")
    return torch.stack([o[:, 1:] for o in outputs], dim=1).float(), gh

"""One image -> CAMs of its present classes and its pseudo-label, DiCLIP's training-free path (method.md C1-C7).

CLIP input (normalised, resized square) -> surgery forward with R (stage A's refined correlation)
added to every surgery head -> feature-surgery text CAMs of the class texts against class and
background texts -> affinity refinement with CLIP's attention inside per-class boxes -> RAR with
stage A's transition P -> per-class min-max at the image size, background = 1 - max, argmax.
Each step is a switch (`CamConfig`), so ablations run the same code. Pure given a loaded CLIP.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.cam.affinity import attention_affinity, box_mask, refine_cams
from pipeline.cam.images import IMAGENET_MEAN_255, IMAGENET_STD_255, normalise_then_resize
from pipeline.cam.rar import random_walk
from pipeline.cam.surgery import surgery_forward
from pipeline.cam.text_cam import minmax_normalise, text_cams

#: surgery variants (method.md C1 and "ExCEL's CAM path"): blocks, (w_q, w_k, w_v)
SURGERY_VARIANTS: dict[str, tuple[int, tuple[float, float, float]]] = {
    "diclip": (3, (1.0, 2.0, 0.0)),
    "excel": (5, (1 / 3, 1 / 3, 1 / 3)),
}


@dataclass(frozen=True)
class CamConfig:
    """The switches of the CAM path (the `cams` params section, resolved)."""

    clip_size: int
    mean_255: tuple[float, float, float] = IMAGENET_MEAN_255  # normalisation on the 0-255 scale (DiCLIP, ExCEL)
    std_255: tuple[float, float, float] = IMAGENET_STD_255
    surgery: str = "diclip"
    surgery_blocks: int | None = None  # None: the variant's (DiCLIP 3, ExCEL 5)
    head_reduce: str = "sum"  # how heads share the surgery attention (DiCLIP, ExCEL: sum)
    token_norm: str = "token"  # L2 over tokens (ExCEL's and DiCLIP's code) or over features (a cosine)
    cls_weighting: bool = True  # CLIP-ES's class-token text weights inside feature surgery
    vce: bool = True
    refine: bool = True
    box_threshold: float = 0.88
    affinity_blocks: int = 6
    sinkhorn_rounds: int = 3
    exclusive_box_end: bool = True
    rar: bool = True
    rar_iterations: int = 10
    bg_threshold: float | None = None  # None: background = 1 - max (DiCLIP); else a constant background score
    scales: tuple[float, ...] = (1.0,)  # CLIP input scales (1.0 must be one: its attention refines)
    flip: bool = False  # also the mirrored image at every scale (max over the two)


class ImageCams:
    """`(image (H, W, 3) uint8, present (C,) bool, R (g^2, g^2) or None, P (t^2, t^2) or None) ->
    {cams (C, s, s) float16, label (H, W) uint8}`: CAMs of the present classes (absent ones zero) on
    the output grid s (P's grid t with RAR, else the CLIP grid), and the pseudo-label (0 background,
    c + 1 class c)."""

    def __init__(self, visual: torch.nn.Module, text: torch.Tensor, num_classes: int, config: CamConfig) -> None:
        if config.surgery not in SURGERY_VARIANTS:
            raise ValueError(f"surgery must be one of {sorted(SURGERY_VARIANTS)}, got {config.surgery!r}")
        self.visual, self.text, self.num_classes, self.config = visual, text.float(), num_classes, config
        self.patch = int(visual.conv1.kernel_size[0])
        self.grid = config.clip_size // self.patch
        self.heads = int(visual.transformer.resblocks[0].attn.num_heads)

    @torch.no_grad()
    def __call__(self, image: np.ndarray, present: np.ndarray, correlation: np.ndarray | None,
                 transition: np.ndarray | None) -> dict[str, np.ndarray]:
        cfg, g = self.config, self.grid
        blocks, weights = SURGERY_VARIANTS[cfg.surgery]
        blocks = blocks if cfg.surgery_blocks is None else cfg.surgery_blocks
        classes = np.flatnonzero(present)
        base, total = None, None
        for scale in cfg.scales:  # one CLIP forward per scale; the flipped image rides in the same batch
            out, maps = self._scale_cams(image, correlation, scale, blocks, weights, torch.from_numpy(classes))
            base = out if scale == 1.0 else base
            total = maps if total is None else total + maps
        cams = total.reshape(len(classes), g * g)
        if len(cfg.scales) > 1 or cfg.flip:  # summed over scales: back to [0, 1] before refinement
            cams = minmax_normalise(cams, dim=1, eps=1e-7)
        out = base
        if cfg.refine and len(classes):
            n = len(out.attention)  # the base scale's unflipped image (batch entry 0)
            scale = self.heads if cfg.head_reduce == "sum" else 1  # ExCEL's maps: head sums in the surgery blocks
            maps = torch.stack([a[0] * (scale if b >= n - blocks else 1) for b, a in enumerate(out.attention)])
            affinity = attention_affinity(maps[n - cfg.affinity_blocks:], rounds=cfg.sinkhorn_rounds)
            masks = torch.from_numpy(np.stack([box_mask(c.reshape(g, g).numpy(), cfg.box_threshold,
                                                        exclusive_end=cfg.exclusive_box_end) for c in cams]))
            cams = refine_cams(affinity, cams, masks.reshape(len(classes), -1))
        side = g
        if cfg.rar and transition is not None:  # P's grid is the output grid, also for an image without classes
            p = torch.from_numpy(transition).float()
            side = int(round(p.shape[0] ** 0.5))
            if len(classes):
                cams = random_walk(cams, g, p, iterations=cfg.rar_iterations)
        stored = np.zeros((self.num_classes, side, side), dtype=np.float16)
        if len(classes):
            stored[classes] = minmax_normalise(cams, dim=1, eps=1e-6).reshape(-1, side, side).numpy().astype(np.float16)
        return {"cams": stored, "label": label_from_cams(stored, present, image.shape[:2], self.config.bg_threshold)}


    def _scale_cams(self, image: np.ndarray, correlation: np.ndarray | None, scale: float, blocks: int,
                    weights: tuple[float, float, float], classes: torch.Tensor):
        """One scale: (surgery output, (K, g, g) CAMs of the present classes at the base grid, the max
        of the image's and its mirror's when `flip`)."""
        cfg, g = self.config, self.grid
        size = max(self.patch, int(round(cfg.clip_size * scale / self.patch)) * self.patch)
        gs = size // self.patch
        x = normalise_then_resize(image, size, mean=cfg.mean_255, std=cfg.std_255)
        bias = None
        if cfg.vce and correlation is not None:
            bias = _correlation_at(torch.from_numpy(correlation).float(), gs, flip=False)[None]
        if cfg.flip:
            x = torch.cat([x, x.flip(-1)])
            if bias is not None:
                bias = torch.cat([bias, _correlation_at(torch.from_numpy(correlation).float(), gs, flip=True)[None]])
        out = surgery_forward(self.visual, x.to(self.visual.conv1.weight.dtype), surgery_blocks=blocks,
                              head_reduce=cfg.head_reduce, similarity_weights=weights, attn_bias=bias,
                              return_attention=scale == 1.0)
        tokens = torch.cat([out.image_embedding[:, None], out.tokens[:, 1:]], dim=1).float()
        cams = text_cams(tokens, self.text, token_norm=cfg.token_norm, cls_weighting=cfg.cls_weighting,
                         cls_from_tokens=True, minmax_with_cls=True, eps=0.0)[:, classes]  # (F, K, gs*gs)
        maps = cams.reshape(cams.shape[0], len(classes), gs, gs)
        if cfg.flip:
            maps = torch.stack([maps[0], maps[1].flip(-1)])
        if gs != g:
            maps = F.interpolate(maps, size=(g, g), mode="bilinear", align_corners=False)
        return out, maps.amax(0)


def _correlation_at(r: torch.Tensor, grid: int, *, flip: bool) -> torch.Tensor:
    """Stage A's R (n, n) at the patch grid `grid` of a scale: as stored when the grids agree (mirrored
    by permutation for a flip), else resampled (pipeline.diffusion.correlation.resample_correlation)."""
    from pipeline.diffusion.correlation import resample_correlation

    side = int(round(r.shape[0] ** 0.5))
    if side != grid:
        return resample_correlation(r, side, grid, flip=flip)
    if not flip:
        return r
    perm = torch.arange(side * side).reshape(side, side).flip(-1).reshape(-1)
    return r[perm][:, perm]


def label_from_cams(cams: np.ndarray, present: np.ndarray, size: tuple[int, int], bg_threshold: float | None = None) -> np.ndarray:
    """(H, W) uint8 pseudo-label from stored CAMs (C, s, s) in [0, 1] and the present classes: each
    present class's CAM bilinear to the image size and min-max normalised; background scores
    1 - max over the classes (DiCLIP) or the constant `bg_threshold`; argmax -> 0 or c + 1."""
    classes = np.flatnonzero(present)
    H, W = size
    if not len(classes):
        return np.zeros((H, W), dtype=np.uint8)
    grid = torch.from_numpy(cams[classes].astype(np.float32))
    full = F.interpolate(grid[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    full = minmax_normalise(full.reshape(len(classes), -1), dim=1, eps=1e-6).reshape(-1, H, W)
    bg = 1 - full.amax(0, keepdim=True) if bg_threshold is None else torch.full((1, H, W), float(bg_threshold))
    ids = torch.from_numpy(np.concatenate([[0], classes + 1]).astype(np.int64))
    return ids[torch.cat([bg, full]).argmax(0)].numpy().astype(np.uint8)

"""One image -> CAMs of its present classes and its pseudo-label, DiCLIP's training-free path (method.md C1-C7).

CLIP input (normalised, resized square) -> surgery forward with R (stage A's refined correlation)
added to every surgery head -> feature-surgery text CAMs of the class texts against class and
background texts -> affinity refinement with CLIP's attention inside per-class boxes -> RAR with
stage A's transition P -> per-class min-max at the image size, background = 1 - max, argmax (the label
rule: pipeline.cam.labels).
Each step is a switch (`pipeline.cam.config.CamConfig`), so ablations run the same code. Pure given a loaded CLIP.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.cam.affinity import attention_affinity, box_masks, refine_cams
from pipeline.cam.config import SURGERY_VARIANTS as SURGERY_NAMES
from pipeline.cam.config import CamConfig
from pipeline.clip_input import normalise_then_resize
from pipeline.cam.labels import LabelRule, Normalisation
from pipeline.cam.rar import random_walk
from pipeline.cam.surgery import surgery_forward
from pipeline.cam.text_cam import fuse_cache, minmax_normalise, text_cams
from pipeline.diffusion.correlation import resample_correlation
from pipeline.grids import square_side

#: surgery variants (method.md C1 and "ExCEL's CAM path", names in pipeline.cam.config): blocks, (w_q, w_k, w_v)
SURGERY_VARIANTS: dict[str, tuple[int, tuple[float, float, float]]] = {
    "diclip": (3, (1.0, 2.0, 0.0)),
    "excel": (5, (1 / 3, 1 / 3, 1 / 3)),
}
assert tuple(SURGERY_VARIANTS) == SURGERY_NAMES, "pipeline.cam.config.SURGERY_VARIANTS names the same variants"

#: a cache CAM: (F, L, E) surgery tokens before normalisation (token 0 = the class token) -> (F, C, L - 1)
#: per-class patch scores in [0, 1] (the TSA cache's retrieval, stage tsa_cache)
CacheCams = Callable[[torch.Tensor], torch.Tensor]


class ImageCams:
    """`(image (H, W, 3) uint8, present (C,) bool, R (g^2, g^2) or None, P (t^2, t^2) or None) ->
    {cams (C, s, s) in config.store_dtype, label (H, W) uint8}`: CAMs of the present classes (absent ones zero) on
    the output grid s (P's grid t with RAR, else the CLIP grid), and the pseudo-label (0 background,
    c + 1 class c). :meth:`batch` does several images with one CLIP forward per scale (their
    mirrors in the same batch); a cache CAM (`cache`, the TSA cache) is fused with the text CAM as
    minmax(config.cache_weight * cache + text). `normalisation` is the CLIP input's (mean, std) on
    the 0-255 scale, resolved from `config.normalise` by whoever loaded the CLIP."""

    def __init__(self, visual: torch.nn.Module, text: torch.Tensor, num_classes: int, config: CamConfig,
                 normalisation: Normalisation, cache: CacheCams | None = None) -> None:
        if config.surgery not in SURGERY_VARIANTS:
            raise ValueError(f"surgery must be one of {sorted(SURGERY_VARIANTS)}, got {config.surgery!r}")
        self.visual, self.text, self.num_classes, self.config = visual, text.float(), num_classes, config
        self.mean_255, self.std_255 = (tuple(v) for v in normalisation)
        self.cache = cache if config.cache_weight else None
        self.rule = LabelRule.from_config(config, normalisation)
        self.patch = int(visual.conv1.kernel_size[0])
        self.grid = config.clip_size // self.patch
        self.heads = int(visual.transformer.resblocks[0].attn.num_heads)
        blocks, self.weights = SURGERY_VARIANTS[config.surgery]
        self.blocks = blocks if config.surgery_blocks is None else config.surgery_blocks

    def __call__(self, image: np.ndarray, present: np.ndarray, correlation: np.ndarray | None,
                 transition: np.ndarray | None) -> dict[str, np.ndarray]:
        return self.batch([image], [present], [correlation], [transition])[0]

    @torch.no_grad()
    def batch(self, images: list[np.ndarray], presents: list[np.ndarray], correlations: list[np.ndarray | None],
              transitions: list[np.ndarray | None], *, features: bool = False) -> list[dict[str, np.ndarray]]:
        """:meth:`__call__` for several images at once (lists of the same length). With `features`, each
        result also holds `features` (g*g, E) float32: the base scale's patch tokens (surgery stream,
        with R when `vce`), L2-normalised over features (what the TSA cache's keys are made of)."""
        cfg, g, n = self.config, self.grid, len(images)
        base, total = None, None
        for scale in cfg.scales:  # one CLIP forward per scale for every image and its mirror
            out, maps, tokens = self._scale_cams(images, correlations, scale)
            if scale == 1.0:
                base, base_tokens = out, tokens
            total = maps if total is None else total + maps
        cams = total.reshape(n, -1, g * g)  # (n, C, g*g): every class; each image keeps its present ones
        if len(cfg.scales) > 1 or cfg.flip:  # summed over scales: back to [0, 1] before refinement
            cams = minmax_normalise(cams, dim=2, eps=1e-7)
        classes = [np.flatnonzero(p) for p in presents]
        kept = [cams[i, torch.from_numpy(c)] for i, c in enumerate(classes)]
        if cfg.refine:
            kept = self._refine(base, kept)
        results = []
        for i, (c, k) in enumerate(zip(classes, kept)):
            side = g
            if cfg.rar and transitions[i] is not None:  # P's grid is the output grid, also without classes
                p = torch.from_numpy(transitions[i]).float()
                side = square_side(p.shape[0], "transition rows")
                if len(c):
                    k = random_walk(k, g, p, iterations=cfg.rar_iterations)
            stored = np.zeros((self.num_classes, side, side), dtype=cfg.store_dtype)
            if len(c):
                stored[c] = minmax_normalise(k, dim=1, eps=1e-6).reshape(-1, side, side).numpy().astype(cfg.store_dtype)
            results.append({"cams": stored, "label": self.rule(stored, presents[i], images[i])})
        if features:
            for result, f in zip(results, self._features(base_tokens, n)):
                result["features"] = f
        return results

    @torch.no_grad()
    def patch_features(self, images: list[np.ndarray], correlations: list[np.ndarray | None]) -> list[np.ndarray]:
        """(g*g, E) float32 per image: the base scale's patch tokens (surgery stream, with R when `vce`),
        L2-normalised over features, as :meth:`batch` gives them with `features`, without the rest of
        the path (refinement, RAR, labels)."""
        return self._features(self._scale_cams(images, correlations, 1.0)[2], len(images))

    def _features(self, tokens: torch.Tensor, n: int) -> list[np.ndarray]:
        step = 2 if self.config.flip else 1  # each image's mirror follows it in the batch
        return [F.normalize(tokens[i * step, 1:], dim=-1).numpy() for i in range(n)]

    def _refine(self, out, kept: list[torch.Tensor]) -> list[torch.Tensor]:
        """Affinity refinement of each image's present-class CAMs with its base-scale attention; the
        boxes of every class of every image in one call."""
        cfg, g = self.config, self.grid
        if not sum(len(k) for k in kept):
            return kept
        masks = torch.from_numpy(box_masks(torch.cat(kept).reshape(-1, g, g).numpy(), cfg.box_threshold,
                                           exclusive_end=cfg.exclusive_box_end)).reshape(-1, g * g)
        n, step = len(out.attention), 2 if cfg.flip else 1  # the unflipped images are every step-th entry
        heads = self.heads if cfg.head_reduce == "sum" else 1  # ExCEL's maps: head sums in the surgery blocks
        refined, start = [], 0
        for i, k in enumerate(kept):
            maps = torch.stack([a[i * step] * (heads if b >= n - self.blocks else 1) for b, a in enumerate(out.attention)])
            affinity = attention_affinity(maps[n - cfg.affinity_blocks:], rounds=cfg.sinkhorn_rounds)
            refined.append(refine_cams(affinity, k, masks[start:start + len(k)]))
            start += len(k)
        return refined

    def _scale_cams(self, images: list[np.ndarray], correlations: list[np.ndarray | None], scale: float):
        """One scale: (surgery output, (n, C, g, g) CAMs of every class at the base grid, the max of
        each image's and its mirror's when `flip`). The batch holds image i's mirror right after it."""
        cfg, g = self.config, self.grid
        size = max(self.patch, int(round(cfg.clip_size * scale / self.patch)) * self.patch)
        gs = size // self.patch
        x, bias = [], []
        for image, r in zip(images, correlations):
            xi = normalise_then_resize(image, size, mean=self.mean_255, std=self.std_255)
            x += [xi, xi.flip(-1)] if cfg.flip else [xi]
            if cfg.vce and r is not None:
                r = torch.from_numpy(r).float()
                side = square_side(r.shape[0], "correlation rows")
                bias += [resample_correlation(r, side, gs)] + ([resample_correlation(r, side, gs, flip=True)] if cfg.flip else [])
        if bias and len(bias) != len(x):
            raise ValueError("vce needs R for every image of a batch, or for none")
        out = surgery_forward(self.visual, torch.cat(x).to(self.visual.conv1.weight.dtype), surgery_blocks=self.blocks,
                              head_reduce=cfg.head_reduce, similarity_weights=self.weights,
                              attn_bias=torch.stack(bias) if bias else None, return_attention=scale == 1.0)
        tokens = torch.cat([out.image_embedding[:, None], out.tokens[:, 1:]], dim=1).float()
        cams = text_cams(tokens, self.text, token_norm=cfg.token_norm, cls_weighting=cfg.cls_weighting,
                         cls_from_tokens=True, minmax_with_cls=True, eps=0.0)[:, :self.num_classes]  # (B, C, gs*gs)
        if self.cache is not None:  # the TSA cache's CAM enters here (method.md C3-C4)
            cams = fuse_cache(cams, self.cache(tokens)[:, :self.num_classes], cfg.cache_weight)
        flips = 2 if cfg.flip else 1
        maps = cams.reshape(len(images), flips, self.num_classes, gs, gs)
        if cfg.flip:
            maps = torch.stack([maps[:, 0], maps[:, 1].flip(-1)], dim=1)
        maps = maps.reshape(-1, self.num_classes, gs, gs)
        if gs != g:
            maps = F.interpolate(maps, size=(g, g), mode="bilinear", align_corners=False)
        return out, maps.reshape(len(images), flips, self.num_classes, g, g).amax(1), tokens

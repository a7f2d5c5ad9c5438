"""How stored CAMs become a pseudo-label (method.md C7): each present class's CAM at the image size and
min-max normalised, a background score (DiCLIP's 1 - max, or a constant), optional PAR, an optional
ignore band, argmax. Kept apart from the CAM path so that `eval_cams` re-applies exactly a store's rule
without the CLIP side of the path."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.cam.config import CamConfig
from pipeline.clip_input import normalise_then_resize
from pipeline.cam.par import par
from pipeline.cam.text_cam import minmax_normalise
from pipeline.metrics import IGNORE

#: (mean, std) of the CLIP input on the 0-255 scale, per channel
Normalisation = tuple[tuple[float, float, float], tuple[float, float, float]]


@dataclass(frozen=True)
class LabelRule:
    """How stored CAMs become a pseudo-label: background score, optional PAR, optional ignore band.

    Kept apart from the CAM path so `eval_cams` re-applies exactly the stage's rule (from the store's
    attrs) while sweeping the background score on the eval split. PAR's guide is the CLIP input (the
    image normalised with `mean_255`/`std_255` and resized to `guide_size`) brought back to the image
    size with align_corners=True, as ExCEL feeds it."""

    guide_size: int  # the CLIP input size (cams.clip_size)
    mean_255: tuple[float, float, float]  # the CLIP input's normalisation on the 0-255 scale
    std_255: tuple[float, float, float]
    bg_threshold: float | None  # None: 1 - max
    par_iterations: int  # 0: no PAR
    ignore_band: tuple[float, float] | None  # None: every pixel labelled
    upsample: int | None = None  # the square size the CAMs pass through on the way to the image (DiCLIP: 512)

    def __call__(self, cams: np.ndarray, present: np.ndarray, image: np.ndarray) -> np.ndarray:
        return label_from_cams(cams, present, image.shape[:2], self.bg_threshold, guide=self._guide(present, image),
                               par_iterations=self.par_iterations, ignore_band=self.ignore_band, upsample=self.upsample)

    def sweep(self, cams: np.ndarray, present: np.ndarray, image: np.ndarray,
              thresholds: list[float | None]) -> list[np.ndarray]:
        """This rule's label for each background score in `thresholds` (None: 1 - max), with one PAR
        call for all of them (PAR treats channels independently, so stacking the background variants
        gives each the same numbers as its own call)."""
        classes = np.flatnonzero(present)
        H, W = image.shape[:2]
        if not len(classes):
            return [np.zeros((H, W), dtype=np.uint8) for _ in thresholds]
        full = full_class_scores(cams, classes, (H, W), upsample=self.upsample)
        bgs = [1 - full.amax(0, keepdim=True) if t is None else torch.full((1, H, W), float(t)) for t in thresholds]
        scores = torch.cat([*bgs, full])
        guide = self._guide(present, image)
        if guide is not None:
            scores = par(guide, scores, iterations=self.par_iterations)
        n = len(thresholds)
        return [labels_from_scores(torch.cat([scores[i:i + 1], scores[n:]]), classes, self.ignore_band) for i in range(n)]

    def _guide(self, present: np.ndarray, image: np.ndarray) -> torch.Tensor | None:
        if not (self.par_iterations and np.any(present)):
            return None
        x = normalise_then_resize(image, self.guide_size, mean=self.mean_255, std=self.std_255)
        return F.interpolate(x, size=image.shape[:2], mode="bilinear", align_corners=True)[0]

    @classmethod
    def from_config(cls, cfg: CamConfig, normalisation: Normalisation) -> "LabelRule":
        """The rule of a CAM path's config, with its CLIP input's (mean, std)."""
        mean, std = normalisation
        return cls(cfg.clip_size, tuple(mean), tuple(std), cfg.bg_threshold, cfg.par_iterations if cfg.par else 0,
                   None if cfg.ignore_band is None else tuple(cfg.ignore_band), cfg.label_upsample)

    def to_attrs(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_attrs(cls, attrs: dict) -> "LabelRule":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()})


def label_from_cams(cams: np.ndarray, present: np.ndarray, size: tuple[int, int], bg_threshold: float | None = None,
                    *, guide: torch.Tensor | None = None, par_iterations: int = 0,
                    ignore_band: tuple[float, float] | None = None, upsample: int | None = None) -> np.ndarray:
    """(H, W) uint8 pseudo-label from stored CAMs (C, s, s) in [0, 1] and the present classes: each
    present class's CAM bilinear to the image size (through `upsample` x `upsample` first, as
    DiCLIP: :func:`full_class_scores`) and min-max normalised; background scores
    1 - max over the classes (DiCLIP) or the constant `bg_threshold`; with a `guide` (3, H, W),
    `par_iterations` of PAR on [background, classes]; argmax -> 0 or c + 1; with `ignore_band`
    (low, high), pixels whose best class score lies in (low, high] become 255 (ignored)."""
    classes = np.flatnonzero(present)
    H, W = size
    if not len(classes):
        return np.zeros((H, W), dtype=np.uint8)
    full = full_class_scores(cams, classes, size, upsample=upsample)
    bg = 1 - full.amax(0, keepdim=True) if bg_threshold is None else torch.full((1, H, W), float(bg_threshold))
    scores = torch.cat([bg, full])
    if guide is not None and par_iterations:
        scores = par(guide, scores, iterations=par_iterations)
    return labels_from_scores(scores, classes, ignore_band)


def upsampled_scores(cams: np.ndarray, classes: np.ndarray, size: int) -> torch.Tensor:
    """(K, size, size) CAMs of the present classes bilinear to a square and min-max per class without
    epsilon: DiCLIP's 512 x 512 step between its 40 x 40 RAR grid and the image."""
    grid = torch.from_numpy(cams[classes].astype(np.float32))
    maps = F.interpolate(grid[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return minmax_normalise(maps.reshape(len(classes), -1), dim=1, eps=0.0).reshape(-1, size, size)


def full_class_scores(cams: np.ndarray, classes: np.ndarray, size: tuple[int, int], *,
                      upsample: int | None = None) -> torch.Tensor:
    """(K, H, W) scores of the present classes: stored CAMs bilinear to the image size (with `upsample`,
    through :func:`upsampled_scores` first, as DiCLIP goes 40 -> 512 -> H x W), min-max per class with
    1e-6 (DiCLIP's cam_to_label)."""
    H, W = size
    grid = upsampled_scores(cams, classes, upsample) if upsample else torch.from_numpy(cams[classes].astype(np.float32))
    full = F.interpolate(grid[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    return minmax_normalise(full.reshape(len(classes), -1), dim=1, eps=1e-6).reshape(-1, H, W)


def labels_from_scores(scores: torch.Tensor, classes: np.ndarray, ignore_band: tuple[float, float] | None) -> np.ndarray:
    """(1 + K, H, W) [background, classes] -> (H, W) uint8: argmax -> 0 or c + 1; pixels whose best
    class score lies in (low, high] of `ignore_band` -> 255."""
    ids = torch.from_numpy(np.concatenate([[0], classes + 1]).astype(np.int64))
    label = ids[scores.argmax(0)].numpy().astype(np.uint8)
    if ignore_band is not None:
        best = scores[1:].amax(0).numpy()
        label[(best > ignore_band[0]) & (best <= ignore_band[1])] = IGNORE
    return label

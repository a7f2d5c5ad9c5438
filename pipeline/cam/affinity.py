"""Affinity refinement of patch CAMs with CLIP's own attention (CLIP-ES, ExCEL, DiCLIP; method.md C5).

The patch-patch block of the original stream's attention of the last blocks is averaged, made
doubly stochastic by rounds of column-then-row normalisation, symmetrised and squared: W. Each
present class keeps only W's columns inside the bounding boxes of its CAM's high region (a box per
8-connected component above `threshold` of the CAM's max, found on the CAM quantised to uint8 as
ExCEL's OpenCV code does), and its refined CAM is W' cam. Pure torch + scipy.ndimage (the boxes
of connected components are what OpenCV's contour bounding rectangles give; no OpenCV needed).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


def attention_affinity(maps: torch.Tensor, *, rounds: int) -> torch.Tensor:
    """(n_blocks, L, L) attention maps (token 0 = class token) -> W (N, N) over the N patches.

    The maps are averaged, the class row and column dropped (no renormalisation), then `rounds`
    times columns and rows are normalised (columns first); W = ((T + T^T) / 2)^2.
    """
    return patch_affinity(maps.float().mean(0)[1:, 1:], rounds=rounds)


def patch_affinity(a: torch.Tensor, *, rounds: int) -> torch.Tensor:
    """(N, N) mean patch-patch attention -> W (N, N): `rounds` times columns then rows normalised,
    symmetrised, squared."""
    for _ in range(rounds):
        a = a / a.sum(0, keepdim=True)
        a = a / a.sum(1, keepdim=True)
    a = (a + a.T) / 2
    return a @ a


def box_mask(cam: np.ndarray, threshold: float, *, exclusive_end: bool) -> np.ndarray:
    """(h, w) float CAM in [0, 1] -> (h, w) float32 0/1 mask (one class of :func:`box_masks`)."""
    return box_masks(cam[None], threshold, exclusive_end=exclusive_end)[0]


def box_masks(cams: np.ndarray, threshold: float, *, exclusive_end: bool) -> np.ndarray:
    """(K, h, w) float CAMs in [0, 1] -> (K, h, w) float32 0/1 masks: per class, the union of the
    bounding boxes of the 8-connected regions where uint8(255 cam) > int(threshold * its max).

    All classes are labelled in one pass (the structure does not connect classes) and the boxes are
    painted by broadcasting, so there is no per-class loop. `exclusive_end` reproduces ExCEL's boxes:
    x1 = min(x + w, W - 1) used as an exclusive end, so the last row and column are never inside a
    box. Without it boxes cover their regions entirely.
    """
    K, h, w = cams.shape
    quantised = (cams * 255).astype(np.uint8)
    cut = (threshold * quantised.reshape(K, -1).max(1)).astype(np.int64)  # int() of each class's threshold
    above = quantised > cut[:, None, None]
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within a class, never across classes
    labels, _ = ndimage.label(above, structure=structure)
    boxes = np.array([(k.start, r.start, r.stop, c.start, c.stop) for k, r, c in ndimage.find_objects(labels)],
                     dtype=np.int64).reshape(-1, 5)
    k, y0, y1, x0, x1 = boxes.T
    if exclusive_end:
        y1, x1 = np.minimum(y1, h - 1), np.minimum(x1, w - 1)
    rows, cols = np.arange(h), np.arange(w)
    inside = ((rows >= y0[:, None]) & (rows < y1[:, None]))[:, :, None] & ((cols >= x0[:, None]) & (cols < x1[:, None]))[:, None, :]
    mask = np.zeros((K, h, w), dtype=np.float32)
    np.maximum.at(mask, k, inside.astype(np.float32))
    return mask


def refine_cams(affinity: torch.Tensor, cams: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N, N) W, (K, N) CAMs and (K, N) box masks -> (K, N): per class, (W with the columns outside
    its boxes zeroed) @ cam."""
    return torch.einsum("ij,kj,kj->ki", affinity.float(), masks.float(), cams.float())

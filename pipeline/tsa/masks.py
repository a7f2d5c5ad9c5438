"""Masks and prototypes of generated class images through the cams stage's own path (method.md B2-B3).

A drawn image of class c goes through stage A's per-image function (its own R and P) and then through
`pipeline.cam.pseudo_labels.ImageCams` with only c present: the same CAM code, params and label rule
as the cams stage (the stage passes the cache masks' box threshold). No second CAM implementation.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from pipeline.diffusion.correlation import dense_correlation
from pipeline.diffusion.transition import dense_transition
from pipeline.tsa.prototypes import patch_mask, prototypes


def stage_a_inputs(maps: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """Stage A's per-image output (pipeline.diffusion.recipes.StageAMaps) -> (dense R, dense P or None)."""
    r = dense_correlation(maps["clusters"], maps["rows"])
    p = dense_transition(maps["transition_values"], maps["transition_index"]) if "transition_values" in maps else None
    return r, p


def mask_records(cams: Any, stage_a: Callable[[np.ndarray, str], dict], c: int, images: list[np.ndarray],
                 ids: list[str]) -> list[dict[str, np.ndarray]]:
    """Images drawn for class c -> per image {image, mask (H, W) uint8 in {0, c + 1}, fg_prototype (E,)
    unless the mask is empty, bg_prototype (E,) unless it is full}. `cams` is an ImageCams; `ids`
    seed stage A's noise."""
    present = np.zeros(cams.num_classes, dtype=bool)
    present[c] = True
    inputs = [stage_a_inputs(stage_a(image, i)) for image, i in zip(images, ids)]
    results = cams.batch(images, [present] * len(images), [r if cams.config.vce else None for r, _ in inputs],
                         [p for _, p in inputs], features=True)
    out = []
    for image, res in zip(images, results):
        label = np.where(res["label"] == c + 1, c + 1, 0).astype(np.uint8)  # an ignore band counts as background
        fg, bg = prototypes(res["features"], patch_mask(label, cams.grid))
        record = {"image": image, "mask": label}
        if fg is not None:
            record["fg_prototype"] = fg.astype(np.float32)
        if bg is not None:
            record["bg_prototype"] = bg.astype(np.float32)
        out.append(record)
    return out

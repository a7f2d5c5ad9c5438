"""How well stage A's clusters match objects: best-match IoU of hard cluster maps with object masks,
beside an untrained-UNet and a colour k-means baseline. Pure functions over arrays and callables."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from pipeline.diffusion.baselines import colour_kmeans
from pipeline.metrics import best_match_iou, cluster_map_iou


def evaluate_clusters(
    ids: Sequence[str], *, clusters: Callable[[str], tuple[np.ndarray, int]], mask: Callable[[str], np.ndarray],
    image: Callable[[str], np.ndarray], baseline: Callable[[np.ndarray, str], dict[str, np.ndarray]] | None,
) -> dict[str, Any]:
    """Mean best-match IoU over `ids` (images with objects) of the stored hard maps (nearest-upsampled to
    the mask; `clusters(id)` gives (hard map, cluster count)), and, when `baseline` (a clusterer of an untrained UNet) is given, of the baselines: that
    clusterer's hard map, and colour k-means on pixel RGB with the image's cluster count (at least 2)."""
    scores: dict[str, list[float]] = {"acr": [], "untrained_unet": [], "colour_kmeans": []}
    ks = []
    for image_id in ids:
        m = mask(image_id)
        h, k = clusters(image_id)
        ks.append(k)
        scores["acr"].append(cluster_map_iou(h, m))
        if baseline is not None:
            rgb = image(image_id)
            untrained = baseline(rgb, image_id)["hard"]
            scores["untrained_unet"].append(cluster_map_iou(untrained, m))
            scores["colour_kmeans"].append(best_match_iou(colour_kmeans(rgb, max(2, k)), m))
    metric: dict[str, Any] = {
        "images": len(ids),
        "images_with_objects": int(np.sum(~np.isnan(scores["acr"]))) if ids else 0,
        "acr_best_match_iou": _mean(scores["acr"]),
        "mean_clusters": float(np.mean(ks)) if ks else None,
    }
    if baseline is not None:
        metric["untrained_unet_best_match_iou"] = _mean(scores["untrained_unet"])
        metric["colour_kmeans_best_match_iou"] = _mean(scores["colour_kmeans"])
    return metric


def _mean(values: list[float]) -> float | None:
    return float(np.nanmean(values)) if values and not np.all(np.isnan(values)) else None

"""How well stage A's clusters match objects: best-match IoU of cluster maps with object masks, beside
the other recipe, an untrained UNet and colour k-means; how much of P's mass stays on an object
patch's own label (beside a uniform P's); and how much of P the stored entries hold.
Pure functions over arrays and callables."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pipeline.diffusion.baselines import colour_kmeans
from pipeline.diffusion.oracle import grid_share, own_label_mass
from pipeline.metrics import best_match_iou, cluster_map_iou, upsample_labels


def image_scores(
    image_id: str, *, recipe: str, clusters: Callable[[str], tuple[np.ndarray, int]], mask: Callable[[str], np.ndarray],
    image: Callable[[str], np.ndarray], others: Mapping[str, Callable[[np.ndarray, str], Mapping[str, np.ndarray]]] = {},
    colour_baseline: bool = True, transition: Callable[[str], np.ndarray] | None = None,
) -> dict[str, float]:
    """Best-match IoU with one image's object masks, by name: the stored cluster map (`clusters(id)` ->
    (map, K), nearest-upsampled to the mask) as `recipe`; each of `others` (per-image functions
    returning a `clusters` map); colour k-means on pixel RGB with the image's K (at least 2); and
    `mask_at_grid`, the mask itself sampled at the clusters' grid (the ceiling of any map there).
    Also the image's cluster count `k`; with `transition(id)` (dense P), `own_label_mass` (the mass P's
    rows keep on an object patch's own label, per object) and `own_label_mass_uniform` (a uniform P's:
    each object's share of P's grid; a P built from the mask keeps 1). NaN for an image without objects."""
    m = mask(image_id)
    c, k = clusters(image_id)
    out = {"k": float(k), recipe: cluster_map_iou(c, m), "mask_at_grid": cluster_map_iou(upsample_labels(m, c.shape), m)}
    rgb = image(image_id) if (others or colour_baseline) else None
    for name, fn in others.items():
        out[name] = cluster_map_iou(fn(rgb, image_id)["clusters"], m)
    if colour_baseline:
        out["colour_kmeans"] = best_match_iou(colour_kmeans(rgb, max(2, k)), m)
    if transition is not None:
        p = transition(image_id)
        out["own_label_mass"] = own_label_mass(p, m)
        out["own_label_mass_uniform"] = grid_share(m, int(round(np.sqrt(p.shape[0]))))
    return out


MASS_SCORES = ("own_label_mass", "own_label_mass_uniform")  # image scores that are means, not best-match IoUs


def summarise(recipe: str, per_image: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """`<name>_best_match_iou`: the mean of each score over the images with objects; image counts, mean K."""
    names = [n for n in (per_image[0] if per_image else {recipe: 0.0}) if n != "k" and n not in MASS_SCORES]
    metric: dict[str, Any] = {
        "images": len(per_image),
        "images_with_objects": int(sum(not np.isnan(s[recipe]) for s in per_image)),
        "mean_clusters": float(np.mean([s["k"] for s in per_image])) if per_image else None,
    }
    for name in names:
        metric[f"{name}_best_match_iou"] = _mean([s[name] for s in per_image])
    for name in MASS_SCORES:
        if per_image and name in per_image[0]:
            metric[name] = _mean([s[name] for s in per_image])
    return metric


def transition_summary(kept: np.ndarray, truncated: np.ndarray) -> dict[str, float]:
    """Over all stored images: the mean and minimum kept mass of P's rows, the truncated-row fraction."""
    kept, truncated = np.asarray(kept, dtype=np.float64), np.asarray(truncated, dtype=np.float64)
    if not len(kept):
        return {}
    return {"transition_kept_mass": float(kept.mean()), "transition_kept_mass_min": float(kept.min()),
            "transition_truncated_rows": float(truncated.mean())}


def stage_a_metric(recipe: str, per_image: Sequence[Mapping[str, float]], transition_stats: tuple | None,
                   **context: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stage A's metric as (headline, detail): the headline holds the stored clusters' best-match IoU,
    its ceiling at the grid (the mask sampled there) and P's kept mass; the detail everything
    `summarise` and `transition_summary` give, with `context` (split, model, sizes)."""
    metric = summarise(recipe, per_image)
    transition = transition_summary(*transition_stats) if transition_stats is not None else {}
    headline = {"best_match_iou": metric.get(f"{recipe}_best_match_iou"),
                "best_match_ceiling": metric.get("mask_at_grid_best_match_iou")}
    if "own_label_mass" in metric:
        headline["own_label_mass"] = metric["own_label_mass"]
    if transition:
        headline["kept_mass"] = transition["transition_kept_mass"]
    return headline, {**context, "recipe": recipe, **metric, **transition}


def _mean(values: list[float]) -> float | None:
    return float(np.nanmean(values)) if values and not np.all(np.isnan(values)) else None

"""What the tsa_cache stage shows: a picture of the drawn images with their masks, and how well the
cache's keys classify real patches beside the texts alone."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.metrics import IGNORE


def picture(rows: list[list[tuple[np.ndarray, np.ndarray]]], *, per_class: int = 8, tile: int = 64) -> np.ndarray:
    """(rows x 2 tile, per_class x tile, 3) uint8: per class (a row of (image, mask) pairs), each image
    above its mask overlay (the mask's VOC palette colour at half opacity over the image)."""
    from PIL import Image

    from pipeline.data.palette import voc_palette

    palette = np.asarray(voc_palette(), dtype=np.float32).reshape(-1, 3)
    out = []
    for pairs in rows:
        tiles = []
        for image, mask in pairs[:per_class]:
            im = np.asarray(Image.fromarray(image).resize((tile, tile)), dtype=np.float32)
            m = np.asarray(Image.fromarray(mask).resize((tile, tile), Image.NEAREST))
            overlay = np.where(m[..., None] > 0, 0.5 * im + 0.5 * palette[m], im)
            tiles.append(np.concatenate([im, overlay]).astype(np.uint8))
        tiles += [np.zeros((2 * tile, tile, 3), np.uint8)] * (per_class - len(tiles))
        out.append(np.concatenate(tiles, axis=1))
    return np.concatenate(out)


def patch_truth(mask: np.ndarray, grid: int) -> np.ndarray:
    """(H, W) ground truth -> (grid*grid,) labels at the patch centres (nearest), 255 = ignored."""
    H, W = mask.shape
    ys = ((np.arange(grid) + 0.5) * H / grid).astype(int)
    xs = ((np.arange(grid) + 0.5) * W / grid).astype(int)
    return mask[np.ix_(ys, xs)].reshape(-1)


def classify_patches(features: np.ndarray, keys: np.ndarray, key_class: np.ndarray, text: np.ndarray,
                     num_classes: int, present: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, E) normalised patch features -> (cache labels, text labels), each (N,) in 0..C (0 background):
    the class of the nearest key by cosine, and the best text (class texts -> c + 1, background words
    -> 0). With `present`, only the image's classes and background compete (as in a CAM)."""
    k = keys / np.linalg.norm(keys, axis=1, keepdims=True).clip(1e-12)
    t = text / np.linalg.norm(text, axis=1, keepdims=True).clip(1e-12)
    key_label = key_class + 1
    text_label = np.concatenate([np.arange(1, num_classes + 1), np.zeros(len(text) - num_classes, dtype=int)])
    out = []
    for sims, labels in ((features @ k.T, key_label), (features @ t.T, text_label)):
        if present is not None:
            allowed = np.concatenate([[True], present])[labels]
            sims = np.where(allowed[None], sims, -np.inf)
        out.append(labels[sims.argmax(1)])
    return out[0], out[1]


def cache_metric(images: Any, ids: list[str], present: dict[str, np.ndarray], cams: Any, correlation: Any,
                 keys: np.ndarray, key_class: np.ndarray, text: np.ndarray, num_classes: int) -> dict:
    """Patch classification accuracy on real scenes: per configuration (cache / text, all classes or
    the image's own), overall accuracy and the mean of per-class accuracies (background included).
    `cams` is an ImageCams (its features are the patch tokens), `correlation(id)` stage A's R or None."""
    grid = cams.grid
    hits = {name: np.zeros((2, num_classes + 1)) for name in ("cache", "text", "cache_present", "text_present")}
    for image_id in ids:
        image = images.load_image(image_id)
        [res] = cams.batch([image], [present[image_id]], [correlation(image_id)], [None], features=True)
        truth = patch_truth(images.load_mask(image_id), grid)
        keep = truth != IGNORE
        f = res["features"][keep]
        t = truth[keep].astype(int)
        for suffix, allowed in (("", None), ("_present", present[image_id])):
            by_cache, by_text = classify_patches(f, keys, key_class, text, num_classes, allowed)
            for name, pred in (("cache", by_cache), ("text", by_text)):
                np.add.at(hits[name + suffix][0], t, pred == t)
                np.add.at(hits[name + suffix][1], t, 1)
    out = {"images": len(ids), "grid": grid}
    for name, (right, total) in hits.items():
        seen = total > 0
        out[name] = {"accuracy": float(right.sum() / max(total.sum(), 1)),
                     "mean_class_accuracy": float((right[seen] / total[seen]).mean()) if seen.any() else None}
    return out

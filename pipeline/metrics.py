"""Evaluation metrics shared by every stage: the one confusion-matrix path (mIoU, pixel accuracy,
per-class scores), cluster best-match IoU, AUC.

Also the nearest-neighbour label upsampling that brings a cluster or label map to a mask's size.

Pure functions on label maps (numpy; torchmetrics for the confusion); no files. Conventions follow the
WSSS literature: mIoU is over all classes including background, and label 255 (`IGNORE`) is ignored.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

IGNORE = 255


def confusion(pred: Any, target: Any, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts of (truth, prediction) over the pixels whose truth is not 255: torchmetrics'
    multiclass confusion matrix, the one confusion every score of the project comes from (pseudo-labels,
    the segmenter's validation curve and its evaluation). `num_classes` counts background (K = C + 1);
    predictions must lie in [0, K) where the truth is scored.

    torchmetrics' `ignore_index` once leaked into the counts of JaccardIndex (torchmetrics issue #1187
    and relatives), so tests pin its behaviour on hand-built cases."""
    import torch
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    p = torch.as_tensor(np.asarray(pred)).long().flatten()
    t = torch.as_tensor(np.asarray(target)).long().flatten()
    if p.shape != t.shape:
        raise ValueError(f"prediction has {p.numel()} pixels, target {t.numel()}")
    return multiclass_confusion_matrix(p, t, num_classes, ignore_index=IGNORE, validate_args=False).numpy().astype(np.int64)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """(K,) per-class IoU; NaN for a class absent from both prediction and truth (left out of means)."""
    conf = np.asarray(conf, dtype=np.float64)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def scores(conf: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Segmentation scores as the field reports them (method.md Stage D), from one confusion matrix over
    all classes including background: mIoU (mean over classes with any truth or prediction), pixel
    accuracy, per-class IoU, scored pixels."""
    conf = np.asarray(conf, dtype=np.float64)
    iou = iou_from_confusion(conf)
    return {"miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else None,
            "pixel_accuracy": float(np.diag(conf).sum() / conf.sum()) if conf.sum() else None,
            "per_class_iou": {n: _number(v) for n, v in zip(names, iou)}, "pixels": int(conf.sum())}


def class_scores(conf: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Per class: IoU, precision (of the pixels predicted as it) and recall (of its true pixels)."""
    conf = np.asarray(conf, dtype=np.float64)
    iou = iou_from_confusion(conf)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = np.diag(conf) / conf.sum(0), np.diag(conf) / conf.sum(1)
    return {n: {"iou": _number(iou[k]), "precision": _number(precision[k]), "recall": _number(recall[k])}
            for k, n in enumerate(names)}


def mean_iou(preds: Iterable[np.ndarray], targets: Iterable[np.ndarray], num_classes: int) -> tuple[float, np.ndarray]:
    """Dataset mIoU (one confusion matrix over all pixels of all images) and per-class IoU."""
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pred, target in zip(preds, targets, strict=True):
        conf += confusion(pred, target, num_classes)
    iou = iou_from_confusion(conf)
    return float(np.nanmean(iou)), iou


def _number(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def best_match_iou(clusters: np.ndarray, mask: np.ndarray) -> float:
    """Mean over the mask's object segments of the best IoU any single cluster reaches with it.

    `clusters` (H, W) int cluster ids, `mask` (H, W) class labels; each foreground class present
    (not 0, not 255) is one segment. Unsupervised clusters have no class, so each object is scored
    by its best-matching cluster (the DiffSeg-style measure). Returns NaN for a mask without objects.
    """
    clusters = np.asarray(clusters)
    mask = np.asarray(mask)
    valid = mask != IGNORE
    scores = []
    for label in np.unique(mask[valid]):
        if label == 0:
            continue
        obj = (mask == label) & valid
        best = 0.0
        for cid in np.unique(clusters[obj]):
            cl = (clusters == cid) & valid
            best = max(best, float((cl & obj).sum() / (cl | obj).sum()))
        scores.append(best)
    return float(np.mean(scores)) if scores else float("nan")


def upsample_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) label map -> (H, W) by nearest neighbour: each output pixel's centre mapped onto the grid.

    Output row i reads input row ``min(floor((i + 0.5) * h / H), h - 1)`` (columns alike), for any
    sizes (not only multiples; also shrinking). Dtype kept.
    """
    labels = np.asarray(labels)
    rows = np.minimum(((np.arange(size[0]) + 0.5) * labels.shape[0] / size[0]).astype(int), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * labels.shape[1] / size[1]).astype(int), labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]


def cluster_map_iou(clusters: np.ndarray, mask: np.ndarray) -> float:
    """:func:`best_match_iou` of a (h, w) cluster map brought to the mask's size by :func:`upsample_labels`."""
    mask = np.asarray(mask)
    return best_match_iou(upsample_labels(clusters, mask.shape), mask)


def presence_auc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(C,) ROC AUC per class of image-level presence `scores` (N, C) against multi-hot `labels`."""
    from sklearn.metrics import roc_auc_score

    scores, labels = np.asarray(scores), np.asarray(labels)
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        if 0 < labels[:, c].sum() < len(labels):
            out[c] = roc_auc_score(labels[:, c], scores[:, c])
    return out

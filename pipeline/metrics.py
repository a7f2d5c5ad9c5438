"""Evaluation metrics shared by every stage: confusion-matrix mIoU, cluster best-match IoU, AUC.

Also the nearest-neighbour label upsampling that brings a cluster or label map to a mask's size.

Pure numpy functions on label maps; no files. Conventions follow the WSSS literature: mIoU is over
all classes including background, and label 255 is ignored.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

IGNORE = 255


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts, rows = target class, columns = predicted class; target 255 ignored.

    `num_classes` counts background (K = C + 1). Predictions outside [0, K) raise.
    """
    pred = np.asarray(pred).ravel()
    target = np.asarray(target).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"prediction has {pred.size} pixels, target {target.size}")
    keep = target != IGNORE
    pred, target = pred[keep].astype(np.int64), target[keep].astype(np.int64)
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted labels must lie in [0, {num_classes}), got {pred.min()}..{pred.max()}")
    if target.size and target.max() >= num_classes:
        raise ValueError(f"target labels must lie in [0, {num_classes}) or be 255, got max {target.max()}")
    return np.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """(K,) per-class IoU; NaN for a class absent from both prediction and target."""
    conf = np.asarray(conf, dtype=np.float64)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def mean_iou(preds: Iterable[np.ndarray], targets: Iterable[np.ndarray], num_classes: int) -> tuple[float, np.ndarray]:
    """Dataset mIoU (one confusion matrix over all pixels of all images) and per-class IoU."""
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pred, target in zip(preds, targets, strict=True):
        conf += confusion_matrix(pred, target, num_classes)
    iou = iou_from_confusion(conf)
    return float(np.nanmean(iou)), iou


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


def format_table(names: Sequence[str], values: Sequence[float]) -> str:
    """A two-column text table (name, value as a percentage) for logs and reports."""
    width = max(len(n) for n in names)
    return "\n".join(f"{n:<{width}}  {100 * v:6.2f}" for n, v in zip(names, values))

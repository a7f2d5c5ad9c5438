"""An independent confusion matrix and mIoU in plain numpy, for tests that check the project's scores
(pipeline.metrics, through torchmetrics) against a second implementation."""

from __future__ import annotations

import numpy as np


def numpy_confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts of (truth, prediction) over pixels whose truth is not 255."""
    pred, target = np.asarray(pred).ravel().astype(np.int64), np.asarray(target).ravel().astype(np.int64)
    keep = target != 255
    return np.bincount(target[keep] * num_classes + pred[keep], minlength=num_classes**2).reshape(num_classes, num_classes)


def numpy_miou(conf: np.ndarray) -> float:
    """Mean IoU over the classes with any truth or prediction."""
    conf = np.asarray(conf, dtype=np.float64)
    inter, union = np.diag(conf), conf.sum(0) + conf.sum(1) - np.diag(conf)
    return float(np.mean(inter[union > 0] / union[union > 0]))

"""Segmentation scores as the field reports them (method.md Stage D): one confusion matrix over all
classes including background, 255 ignored, then per-class IoU, mIoU and pixel accuracy.

The confusion matrix comes from torchmetrics (rows: ground truth, columns: prediction). Its
`ignore_index` once leaked into the counts of JaccardIndex (torchmetrics issue #1187 and relatives), so
tests pin the behaviour on hand-built cases; a class absent from both prediction and truth has no IoU
(NaN, left out of the mean) rather than 0.
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE = 255


def confusion(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts of (truth, prediction) over pixels whose truth is not 255."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    p = torch.as_tensor(np.asarray(pred)).long().flatten()
    t = torch.as_tensor(np.asarray(target)).long().flatten()
    return multiclass_confusion_matrix(p, t, num_classes, ignore_index=IGNORE, validate_args=False).numpy().astype(np.int64)


def scores(conf: np.ndarray, names: tuple[str, ...]) -> dict:
    """mIoU (mean over classes with any truth or prediction), per-class IoU, pixel accuracy."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return {"miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else None,
            "pixel_accuracy": float(tp.sum() / conf.sum()) if conf.sum() else None,
            "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
            "pixels": int(conf.sum())}

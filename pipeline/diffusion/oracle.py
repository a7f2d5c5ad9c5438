"""Upper bounds that read ground truth: stage A's R and P built from an image's mask instead of from
diffusion attention, and the measure of how much of P's mass stays on an object's own label.

A patch's oracle row spreads its mass evenly over every patch with its label (1 / |segment|), so VCE
with the oracle R and RAR with the oracle P show what the CAM path could gain from a perfect diffusion
model at the same grids. Only the CAM ablation builds them; the `cams` stage never reads a mask.
Labels are the mask sampled at the grid (`pipeline.metrics.upsample_labels`, the same sampling as the
clusters' ceiling in stage A's metric); the ignore value 255 counts as one more label."""

from __future__ import annotations

import numpy as np

from pipeline.metrics import upsample_labels


def labels_at_grid(mask: np.ndarray, grid: int) -> np.ndarray:
    """(grid, grid) int64: the mask sampled at the grid's cell centres."""
    return upsample_labels(np.asarray(mask), (grid, grid)).astype(np.int64)


def segment_rows(labels: np.ndarray) -> np.ndarray:
    """(n, n) float32 for n = labels.size: entry (i, j) is 1 / |segment of i| where j has i's label, else 0;
    every row sums to 1."""
    flat = np.asarray(labels).reshape(-1)
    same = (flat[:, None] == flat[None, :]).astype(np.float32)
    return same / same.sum(1, keepdims=True)


def oracle_clusters(mask: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Stage A's stored form of the oracle R: (cluster ids (grid, grid) uint8, one row per cluster
    (k, grid^2) float32); each label present at the grid is a cluster, in increasing label order."""
    labels = labels_at_grid(mask, grid)
    values, ids = np.unique(labels.reshape(-1), return_inverse=True)
    rows = (ids[None, :] == np.arange(len(values))[:, None]).astype(np.float32)
    return ids.reshape(grid, grid).astype(np.uint8), rows / rows.sum(1, keepdims=True)


def oracle_transition(mask: np.ndarray, grid: int) -> np.ndarray:
    """The oracle P at the transition grid: (grid^2, grid^2) float32, rows summing to 1."""
    return segment_rows(labels_at_grid(mask, grid))


def _per_object_mean(labels: np.ndarray, per_patch: np.ndarray) -> float:
    """The mean over the objects (labels other than background 0 and ignore 255) of each object's mean of
    ``per_patch``; NaN when no object is there."""
    objects = [v for v in np.unique(labels) if v not in (0, 255)]
    return float(np.mean([per_patch[labels == v].mean() for v in objects])) if objects else float("nan")


def own_label_mass(transition: np.ndarray, mask: np.ndarray) -> float:
    """The mass P's rows keep on their own label, averaged over each object's patches and then over the
    objects at P's grid; NaN when no object is there. A uniform P keeps :func:`grid_share`; the oracle P 1."""
    p = np.asarray(transition, dtype=np.float64)
    grid = int(round(np.sqrt(p.shape[0])))
    labels = labels_at_grid(mask, grid).reshape(-1)
    return _per_object_mean(labels, (p * (labels[:, None] == labels[None, :])).sum(1))


def grid_share(mask: np.ndarray, grid: int) -> float:
    """The mean share of a grid's patches an object covers: what a uniform P keeps on its label."""
    labels = labels_at_grid(mask, grid).reshape(-1)
    return _per_object_mean(labels, (labels[:, None] == labels[None, :]).mean(1))


def object_patch(mask: np.ndarray, grid: int) -> int | None:
    """The patch (row-major index on the grid) of the largest object at the grid that lies nearest the
    object's centroid: a patch whose row of R or P should stay on the object. None without objects."""
    labels = labels_at_grid(mask, grid)
    objects = [v for v in np.unique(labels) if v not in (0, 255)]
    if not objects:
        return None
    largest = max(objects, key=lambda v: (int((labels == v).sum()), -int(v)))
    ys, xs = np.nonzero(labels == largest)
    nearest = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(ys[nearest] * grid + xs[nearest])

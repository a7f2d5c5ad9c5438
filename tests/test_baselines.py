"""Label upsampling (pipeline.metrics) and the colour k-means baseline (pipeline.diffusion.baselines)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.diffusion.baselines import colour_kmeans
from pipeline.metrics import best_match_iou, cluster_map_iou, upsample_labels


def reference_upsample(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixel by pixel: output pixel (i, j)'s centre ((i + 0.5) / H, (j + 0.5) / W) read on the input grid."""
    h, w = labels.shape
    out = np.empty(size, labels.dtype)
    for i in range(size[0]):
        for j in range(size[1]):
            out[i, j] = labels[min(int((i + 0.5) * h / size[0]), h - 1), min(int((j + 0.5) * w / size[1]), w - 1)]
    return out


@pytest.mark.parametrize("grid,size", [((4, 4), (16, 16)), ((3, 3), (10, 10)), ((5, 7), (13, 9)), ((16, 16), (8, 8)),
                                       ((6, 6), (6, 6)), ((64, 64), (500, 375))])
def test_upsample_labels_maps_pixel_centres_onto_the_grid(grid, size):
    labels = np.random.default_rng(sum(grid) + sum(size)).integers(0, 20, grid).astype(np.uint8)
    up = upsample_labels(labels, size)
    assert up.shape == size and up.dtype == labels.dtype
    np.testing.assert_array_equal(up, reference_upsample(labels, size))
    if size[0] % grid[0] == 0 and size[1] % grid[1] == 0:  # whole multiples: plain block replication
        blocks = np.ones((size[0] // grid[0], size[1] // grid[1]), labels.dtype)
        np.testing.assert_array_equal(up, np.kron(labels, blocks))


def test_upsample_labels_on_a_non_divisible_size_by_hand():
    # 3 -> 5 along rows: centres 0.5..4.5 times 3/5 = 0.3, 0.9, 1.5, 2.1, 2.7 -> rows 0, 0, 1, 2, 2
    labels = np.array([[1], [2], [3]])
    assert upsample_labels(labels, (5, 2)).tolist() == [[1, 1], [1, 1], [2, 2], [3, 3], [3, 3]]


def test_cluster_map_iou_scores_the_upsampled_map():
    mask = np.zeros((8, 8), np.uint8)
    mask[:4, :4] = 3
    clusters = np.array([[0, 1], [1, 1]])
    assert cluster_map_iou(clusters, mask) == 1.0
    assert cluster_map_iou(clusters, mask) == best_match_iou(upsample_labels(clusters, (8, 8)), mask)
    assert cluster_map_iou(np.zeros((2, 2), int), mask) == pytest.approx(16 / 64)


def two_colour_image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(40, 50, 3) image: a noisy red square on a noisy blue background, and its mask (1 inside)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((40, 50), np.uint8)
    mask[5:25, 10:35] = 1
    image = np.where(mask[..., None] == 1, [200, 30, 30], [20, 40, 180]).astype(np.int64)
    image = np.clip(image + rng.integers(-15, 16, image.shape), 0, 255).astype(np.uint8)
    return image, mask


def test_colour_kmeans_separates_colours_and_is_seeded():
    image, mask = two_colour_image()
    labels = colour_kmeans(image, 2)
    assert labels.shape == mask.shape
    assert best_match_iou(labels, mask) == 1.0
    np.testing.assert_array_equal(labels, colour_kmeans(image, 2))  # deterministic for a seed
    sub = colour_kmeans(image, 4, max_fit=100)  # fit on a sample of the pixels, every pixel assigned
    assert sub.shape == mask.shape and len(np.unique(sub)) == 4


def test_colour_kmeans_caps_k_at_the_distinct_colours():
    image = np.zeros((6, 6, 3), np.uint8)
    image[:, 3:] = 255
    labels = colour_kmeans(image, 8)
    assert sorted(np.unique(labels).tolist()) == [0, 1]
    assert (labels[:, :3] != labels[:, 3:]).all()

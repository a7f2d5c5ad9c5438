"""Baselines the diffusion-attention clusters are compared with (no model, no files).

:func:`colour_kmeans` clusters an image's pixel colours: what segmentation by colour alone reaches
on the same images. The other baseline, an untrained UNet of the model's config, is
:func:`pipeline.models.diffusion.untrained_unet` run through the same capture and clustering.
"""

from __future__ import annotations

import numpy as np


def colour_kmeans(image: np.ndarray, k: int, *, seed: int = 0, max_fit: int = 20000) -> np.ndarray:
    """(H, W) cluster ids of k-means on the pixel RGB of a uint8 (H, W, 3) image: the colour baseline.

    Colours scaled to [0, 1]; k-means (scikit-learn, 3 k-means++ starts, ``random_state=seed``, one
    thread) fit on at most ``max_fit`` pixels drawn with ``numpy.random.default_rng(seed)``, then
    every pixel assigned. ``k`` is capped at the number of distinct colours in the fit sample.
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    pixels = image.reshape(-1, 3).astype(np.float32) / 255.0
    rng = np.random.default_rng(seed)
    fit = pixels[rng.choice(len(pixels), max_fit, replace=False)] if len(pixels) > max_fit else pixels
    k = max(1, min(k, len(np.unique(fit, axis=0))))
    with threadpool_limits(limits=1):
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(fit)
        return km.predict(pixels).reshape(image.shape[:2])

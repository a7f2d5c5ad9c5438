"""Optional DenseCRF post-processing of the segmenter's softmax (method.md Stage D, DiCLIP's evaluation).

Through `pydensecrf2` (PyPI; a packaged fork of the original pydensecrf, which no longer builds on
current Python; it compiles here from its source distribution). The background channel is kept
(DiCLIP's infer_lam drops it; method.md, quirks we do not reproduce).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CrfConfig:
    """DiCLIP's values: 10 iterations, Gaussian xy 1 weight 3, bilateral xy 67 rgb 3 weight 4."""

    iterations: int = 10
    pos_xy: float = 1.0
    pos_weight: float = 3.0
    bi_xy: float = 67.0
    bi_rgb: float = 3.0
    bi_weight: float = 4.0


def crf_available() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def dense_crf(probabilities: np.ndarray, image: np.ndarray, config: CrfConfig = CrfConfig()) -> np.ndarray:
    """(K, H, W) softmax and the (H, W, 3) uint8 image -> (K, H, W) float32 CRF marginals."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    K, H, W = probabilities.shape
    crf = dcrf.DenseCRF2D(W, H, K)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probabilities.astype(np.float32))))
    crf.addPairwiseGaussian(sxy=config.pos_xy, compat=config.pos_weight)
    crf.addPairwiseBilateral(sxy=config.bi_xy, srgb=config.bi_rgb, rgbim=np.ascontiguousarray(image, dtype=np.uint8),
                             compat=config.bi_weight)
    return np.asarray(crf.inference(config.iterations), dtype=np.float32).reshape(K, H, W)

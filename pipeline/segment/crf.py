"""Optional DenseCRF post-processing of the segmenter's softmax (method.md Stage D, DiCLIP's evaluation).

Through `pydensecrf2` (PyPI; a packaged fork of the original pydensecrf, which no longer builds on
current Python; it compiles here from its source distribution). The background channel is kept
(DiCLIP's infer_lam drops it; method.md, quirks we do not reproduce).
"""

from __future__ import annotations

import numpy as np

from pipeline.segment.config import InferenceConfig


def crf_available() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def dense_crf(probabilities: np.ndarray, image: np.ndarray, config: InferenceConfig) -> np.ndarray:
    """(K, H, W) softmax and the (H, W, 3) uint8 image -> (K, H, W) float32 CRF marginals, with the
    kernels of `config` (its `crf_*` fields; DiCLIP's values by default)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    K, H, W = probabilities.shape
    crf = dcrf.DenseCRF2D(W, H, K)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probabilities.astype(np.float32))))
    crf.addPairwiseGaussian(sxy=config.crf_pos_xy, compat=config.crf_pos_weight)
    crf.addPairwiseBilateral(sxy=config.crf_bi_xy, srgb=config.crf_bi_rgb, rgbim=np.ascontiguousarray(image, dtype=np.uint8),
                             compat=config.crf_bi_weight)
    return np.asarray(crf.inference(config.crf_iterations), dtype=np.float32).reshape(K, H, W)

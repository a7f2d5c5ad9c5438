"""CAMs from a frozen CLIP: the surgery path, patch-text CAMs with feature surgery, pseudo-labels.

Pure tensor functions; they know nothing of files. ``surgery_forward`` runs any open_clip
``VisionTransformer`` (tiny or ViT-B/16 at any input size), ``text_cams`` turns its tokens and text
embeddings into per-class patch CAMs, ``cams_to_image`` and ``labels_from_cams`` make pseudo-labels.
"""

from .surgery import HEAD_REDUCTIONS, SurgeryOutput, embed_images, resize_pos_embed, surgery_forward
from .text_cam import (
    TOKEN_NORMS,
    cams_to_image,
    class_token_weights,
    feature_surgery,
    labels_from_cams,
    minmax_normalise,
    text_cams,
    token_text_similarity,
)

__all__ = [
    "HEAD_REDUCTIONS",
    "SurgeryOutput",
    "TOKEN_NORMS",
    "cams_to_image",
    "class_token_weights",
    "embed_images",
    "feature_surgery",
    "labels_from_cams",
    "minmax_normalise",
    "resize_pos_embed",
    "surgery_forward",
    "text_cams",
    "token_text_similarity",
]

"""CAMs from a frozen CLIP: the surgery path, patch-text CAMs with feature surgery, pseudo-labels.

Pure tensor functions; they know nothing of files, params or datasets. ``surgery_forward`` runs any
open_clip ``VisionTransformer`` (tiny or ViT-B/16 at any input size), ``text_cams`` turns its tokens
and text embeddings into per-class patch CAMs, ``cams_to_image`` and ``labels_from_cams`` make
pseudo-labels. ``text`` encodes class prompts; ``images`` turns uint8 images into model input and
runs the whole recipe in batches (``surgery_cams``, ``presence_scores``).
"""

from .images import presence_scores, surgery_cams, to_clip_input
from .surgery import HEAD_REDUCTIONS, SurgeryOutput, embed_images, resize_pos_embed, surgery_forward
from .text import DEFAULT_PROMPT, class_prompts, encode_class_prompts, encode_prompts, encode_text_trimmed
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
    "DEFAULT_PROMPT",
    "HEAD_REDUCTIONS",
    "SurgeryOutput",
    "TOKEN_NORMS",
    "cams_to_image",
    "class_prompts",
    "class_token_weights",
    "embed_images",
    "encode_class_prompts",
    "encode_prompts",
    "encode_text_trimmed",
    "feature_surgery",
    "labels_from_cams",
    "minmax_normalise",
    "presence_scores",
    "resize_pos_embed",
    "surgery_cams",
    "surgery_forward",
    "text_cams",
    "to_clip_input",
    "token_text_similarity",
]

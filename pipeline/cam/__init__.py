"""CAMs from a frozen CLIP: the surgery path, patch-text CAMs with feature surgery, pseudo-labels.

Pure tensor functions; they know nothing of files, params or datasets. ``surgery_forward`` runs any
open_clip ``VisionTransformer`` (tiny or ViT-B/16 at any input size), ``text_cams`` turns its tokens
and text embeddings into per-class patch CAMs, ``cams_to_image`` and ``labels_from_cams`` make
pseudo-labels. ``text`` encodes class prompts; ``images`` turns uint8 images into model input and
runs the whole recipe in batches (``surgery_cams``, ``presence_scores``).

Import from the modules: the package imports nothing, so importing it (or its torch-free `config`)
does not import torch.
"""

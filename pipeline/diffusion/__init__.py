"""Stage A of DiCLIP: Stable Diffusion self-attention capture, aggregation and ACR clustering.

- `capture`: attention processors that aggregate every self-attention layer on the fly at one
  token grid (`capture_self_attention`), and the image-level helper (`ImageAttention`).
- `acr`: attention clustering refinement (anchor merging by symmetric KL, then k-means), its
  knobs in one `ACRConfig`.
- `clusters`: one image -> the arrays stage A stores (`ImageClusterer`).
- `correlation`: the patch-correlation matrix for any CLIP patch grid, from stored cluster maps.
- `baselines`, `evaluate`: what the clusters are compared with, and how well they match object masks.

The stage itself is `stages/diffusion_attention.py` (its params section:
`pipeline.params.sections.DiffusionAttentionParams`); this package reads no params, stores or runner.
Import from the modules: the package imports nothing, so importing it does not import torch.
"""

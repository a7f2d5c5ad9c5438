"""Stage A of DiCLIP: one Stable Diffusion forward per image -> clusters, refined correlation R, transition P.

- `selected`: taps on named self-attention layers (q and k of selected heads), the diffusers
  attention-processor seam; `capture`: VAE encoding, seeded noise, and the aggregate of every
  self-attention layer (the `acr` recipe).
- `correlation`: DiCLIP's patch correlation A from q and k, its cluster-mean refinement R, and R
  resampled to other grids; `kl_assign`: DiCLIP's clustering of A; `acr`: the aggregate recipe's
  KL merging + k-means; `transition`: DiCLIP's RAR transition P and its top-k rows.
- `recipes`: one image -> the arrays stage A stores, by either recipe (`StageAMaps`).
- `baselines`, `evaluate`: what the clusters are compared with, and how well they match object masks.

The stage itself is `stages/diffusion_attention.py` (its params section:
`pipeline.params.sections.DiffusionAttentionParams`); this package reads no params, stores or runner.
Import from the modules: the package imports nothing, so importing it does not import torch.
"""

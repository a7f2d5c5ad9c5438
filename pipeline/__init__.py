"""diclip: a reproducible, DVC-orchestrated DiCLIP (CLIP CAMs strengthened by Stable Diffusion) library."""

__version__ = "0.1.0"

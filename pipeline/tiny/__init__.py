"""Training and evaluation of the tiny shapes-world models (not a pipeline stage).

- `train_clip` / `eval_clip`: the tiny CLIP (contrastive pre-training; presence AUC and surgery-CAM
  mIoU on held-out scenes, the CAMs themselves from :mod:`pipeline.cam`).
- `train_sd` / `eval_sd`: the tiny Stable Diffusion (VAE, then UNet + text encoder; self-attention
  cluster IoU and zero-shot sample accuracy).
- `manifest`: the ``manifest.json`` written beside shipped weights.

The commands are ``diclip shapes pretrain-clip`` and ``diclip shapes pretrain-sd``
(:mod:`stages.pretrain_clip`, :mod:`stages.pretrain_sd`); the weights are loaded, like any model,
through :mod:`pipeline.models`. Nothing is imported here, so ``import pipeline.tiny`` is cheap.
"""

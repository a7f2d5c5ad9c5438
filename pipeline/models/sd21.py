"""Stable Diffusion 2.1-base's architecture, from its published component configs, with seeded random weights.

Nothing here downloads: the configs are SD 2.1-base's own (`stabilityai/stable-diffusion-2-1-base`,
``{unet,vae,text_encoder,scheduler}/config.json``), and :func:`write_random_sd21` saves a pipeline
directory that ``models.sd.model`` can point at. It is how the real path's shapes, memory and speed
are measured where the weights cannot be fetched (tests/test_fullsize.py, bench/fullsize.py,
bench/gpu_check.sh); its outputs mean nothing, its costs are SD 2.1-base's.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

SD21_UNET = dict(
    act_fn="silu", attention_head_dim=[5, 10, 20, 20], block_out_channels=[320, 640, 1280, 1280],
    center_input_sample=False, cross_attention_dim=1024,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], downsample_padding=1,
    dual_cross_attention=False, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, num_class_embeds=None, only_cross_attention=False,
    out_channels=4, sample_size=64, up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    upcast_attention=False, use_linear_projection=True,
)
SD21_VAE = dict(
    act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, in_channels=3, latent_channels=4, layers_per_block=2,
    norm_num_groups=32, out_channels=3, sample_size=512, scaling_factor=0.18215,
)
SD21_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, prediction_type="epsilon", clip_sample=False,
)
# OpenCLIP ViT-H/14's text tower as SD 2.x ships it (23 of its 24 layers; penultimate-layer features)
SD21_TEXT_ENCODER = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512, layer_norm_eps=1e-5,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
SD21_TOKENIZER = dict(model_max_length=77, pad_token="!")
_SEED_FILE = "random_weights.json"


def write_random_sd21(out_dir: str | os.PathLike[str], *, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Save an SD 2.1-base-sized pipeline with random weights (seeded) to ``out_dir``; reuse one already there.

    Saved in ``dtype`` (float16 halves its 2.6 GB); the loader casts to the run's precision. A file
    ``random_weights.json`` records the seed, so a directory of another seed is rebuilt, never reused.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel
    from transformers.utils import logging as transformers_logging

    from .tokenizer import build_clip_tokenizer

    out = Path(out_dir)
    stamp = {"architecture": "stable-diffusion-2-1-base", "seed": seed, "dtype": str(dtype)}
    if (out / _SEED_FILE).is_file() and json.loads((out / _SEED_FILE).read_text()) == stamp:
        return out
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(SD21_UNET)
        vae = AutoencoderKL.from_config(SD21_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD21_TEXT_ENCODER))
    with tempfile.TemporaryDirectory() as bpe:
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=build_clip_tokenizer(bpe, **SD21_TOKENIZER), unet=unet,
            scheduler=PNDMScheduler.from_config(SD21_SCHEDULER), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
        # quiet: diffusers' note on modules kept in float32 (SD 2.1 has none) and the shard-writing bars
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        try:
            for module in (pipe.unet, pipe.vae, pipe.text_encoder):
                module.to(dtype)
            pipe.save_pretrained(out, safe_serialization=True)
        finally:
            diffusers_logging.set_verbosity(verbosity)
            transformers_logging.enable_progress_bar()
    (out / _SEED_FILE).write_text(json.dumps(stamp))
    return out

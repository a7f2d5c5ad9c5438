"""Model layer: loading real and tiny CLIP (open_clip) and Stable Diffusion (diffusers) through one path.

``load_clip`` and ``load_stable_diffusion`` are the only entry points the stages use; the tiny
models are defined by configs in ``tiny_configs/`` and built once by ``build_tiny_*``/``load_clip``
with ``pretrained=None``; their shipped weights live in ``weights/`` (``TINY_CLIP_DIR``,
``TINY_SD_DIR``: absolute paths). Missing weights always surface as :class:`ModelUnavailableError`.
Training and evaluating the tiny models is :mod:`pipeline.tiny`, not this package: nothing here
imports the data, CAM, diffusion-attention or metrics code.
"""

from .clip import (
    TINY_CLIP_DIR,
    TINY_CLIP_MODELS,
    LoadedClip,
    list_clip_models,
    load_clip,
    load_shipped_clip,
    save_clip_checkpoint,
)
from .device import resolve_device, resolve_dtype
from .diffusion import (
    TINY_SD_DIR,
    TinySDConfig,
    build_tiny_stable_diffusion,
    list_tiny_sd_configs,
    load_stable_diffusion,
    load_tiny_sd_config,
    self_attention_layers,
    untrained_unet,
)
from .errors import ModelUnavailableError
from .tokenizer import build_clip_tokenizer, write_clip_bpe_files

__all__ = [
    "LoadedClip",
    "ModelUnavailableError",
    "TINY_CLIP_DIR",
    "TINY_CLIP_MODELS",
    "TINY_SD_DIR",
    "TinySDConfig",
    "build_clip_tokenizer",
    "build_tiny_stable_diffusion",
    "list_clip_models",
    "list_tiny_sd_configs",
    "load_clip",
    "load_shipped_clip",
    "load_stable_diffusion",
    "load_tiny_sd_config",
    "resolve_device",
    "resolve_dtype",
    "save_clip_checkpoint",
    "self_attention_layers",
    "untrained_unet",
    "write_clip_bpe_files",
]

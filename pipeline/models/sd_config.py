"""A Stable Diffusion model's component configs and weight identity, read without loading weights.

Stages resolve sizes (image, latent, attention grids) from the configs before any worker loads the
model, and stamp their artifacts with the identity of the weights (content, not file times, so a
fresh clone of the shipped tiny SD has the same identity)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def read_component_config(model: str, component: str, filename: str = "config.json") -> dict[str, Any]:
    """`<component>/<filename>` of a local diffusers directory or a cached hub model (downloads when
    neither has it and the hub is reachable; otherwise raises ModelUnavailableError naming the remedies)."""
    local = Path(model).expanduser()
    path: Path | None = local / component / filename
    if not local.exists():
        from huggingface_hub import try_to_load_from_cache

        from pipeline.models.hub import hf_hub_cache_dir

        cached = try_to_load_from_cache(model, f"{component}/{filename}", cache_dir=str(hf_hub_cache_dir()))
        path = Path(cached) if isinstance(cached, str) else None
    if path is None or not path.is_file():
        from pipeline.models.diffusion import load_stable_diffusion

        load_stable_diffusion(model, device="cpu")  # raises ModelUnavailableError naming the remedies (or downloads)
        return read_component_config(model, component, filename)
    return json.loads(path.read_text(encoding="utf-8"))


def weights_fingerprint(model: str) -> str:
    """sha256 over the relative paths and bytes of a local model directory; a hub id stands for itself."""
    local = Path(model).expanduser()
    if not local.is_dir():
        return str(model)
    h = hashlib.sha256()
    for p in sorted(local.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(local).as_posix().encode() + b"\0")
            with p.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class AttentionLayer:
    """A self-attention layer of a UNet config: its head count and how often its block downsamples."""

    heads: int
    level: int  # token grid side = latent side // 2**level

    def grid(self, latent_size: int) -> int:
        return latent_size // 2**self.level


def self_attention_layers_of(unet_config: dict[str, Any]) -> dict[str, AttentionLayer]:
    """{module path: AttentionLayer} of every `attn1` of a UNet2DConditionModel config, in registration
    order. The UNet is built on the meta device (no memory, no weights); levels follow diffusers' block
    layout (every down block but the last halves the grid, every up block but the last doubles it)."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
    depth = len(unet_config["block_out_channels"]) - 1

    def level(path: str) -> int:
        block, _, rest = path.partition(".")
        if block == "mid_block":
            return depth
        i = int(rest.split(".", 1)[0])
        return i if block == "down_blocks" else depth - i

    return {name: AttentionLayer(int(m.heads), level(name)) for name, m in unet.named_modules() if name.endswith(".attn1")}


def inference_timestep(scheduler_config: dict[str, Any], steps: int, index: int) -> int:
    """Entry `index` of the timesteps the model's own scheduler uses for `steps` inference steps
    (SD 2.1-base's PNDM at 50 steps, entry 45: 101; DDIM: 81), as DiCLIP picks its timestep."""
    import diffusers

    scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    return int(scheduler.timesteps[index])

"""A Stable Diffusion model's component configs and weight identity, read without loading weights.

Stages resolve sizes (image, latent, attention grids) from the configs before any worker loads the
model, and stamp their artifacts with the identity of the weights (content, not file times, so a
fresh clone of the shipped tiny SD has the same identity)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def read_component_config(model: str, component: str) -> dict[str, Any]:
    """`<component>/config.json` of a local diffusers directory or a cached hub model (downloads when
    neither has it and the hub is reachable; otherwise raises ModelUnavailableError naming the remedies)."""
    local = Path(model).expanduser()
    path: Path | None = local / component / "config.json"
    if not local.exists():
        from huggingface_hub import try_to_load_from_cache

        from pipeline.models.hub import hf_hub_cache_dir

        cached = try_to_load_from_cache(model, f"{component}/config.json", cache_dir=str(hf_hub_cache_dir()))
        path = Path(cached) if isinstance(cached, str) else None
    if path is None or not path.is_file():
        from pipeline.models.diffusion import load_stable_diffusion

        load_stable_diffusion(model, device="cpu")  # raises ModelUnavailableError naming the remedies (or downloads)
        return read_component_config(model, component)
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

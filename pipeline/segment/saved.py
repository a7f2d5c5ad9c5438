"""A saved segmenter rebuilt for inference: the decoder from its config and weights, on its frozen CLIP."""

from __future__ import annotations

from typing import Any

from torch import nn

from pipeline.segment.decoder import build_decoder


def load_segmenter(config: dict[str, Any], state: dict, *, device: str, precision: str) -> tuple[nn.Module, nn.Module]:
    """(decoder in eval mode, frozen CLIP vision tower) on the CLIP's device."""
    from pipeline.models import load_clip

    clip = load_clip(config["clip_model"], config["clip_pretrained"], device=device, precision=precision)
    visual = clip.model.visual.eval().requires_grad_(False)
    decoder = build_decoder(config["architecture"], config["in_dim"], config["blocks"], config["num_classes"],
                            **config["options"])
    decoder.load_state_dict(state)
    return decoder.to(next(visual.parameters()).device).eval(), visual

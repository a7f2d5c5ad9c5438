"""Capture of selected layers and heads (DiCLIP's Stage A) on the untrained tiny SD: only the named
layers are hooked, q and k are the layer's own for the chosen heads, the output is unchanged, the
forward stops once every tap ran, unknown paths or heads are named with the valid ones, and what
the stage resolves from configs (layer grids and heads, DiCLIP's timestep) matches the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.diffusion.capture import layer_grids
from pipeline.diffusion.selected import (
    LayerTap,
    TapProcessor,
    UnknownLayerError,
    capture_layers,
    check_taps,
    normalise_path,
    self_attention_heads,
    tapped_processors,
)

ROOT = Path(__file__).resolve().parents[1]
CORR = "up_blocks.1.attentions.1.transformer_blocks.0.attn1"  # 8x8 tokens, 16 heads of 4 channels
RAR = "up_blocks.2.attentions.0.transformer_blocks.0.attn1"  # 16x16 tokens, 8 heads
LAST = "up_blocks.2.attentions.1.transformer_blocks.0.attn1"  # the last self-attention of the forward


class Counting:
    """Wraps a processor and counts its calls."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_only_the_named_layers_are_hooked_and_q_k_are_the_layers_own(pipe, inputs):
    latents, text = inputs
    unet = pipe.unet
    seen: dict[str, torch.Tensor] = {}
    hooks = [unet.get_submodule(f"{p}.{proj}").register_forward_hook(
        lambda m, i, o, key=(p, proj): seen.__setitem__(key, o.detach())) for p in (CORR, RAR) for proj in ("to_q", "to_k")]
    try:
        captured = capture_layers(unet, latents, text, 100, [LayerTap(CORR, (1, 2)), LayerTap(RAR, (0, 5))], stop_early=False)
    finally:
        for h in hooks:
            h.remove()
    assert set(captured) == {CORR, RAR}
    for path, heads, n, d in ((CORR, (1, 2), 64, 4), (RAR, (0, 5), 256, 4)):
        c = captured[path]
        assert c.query.shape == c.key.shape == (2, 2, n, d) and c.tokens == n
        assert c.scale == pytest.approx(d ** -0.5)
        for slot, h in enumerate(heads):  # the wrapped processor's own projections, sliced to the head
            torch.testing.assert_close(c.query[:, slot], seen[(path, "to_q")][..., h * d:(h + 1) * d])
            torch.testing.assert_close(c.key[:, slot], seen[(path, "to_k")][..., h * d:(h + 1) * d])


def test_taps_leave_the_output_unchanged_and_are_removed(pipe, inputs):
    latents, text = inputs
    unet = pipe.unet
    t = torch.full((2,), 100)
    before = dict(unet.attn_processors)
    with torch.no_grad():
        plain = unet(latents, t, encoder_hidden_states=text.expand(2, -1, -1), return_dict=False)[0]
        sink: dict = {}
        with tapped_processors(unet, [LayerTap(CORR, (0,))], sink):
            during = dict(unet.attn_processors)
            tapped = unet(latents, t, encoder_hidden_states=text.expand(2, -1, -1), return_dict=False)[0]
    wrapped = {k for k, v in during.items() if v is not before[k]}
    assert wrapped == {f"{CORR}.processor"} and isinstance(during[f"{CORR}.processor"], TapProcessor)
    assert during[f"{CORR}.processor"].inner is before[f"{CORR}.processor"]  # wraps the layer's own processor
    assert torch.equal(plain, tapped) and set(sink) == {CORR}
    assert all(unet.attn_processors[k] is v for k, v in before.items())


def test_the_forward_stops_once_every_tap_ran(pipe, inputs):
    latents, text = inputs
    unet = pipe.unet
    original = dict(unet.attn_processors)
    counter = Counting(original[f"{LAST}.processor"])
    unet.set_attn_processor({**original, f"{LAST}.processor": counter})
    try:
        capture_layers(unet, latents, text, 100, [LayerTap(CORR, (1, 2)), LayerTap(RAR, (1, 2))], stop_early=True)
        assert counter.calls == 0  # the last layer runs after both taps: never reached
        capture_layers(unet, latents, text, 100, [LayerTap(CORR, (1, 2))], stop_early=False)
        assert counter.calls == 1
    finally:
        unet.set_attn_processor(original)


def test_unknown_paths_and_heads_are_named_with_the_valid_ones(pipe):
    heads = self_attention_heads(pipe.unet)
    with pytest.raises(UnknownLayerError, match=r"'up_blocks.7.attn1' is not a self-attention layer of this UNet; "
                                                r"valid layers:\n  down_blocks.0.attentions.0.transformer_blocks.0.attn1 \(8 heads\)"):
        check_taps(heads, [LayerTap("up_blocks.7.attn1", (0,))])
    with pytest.raises(UnknownLayerError, match=r"has heads 0..15; got heads \[16\]"):
        check_taps(heads, [LayerTap(CORR, (16,))])
    with pytest.raises(UnknownLayerError, match=r"got heads \[\]"):
        check_taps(heads, [LayerTap(CORR, ())])
    bracketed = "up_blocks[1].attentions[1].transformer_blocks[0].attn1"
    assert normalise_path(bracketed) == CORR
    assert check_taps(heads, [LayerTap(bracketed, (1, 2))]) == [LayerTap(CORR, (1, 2))]


def test_config_layout_matches_the_built_model(pipe, tmp_path):
    from pipeline.models.sd_config import self_attention_layers_of

    layout = self_attention_layers_of(dict(pipe.unet.config))
    grids = layer_grids(pipe.unet, (16, 16))
    assert {p: layer.heads for p, layer in layout.items()} == self_attention_heads(pipe.unet)
    assert {p: (layer.grid(16), layer.grid(16)) for p, layer in layout.items()} == grids


def test_dicilps_timestep_from_the_models_own_scheduler():
    from pipeline.models.sd_config import inference_timestep

    # stabilityai/stable-diffusion-2-1-base scheduler/scheduler_config.json (the keys that set the timesteps)
    sd21 = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
            "trained_betas": None}
    assert inference_timestep(sd21, 50, 45) == 101
    assert inference_timestep({**sd21, "_class_name": "DDIMScheduler"}, 50, 45) == 81
    shipped = json.loads((ROOT / "pipeline/models/weights/diclip-tiny-sd/scheduler/scheduler_config.json").read_text())
    assert shipped["_class_name"] == "DDIMScheduler" and inference_timestep(shipped, 50, 45) == 81

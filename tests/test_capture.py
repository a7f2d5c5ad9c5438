"""Self-attention capture on the (untrained) tiny SD: row-stochastic maps of the expected shapes for
every self-attention layer, unchanged UNet output, blockwise == whole, aggregation == its definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.diffusion.capture import (
    AggregatingSelfAttnProcessor,
    ImageAttention,
    capture_self_attention,
    layer_grids,
    resample_attention,
)
from pipeline.diffusion.sd_input import encode_prompt, image_noise_seed, native_image_size, vae_factor, vae_factor_from_config
from pipeline.models import self_attention_layers

# the tiny SD's attn1 token grids for 16x16 latents (64 px images), in execution order:
# down 16, 8; mid 4; up 8, 8, 16, 16
TINY_GRIDS = [16, 8, 4, 8, 8, 16, 16]


def assert_row_stochastic(a: torch.Tensor, atol: float = 1e-4) -> None:
    assert a.dtype == torch.float32 and (a >= 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), atol=atol, rtol=0)


def test_every_self_attention_layer_gives_row_stochastic_maps(pipe, inputs):
    latents, text = inputs
    layers: dict[str, torch.Tensor] = {}
    agg = capture_self_attention(pipe.unet, latents, text, 300, grid=16, noise_seed=0, layer_maps=layers)
    assert sorted(layers) == sorted(self_attention_layers(pipe.unet))  # every attn1, each once
    for (name, a), side in zip(layers.items(), TINY_GRIDS):
        assert a.shape == (2, side * side, side * side), name
        assert_row_stochastic(a)
    assert agg.shape == (2, 256, 256)
    assert_row_stochastic(agg)
    assert list(layer_grids(pipe.unet, (16, 16)).values()) == [(s, s) for s in TINY_GRIDS]


@pytest.mark.parametrize("grid", [4, 8, 16, 20, 32])
def test_aggregate_is_the_resolution_weighted_mean_of_resampled_layers(pipe, inputs, grid):
    latents, text = inputs
    layers: dict[str, torch.Tensor] = {}
    agg = capture_self_attention(pipe.unet, latents, text, 300, grid=grid, noise_seed=0, layer_maps=layers)
    assert agg.shape == (2, grid * grid, grid * grid)
    assert_row_stochastic(agg)
    # independent of the blockwise path: resample each whole layer map, weight by its grid side
    want = torch.zeros_like(agg)
    for a, side in zip(layers.values(), TINY_GRIDS):
        want += side * resample_attention(a, (side, side), grid)
    want /= want.sum(-1, keepdim=True)
    torch.testing.assert_close(agg, want, atol=1e-6, rtol=1e-4)


def test_blockwise_equals_whole_layer_processing(pipe, inputs):
    latents, text = inputs
    whole = capture_self_attention(pipe.unet, latents, text, 300, grid=8, noise_seed=0, block_bytes=1 << 30)
    blocks = capture_self_attention(pipe.unet, latents, text, 300, grid=8, noise_seed=0, block_bytes=1 << 14)  # a few rows per block
    torch.testing.assert_close(blocks, whole, atol=1e-6, rtol=1e-5)


def test_hooks_leave_the_unet_output_unchanged_and_are_removed(pipe, inputs):
    latents, text = inputs
    unet = pipe.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    t = torch.full((2,), 300)
    with torch.no_grad():
        ref = unet(latents, t, encoder_hidden_states=text.expand(2, -1, -1)).sample
    outputs = []
    handle = unet.register_forward_hook(lambda m, i, o: outputs.append(o[0]))
    try:
        capture_self_attention(unet, latents, text, 300, grid=8, noise_seed=None, block_bytes=1 << 14)
    finally:
        handle.remove()
    torch.testing.assert_close(outputs[0], ref, atol=1e-5, rtol=1e-4)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    assert not any(isinstance(p, AggregatingSelfAttnProcessor) for p in unet.attn_processors.values())


def test_processors_are_restored_after_a_failing_forward(pipe):
    before = dict(pipe.unet.attn_processors)
    with pytest.raises(Exception):
        capture_self_attention(pipe.unet, torch.zeros(1, 4, 16, 16), torch.zeros(1, 3, 7), 300, grid=8, noise_seed=0)
    assert dict(pipe.unet.attn_processors) == before


def test_noise_is_seeded_per_image(pipe, inputs):
    latents, text = inputs
    one = lambda seeds: capture_self_attention(pipe.unet, latents, text, 600, grid=8, noise_seed=seeds)  # noqa: E731
    a, b, c = one([1, 2]), one([1, 2]), one([1, 3])
    assert torch.equal(a, b)
    assert torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])  # image 0's result ignores image 1's seed
    assert not torch.equal(a, capture_self_attention(pipe.unet, latents, text, 600, grid=8, noise_seed=None))
    assert image_noise_seed(0, "img_1") == image_noise_seed(0, "img_1") != image_noise_seed(0, "img_2")
    assert image_noise_seed(1, "img_1") != image_noise_seed(0, "img_1")


def test_rectangular_latents_get_rectangular_layer_grids(pipe):
    layers: dict[str, torch.Tensor] = {}
    latents = torch.randn(1, 4, 16, 8)
    agg = capture_self_attention(pipe.unet, latents, encode_prompt(pipe), 300, grid=8, noise_seed=0, layer_maps=layers)
    assert [int(math.sqrt(a.shape[1] * 2)) for a in layers.values()] == TINY_GRIDS  # (s, s/2) grids
    assert_row_stochastic(agg)


def test_bf16_unet_captures_row_stochastic_maps(pipe, inputs):
    latents, text = inputs
    unet = pipe.unet.to(torch.bfloat16)
    try:
        agg = capture_self_attention(unet, latents, text, 300, grid=8, noise_seed=0)
    finally:
        pipe.unet.to(torch.float32)
    assert_row_stochastic(agg, atol=1e-4)
    ref = capture_self_attention(pipe.unet, latents, text, 300, grid=8, noise_seed=0)
    assert (agg - ref).abs().max() < 0.05 * ref.max()


def test_image_helper_encodes_resizes_and_captures(pipe):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 80, 3), dtype=np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    helper = ImageAttention(pipe, timestep=300)
    assert helper.image_size == 64 and helper.grid == 16  # the tiny SD's native size and latent grid
    a = helper(images, seeds=[5, 6])
    assert a.shape == (2, 256, 256)
    assert_row_stochastic(a)
    torch.testing.assert_close(helper(images[:1], seeds=[5])[0], a[0], atol=1e-6, rtol=1e-5)  # batch-independent
    coarse = ImageAttention(pipe, timestep=300, image_size=32, grid=4)(images, seeds=[5, 6])
    assert coarse.shape == (2, 16, 16)


def test_vae_factor_from_a_config_dict_and_from_the_pipeline(pipe):
    assert vae_factor(pipe) == vae_factor_from_config(dict(pipe.vae.config)) == 4  # tiny SD: blocks 32/64/64
    assert native_image_size(pipe) == 64
    assert vae_factor_from_config({"block_out_channels": [128, 256, 512, 512]}) == 8  # SD 2.1's vae/config.json
    with pytest.raises(KeyError):
        vae_factor_from_config({})


@pytest.mark.parametrize("src,dst", [((8, 8), 16), ((16, 16), 8), ((4, 8), 6), ((16, 16), 20)])
def test_resampling_matches_dense_interpolation(src, dst):
    """resample_attention == K A K^T (rows renormalised), K the 2-D interpolation as one dense matrix
    built from torch's own interpolate (bilinear when growing, area when shrinking, per axis)."""
    h, w = src
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, h * w, h * w, generator=g)
    a /= a.sum(-1, keepdim=True)

    def axis(n):  # (dst, n): torch's 1-D interpolation of each unit vector
        eye = torch.eye(n).unsqueeze(0)
        mode = dict(mode="area") if dst < n else dict(mode="linear", align_corners=False)
        return torch.nn.functional.interpolate(eye, size=dst, **mode)[0].T if n != dst else torch.eye(n)

    k = torch.kron(axis(h), axis(w))  # (dst^2, h*w), row-major grids
    keys = a[0] @ k.T
    keys /= keys.sum(-1, keepdim=True)
    want = k @ keys
    want /= want.sum(-1, keepdim=True)
    got = resample_attention(a, src, dst, chunk_bytes=1 << 12)[0]  # small chunks: the chunked path
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)
    if dst > max(h, w):  # growing both axes: the same as bilinear image interpolation
        img = torch.rand(3, h, w, generator=g)
        from pipeline.diffusion.capture import resize_grids

        ref = torch.nn.functional.interpolate(img[None], size=(dst, dst), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(resize_grids(img, (dst, dst)), ref, atol=1e-6, rtol=1e-5)

"""Capture Stable Diffusion self-attention and aggregate it, layer by layer, at one token grid.

One UNet forward per image. Every self-attention layer (`attn1`) gets an
:class:`AggregatingSelfAttnProcessor` (diffusers' attention-processor interface) for the duration
of the forward: it computes the attention itself (q k^T, softmax per head, in the layer's dtype),
returns the same attention output as diffusers' processors, and adds the head-mean probability map
into a running aggregate at the target grid G (both axes resampled to G x G, rows renormalised,
weighted by the layer's token-grid side as in DiffSeg). Large layers are processed in blocks of
query rows, so no layer's full (n^2 x n^2) map exists in fp32, and nothing of a layer is kept once
it is added. The result is a (B, G^2, G^2) float32 row-stochastic matrix: row i is where token i of
the G x G grid attends.

`capture_self_attention` works on latents; :class:`ImageAttention` is the image-level helper that
encodes images with the VAE, adds per-image seeded noise at the timestep and encodes the prompt
once (the steps themselves: pipeline.diffusion.sd_input).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.diffusion.sd_input import (
    add_noise,
    encode_images,
    encode_prompt,
    native_image_size,
    sd_alphas_cumprod,
    seeded_noise,
    vae_factor,
)
from pipeline.diffusion.selected import tapped_processors


# ---------------------------------------------------------------------------------- resampling
def interp_matrix(n_in: int, n_out: int, *, device=None) -> torch.Tensor:
    """(n_out, n_in) float32 1-D resampling matrix: area (box average) when shrinking, linear
    (align_corners=False) when growing, identity when equal. Rows are convex weights."""
    if n_in == n_out:
        return torch.eye(n_in, device=device)
    eye = torch.eye(n_in, device=device).unsqueeze(0)  # (1, n_in signals, n_in samples)
    mode = dict(mode="area") if n_out < n_in else dict(mode="linear", align_corners=False)
    return F.interpolate(eye, size=n_out, **mode)[0].T.contiguous()


def resize_grids(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample maps (M, h, w) to (M, H, W), separably: Ry x Rx^T with `interp_matrix` per axis.

    Each output value is a convex combination of input values, so resampled rows of a
    row-stochastic matrix stay distributions up to a constant factor (callers renormalise).
    """
    h, w = x.shape[-2:]
    H, W = size
    if (h, w) == (H, W):
        return x
    ry = interp_matrix(h, H, device=x.device).to(x.dtype)
    rx = interp_matrix(w, W, device=x.device).to(x.dtype)
    return torch.matmul(torch.matmul(ry, x), rx.T)


def _normalise_rows(x: torch.Tensor) -> torch.Tensor:
    return x.div_(x.sum(-1, keepdim=True).clamp_min_(1e-12))


def resample_attention(
    attention: torch.Tensor, grid_hw: tuple[int, int], size: int, *, chunk_bytes: int = 64 << 20
) -> torch.Tensor:
    """Bring a row-stochastic map (B, n, n) over an (h, w) token grid to (B, size^2, size^2).

    Keys (columns) are resampled as images and renormalised, queries (rows) by the same
    separable matrices; rows are renormalised at the end.
    """
    B, n, _ = attention.shape
    h, w = grid_hw
    G2 = size * size
    cols = torch.empty(B, n, G2, dtype=torch.float32, device=attention.device)
    rows_per = max(1, chunk_bytes // (4 * max(G2, n)))
    for r0 in range(0, n, rows_per):
        blk = attention[:, r0:r0 + rows_per].float().reshape(-1, h, w)  # (B*r, h, w): each row as a key map
        cols[:, r0:r0 + rows_per] = _normalise_rows(resize_grids(blk, (size, size)).reshape(B, -1, G2))
    return _normalise_rows(resample_rows(cols, grid_hw, size, chunk_bytes=chunk_bytes))


def resample_rows(
    cols: torch.Tensor, grid_hw: tuple[int, int], size: int, *, chunk_bytes: int = 64 << 20,
    add_to: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, n, C) with rows on an (h, w) grid -> (B, size^2, C): rows resampled (not renormalised).

    Two matrix products per column chunk (Ry along the grid's rows, then Rx along its columns),
    no transposed copies; at most about `chunk_bytes` of temporaries. With `add_to` (B, size^2, C)
    the result is added into it (and it is returned) instead of allocating the output.
    """
    B, n, C = cols.shape
    h, w = grid_hw
    if (h, w) == (size, size):
        return cols if add_to is None else add_to.add_(cols)
    ry = interp_matrix(h, size, device=cols.device)
    rx = interp_matrix(w, size, device=cols.device)
    out = torch.zeros(B, size * size, C, dtype=cols.dtype, device=cols.device) if add_to is None else add_to
    step = max(1, chunk_bytes // (4 * B * size * max(w, size)))
    for c0 in range(0, C, step):
        part = cols[:, :, c0:c0 + step].reshape(B, h, w * min(step, C - c0))  # (B, h, w*c)
        part = torch.matmul(ry, part).view(B, size, w, -1)  # (B, G, w, c): grid rows resampled
        out[:, :, c0:c0 + step] += torch.matmul(rx, part).view(B, size * size, -1)  # (B, G, G, c) -> (B, G^2, c)
    return out


# ---------------------------------------------------------------------------------- aggregation
class AttentionAggregator:
    """Running resolution-weighted sum of head-mean self-attention maps at a G x G token grid.

    Layers report query-row blocks of their (n x n) head-mean map through :meth:`layer`. Keys are
    resampled to G x G per block and rows renormalised; the rows are then added, weighted, into
    one buffer per token grid (n x G^2 fp32; the target grid's buffer is the (G^2 x G^2) total
    itself). The query axis of the other grids is resampled once per grid in :meth:`result`
    (linear, so the same as per layer), not once per layer.
    """

    def __init__(
        self,
        grid: int,
        latent_hw: tuple[int, int],
        *,
        block_bytes: int = 8 << 20,
        layer_maps: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.grid = int(grid)
        self.latent_hw = (int(latent_hw[0]), int(latent_hw[1]))
        self.block_bytes = int(block_bytes)
        self.layer_maps = layer_maps
        self.buffers: dict[tuple[int, int], torch.Tensor] = {}  # token grid -> (B, n, G^2) float32 weighted sum
        self.weight = 0.0
        self.layers: list[tuple[str, tuple[int, int]]] = []

    def token_grid(self, n_tokens: int) -> tuple[int, int]:
        """The (h, w) token grid of a layer with `n_tokens` tokens (a power-of-two downsampling of the latent)."""
        H, W = self.latent_hw
        factor = math.sqrt(H * W / n_tokens)
        h, w = round(H / factor), round(W / factor)
        if h * w != n_tokens:
            raise ValueError(f"cannot place {n_tokens} attention tokens on a grid of the {H}x{W} latent")
        return h, w

    @contextlib.contextmanager
    def layer(self, name: str, batch: int, n_tokens: int, device: torch.device) -> Iterator["_LayerSink"]:
        hw = self.token_grid(n_tokens)
        if hw not in self.buffers:
            self.buffers[hw] = torch.zeros(batch, n_tokens, self.grid * self.grid, dtype=torch.float32, device=device)
        sink = _LayerSink(self, name, hw, batch, n_tokens, device)
        yield sink
        self.weight += sink.weight
        self.layers.append((name, hw))
        if self.layer_maps is not None:
            self.layer_maps[name] = sink.full

    def result(self) -> torch.Tensor:
        """(B, G^2, G^2) float32, rows summing to 1; raises when no layer reported."""
        if not self.layers:
            raise RuntimeError("no self-attention layer ran during the capture (is this a diffusers UNet?)")
        G = self.grid
        total = self.buffers.pop((G, G), None)
        for hw in list(self.buffers):
            total = resample_rows(self.buffers.pop(hw), hw, G, chunk_bytes=self.block_bytes, add_to=total)
        return _normalise_rows(total)


class _LayerSink:
    """Receives one layer's head-mean rows, block by block, and adds them into its grid's buffer."""

    def __init__(self, agg: AttentionAggregator, name: str, hw: tuple[int, int], batch: int, n: int, device) -> None:
        self.agg, self.name, self.hw, self.n = agg, name, hw, n
        self.weight = float(math.sqrt(n))  # DiffSeg: weight proportional to the token-grid side
        self.buffer = agg.buffers[hw]
        self.full = None if agg.layer_maps is None else torch.empty(batch, n, n, dtype=torch.float32, device=device)

    def add_probs(self, r0: int, probs: torch.Tensor) -> None:
        """probs: (B, heads, r, n) probabilities (any dtype) of queries r0..r0+r; their head mean is added.

        The head mean is accumulated slice by slice into fp32 (no upcast copy of the block): straight
        into the buffer for a layer at the target grid, else into an (B, r, n) row block whose keys
        are then resampled.
        """
        heads, r1 = probs.shape[1], r0 + probs.shape[2]
        G = self.agg.grid
        if self.hw == (G, G) and self.full is None:
            target = self.buffer[:, r0:r1]
            for i in range(heads):
                target.add_(probs[:, i], alpha=self.weight / heads)
            return
        rows = probs[:, 0].to(torch.float32, copy=True)  # (B, r, n) fp32 head sum (never an alias of probs)
        for i in range(1, heads):
            rows.add_(probs[:, i])
        rows.div_(heads)
        if self.full is not None:
            self.full[:, r0:r1] = rows
        if self.hw == (G, G):
            self.buffer[:, r0:r1].add_(rows, alpha=self.weight)
            return
        B = rows.shape[0]
        keys = resize_grids(rows.reshape(-1, *self.hw), (G, G)).reshape(B, -1, G * G)  # (B, r, G^2)
        self.buffer[:, r0:r1].add_(_normalise_rows(keys), alpha=self.weight)


# ---------------------------------------------------------------------------------- processor
class AggregatingSelfAttnProcessor:
    """A diffusers attention processor for self-attention that also feeds an AttentionAggregator.

    Computes softmax(q k^T * scale) per head in the layer's dtype (fp32 softmax when the layer
    asks for upcasting), in blocks of query rows sized to `aggregator.block_bytes`, returns the
    attention output exactly as diffusers' AttnProcessor does, and hands the head mean of each
    block to the aggregator.
    """

    def __init__(self, aggregator: AttentionAggregator, name: str) -> None:
        self.aggregator = aggregator
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is not None:
            raise ValueError(f"{self.name}: AggregatingSelfAttnProcessor is for self-attention layers only")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        B, n, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, n, B)
            attention_mask = attention_mask.view(B, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        heads = attn.heads
        head_dim = query.shape[-1] // heads
        # (B, n, heads*d) -> (B, heads, n, d), contiguous: the products below run twice as fast
        query = query.view(B, -1, heads, head_dim).transpose(1, 2).contiguous()
        key = key.view(B, -1, heads, head_dim).transpose(1, 2).contiguous()
        value = value.view(B, -1, heads, head_dim).transpose(1, 2).contiguous()
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        if attn.upcast_attention:
            query, key = query.float(), key.float()
        query = query * attn.scale  # scaling q once is cheaper than scaling every score block
        key_t = key.transpose(-1, -2)  # (B, heads, d, n)

        out = torch.empty(B, heads, n, head_dim, dtype=value.dtype, device=value.device)
        score_bytes = B * heads * n * (4 if (attn.upcast_softmax or attn.upcast_attention) else query.element_size())
        rows = max(1, self.aggregator.block_bytes // (2 * score_bytes))  # scores + probabilities per block
        with self.aggregator.layer(self.name, B, n, hidden_states.device) as sink:
            for r0 in range(0, n, rows):
                scores = torch.matmul(query[:, :, r0:r0 + rows], key_t)  # (B, heads, r, n)
                if attention_mask is not None:  # (B, heads, 1 or n, n)
                    scores = scores + (attention_mask[:, :, r0:r0 + rows] if attention_mask.shape[2] > 1 else attention_mask)
                if attn.upcast_softmax:
                    scores = scores.float()
                probs = scores.softmax(dim=-1)
                del scores
                sink.add_probs(r0, probs)
                out[:, :, r0:r0 + rows] = torch.matmul(probs.to(value.dtype), value)
                del probs
        hidden_states = out.transpose(1, 2).reshape(B, n, heads * head_dim)  # (B, n, heads*d)
        del out
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def self_attention_processor_names(unet: torch.nn.Module) -> list[str]:
    """Keys of `unet.attn_processors` that belong to self-attention (`attn1`) layers."""
    return [name for name in unet.attn_processors if name.endswith("attn1.processor")]


@contextlib.contextmanager
def aggregating_processors(unet: torch.nn.Module, aggregator: AttentionAggregator) -> Iterator[None]:
    """Install AggregatingSelfAttnProcessor on every `attn1` of `unet`; restore the originals after."""
    original = dict(unet.attn_processors)
    names = self_attention_processor_names(unet)
    if not names:
        raise ValueError("the UNet has no self-attention (attn1) layers to capture")
    unet.set_attn_processor({
        name: AggregatingSelfAttnProcessor(aggregator, name.removesuffix(".processor")) if name in names else proc
        for name, proc in original.items()
    })
    try:
        yield
    finally:
        unet.set_attn_processor(original)


# ---------------------------------------------------------------------------------- capture
@torch.no_grad()
def capture_self_attention(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    timestep: int,
    *,
    grid: int,
    noise_seed: int | Sequence[int] | None,
    alphas_cumprod: torch.Tensor | None = None,
    block_bytes: int = 8 << 20,
    layer_maps: dict[str, torch.Tensor] | None = None,
    taps: Sequence = (),
    sink: dict | None = None,
) -> torch.Tensor:
    """Aggregated self-attention of one UNet forward, (B, grid^2, grid^2) float32, rows sum to 1.

    Args:
        unet: a diffusers UNet2DConditionModel (any dtype/device; inputs are cast to them).
        latents: (B, 4, h, w) clean VAE latents (already multiplied by the VAE scaling factor).
        encoder_hidden_states: (B or 1, L, D) text embeddings (the empty prompt: see `encode_prompt`).
        timestep: the diffusion timestep of the forward (0..999).
        grid: the token grid G every layer is brought to; row/column i is token (i // G, i % G).
        noise_seed: noise at `timestep` is added to the latents from this seed (one per image, or
            one int for the batch: image b then uses noise_seed + b); None adds no noise.
        alphas_cumprod: the noise schedule (default: SD's scaled-linear schedule).
        block_bytes: memory budget of one block of attention scores/probabilities.
        layer_maps: when a dict is given, every layer's own (B, n, n) float32 head-mean map is put
            in it under the layer's module path (tests and inspection; costs memory).
        taps, sink: selected.LayerTap's whose q and k are also recorded into `sink` (the RAR layer
            of the `acr` recipe).
    """
    param = next(unet.parameters())
    B = latents.shape[0]
    latents = latents.to(param.device)
    if noise_seed is not None:
        seeds = [int(noise_seed) + b for b in range(B)] if isinstance(noise_seed, (int, np.integer)) else list(noise_seed)
        if len(seeds) != B:
            raise ValueError(f"noise_seed gives {len(seeds)} seeds for a batch of {B}")
        noise = seeded_noise(latents.shape[1:], seeds)
        latents = add_noise(latents, timestep, noise, sd_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod)
    text = encoder_hidden_states.to(param.device, param.dtype)
    if text.shape[0] == 1 and B > 1:
        text = text.expand(B, *text.shape[1:])
    aggregator = AttentionAggregator(grid, tuple(latents.shape[-2:]), block_bytes=block_bytes, layer_maps=layer_maps)
    t = torch.full((B,), int(timestep), dtype=torch.long, device=param.device)
    with aggregating_processors(unet, aggregator), tapped_processors(unet, taps, {} if sink is None else sink):
        unet(latents.to(param.dtype), t, encoder_hidden_states=text, return_dict=False)
    return aggregator.result()


# ---------------------------------------------------------------------------------- images
class ImageAttention:
    """Image-level capture: VAE latent, seeded noise at the timestep, prompt encoded once, one forward.

    `__call__(images, seeds)` returns the aggregated (B, G^2, G^2) float32 attention at `grid`
    (null: the finest self-attention grid, i.e. the latent size).
    """

    def __init__(
        self,
        pipe,
        *,
        timestep: int,
        prompt: str = "",
        image_size: int | None = None,
        grid: int | None = None,
        add_noise: bool = True,
        block_bytes: int = 8 << 20,
        unet: torch.nn.Module | None = None,
    ) -> None:
        self.pipe = pipe
        self.unet = pipe.unet if unet is None else unet
        self.timestep = int(timestep)
        self.image_size = native_image_size(pipe) if image_size is None else int(image_size)
        factor = vae_factor(pipe)
        if self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the VAE factor {factor}")
        self.latent_size = self.image_size // factor
        self.grid = self.latent_size if grid is None else int(grid)
        self.add_noise = add_noise
        self.block_bytes = block_bytes
        self.text = encode_prompt(pipe, prompt)
        self.alphas_cumprod = getattr(pipe.scheduler, "alphas_cumprod", None)
        if self.alphas_cumprod is None:
            self.alphas_cumprod = sd_alphas_cumprod()

    def __call__(self, images: Sequence[np.ndarray], seeds: Sequence[int]) -> torch.Tensor:
        latents = encode_images(self.pipe.vae, images, self.image_size)
        return capture_self_attention(
            self.unet, latents, self.text, self.timestep, grid=self.grid,
            noise_seed=list(seeds) if self.add_noise else None,
            alphas_cumprod=self.alphas_cumprod, block_bytes=self.block_bytes,
        )


def layer_grids(unet: torch.nn.Module, latent_hw: tuple[int, int]) -> Mapping[str, tuple[int, int]]:
    """{attn1 module path: (h, w) token grid} for latents of size latent_hw (runs one tiny forward)."""
    param = next(unet.parameters())
    latents = torch.zeros(1, unet.config.in_channels, *latent_hw, dtype=param.dtype, device=param.device)
    text = torch.zeros(1, 1, unet.config.cross_attention_dim, dtype=param.dtype, device=param.device)
    agg = AttentionAggregator(2, latent_hw)
    with torch.no_grad(), aggregating_processors(unet, agg):
        unet(latents, torch.zeros(1, dtype=torch.long, device=param.device), encoder_hidden_states=text, return_dict=False)
    return dict(agg.layers)

"""CLIP surgery: dense, localisable token features from a frozen open_clip ViT (CLIP Surgery/CLIP-ES/ExCEL).

A CLIP ViT's last blocks make every patch token look like the class token, so patch-text similarity
does not localise. The surgery path fixes that without training: in the last ``surgery_blocks``
blocks a second residual stream is run beside the original one. Each surgery block reads the
*original* stream's input (``ln_1`` of it, through the block's own ``in_proj`` weights), replaces the
query-key attention by the mean of three self-similarity softmaxes,
``(softmax(q q^T s) + softmax(k k^T s) + softmax(v v^T s)) / 3`` with ``s = head_dim ** -0.5``
(ExCEL; ``self_similarity="v"`` keeps CLIP Surgery's v-v attention alone; ``similarity_weights``
gives any weighted sum, e.g. DiCLIP's ``softmax(q q^T s) + 2 softmax(k k^T s)`` as (1, 2, 0)),
applies it to the values, projects with ``out_proj`` and adds the result to the surgery stream; the
surgery stream has no MLP. The surgery stream starts as the input of the first surgery block. Every
surgery-stream token is then projected into the joint space with ``ln_post`` and ``proj``; the image
embedding (the class token) comes from the original stream, exactly as the model computes it.

The math is a functional re-implementation of open_clip's ``ResidualAttentionBlock`` that reads each
module's own weights (``attn.in_proj_weight``, ``attn.out_proj``, ``ln_1``, ``mlp``, ``ls_*``), so it
runs any open_clip ``VisionTransformer`` built from those blocks (the tiny CLIP, ViT-B/16, ...)
without modifying open_clip. Inputs of another size than the model's are allowed: the learned
position embeddings are resized bilinearly to the new patch grid (ViT-B/16 at 320 px -> 20x20).

``head_reduce`` chooses how heads share the surgery attention: ``"none"`` (each head its own),
``"mean"`` (one head-averaged map applied to every head's values) or ``"sum"`` (ExCEL's code: the
head-summed map, rows summing to the number of heads, applied to every head's values).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.grids import square_side

HEAD_REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")


@dataclass(frozen=True)
class SurgeryOutput:
    """What :func:`surgery_forward` returns (B images, L = 1 + N tokens, N = gh * gw patches).

    Attributes:
        tokens: (B, L, E) surgery-stream tokens through ``ln_post`` and ``proj``; token 0 is that
            stream's class token, tokens 1.. are patches in row-major grid order. With zero surgery
            blocks these are the original tokens.
        image_embedding: (B, E) the original stream's class token through ``ln_post`` and ``proj``:
            the model's own (unnormalised) image embedding.
        grid: (gh, gw) patch grid.
        attention: per block (B, L, L) attention of the original stream, averaged over heads; empty
            unless ``return_attention``.
        surgery_attention: per surgery block (B, L, L) surgery attention after head reduction (for
            ``"none"``: averaged over heads, for display); empty unless ``return_attention``.
    """

    tokens: torch.Tensor
    image_embedding: torch.Tensor
    grid: tuple[int, int]
    attention: tuple[torch.Tensor, ...] = ()
    surgery_attention: tuple[torch.Tensor, ...] = ()

    @property
    def patch_tokens(self) -> torch.Tensor:
        """(B, N, E) surgery-stream patch tokens (class token dropped)."""
        return self.tokens[:, 1:]


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a learned ViT position embedding (1 + G*G, W) to a (gh, gw) patch grid.

    The class position is kept; the G x G patch positions are resized bilinearly (CLIP-ES/ExCEL
    practice). Returns (1 + gh * gw, W); the input itself when the grid already matches.
    """
    n_patches = pos_embed.shape[0] - 1
    side = square_side(n_patches, "position-embedding patches")
    if (side, side) == tuple(grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    # (G*G, W) -> (1, W, G, G) for interpolation, then back to (gh*gw, W)
    patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=tuple(grid), mode="bilinear", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=0)


def embed_images(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch-embed normalised images (B, 3, H, W) as ``VisionTransformer._embeds`` does, at any size.

    Returns the transformer input (B, 1 + gh*gw, W) and the grid (gh, gw). Patch dropout is not
    applied (the surgery path is for inference).
    """
    _check_visual(visual)
    x = visual.conv1(images.to(visual.conv1.weight.dtype))  # (B, W, gh, gw)
    grid = (x.shape[2], x.shape[3])
    x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, W)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)  # (B, 1 + gh*gw, W)
    x = x + resize_pos_embed(visual.positional_embedding, grid).to(x.dtype)
    return visual.ln_pre(x), grid


def surgery_forward(
    visual: nn.Module,
    images: torch.Tensor,
    *,
    surgery_blocks: int,
    head_reduce: str = "none",
    self_similarity: str = "qkv",
    attn_bias: torch.Tensor | None = None,
    similarity_weights: tuple[float, float, float] | None = None,
    return_attention: bool = False,
) -> SurgeryOutput:
    """Run ``visual`` on normalised images (B, 3, H, W) with a surgery path in its last blocks.

    Args:
        visual: an open_clip ``VisionTransformer`` (class-token pooling, no attentional pooler).
        images: (B, 3, H, W), normalised as the model expects; H, W multiples of the patch size.
        surgery_blocks: how many of the last blocks carry the surgery path (0 .. number of blocks).
        head_reduce: ``"none"``, ``"mean"`` or ``"sum"`` (see the module docstring).
        self_similarity: which self-similarity softmaxes are averaged: ``"qkv"`` (ExCEL),
            ``"v"`` (CLIP Surgery's v-v attention), or any non-empty subset of the letters q, k, v.
        attn_bias: optional (B, N, N) added after the softmaxes to the patch-patch block of every
            head's surgery attention, before head reduction (DiCLIP's VCE term R: with
            ``head_reduce="sum"`` it enters H times).
        similarity_weights: (w_q, w_k, w_v) weights of the q-q, k-k and v-v softmaxes, summed
            (replaces ``self_similarity``'s equal-weight mean; zero weights are skipped).
        return_attention: also return per-block attention maps.

    Returns:
        :class:`SurgeryOutput`.
    """
    blocks = visual.transformer.resblocks
    if not 0 <= surgery_blocks <= len(blocks):
        raise ValueError(f"surgery_blocks must be in [0, {len(blocks)}], got {surgery_blocks}")
    if head_reduce not in HEAD_REDUCTIONS:
        raise ValueError(f"head_reduce must be one of {HEAD_REDUCTIONS}, got {head_reduce!r}")
    if not self_similarity or set(self_similarity) - set("qkv") or len(set(self_similarity)) != len(self_similarity):
        raise ValueError(f"self_similarity must be a non-empty subset of 'qkv', got {self_similarity!r}")
    x, grid = embed_images(visual, images)
    n_patches = grid[0] * grid[1]
    if attn_bias is not None and attn_bias.shape != (x.shape[0], n_patches, n_patches):
        raise ValueError(f"attn_bias must have shape {(x.shape[0], n_patches, n_patches)}, got {tuple(attn_bias.shape)}")
    first_surgery = len(blocks) - surgery_blocks
    xs = None
    attention, surgery_attention = [], []
    for index, block in enumerate(blocks):
        _check_block(block)
        h = block.ln_1(x)
        q, k, v = _qkv(block, h)  # each (B, H, L, d)
        if index >= first_surgery:
            xs = x if xs is None else xs
            parts = {"q": q, "k": k, "v": v}
            if similarity_weights is None:
                weighted = [(parts[c], 1.0 / len(self_similarity)) for c in self_similarity]
            else:
                weighted = [(parts[c], float(w)) for c, w in zip("qkv", similarity_weights) if w]
            attn_s = _surgery_attention(weighted, head_reduce, attn_bias)  # (B, H or 1, L, L)
            xs = xs + block.ls_1(_merge_heads(block, attn_s @ v))
            if return_attention:
                surgery_attention.append(attn_s.mean(1))
        attn = torch.softmax((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5, dim=-1)  # (B, H, L, L)
        x = x + block.ls_1(_merge_heads(block, attn @ v))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        if return_attention:
            attention.append(attn.mean(1))
    stream = x if xs is None else xs
    tokens = visual.ln_post(stream) @ visual.proj  # (B, L, E)
    image_embedding = visual.ln_post(x[:, 0]) @ visual.proj  # (B, E)
    return SurgeryOutput(tokens, image_embedding, grid, tuple(attention), tuple(surgery_attention))


def _surgery_attention(weighted: list[tuple[torch.Tensor, float]], head_reduce: str,
                       bias: torch.Tensor | None) -> torch.Tensor:
    """Weighted sum of the self-similarity softmaxes of features (each (B, H, L, d)), plus `bias` (B, N, N)
    on every head's patch block, reduced over heads."""
    scale = weighted[0][0].shape[-1] ** -0.5
    attn = sum(w * torch.softmax((t @ t.transpose(-2, -1)) * scale, dim=-1) for t, w in weighted)
    if bias is not None:
        attn = attn.clone()
        attn[:, :, 1:, 1:] += bias[:, None].to(attn.dtype)
    if head_reduce == "mean":
        return attn.mean(1, keepdim=True)
    if head_reduce == "sum":
        return attn.sum(1, keepdim=True)
    return attn


def _qkv(block: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values (each (B, H, L, d)) of ``block.attn`` for inputs h (B, L, W)."""
    mha = block.attn
    batch, length, width = h.shape
    qkv = F.linear(h, mha.in_proj_weight, mha.in_proj_bias)  # (B, L, 3W)
    # (B, L, 3, H, d) -> (3, B, H, L, d)
    qkv = qkv.reshape(batch, length, 3, mha.num_heads, width // mha.num_heads).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def _merge_heads(block: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """(B, H, L, d) attention outputs -> (B, L, W) through the block's ``out_proj``."""
    batch, heads, length, dim = out.shape
    out = out.transpose(1, 2).reshape(batch, length, heads * dim)
    return block.attn.out_proj(out)


def _check_visual(visual: nn.Module) -> None:
    missing = [a for a in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer",
                           "ln_post", "proj") if not hasattr(visual, a)]
    if missing:
        raise TypeError(f"expected an open_clip VisionTransformer, got {type(visual).__name__} "
                        f"(missing {', '.join(missing)})")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok" \
            or getattr(visual, "final_ln_after_pool", False) or visual.proj is None:
        raise NotImplementedError("surgery needs class-token pooling with ln_post + proj "
                                  "(no attentional pooler, pool_type 'tok', final_ln_after_pool off)")


def _check_block(block: nn.Module) -> None:
    mha = getattr(block, "attn", None)
    if not isinstance(mha, nn.MultiheadAttention) or mha.in_proj_weight is None or hasattr(block, "ln_1_kv"):
        raise NotImplementedError(
            f"surgery supports open_clip ResidualAttentionBlock (nn.MultiheadAttention with a packed "
            f"in_proj), got {type(block).__name__} with {type(mha).__name__}")

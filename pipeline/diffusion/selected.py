"""Capture the queries and keys of selected heads of named self-attention layers (DiCLIP's Stage A).

DiCLIP reads two layers of one UNet forward: the correlation layer (q and k of two heads) and the
RAR layer (the softmax probabilities of two heads). :class:`TapProcessor` is a diffusers attention
processor that wraps the layer's own processor: it computes q and k of the selected heads only
(the rows of to_q/to_k that belong to them) and records them, then lets the wrapped processor
compute the layer's output unchanged. Only the named layers are wrapped; nothing else of the
forward is kept. With `stop_early`, the forward stops once every tapped layer has run (the rest of
the UNet is not needed). What is derived from q and k lives in `correlation` and `transition`.

Layer paths are diffusers module paths (`up_blocks.1.attentions.2.transformer_blocks.0.attn1`);
DiCLIP's spelling with brackets (`up_blocks[1].attentions[2]...`) is accepted too.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F


class UnknownLayerError(ValueError):
    """A named attention layer or head does not exist in the UNet."""


@dataclass(frozen=True)
class LayerTap:
    """Which layer to read and which of its heads (0-based)."""

    path: str
    heads: tuple[int, ...]


@dataclass(frozen=True)
class Captured:
    """q and k of the selected heads of one layer: (B, heads, n, d) float32, on a (h, w) token grid."""

    query: torch.Tensor
    key: torch.Tensor
    scale: float
    tokens: int


def normalise_path(path: str) -> str:
    """`up_blocks[1].attentions[2]` -> `up_blocks.1.attentions.2`; surrounding spaces dropped."""
    return re.sub(r"\[(\d+)\]", r".\1", path.strip())


def self_attention_heads(unet: torch.nn.Module) -> dict[str, int]:
    """{module path: head count} of every self-attention (`attn1`) layer, in registration order."""
    return {name: int(module.heads) for name, module in unet.named_modules() if name.endswith(".attn1")}


def check_taps(heads_by_layer: Mapping[str, int], taps: Sequence[LayerTap], *, what: str = "layer") -> list[LayerTap]:
    """Taps with normalised paths; UnknownLayerError naming the bad path (and the valid ones) or head."""
    out = []
    for tap in taps:
        path = normalise_path(tap.path)
        if path not in heads_by_layer:
            valid = "\n  ".join(f"{p} ({h} heads)" for p, h in heads_by_layer.items())
            raise UnknownLayerError(f"{what} {tap.path!r} is not a self-attention layer of this UNet; valid layers:\n  {valid}")
        bad = [h for h in tap.heads if not 0 <= h < heads_by_layer[path]]
        if bad or not tap.heads:
            raise UnknownLayerError(f"{what} {path!r} has heads 0..{heads_by_layer[path] - 1}; got heads {list(tap.heads)}")
        out.append(LayerTap(path, tuple(int(h) for h in tap.heads)))
    return out


class _StopForward(Exception):
    """Raised inside the UNet once every tapped layer has run (caught by `capture_layers`)."""


def _head_projection(linear: torch.nn.Linear, heads: Sequence[int], head_dim: int, x: torch.Tensor) -> torch.Tensor:
    rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads]).to(linear.weight.device)
    bias = None if linear.bias is None else linear.bias[rows]
    out = F.linear(x, linear.weight[rows], bias)  # (B, n, heads*d)
    return out.view(x.shape[0], x.shape[1], len(heads), head_dim).transpose(1, 2)  # (B, heads, n, d)


class TapProcessor:
    """Records q and k of the tap's heads into `sink[path]`, then runs the wrapped processor."""

    def __init__(self, inner, tap: LayerTap, sink: dict[str, Captured], stop_when: int | None) -> None:
        self.inner, self.tap, self.sink, self.stop_when = inner, tap, sink, stop_when

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is not None:
            raise ValueError(f"{self.tap.path}: a tap reads self-attention layers only")
        x = hidden_states
        if attn.spatial_norm is not None:
            x = attn.spatial_norm(x, temb)
        if x.ndim == 4:
            b, c, h, w = x.shape
            x = x.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        head_dim = attn.to_q.out_features // attn.heads
        q = _head_projection(attn.to_q, self.tap.heads, head_dim, x)
        k = _head_projection(attn.to_k, self.tap.heads, head_dim, x)
        if getattr(attn, "norm_q", None) is not None:
            q = attn.norm_q(q)
        if getattr(attn, "norm_k", None) is not None:
            k = attn.norm_k(k)
        self.sink[self.tap.path] = Captured(q.float(), k.float(), float(attn.scale), x.shape[1])
        if self.stop_when is not None and len(self.sink) >= self.stop_when:
            raise _StopForward
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


@contextlib.contextmanager
def tapped_processors(unet: torch.nn.Module, taps: Sequence[LayerTap], sink: dict[str, Captured], *,
                      stop_early: bool = False) -> Iterator[None]:
    """Wrap the processors of the tapped layers (whatever is installed now); restore them after."""
    original = dict(unet.attn_processors)
    wanted = {f"{t.path}.processor": t for t in taps}
    missing = [k.removesuffix(".processor") for k in wanted if k not in original]
    if missing:
        raise UnknownLayerError(f"no attention processor at {missing} (check the layer paths)")
    stop = len({t.path for t in taps}) if stop_early else None
    unet.set_attn_processor({
        name: TapProcessor(proc, wanted[name], sink, stop) if name in wanted else proc for name, proc in original.items()
    })
    try:
        yield
    finally:
        unet.set_attn_processor(original)


@torch.no_grad()
def capture_layers(unet: torch.nn.Module, latents: torch.Tensor, encoder_hidden_states: torch.Tensor, timestep: int,
                   taps: Sequence[LayerTap], *, stop_early: bool = True) -> dict[str, Captured]:
    """One UNet forward on (already noised) `latents`; {layer path: Captured} of every tap."""
    param = next(unet.parameters())
    B = latents.shape[0]
    text = encoder_hidden_states.to(param.device, param.dtype)
    if text.shape[0] == 1 and B > 1:
        text = text.expand(B, *text.shape[1:])
    sink: dict[str, Captured] = {}
    t = torch.full((B,), int(timestep), dtype=torch.long, device=param.device)
    with tapped_processors(unet, taps, sink, stop_early=stop_early):
        try:
            unet(latents.to(param.device, param.dtype), t, encoder_hidden_states=text, return_dict=False)
        except _StopForward:
            pass
    missing = [t.path for t in taps if t.path not in sink]
    if missing:
        raise RuntimeError(f"the tapped layers {missing} did not run during the forward")
    return sink

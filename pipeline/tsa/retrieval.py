"""The static cache CAM (DiCLIP's retrieval, method.md C3): patches score against the cache's keys
with the same feature surgery as texts, and the scores are gathered per class through the values.

S = ReLU(feature surgery of the tokens against the keys) (L x K). Each key's weight inside its class
is a softmax over the class's own keys of its similarity to the class text (the background's text is
the mean of the background words): V' (K x C+1). M = S[patches] V' (N x C+1), min-max per class over
patches; the background suppresses the classes, M_c <- ReLU(M_c (1 - M_bg)); min-max again.

Two variants (`cams.cache_scores`), each checked against its own reference:
- `diclip` (DiCLIP's code, tests/test_diclip_parity.py): the tokens L2-normalised over the token axis
  as for the text CAM, keys and texts as they are (dot products; the keys are not unit vectors),
  class-token weights over the keys inside the feature surgery, min-max without epsilon.
- `cosine` (ours, the project's first reading of the paper): tokens, keys and texts L2-normalised over
  features (cosines), no class-token weights, min-max with 1e-7.
Pure torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.cam.config import CACHE_SCORES
from pipeline.cam.text_cam import feature_surgery, minmax_normalise, token_text_similarity, token_weights


@dataclass(frozen=True)
class CacheScores:
    """How a variant scores: the tokens' normalisation, cosines or raw dot products with the keys,
    class-token weights, the min-max epsilon."""

    token_norm: str
    cosine: bool
    cls_weighting: bool
    eps: float

    @classmethod
    def named(cls, name: str) -> "CacheScores":
        if name not in CACHE_SCORES:
            raise ValueError(f"cache_scores must be one of {', '.join(CACHE_SCORES)}, got {name!r}")
        if name == "diclip":
            return cls(token_norm="token", cosine=False, cls_weighting=True, eps=0.0)
        return cls(token_norm="feature", cosine=True, cls_weighting=False, eps=1e-7)


def value_texts(class_text: torch.Tensor, background_text: torch.Tensor | None) -> torch.Tensor:
    """(C + 1, E): the background's text (zeros when there is none) then the class texts, in value-column order."""
    bg = torch.zeros_like(class_text[:1]) if background_text is None else background_text.reshape(1, -1)
    return torch.cat([bg.float(), class_text.float()])


def key_weights(keys: torch.Tensor, key_class: torch.Tensor, class_text: torch.Tensor,
                background_text: torch.Tensor | None, *, cosine: bool = True) -> torch.Tensor:
    """(K, C + 1) V': per key, a softmax over its own class's keys of its similarity (cosine, or DiCLIP's
    dot product) to that class's text, in the key's value column (background keys in column 0; uniform
    when there is no background text)."""
    texts = value_texts(class_text, background_text)
    k = keys.float()
    if cosine:
        texts, k = F.normalize(texts, dim=-1), F.normalize(k, dim=-1)
    logits = k @ texts.T  # (K, C + 1)
    if background_text is None:
        logits[:, 0] = 0.0
    own = key_class.long()[:, None] + 1 == torch.arange(texts.shape[0])[None, :]  # the value's one-hot
    weights = logits.masked_fill(~own, float("-inf")).softmax(0)  # over keys, per column (DiCLIP's -inf mask)
    return torch.nan_to_num(weights, nan=0.0)  # a column without keys: no weight (DiCLIP has none such)


def key_scores(tokens: torch.Tensor, keys: torch.Tensor, scores: CacheScores, *, temperature: float = 2.0) -> torch.Tensor:
    """(B, L, E) tokens (class token first), keys (K, E) -> S (B, L, K): ReLU of the feature surgery."""
    sim = token_text_similarity(tokens, keys, token_norm=scores.token_norm, normalise_text=scores.cosine)
    w = token_weights(sim, temperature) if scores.cls_weighting else None
    return feature_surgery(sim, weights=w).clamp_min(0)


def class_maps(s: torch.Tensor, weights: torch.Tensor, eps: float) -> torch.Tensor:
    """S of the patches (B, N, K) and V' (K, C + 1) -> M (B, N, C + 1), min-max per column over patches."""
    return minmax_normalise(s @ weights.float(), dim=1, eps=eps)


def suppress_background(m: torch.Tensor, eps: float) -> torch.Tensor:
    """M (B, N, C + 1) -> (B, C, N): ReLU(M_c (1 - M_bg)), min-max per class over patches."""
    fg = (m[..., 1:] * (1 - m[..., :1])).clamp_min(0)
    return minmax_normalise(fg, dim=1, eps=eps).transpose(1, 2).contiguous()


def cache_cams(tokens: torch.Tensor, keys: torch.Tensor, weights: torch.Tensor, scores: CacheScores) -> torch.Tensor:
    """(B, 1 + N, E) surgery tokens (class token first, before normalisation), keys (K, E), V' (K, C + 1)
    -> (B, C, N) cache CAMs of the C classes in [0, 1]."""
    s = key_scores(tokens, keys, scores)[:, 1:]
    return suppress_background(class_maps(s, weights, scores.eps), scores.eps)


class StaticCache:
    """The cams stage's cache hook (pipeline.cam.pseudo_labels.CacheCams) over a loaded cache."""

    def __init__(self, keys: torch.Tensor, key_class: torch.Tensor, class_text: torch.Tensor,
                 background_text: torch.Tensor | None, *, scores: str = "diclip") -> None:
        self.scores = CacheScores.named(scores)
        self.keys = keys.float()
        self.weights = key_weights(keys, key_class, class_text, background_text, cosine=self.scores.cosine)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return cache_cams(tokens, self.keys, self.weights, self.scores)

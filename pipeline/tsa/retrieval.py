"""The static cache CAM (DiCLIP's retrieval, method.md C3): patches score against the cache's keys
with the same feature surgery as texts, and the scores are gathered per class through the values.

S = ReLU(feature surgery of the patch tokens against the keys) (N x K). Each key's weight inside its
class is a softmax over the class's own keys of cos(key, class text) (the background's text is the
mean of the background words). M = S V' (N x C+1), min-max per class over patches; the background
suppresses the classes, M_c <- ReLU(M_c (1 - M_bg)); min-max again. Pure torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.cam.text_cam import feature_surgery, minmax_normalise, token_text_similarity


def key_weights(keys: torch.Tensor, key_class: torch.Tensor, class_text: torch.Tensor,
                background_text: torch.Tensor | None) -> torch.Tensor:
    """(K, C + 1) V': per key, a softmax over its own class's keys of cos(key, that class's text), in the
    key's value column (background keys in column 0; uniform when there is no background text)."""
    C = class_text.shape[0]
    texts = F.normalize(class_text.float(), dim=-1)
    bg = F.normalize(background_text.float(), dim=-1) if background_text is not None else None
    k = F.normalize(keys.float(), dim=-1)
    weights = torch.zeros(len(keys), C + 1)
    for column in range(C + 1):  # over the C + 1 value columns, not over pixels or images
        own = key_class == column - 1
        if not own.any():
            continue
        t = bg if column == 0 else texts[column - 1]
        logits = k[own] @ t if t is not None else torch.zeros(int(own.sum()))
        weights[own, column] = torch.softmax(logits, dim=0)
    return weights


def cache_cams(tokens: torch.Tensor, keys: torch.Tensor, weights: torch.Tensor, *, token_norm: str = "feature",
               cls_weighting: bool = False, temperature: float = 2.0) -> torch.Tensor:
    """(B, 1 + N, E) surgery tokens (class token first), keys (K, E), V' (K, C + 1) -> (B, C, N) cache
    CAMs of the C classes in [0, 1]."""
    sim = token_text_similarity(tokens, keys, token_norm=token_norm)  # (B, L, K)
    w = None
    if cls_weighting:
        prob = torch.softmax(temperature * sim[:, 0], dim=-1)
        w = prob / prob.mean(-1, keepdim=True)
    s = feature_surgery(sim, weights=w)[:, 1:].clamp_min(0)  # (B, N, K)
    m = minmax_normalise(s @ weights.float(), dim=1, eps=1e-7)  # (B, N, C + 1)
    fg = (m[..., 1:] * (1 - m[..., :1])).clamp_min(0)
    return minmax_normalise(fg, dim=1, eps=1e-7).transpose(1, 2).contiguous()


class StaticCache:
    """The cams stage's cache hook (pipeline.cam.pseudo_labels.CacheCams) over a loaded cache."""

    def __init__(self, keys: torch.Tensor, key_class: torch.Tensor, class_text: torch.Tensor,
                 background_text: torch.Tensor | None, *, token_norm: str = "feature") -> None:
        self.keys = keys.float()
        self.weights = key_weights(keys, key_class, class_text, background_text)
        self.token_norm = token_norm

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return cache_cams(tokens, self.keys, self.weights, token_norm=self.token_norm)

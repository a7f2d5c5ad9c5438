"""Patch-text CAMs with feature surgery (CLIP-ES/ExCEL, no GradCAM), and labels from CAMs.

From joint-space tokens (:class:`pipeline.cam.surgery.SurgeryOutput`) and C text embeddings:

1. cosine similarity of every token with every text, ``s`` (B, L, C);
2. feature surgery: ``s'[:, :, c] = w_c s[:, :, c] - mean_c'(w_c' s[:, :, c'])`` removes what all texts
   share (CLIP Surgery's "redundant features"); ``w = softmax(T * cos(image, texts)) / mean`` over the
   texts (CLIP-ES's weighting, T = 2), or ``w = 1`` without class-token weighting;
3. min-max over patches per text (optionally over all tokens including the class token, as ExCEL);
4. bilinear upsampling of the patch grid to the image, and a background threshold for labels.

All functions are pure tensor functions; shapes are given in each docstring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TOKEN_NORMS: tuple[str, ...] = ("feature", "token")


def token_text_similarity(tokens: torch.Tensor, text: torch.Tensor, *, token_norm: str = "feature",
                          normalise_text: bool = True) -> torch.Tensor:
    """Similarity of tokens (B, L, E) with texts (C, E) -> (B, L, C).

    Texts are L2-normalised over features unless `normalise_text` is off (DiCLIP's cache keys enter
    as they are). Tokens are L2-normalised over features (``token_norm="feature"``, a cosine) or over
    the token axis (``"token"``, ExCEL's code).
    """
    if token_norm not in TOKEN_NORMS:
        raise ValueError(f"token_norm must be one of {TOKEN_NORMS}, got {token_norm!r}")
    tokens = F.normalize(tokens.float(), dim=-1 if token_norm == "feature" else 1)
    text = F.normalize(text.float(), dim=-1) if normalise_text else text.float()
    return tokens @ text.T


def token_weights(similarity: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """CLIP Surgery's and ExCEL's class-token weights (B, C) from a similarity (B, L, C) whose token 0
    is the class token: softmax over texts of ``temperature * similarity[:, 0]``, over its mean."""
    prob = torch.softmax(temperature * similarity[:, 0], dim=-1)
    return prob / prob.mean(-1, keepdim=True)


def feature_surgery(similarity: torch.Tensor, *, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Subtract the (weighted) mean over texts: (B, L, C) -> (B, L, C).

    ``weights`` (B, C), e.g. from :func:`class_token_weights`, scale each text's similarity before
    the mean is taken and subtracted (CLIP Surgery's formula); ``None`` means all ones.
    """
    if weights is not None:
        similarity = similarity * weights[:, None, :].to(similarity.dtype)
    return similarity - similarity.mean(-1, keepdim=True)


def class_token_weights(image_embedding: torch.Tensor, text: torch.Tensor, *, temperature: float = 2.0) -> torch.Tensor:
    """CLIP-ES weights (B, C): softmax over texts of ``temperature * cos(image, text)``, over its mean."""
    prob = torch.softmax(temperature * (F.normalize(image_embedding.float(), dim=-1)
                                        @ F.normalize(text.float(), dim=-1).T), dim=-1)
    return prob / prob.mean(-1, keepdim=True)


def minmax_normalise(x: torch.Tensor, *, dim: int, eps: float = 1e-7) -> torch.Tensor:
    """``(x - min) / (max - min + eps)`` along ``dim``: values in [0, 1]. With eps 0 (DiCLIP's and
    ExCEL's min-max) a constant slice gives zeros, not DiCLIP's NaN."""
    lo, hi = x.amin(dim, keepdim=True), x.amax(dim, keepdim=True)
    span = hi - lo + eps
    return (x - lo) / torch.where(span > 0, span, torch.ones_like(span))


def fuse_cache(text: torch.Tensor, cache: torch.Tensor, weight: float) -> torch.Tensor:
    """DiCLIP's fusion of the TSA cache CAM with the text CAM (method.md C4): (..., K, N) each ->
    min-max over the N patches of (weight * cache + text), without epsilon as DiCLIP; weight 0 returns
    `text` unchanged."""
    if not weight:
        return text
    return minmax_normalise(weight * cache.float() + text.float(), dim=-1, eps=0.0)


def text_cams(
    tokens: torch.Tensor,
    text: torch.Tensor,
    *,
    image_embedding: torch.Tensor | None = None,
    surgery: bool = True,
    cls_weighting: bool = True,
    temperature: float = 2.0,
    token_norm: str = "feature",
    minmax_with_cls: bool = False,
    cls_from_tokens: bool = False,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Patch CAMs in [0, 1] for every text: tokens (B, 1 + N, E), text (C, E) -> (B, C, N).

    Args:
        tokens: joint-space tokens, class token first (``SurgeryOutput.tokens``).
        text: text embeddings, one per class (background texts may be appended and dropped after).
        image_embedding: (B, E) the image embedding for class-token weighting
            (``SurgeryOutput.image_embedding``); needed when ``surgery and cls_weighting``.
        surgery: subtract the mean over texts (feature surgery).
        cls_weighting: weight texts by :func:`class_token_weights` inside feature surgery.
        temperature: of the class-token weighting.
        token_norm: see :func:`token_text_similarity`.
        minmax_with_cls: min-max over all tokens including the class token (ExCEL), else patches only.
        cls_from_tokens: class-token weights from token 0 of the normalised ``tokens`` (CLIP Surgery's
            and ExCEL's code: with ``token_norm="token"`` that row is normalised over tokens, and
            the texts as given), instead of the cosine of ``image_embedding`` with the texts.
        eps: of the min-max (ExCEL: 0).
    """
    sim = token_text_similarity(tokens, text, token_norm=token_norm)  # (B, L, C)
    if surgery:
        weights = None
        if cls_weighting and cls_from_tokens:
            weights = token_weights(sim, temperature)  # (B, C): token 0 against every text
        elif cls_weighting:
            if image_embedding is None:
                raise ValueError("cls_weighting needs image_embedding")
            weights = class_token_weights(image_embedding, text, temperature=temperature)
        sim = feature_surgery(sim, weights=weights)
    if not minmax_with_cls:
        sim = sim[:, 1:]
    cams = minmax_normalise(sim, dim=1, eps=eps)  # (B, L or N, C)
    if minmax_with_cls:
        cams = cams[:, 1:]
    return cams.transpose(1, 2).contiguous()  # (B, C, N)


def cams_to_image(cams: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Patch CAMs (B, C, gh*gw) -> (B, C, H, W) by bilinear upsampling (align_corners=False)."""
    batch, classes, _ = cams.shape
    maps = cams.reshape(batch, classes, grid[0], grid[1])  # row-major patch order
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def labels_from_cams(cams: torch.Tensor, present: torch.Tensor, *, bg_threshold: float) -> torch.Tensor:
    """Pseudo-labels (B, H, W) int64 from CAMs (B, C, H, W) and image-level labels (B, C) bool.

    Label ``c + 1`` where class c is the present class with the highest CAM and that CAM reaches
    ``bg_threshold``; 0 (background) elsewhere and in images without a present class.
    """
    masked = cams.masked_fill(~present.bool()[:, :, None, None], -1.0)
    best, arg = masked.max(1)
    return torch.where(best >= bg_threshold, arg + 1, torch.zeros_like(arg))

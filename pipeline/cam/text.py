"""Text side of a CLIP: class prompts and their (normalised) embeddings.

Pure functions of an open_clip ``CLIP`` model, its tokenizer and strings; no files, no datasets
(class names are always passed in).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_PROMPT = "a photo of a {}."


def class_prompts(class_names: Sequence[str], template: str = DEFAULT_PROMPT) -> list[str]:
    """One prompt per class: ``template.format(name)``."""
    return [template.format(name) for name in class_names]


def encode_text_trimmed(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)`` (unnormalised), cut to the longest caption: (N, L) -> (N, E).

    With a causal text mask and end-of-text pooling, positions after the last real token never
    influence the pooled feature, so dropping trailing pad columns gives the same result at a
    fraction of the cost for short captions. Falls back to ``encode_text`` for other text towers.
    """
    if getattr(model, "attn_mask", None) is None or getattr(model, "text_pool_type", None) != "argmax" \
            or not hasattr(model, "token_embedding"):
        return model.encode_text(tokens)
    length = int((tokens != 0).sum(1).max())
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # end-of-text token
    if model.text_projection is None:
        return x
    if isinstance(model.text_projection, nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


@torch.no_grad()
def encode_prompts(model: nn.Module, tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """(N, E) L2-normalised text embeddings of ``texts`` (float32, on the model's device)."""
    device = next(model.parameters()).device
    return F.normalize(model.encode_text(tokenizer(list(texts)).to(device)).float(), dim=-1)


@torch.no_grad()
def encode_class_prompts(model: nn.Module, tokenizer: Any, class_names: Sequence[str],
                         templates: Sequence[str] = (DEFAULT_PROMPT,)) -> torch.Tensor:
    """(C, E) prompt-ensemble class embeddings: per class, the mean of its templates' normalised
    embeddings (:func:`encode_prompts`), normalised again."""
    return torch.stack([F.normalize(encode_prompts(model, tokenizer, [t.format(name) for t in templates]).mean(0),
                                    dim=-1)
                        for name in class_names])

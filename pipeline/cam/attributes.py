"""ExCEL's attribute enrichment of class texts (method.md Options; ExCEL model/load_attr.py).

Descriptor sentences of every class ("a bird with a short beak", ...) are embedded by CLIP and
clustered into a bank of attribute centres. Each class text is moved towards the centres it
resembles: logits = t_c . bank (no temperature), the lowest `drop` of them masked out, a softmax,
t_c' = weights @ bank^T + t_c, renormalised. Background texts are left as they are. Pure functions
on tensors plus the file reader; the bank is scikit-learn's KMeans.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def read_descriptors(path: str | Path, class_names: tuple[str, ...], key: str = "cams.attributes_file") -> list[list[str]]:
    """Descriptor sentences per class, in `class_names` order, from a JSON object {class name: [sentences]}.
    ValueError naming the file and what is missing or malformed."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"{key} {path}: cannot be read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{key} {path}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{key} {path}: expected a JSON object {{class name: [sentences]}}")
    missing = [c for c in class_names if not (isinstance(data.get(c), list) and data[c]
                                              and all(isinstance(s, str) and s.strip() for s in data[c]))]
    if missing:
        raise ValueError(f"{key} {path}: no list of sentences for {', '.join(missing)} "
                         f"(every dataset class needs one: {', '.join(class_names)})")
    return [[s.strip().lower() for s in data[c]] for c in class_names]


def attribute_bank(descriptors: torch.Tensor, clusters: int, *, seed: int = 0) -> torch.Tensor:
    """(M, E) normalised descriptor embeddings -> (E, K) bank: KMeans centres, not renormalised.
    n_init is pinned to 10 (ExCEL's scikit-learn 1.0.2 default; 'auto' means 1 run since 1.4)."""
    from sklearn.cluster import KMeans

    if clusters > len(descriptors):
        raise ValueError(f"cams.attribute_clusters {clusters} exceeds the {len(descriptors)} descriptor sentences")
    km = KMeans(n_clusters=clusters, random_state=seed, n_init=10).fit(descriptors.double().numpy())
    return torch.from_numpy(km.cluster_centers_.T.astype(np.float32))


def attribute_weights(text: torch.Tensor, bank: torch.Tensor, drop: int) -> torch.Tensor:
    """(C, E) class texts, (E, K) bank -> (C, K) softmax weights of the K - `drop` best centres."""
    logits = text.float() @ bank.float()
    if drop:
        lowest = logits.topk(drop, dim=1, largest=False).indices
        logits = logits.scatter(1, lowest, float("-inf"))
    return logits.softmax(dim=1)


def enrich_texts(text: torch.Tensor, bank: torch.Tensor, drop: int) -> torch.Tensor:
    """(C, E) normalised class texts -> (C, E) attribute-enriched, normalised."""
    return F.normalize(attribute_weights(text, bank, drop) @ bank.float().T + text.float(), dim=-1)


def class_text_features(model: torch.nn.Module, tokenizer, prompts: list[str], num_classes: int, *,
                        descriptors: list[list[str]] | None, clusters: int, drop: float) -> torch.Tensor:
    """(T, E) normalised text features of `prompts` (the first `num_classes` are the classes, the rest
    background), the class rows enriched with attributes when `descriptors` are given: a bank of
    `clusters` centres, the lowest int(clusters * drop) logits of each class masked (ExCEL: 11 of 112)."""
    from pipeline.cam.text import encode_prompts

    text = encode_prompts(model, tokenizer, prompts).cpu()
    if descriptors:
        sentences = [s for per_class in descriptors for s in per_class]
        bank = attribute_bank(encode_prompts(model, tokenizer, sentences).cpu(), clusters)
        text = torch.cat([enrich_texts(text[:num_classes], bank, int(clusters * drop)), text[num_classes:]])
    return text

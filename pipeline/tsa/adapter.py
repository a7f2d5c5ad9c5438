"""DiCLIP's key/value adapter (the "dynamic" cache, method.md C8): the static cache made trainable.

Linear(E -> H) whose first K rows are the cache's keys (the rest truncated-normal, std 1, cut at
+-2), ReLU, dropout, Linear(H -> C + 1) whose first K columns are the values (the rest zero),
dropout on the output. At initialisation its first K hidden units are ReLU(f . key): the static
cache's key scores, and its logits are those scores gathered through the one-hot values.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from pipeline.grids import square_side
from pipeline.metrics import IGNORE
from pipeline.tsa.config import AdapterConfig


class KVAdapter(nn.Module):
    def __init__(self, keys: torch.Tensor, values: torch.Tensor, hidden: int, *, dropout: float, seed: int) -> None:
        super().__init__()
        K, E = keys.shape
        if hidden < K:
            raise ValueError(f"hidden ({hidden}) must hold the {K} keys")
        self.key = nn.Linear(E, hidden, bias=False)
        self.value = nn.Linear(hidden, values.shape[1], bias=False)
        self.drop = nn.Dropout(dropout)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            extra = torch.empty(hidden - K, E)
            nn.init.trunc_normal_(extra, std=1.0, a=-2.0, b=2.0, generator=generator)
            self.key.weight.copy_(torch.cat([keys.float(), extra]))
            self.value.weight.zero_()
            self.value.weight[:, :K] = values.float().T

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "KVAdapter":
        """An adapter of the saved shapes holding the saved weights (key.weight (H, E), value.weight (C+1, H)),
        for inference (no dropout)."""
        hidden, dim = state["key.weight"].shape
        adapter = cls(torch.zeros(1, dim), torch.zeros(1, state["value.weight"].shape[0]), hidden, dropout=0.0, seed=0)
        adapter.load_state_dict(state)
        return adapter

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """(..., E) -> (..., H) ReLU(features . rows): the first K are the key scores."""
        return torch.relu(self.key(features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(..., E) patch features -> (..., C + 1) logits (background first)."""
        return self.drop(self.value(self.drop(self.scores(features))))


def balanced_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore: int = IGNORE) -> torch.Tensor:
    """DiCLIP's segmentation loss: 0.5 CE over background-labelled pixels + 0.5 CE over foreground-labelled
    ones (each a mean over its pixels; a side without pixels adds 0). logits (B, C+1, H, W), labels (B, H, W)."""
    ce = torch.nn.functional.cross_entropy(logits, labels.long(), ignore_index=ignore, reduction="none")
    bg, fg = labels == 0, (labels != 0) & (labels != ignore)
    side = lambda m: ce[m].mean() if m.any() else ce.sum() * 0  # noqa: E731
    return 0.5 * side(bg) + 0.5 * side(fg)


def warmup_poly(step: int, total: int, warmup: int, *, start_ratio: float = 1e-6, power: float = 1.0) -> float:
    """The learning-rate factor: linear warmup from `start_ratio` over `warmup` steps, then poly decay to 0."""
    if step < warmup:
        return start_ratio + (1 - start_ratio) * step / warmup
    return (1 - (step - warmup) / max(1, total - warmup)) ** power


class PatchSet(Protocol):
    """The adapter's training set: images' patch features on a g x g grid and their pseudo-labels."""

    grid: int

    def __len__(self) -> int: ...

    def take(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, g*g, E) float32, labels (B, S, S): 0 background, c + 1, 255 ignored) of `rows`."""
        ...


class TensorPatches:
    """A PatchSet held in memory (tests, small sets); a stage reads pipeline.store.patch_features instead."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels
        self.grid = square_side(features.shape[1], "patch features")

    def __len__(self) -> int:
        return len(self.features)

    def take(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[rows].float(), self.labels[rows]


def train_adapter(adapter: KVAdapter, data: PatchSet, config: AdapterConfig) -> list[float]:
    """Train `adapter` alone on `data`'s patch features against their pseudo-labels: logits on the g x g
    grid, bilinear to the label size, balanced CE; AdamW with warmup and poly decay; batches drawn with
    a generator seeded by `config.seed`, read from `data` one batch at a time. Returns the losses."""
    torch.manual_seed(config.seed)  # dropout
    generator = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(adapter.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_poly(s, config.iterations, config.warmup))
    adapter.train()
    losses = []
    batch, grid = config.batch, data.grid
    for _ in range(config.iterations):
        features, labels = data.take(torch.randint(len(data), (batch,), generator=generator))
        logits = adapter(features).transpose(1, 2).reshape(batch, -1, grid, grid)
        logits = torch.nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = balanced_cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    adapter.eval()
    return losses


def fit_adapter(keys: torch.Tensor, values: torch.Tensor, data: PatchSet,
                config: AdapterConfig) -> tuple[KVAdapter, list[float]]:
    """The adapter initialised from the cache's keys and values, trained on `data` with one torch thread,
    so the same weights come out on any machine and runner (the adapter is small). Returns (adapter in
    eval mode, losses)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        adapter = KVAdapter(keys, values, config.hidden, dropout=config.dropout, seed=config.seed)
        return adapter, train_adapter(adapter, data, config)
    finally:
        torch.set_num_threads(threads)


class AdaptedCache:
    """The cams stage's cache hook for round 2: ReLU(adapter(patch features))'s class columns (B, C, N),
    fused as minmax(0.1 * cache + text) (DiCLIP's weight); features are the tokens L2-normalised per feature."""

    def __init__(self, adapter: KVAdapter) -> None:
        self.adapter = adapter.eval()

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional.normalize(tokens[:, 1:].float(), dim=-1)
        return torch.relu(self.adapter(f))[..., 1:].transpose(1, 2).contiguous()

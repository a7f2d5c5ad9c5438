"""The TSA cache adapter's configuration (method.md C8): the `tsa_adapt` params section is `AdapterConfig`.

One declaration per knob: the params section (pipeline.params.sections) is this class, and the adapter
and its training take it as their config. Defaults are DiCLIP's VOC values where it has them.
Declarations only (no torch): params are validated before anything heavy is imported, and this
module's values enter a stage's key as resolved params, not as code (pipeline.codegraph).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdapterConfig:
    """The key/value adapter trained alone on round-1 pseudo-labels, and the round-2 CAMs' fusion weight."""

    hidden: int = 312  # adapter width (DiCLIP: 312 VOC, 512 COCO); must hold the cache's keys
    iterations: int = 2000
    batch: int = 4
    lr: float = 2e-3  # DiCLIP: 2e-3 VOC, 1e-3 COCO
    weight_decay: float = 0.01
    warmup: int = 50  # DiCLIP: 50 VOC, 200 COCO
    dropout: float = 0.1
    cache_weight: float = 0.1  # round-2 CAM = minmax(cache_weight * ReLU(adapter) + text) (DiCLIP 0.1)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden", "iterations", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup < 0 or not 0 <= self.dropout < 1 or self.cache_weight < 0:
            raise ValueError("lr must be > 0; weight_decay, warmup and cache_weight >= 0; dropout in [0, 1)")

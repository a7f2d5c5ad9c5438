"""Stage D's configuration: the `train` params section is `TrainConfig`, the `evaluate` section is
`InferenceConfig` plus its storage key (method.md Stage D).

One declaration per knob: the params sections (pipeline.params.sections) are these classes or
subclass them, and the training loop and the inference take them as their config, so a field's name,
default and check are written here only. Defaults are DiCLIP's VOC values (COCO: the coco preset).
Declarations only (no torch): params are validated before anything heavy is imported, and this
module's values enter a stage's key as resolved params, not as code (pipeline.codegraph).
"""

from __future__ import annotations

from dataclasses import dataclass

#: names of the registered decoders (pipeline.segment.decoder.ARCHITECTURES), checked without torch
ARCHITECTURE_NAMES: tuple[str, ...] = ("diclip",)


@dataclass(frozen=True)
class TrainConfig:
    """The segmenter from the stored pseudo-labels: DiCLIP's decoder on a frozen CLIP, its optimiser,
    augmentation, and how often the loop logs, validates and checkpoints (COCO: lr 1e-3, warmup 200,
    100k iterations; the coco preset)."""

    architecture: str = "diclip"  # the decoder (pipeline.segment.decoder.ARCHITECTURES)
    dim: int = 256  # decoder width
    layers: int = 3  # transformer layers
    heads: int = 8
    dropout: float = 0.1  # Dropout2d after the fusion
    iterations: int = 20000
    batch: int = 4  # the global batch (split over DDP processes)
    crop: int = 320  # square training crop (a multiple of the CLIP patch)
    rescale: tuple[float, float] = (0.5, 2.0)  # random rescale of the image before the crop
    flip: bool = True  # random horizontal flip
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 50  # linear warmup steps, then poly (power 1) decay to 0
    affinity_weight: float = 0.1
    affinity_radius: int = 8  # patches (Chebyshev) within which affinity pairs are taken
    seed: int = 0  # decoder init, batch order, augmentation, dropout
    threads: int = 2  # torch threads on the CPU (CPU results depend on it: reductions split differently)
    checkpoint_every: int = 500
    log_every: int = 50  # steps between logged rows (DVCLive)
    val_every: int = 1000  # steps between validation rows (mIoU against the eval split's pseudo-labels)
    val_images: int = 100  # eval-split images in that check (0: none)

    def __post_init__(self) -> None:
        for name in ("dim", "layers", "heads", "iterations", "batch", "crop", "threads", "checkpoint_every",
                     "log_every", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be a multiple of heads {self.heads}")
        low, high = self.rescale
        if not 0 < low <= high:
            raise ValueError(f"rescale must be [low, high] with 0 < low <= high, got {list(self.rescale)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup < 0 or not 0 <= self.dropout < 1:
            raise ValueError("lr must be > 0; weight_decay and warmup >= 0; dropout in [0, 1)")
        if self.affinity_weight < 0 or self.affinity_radius < 0 or self.val_images < 0:
            raise ValueError("affinity_weight, affinity_radius and val_images must be >= 0")
        if self.architecture not in ARCHITECTURE_NAMES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURE_NAMES)}, got {self.architecture!r}")


@dataclass(frozen=True)
class InferenceConfig:
    """DiCLIP's evaluation: multi-scale + flip inference around `size`, optional DenseCRF on the softmax
    (DiCLIP's kernel values as defaults)."""

    size: int = 320  # the image is resized to size x size times each scale
    scales: tuple[float, ...] = (0.7, 1.0, 1.2, 1.5)
    flip: bool = True  # mirrored passes at every scale but 1.0
    fraction: float = 0.4  # logits are averaged at this fraction of the image size, then upsampled
    crf: bool = False  # DenseCRF on the softmax (needs the crf extra: pip install 'diclip[crf]')
    crf_iterations: int = 10
    crf_pos_xy: float = 1.0
    crf_pos_weight: float = 3.0
    crf_bi_xy: float = 67.0
    crf_bi_rgb: float = 3.0
    crf_bi_weight: float = 4.0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be a non-empty list of positive factors, got {list(self.scales)}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.crf_iterations < 1:
            raise ValueError(f"crf_iterations must be >= 1, got {self.crf_iterations}")

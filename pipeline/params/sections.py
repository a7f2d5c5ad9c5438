"""The params.yaml sections, one frozen dataclass of defaults per stage (params.yaml holds overrides).

Each stage reads only its own sections; dvc.yaml lists exactly those as the stage's `params`, so a
change reruns only the stages that read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from pipeline.data.shapes import ShapesConfig
from pipeline.diffusion.config import DiffusionAttentionParams

DatasetKind = Literal["folder", "voc", "coco"]


@dataclass(frozen=True)
class DatasetParams:
    """Which dataset the pipeline runs on (read by `prepare`)."""

    kind: DatasetKind = "folder"  # folder (VOC layout + class_names.txt), voc, coco
    root: str = "artifacts/shapes"  # dataset root folder (VOC2012 folder, COCO folder, or a VOC-layout folder)
    class_names_file: str | None = None  # folder kind: class-name file (default: <root>/class_names.txt)
    train_split: str = "train"  # images pseudo-labels are made for (VOC: train_aug, COCO: train)
    eval_split: str = "val"  # images the segmenter is evaluated on

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError("root must name the dataset folder, got an empty string")
        for name in ("train_split", "eval_split"):
            if not getattr(self, name):
                raise ValueError(f"{name} must name a split list, got an empty string")


@dataclass(frozen=True)
class ShapesParams:
    """The synthetic shapes world generated for the demo (read by `shapes_world`)."""

    seed: int = 0  # world seed: same seed and params -> byte-identical dataset
    splits: dict[str, int] = field(default_factory=lambda: {"train": 2000, "val": 500})  # split -> images
    workers: int = 2  # generator processes
    world: ShapesConfig = field(default_factory=ShapesConfig)  # scene knobs (image size, objects, clutter)

    def __post_init__(self) -> None:
        if not self.splits:
            raise ValueError("splits must map at least one split name to an image count")
        for split, count in self.splits.items():
            if not split.replace("_", "").isalnum():
                raise ValueError(f"splits: split name {split!r} must be letters, digits and '_'")
            if count < 1:
                raise ValueError(f"splits.{split} must be a positive image count, got {count}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


@dataclass(frozen=True)
class RunnerParams:
    """How per-image stages are spread over processes; results do not depend on these."""

    scheduler_address: str | None = None  # an existing dask scheduler (tcp://host:8786); null: $DASK_SCHEDULER_ADDRESS, else a LocalCluster
    n_workers: int = 2  # LocalCluster worker processes
    threads_per_worker: int = 1  # dask threads per worker process
    torch_threads: int = 1  # torch intra-op threads inside each worker (n_workers * torch_threads <= cores)
    memory_limit: str = "auto"  # per-worker memory limit for the LocalCluster (dask syntax, e.g. "4GiB")
    in_process: bool = False  # run every image in this process, no dask (debugging, profiling)

    def __post_init__(self) -> None:
        for name in ("n_workers", "threads_per_worker", "torch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.scheduler_address is not None and "://" not in self.scheduler_address:
            raise ValueError(
                f"scheduler_address must look like tcp://host:port, got {self.scheduler_address!r}"
            )


@dataclass(frozen=True)
class PrepareParams:
    """Dataset validation and indexing (read by `prepare`)."""

    on_error: Literal["fail", "skip"] = "fail"  # bad images: fail the stage, or leave them out of the index (listed in rejected.json)
    shard_images: int = 256  # images per zarr shard in the index store (fewer files for DVC)

    def __post_init__(self) -> None:
        if self.shard_images < 1:
            raise ValueError(f"shard_images must be >= 1, got {self.shard_images}")


@dataclass(frozen=True)
class ClipModelParams:
    """Which CLIP: an open_clip model name and a pretrained tag or local checkpoint path."""

    model: str = "diclip-tiny-vit-p8-64"  # real: ViT-B-16-quickgelu (OpenAI weights need the -quickgelu name)
    pretrained: str | None = "pipeline/models/weights/diclip-tiny-clip/open_clip_model.safetensors"  # real: openai

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must name an open_clip model, got an empty string")


@dataclass(frozen=True)
class SDModelParams:
    """Which Stable Diffusion: a diffusers hub id or a local save_pretrained directory."""

    model: str = "pipeline/models/weights/diclip-tiny-sd"  # real: stabilityai/stable-diffusion-2-1-base

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must be a hub id or a local directory, got an empty string")


@dataclass(frozen=True)
class ModelsParams:
    """The models every stage loads through pipeline.models (one path for real and tiny ones)."""

    clip: ClipModelParams = field(default_factory=ClipModelParams)
    sd: SDModelParams = field(default_factory=SDModelParams)
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:N
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: fp16 on GPU, fp32 on CPU


@dataclass(frozen=True)
class Params:
    """Everything in params.yaml."""

    dataset: DatasetParams = field(default_factory=DatasetParams)
    shapes: ShapesParams = field(default_factory=ShapesParams)
    runner: RunnerParams = field(default_factory=RunnerParams)
    prepare: PrepareParams = field(default_factory=PrepareParams)
    models: ModelsParams = field(default_factory=ModelsParams)
    diffusion_attention: DiffusionAttentionParams = field(default_factory=DiffusionAttentionParams)


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Params))

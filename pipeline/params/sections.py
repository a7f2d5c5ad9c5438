"""The params.yaml sections, one frozen dataclass of defaults per stage (params.yaml holds overrides).

Each stage reads only its own sections; dvc.yaml lists exactly those as the stage's `params`, so a
change reruns only the stages that read it. A section that configures an algorithm is that
algorithm's config (`pipeline/<package>/config.py`) or a subclass adding the stage's storage and
evaluation keys: no field or default is written twice (tests/test_params.py checks it).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal

from pipeline.cam.config import CamConfig
from pipeline.data.config import ShapesConfig
from pipeline.diffusion.config import StageAConfig
from pipeline.segment.config import InferenceConfig, TrainConfig
from pipeline.tsa.config import AdapterConfig

DatasetKind = Literal["folder", "voc", "coco"]

#: images per zarr shard of a per-image store: one file per array per shard, so a DVC remote gets few
#: objects (README, "Artifact sizes"); a shard is packed in memory at once
SHARD_IMAGES = 4096


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
    world: ShapesConfig = field(default_factory=ShapesConfig)  # scene knobs (image size, objects, clutter)

    def __post_init__(self) -> None:
        if not self.splits:
            raise ValueError("splits must map at least one split name to an image count")
        for split, count in self.splits.items():
            if not split.replace("_", "").isalnum():
                raise ValueError(f"splits: split name {split!r} must be letters, digits and '_'")
            if count < 1:
                raise ValueError(f"splits.{split} must be a positive image count, got {count}")


@dataclass(frozen=True)
class RunnerParams:
    """How per-image stages are spread over processes; results do not depend on these."""

    scheduler_address: str | None = None  # an existing dask scheduler (tcp://host:8786); null: $DASK_SCHEDULER_ADDRESS, else a LocalCluster
    n_workers: int = 2  # LocalCluster worker processes
    threads_per_worker: int = 1  # dask threads per worker process
    torch_threads: int = 1  # torch intra-op threads inside each worker (n_workers * torch_threads <= cores)
    memory_limit: str = "auto"  # per-worker memory limit for the LocalCluster (dask syntax, e.g. "4GiB"); auto: memory / n_workers
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
    shard_images: int = SHARD_IMAGES

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

    def __post_init__(self) -> None:
        # up front, not once per image in the workers (a GPU-less "auto" is still resolved there); the names
        # are pipeline.models.device.resolve_device's, read as it reads them, without importing torch here
        device = self.device.strip().lower()
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.precision == "fp16" and device == "cpu":
            raise ValueError("precision fp16 needs a GPU, and device is cpu: use fp32, bf16, or auto (fp32 on the CPU)")


@dataclass(frozen=True)
class DiffusionAttentionParams(StageAConfig):
    """Stage A (pipeline.diffusion.config.StageAConfig) and how its store is kept and scored.

    Defaults reproduce DiCLIP on SD 2.1-base (the voc/coco presets); the demo's params.yaml sets
    the tiny SD's values (chosen on the train split by scripts/select_stage_a.py).
    """

    shard_images: int = SHARD_IMAGES
    batch_images: int = 1  # images per VAE encode and UNet forward (groups fixed by position, so results never depend on workers); more pays on a GPU
    splits: tuple[str, ...] = ()  # splits to compute; empty: the index's train and eval splits
    eval_split: str | None = None  # split of the metric (best-match IoU with masks); null: the index's eval split (parameters were chosen on train)
    eval_images: int = 200  # images of eval_split scored (the first ones in split order); 0: no metric
    eval_baselines: bool = True  # also score an untrained UNet of the same config and colour k-means with the same K
    compare_recipes: bool = True  # also score the other recipe on the same images (computed for the metric only)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("shard_images", "batch_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for split in self.splits:
            if not split:
                raise ValueError("splits must not contain an empty split name")
        if len(set(self.splits)) != len(self.splits):
            raise ValueError(f"splits must not repeat a split, got {list(self.splits)}")
        if self.eval_split is not None and not self.eval_split:
            raise ValueError("eval_split must be null or a split name, got an empty string")
        if self.eval_images < 0:
            raise ValueError(f"eval_images must be >= 0, got {self.eval_images}")


@dataclass(frozen=True)
class CamsParams(CamConfig):
    """Stages cams and eval_cams (method.md Stage C): the CAM path (pipeline.cam.config.CamConfig) and how
    its store is kept and scored. Defaults are DiCLIP's training-free path on ViT-B/16; the demo's
    params.yaml sets the tiny CLIP's."""

    batch_images: int = 1  # images per CLIP forward (groups fixed by position, so results never depend on workers); more pays on a GPU
    shard_images: int = SHARD_IMAGES
    eval_thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # eval_cams: background scores swept on the eval split

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_images", "shard_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


DICLIP_TSA_TEMPLATE = (
    "a realistic photograph of a fully visible, entire {} with natural colors, centered in the image, with a clear "
    "and distinct background, high color contrast, and the {} should not occupy the entire image frame, ensuring "
    "the {} is completely visible without any part being cropped.")
TSA_SCHEDULERS = ("default", "ddim", "pndm", "euler", "dpm")


@dataclass(frozen=True)
class TsaCacheParams:
    """Stage tsa_cache (method.md Stage B): generated class images, their masks, prototype keys and values.

    Defaults are DiCLIP's VOC values; the demo's params.yaml sets the tiny SD's."""

    images_per_class: int = 100  # DiCLIP keeps about 100 per VOC class (50 COCO); raising it draws only the new ones
    template: str = DICLIP_TSA_TEMPLATE  # every "{}" is the class's prompt name
    prompt_names_file: str | None = "pipeline/data/words/voc_tsa_names.txt"  # DiCLIP's words (plane, people, buses, ...); null: class names
    steps: int = 45
    guidance: float = 10.0
    scheduler: str = "default"  # default (the model's own) | ddim | pndm | euler | dpm
    image_size: int = 384
    seed: int = 0  # image i of class c starts from noise seeded by (seed, c, i)
    batch: int = 4  # images per pipeline call, in fixed groups of indices (so results never depend on N)
    box_threshold: float = 0.79  # the masks' box threshold (DiCLIP's cache masks); the rest is the cams path
    keys_per_class: int = 10  # KMeans centres of each class's foreground prototypes (DiCLIP: 10 VOC, 5 COCO)
    background_keys: int = 25
    eval_images: int = 200  # metric: patch accuracy on this many eval-split scenes (0: none)

    def __post_init__(self) -> None:
        if "{}" not in self.template:
            raise ValueError(f"template must contain {{}} where the class name goes, got {self.template!r}")
        if self.scheduler not in TSA_SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(TSA_SCHEDULERS)}, got {self.scheduler!r}")
        if not 0 < self.box_threshold < 1:
            raise ValueError(f"box_threshold must lie in (0, 1), got {self.box_threshold}")
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")
        for name in ("images_per_class", "steps", "image_size", "batch", "keys_per_class", "background_keys"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_images < 0:
            raise ValueError(f"eval_images must be >= 0, got {self.eval_images}")


TsaAdaptParams = AdapterConfig  # stage tsa_adapt (method.md C8, offline): the section is the adapter's config
TrainParams = TrainConfig  # stage train (method.md Stage D): the section is the training loop's config


@dataclass(frozen=True)
class EvaluateParams(InferenceConfig):
    """Stage evaluate (method.md Stage D, DiCLIP's evaluation): the inference (pipeline.segment.config.InferenceConfig)
    and how its store is kept."""

    shard_images: int = SHARD_IMAGES

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.shard_images < 1:
            raise ValueError(f"shard_images must be >= 1, got {self.shard_images}")


@dataclass(frozen=True)
class ReportParams:
    """Stage report: which images the figure grids show."""

    images: int = 6  # the first n images of the eval split (a fixed sample)

    def __post_init__(self) -> None:
        if self.images < 1:
            raise ValueError(f"images must be >= 1, got {self.images}")


@dataclass(frozen=True)
class Params:
    """Everything in params.yaml."""

    dataset: DatasetParams = field(default_factory=DatasetParams)
    shapes: ShapesParams = field(default_factory=ShapesParams)
    runner: RunnerParams = field(default_factory=RunnerParams)
    prepare: PrepareParams = field(default_factory=PrepareParams)
    models: ModelsParams = field(default_factory=ModelsParams)
    diffusion_attention: DiffusionAttentionParams = field(default_factory=DiffusionAttentionParams)
    cams: CamsParams = field(default_factory=CamsParams)
    tsa_cache: TsaCacheParams = field(default_factory=TsaCacheParams)
    tsa_adapt: TsaAdaptParams = field(default_factory=TsaAdaptParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    report: ReportParams = field(default_factory=ReportParams)


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Params))

"""The params.yaml sections, one frozen dataclass of defaults per stage (params.yaml holds overrides).

Each stage reads only its own sections; dvc.yaml lists exactly those as the stage's `params`, so a
change reruns only the stages that read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from pipeline.data.shapes_config import ShapesConfig

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
class DiffusionAttentionParams:
    """Stage A: Stable Diffusion self-attention capture, aggregation and ACR clustering."""

    # --- the forward pass (the model itself: models.sd.model, models.device, models.precision)
    image_size: int | None = None  # images are resized to this square size before the VAE; null: the model's native size (UNet sample_size x VAE factor: 64 tiny, 512 SD 2.1-base). The shapes preset sets 256: the tiny SD's finest attention is then 64x64 over a 64 px scene, and small objects get their own clusters (chosen on train[:100], t=100, K<=12, best-match IoU: 64 px .43, 128 .52, 192 .54, 256 .59)
    timestep: int = 100  # diffusion timestep of the one UNet forward (method.md: 100..300); tiny SD at 256 px, train[:100]: t=100 .59, 200 .58 (at 64 px: t=0 .43, 50 .42, 100 .42, 200 .40, 300 .38)
    add_noise: bool = True  # add the scheduler's noise for `timestep` to the VAE latent (false: the clean latent at that timestep, as DiffSeg's code does)
    noise_seed: int = 0  # base seed; each image's noise is seeded by (noise_seed, image id), so results do not depend on order or workers
    prompt: str = ""  # text conditioning of the UNet (encoded once); DiffSeg/DiCLIP use the empty prompt
    # --- aggregation
    cluster_grid: int | None = None  # token grid every layer is brought to for ACR (G x G); null: the finest self-attention grid (16 tiny, 64 SD 2.1 at 512)
    attention_grid: int = 8  # token grid of the stored aggregated attention (g^2 x g^2 fp16): the CLIP patch grid of the CAM resolution (8 tiny CLIP at 64 px; 20 for ViT-B/16 at 320)
    store_attention: bool = True  # also store the aggregated attention at attention_grid beside the clusters
    block_mb: int = 8  # memory budget (MiB) for one block of attention scores + probabilities: layers are processed in blocks of query rows (cache-sized blocks are also the fastest on the CPU)
    # --- ACR (attention clustering refinement)
    anchor_grid: int = 16  # anchors on a regular anchor_grid x anchor_grid lattice of the cluster grid (capped at the cluster grid)
    merge_kl: float = 0.005  # merge proposals whose symmetric KL (mean of both directions) is below this; scale follows the model's attention sharpness: tiny SD (diffuse, anchor KLs ~0.01-0.08) 0.005 (at 128 px, train[:100]: 0.002 .52, 0.005 .52, 0.01 .49); SD 2.x: ~0.9 (method.md, DiffSeg 1.1)
    merge_rounds: int = 3  # merging rounds (stops earlier when nothing changes)
    max_clusters: int = 16  # at most this many clusters per image (closest proposals merged beyond it); the stored soft-map axis length (tiny SD at 256 px, train[:100]: 6 .54, 8 .59, 12 .59; the shapes preset sets 12)
    kmeans_iters: int = 10  # k-means refinement iterations, initialised from the merged proposals (0: nearest proposal only)
    # --- storage and evaluation
    shard_images: int = 64  # images per zarr shard (chunks hold one image)
    splits: tuple[str, ...] = ()  # splits to compute; empty: the index's train and eval splits
    eval_split: str | None = None  # split of the metric (best-match IoU with masks); null: the index's eval split (parameters were chosen on train)
    eval_images: int = 200  # images of eval_split scored (the first ones in split order); 0: no metric
    eval_baselines: bool = True  # also score an untrained UNet of the same config and colour k-means with the same K

    def __post_init__(self) -> None:
        if self.image_size is not None and (self.image_size < 8 or self.image_size % 8):
            raise ValueError(f"image_size must be null or a multiple of 8 (>= 8), got {self.image_size}")
        if not 0 <= self.timestep <= 999:
            raise ValueError(f"timestep must lie in 0..999, got {self.timestep}")
        for name in ("cluster_grid",):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ValueError(f"{name} must be null or >= 2, got {value}")
        if self.attention_grid < 1:
            raise ValueError(f"attention_grid must be >= 1, got {self.attention_grid}")
        if self.block_mb < 1:
            raise ValueError(f"block_mb must be >= 1, got {self.block_mb}")
        if self.anchor_grid < 1:
            raise ValueError(f"anchor_grid must be >= 1, got {self.anchor_grid}")
        if not self.merge_kl > 0:
            raise ValueError(f"merge_kl must be > 0, got {self.merge_kl}")
        if self.merge_rounds < 0:
            raise ValueError(f"merge_rounds must be >= 0, got {self.merge_rounds}")
        if not 1 <= self.max_clusters <= 255:
            raise ValueError(f"max_clusters must lie in 1..255 (the hard map is uint8), got {self.max_clusters}")
        if self.kmeans_iters < 0:
            raise ValueError(f"kmeans_iters must be >= 0, got {self.kmeans_iters}")
        if self.shard_images < 1:
            raise ValueError(f"shard_images must be >= 1, got {self.shard_images}")
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
class Params:
    """Everything in params.yaml."""

    dataset: DatasetParams = field(default_factory=DatasetParams)
    shapes: ShapesParams = field(default_factory=ShapesParams)
    runner: RunnerParams = field(default_factory=RunnerParams)
    prepare: PrepareParams = field(default_factory=PrepareParams)
    models: ModelsParams = field(default_factory=ModelsParams)
    diffusion_attention: DiffusionAttentionParams = field(default_factory=DiffusionAttentionParams)


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Params))

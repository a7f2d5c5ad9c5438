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


SD21_CORRELATION_LAYER = "up_blocks.1.attentions.2.transformer_blocks.0.attn1"  # 10x10 tokens at 320 px (method.md A2)
SD21_TRANSITION_LAYER = "up_blocks.3.attentions.1.transformer_blocks.0.attn1"  # 40x40 tokens at 320 px (method.md A5)
RECIPES = ("diclip", "acr")
RESIZES = ("diclip", "antialias")


def _check_heads(where: str, heads: tuple[int, ...]) -> None:
    if not heads or any(h < 0 for h in heads):
        raise ValueError(f"{where} must list one or more 0-based head indices, got {list(heads)}")


@dataclass(frozen=True)
class DiclipRecipeParams:
    """Recipe `diclip` (method.md Stage A 2-4): one layer's selected heads -> A -> KL assignment -> R."""

    layer: str = SD21_CORRELATION_LAYER  # diffusers module path of the correlation layer (DiCLIP's bracket spelling accepted); the stage lists the valid ones when it is wrong
    heads: tuple[int, ...] = (1, 2)  # 0-based heads whose normalised q~k~^T maps are multiplied in this order (DiCLIP: 1 and 2)
    threshold: float = 0.2  # entries below this fraction of their column's max are zeroed (DiCLIP 0.2)
    anchor_stride: int | None = None  # anchors at range(0, grid, stride)^2; null: grid // 3 (DiCLIP: 0, 6, 12, 18 on 20x20 -> 16 anchors)
    rounds: int = 5  # nearest-anchor assignment rounds (DiCLIP 5)

    def __post_init__(self) -> None:
        if not self.layer.strip():
            raise ValueError("layer must name a self-attention layer, got an empty string")
        _check_heads("heads", self.heads)
        if not 0 <= self.threshold < 1:
            raise ValueError(f"threshold must lie in [0, 1), got {self.threshold}")
        if self.anchor_stride is not None and self.anchor_stride < 1:
            raise ValueError(f"anchor_stride must be null or >= 1, got {self.anchor_stride}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")


@dataclass(frozen=True)
class AcrRecipeParams:
    """Recipe `acr` (the project's recipe before DiCLIP's code was public): every self-attention layer
    aggregated at the cluster grid, DiffSeg KL merging, k-means; R = cluster-mean rows of the aggregate."""

    cluster_grid: int | None = None  # token grid every layer is brought to (G x G); null: the finest self-attention grid (the latent size)
    anchor_grid: int = 16  # anchors on an anchor_grid x anchor_grid lattice of the cluster grid (capped at the grid)
    merge_kl: float = 0.005  # merge proposals within this symmetric KL: tiny SD (diffuse attention) 0.005; SD 2.x ~0.9 (DiffSeg 1.1)
    merge_rounds: int = 3  # merging rounds (stops earlier when nothing changes)
    max_clusters: int = 16  # at most this many clusters (closest proposals merged beyond it); the stored rows axis
    kmeans_iters: int = 10  # k-means iterations from the merged proposals (0: nearest proposal only)
    block_mb: int = 8  # memory (MiB) for one block of attention scores + probabilities while aggregating

    def __post_init__(self) -> None:
        if self.cluster_grid is not None and self.cluster_grid < 2:
            raise ValueError(f"cluster_grid must be null or >= 2, got {self.cluster_grid}")
        for name, low in (("anchor_grid", 1), ("merge_rounds", 0), ("kmeans_iters", 0), ("block_mb", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not self.merge_kl > 0:
            raise ValueError(f"merge_kl must be > 0, got {self.merge_kl}")
        if not 1 <= self.max_clusters <= 255:
            raise ValueError(f"max_clusters must lie in 1..255 (cluster ids are uint8), got {self.max_clusters}")


@dataclass(frozen=True)
class TransitionParams:
    """The RAR transition P (method.md Stage A 5-6), stored sparsely for the cams stage."""

    layer: str = SD21_TRANSITION_LAYER  # diffusers module path of the RAR layer (its token grid is P's grid)
    heads: tuple[int, ...] = (1, 2)  # 0-based heads whose softmax probabilities are averaged (DiCLIP 1 and 2)
    sharpen: float = 0.02  # DiCLIP's p + s log10(e p) sharpening after the column-max normalisation (0: none)
    topk: int = 64  # entries kept per row (values renormalised; exact for rows with <= topk non-zeros); 0: no P stored

    def __post_init__(self) -> None:
        if not self.layer.strip():
            raise ValueError("layer must name a self-attention layer, got an empty string")
        _check_heads("heads", self.heads)
        if self.sharpen < 0:
            raise ValueError(f"sharpen must be >= 0, got {self.sharpen}")
        if not 0 <= self.topk <= 32767:
            raise ValueError(f"topk must lie in 0..32767 (ids are int16), got {self.topk}")


@dataclass(frozen=True)
class DiffusionAttentionParams:
    """Stage A: one SD forward per image -> clusters, refined patch correlation R and RAR transition P.

    Defaults reproduce DiCLIP on SD 2.1-base (the voc/coco presets); the demo's params.yaml sets
    the tiny SD's values (chosen on the train split by scripts/select_stage_a.py).
    """

    recipe: str = "diclip"  # diclip (method.md A2-4) | acr (all layers aggregated, KL merging + k-means)
    # --- the forward pass (the model itself: models.sd.model, models.device, models.precision)
    image_size: int | None = 320  # images are resized to this square size before the VAE (DiCLIP: its 320 px CLIP input); null: the model's native size
    resize: str = "diclip"  # diclip: bilinear without antialias, then uint8 truncation (DiCLIP's SD input); antialias: bilinear with antialiasing
    timestep: int | None = None  # diffusion timestep of the forward; null: the model's own scheduler at schedule_steps, entry schedule_index (SD 2.1-base's PNDM: 101)
    schedule_steps: int = 50  # with timestep null: inference steps the scheduler is set to (DiCLIP 50)
    schedule_index: int = 45  # with timestep null: which of its timesteps (DiCLIP 45)
    add_noise: bool = True  # add the scheduler's noise for the timestep to the VAE latent
    noise_seed: int = 0  # each image's noise is seeded by (noise_seed, image id): results do not depend on order or workers (DiCLIP's noise is unseeded)
    prompt: str = ""  # text conditioning of the UNet (encoded once); DiCLIP uses the empty prompt
    grid: int = 20  # the CLIP patch grid g of R and the clusters (20: ViT-B/16 at 320 px; 8: the tiny CLIP at 64 px)
    diclip: DiclipRecipeParams = field(default_factory=DiclipRecipeParams)
    acr: AcrRecipeParams = field(default_factory=AcrRecipeParams)
    transition: TransitionParams = field(default_factory=TransitionParams)
    # --- storage and evaluation
    shard_images: int = SHARD_IMAGES
    splits: tuple[str, ...] = ()  # splits to compute; empty: the index's train and eval splits
    eval_split: str | None = None  # split of the metric (best-match IoU with masks); null: the index's eval split (parameters were chosen on train)
    eval_images: int = 200  # images of eval_split scored (the first ones in split order); 0: no metric
    eval_baselines: bool = True  # also score an untrained UNet of the same config and colour k-means with the same K
    compare_recipes: bool = True  # also score the other recipe on the same images (computed for the metric only)

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {', '.join(RESIZES)}, got {self.resize!r}")
        if self.image_size is not None and (self.image_size < 8 or self.image_size % 8):
            raise ValueError(f"image_size must be null or a multiple of 8 (>= 8), got {self.image_size}")
        if self.timestep is not None and not 0 <= self.timestep <= 999:
            raise ValueError(f"timestep must be null or lie in 0..999, got {self.timestep}")
        if self.schedule_steps < 1:
            raise ValueError(f"schedule_steps must be >= 1, got {self.schedule_steps}")
        if not 0 <= self.schedule_index < self.schedule_steps:
            raise ValueError(f"schedule_index must lie in 0..schedule_steps-1 ({self.schedule_steps - 1}), got {self.schedule_index}")
        if not 2 <= self.grid <= 255:
            raise ValueError(f"grid must lie in 2..255, got {self.grid}")
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


SURGERY_VARIANTS = ("diclip", "excel")
NORMALISATIONS = ("imagenet", "model")


@dataclass(frozen=True)
class CamsParams:
    """Stages cams and eval_cams (method.md Stage C): CLIP surgery CAMs with R, refinement, RAR, pseudo-labels.

    Defaults are DiCLIP's training-free path on ViT-B/16; the demo's params.yaml sets the tiny CLIP's.
    """

    clip_size: int = 320  # CLIP input side (square, aspect not kept): 320 for ViT-B/16 (20x20 patches)
    normalise: str = "imagenet"  # imagenet: ImageNet mean/std on the 0-255 scale (DiCLIP, ExCEL); model: the CLIP's own
    template: str = "a clean origami {}."  # prompt template (DiCLIP, ExCEL)
    prompt_names_file: str | None = "pipeline/data/words/voc_prompt_names.txt"  # one name per class in index order; null: the dataset's class names
    background_words_file: str | None = "pipeline/data/words/voc_background.txt"  # background texts (DiCLIP's 25); null: none
    attributes_file: str | None = None  # ExCEL's attribute enrichment (off in DiCLIP): JSON {class name: [descriptor sentences]}
    attribute_clusters: int = 112  # KMeans centres of the descriptor embeddings (ExCEL: 112 VOC, 224 COCO)
    attribute_drop: float = 0.1  # fraction of each class's lowest centre logits masked (ExCEL: 11 of 112)
    surgery: str = "diclip"  # diclip: last 3 blocks, softmax(qq) + 2 softmax(kk); excel: last 5, mean of qq, kk, vv
    surgery_blocks: int | None = None  # null: the variant's
    head_reduce: str = "sum"  # sum (DiCLIP, ExCEL) | mean | none
    token_norm: str = "token"  # token (L2 over tokens, DiCLIP/ExCEL code) | feature (cosine)
    cls_weighting: bool = True  # class-token text weights in feature surgery
    vce: bool = True  # add stage A's R to every surgery head (method.md C1)
    refine: bool = True  # affinity refinement inside per-class boxes (C5)
    box_threshold: float = 0.88  # of the CAM's max (DiCLIP's training-free path 0.88)
    affinity_blocks: int = 6
    sinkhorn_rounds: int = 3
    exclusive_box_end: bool = True  # ExCEL's boxes never cover the last grid row/column
    rar: bool = True  # random walk with stage A's P (C6)
    rar_iterations: int = 10
    bg_threshold: float | None = None  # null: background = 1 - max (DiCLIP); else a constant background score, chosen on eval_split
    par: bool = False  # PAR on the full-size [background, classes] scores before the argmax (ExCEL; not DiCLIP)
    par_iterations: int = 20
    ignore_band: tuple[float, float] | None = None  # [low, high]: pixels whose best class score lies in (low, high] become 255; null: none (DiCLIP)
    scales: tuple[float, ...] = (1.0,)  # CLIP input scales of clip_size (DiCLIP: 1.0 only; CLIP-ES/ExCEL-style: e.g. [1.0, 0.5, 1.5, 2.0]); must hold 1.0, whose attention refines
    flip: bool = False  # also run the mirrored image at every scale (in the same batch) and keep the max
    cache_weight: float = 0.5  # TSA cache CAM fused as minmax(cache_weight * cache + text) (DiCLIP 0.5); 0: no cache
    batch_images: int = 1  # images per CLIP forward (groups fixed by position, so results never depend on workers); more pays on a GPU
    shard_images: int = SHARD_IMAGES
    eval_thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # eval_cams: background scores swept on the eval split

    def __post_init__(self) -> None:
        if self.clip_size < 8:
            raise ValueError(f"clip_size must be >= 8, got {self.clip_size}")
        if self.normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {', '.join(NORMALISATIONS)}, got {self.normalise!r}")
        if "{}" not in self.template:
            raise ValueError(f"template must contain {{}} where the class name goes, got {self.template!r}")
        if self.surgery not in SURGERY_VARIANTS:
            raise ValueError(f"surgery must be one of {', '.join(SURGERY_VARIANTS)}, got {self.surgery!r}")
        if self.surgery_blocks is not None and self.surgery_blocks < 1:
            raise ValueError(f"surgery_blocks must be null or >= 1, got {self.surgery_blocks}")
        if self.head_reduce not in ("sum", "mean", "none"):
            raise ValueError(f"head_reduce must be one of sum, mean, none, got {self.head_reduce!r}")
        if self.token_norm not in ("token", "feature"):
            raise ValueError(f"token_norm must be token or feature, got {self.token_norm!r}")
        if not 0 < self.box_threshold < 1:
            raise ValueError(f"box_threshold must lie in (0, 1), got {self.box_threshold}")
        if self.ignore_band is not None and (len(self.ignore_band) != 2 or not 0 <= self.ignore_band[0] < self.ignore_band[1] <= 1):
            raise ValueError(f"ignore_band must be null or [low, high] with 0 <= low < high <= 1, got {list(self.ignore_band)}")
        if self.cache_weight < 0:
            raise ValueError(f"cache_weight must be >= 0 (0 turns the cache off), got {self.cache_weight}")
        if not 0 <= self.attribute_drop < 1:
            raise ValueError(f"attribute_drop must lie in [0, 1), got {self.attribute_drop}")
        for name in ("affinity_blocks", "sinkhorn_rounds", "rar_iterations", "par_iterations", "shard_images",
                     "attribute_clusters", "batch_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if 1.0 not in self.scales or any(not x > 0 for x in self.scales) or len(set(self.scales)) != len(self.scales):
            raise ValueError(f"scales must be distinct positive factors including 1.0 (the base scale), got {list(self.scales)}")
        if self.bg_threshold is not None and not 0 <= self.bg_threshold <= 1:
            raise ValueError(f"bg_threshold must be null or lie in [0, 1], got {self.bg_threshold}")


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


@dataclass(frozen=True)
class TsaAdaptParams:
    """Stage tsa_adapt (method.md C8, offline): the key/value adapter trained alone on round-1 pseudo-labels,
    then round-2 CAMs and pseudo-labels with it. Defaults are DiCLIP's VOC values where it has them."""

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


@dataclass(frozen=True)
class TrainParams:
    """Stage train (method.md Stage D): the segmenter from the stored pseudo-labels. Defaults are DiCLIP's
    VOC values (COCO: lr 1e-3, warmup 200, 100k iterations; the coco preset)."""

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
        from pipeline.segment.names import ARCHITECTURE_NAMES

        if self.architecture not in ARCHITECTURE_NAMES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURE_NAMES)}, got {self.architecture!r}")


@dataclass(frozen=True)
class EvaluateParams:
    """Stage evaluate (method.md Stage D, DiCLIP's evaluation): multi-scale + flip inference, optional CRF."""

    size: int = 320  # the image is resized to size x size times each scale
    scales: tuple[float, ...] = (0.7, 1.0, 1.2, 1.5)
    flip: bool = True  # mirrored passes at every scale but 1.0
    fraction: float = 0.4  # logits are averaged at this fraction of the image size, then upsampled
    crf: bool = False  # DenseCRF on the softmax (needs pydensecrf2: pip install 'diclip[crf]')
    crf_iterations: int = 10
    crf_pos_xy: float = 1.0
    crf_pos_weight: float = 3.0
    crf_bi_xy: float = 67.0
    crf_bi_rgb: float = 3.0
    crf_bi_weight: float = 4.0
    shard_images: int = SHARD_IMAGES

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be a non-empty list of positive factors, got {list(self.scales)}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.crf:
            import importlib.util

            if importlib.util.find_spec("pydensecrf") is None:
                raise ValueError("crf: true needs the pydensecrf2 package (pip install 'diclip[crf]'; it compiles "
                                 "from source with gcc), or set crf: false")


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

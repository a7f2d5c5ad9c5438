"""Stage A's configuration: the `diffusion_attention` params section is `StageAConfig` plus storage keys.

One declaration per knob: the params section (pipeline.params.sections) subclasses these classes, so
a field's name, default and check are written here only. Defaults reproduce DiCLIP on SD 2.1-base
(method.md Stage A); the demo's params.yaml sets the tiny SD's values. Declarations only (no torch):
params are validated before anything heavy is imported, and this module's values enter a stage's
key as resolved params, not as code (pipeline.codegraph).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SD21_CORRELATION_LAYER = "up_blocks.1.attentions.2.transformer_blocks.0.attn1"  # 10x10 tokens at 320 px (method.md A2)
SD21_TRANSITION_LAYER = "up_blocks.3.attentions.1.transformer_blocks.0.attn1"  # 40x40 tokens at 320 px (method.md A5)
RECIPES = ("diclip", "acr")
RESIZES = ("diclip", "antialias")  # pipeline.diffusion.sd_input.sd_pixels
KL_PRECISIONS = ("float16", "float32")  # pipeline.diffusion.kl_assign
STORE_DTYPES = ("float16", "float32")


def _check_heads(where: str, heads: tuple[int, ...]) -> None:
    if not heads or any(h < 0 for h in heads):
        raise ValueError(f"{where} must list one or more 0-based head indices, got {list(heads)}")


@dataclass(frozen=True)
class DiclipConfig:
    """Recipe `diclip` (method.md Stage A 2-4): one layer's selected heads -> A -> KL assignment -> R."""

    layer: str = SD21_CORRELATION_LAYER  # diffusers module path of the correlation layer (DiCLIP's bracket spelling accepted); the stage lists the valid ones when it is wrong
    heads: tuple[int, ...] = (1, 2)  # 0-based heads whose normalised q~k~^T maps are multiplied in this order (DiCLIP: 1 and 2)
    threshold: float = 0.2  # entries below this fraction of their column's max are zeroed (DiCLIP 0.2)
    anchor_stride: int | None = None  # anchors at range(0, grid, stride)^2; null: grid // 3 (DiCLIP: 0, 6, 12, 18 on 20x20 -> 16 anchors)
    rounds: int = 5  # nearest-anchor assignment rounds (DiCLIP 5)
    kl_precision: str = "float16"  # float16: DiCLIP's distance, whose rounding decides its ties (its ids exactly); float32: ours, ties separated

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
        if self.kl_precision not in KL_PRECISIONS:
            raise ValueError(f"kl_precision must be one of {', '.join(KL_PRECISIONS)}, got {self.kl_precision!r}")


@dataclass(frozen=True)
class AcrConfig:
    """Recipe `acr` (the project's recipe before DiCLIP's code was public): every self-attention layer
    aggregated at the cluster grid, DiffSeg KL merging, k-means (pipeline.diffusion.acr); R = cluster-mean
    rows of the aggregate."""

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
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.merge_kl, bool) or not isinstance(self.merge_kl, (int, float)) or not self.merge_kl > 0:
            raise ValueError(f"merge_kl must be > 0, got {self.merge_kl!r}")
        if isinstance(self.max_clusters, bool) or not isinstance(self.max_clusters, int) or not 1 <= self.max_clusters <= 255:
            raise ValueError(f"max_clusters must lie in 1..255 (cluster ids are uint8), got {self.max_clusters!r}")


@dataclass(frozen=True)
class TransitionConfig:
    """The RAR transition P (method.md Stage A 5-6), stored sparsely for the cams stage."""

    layer: str = SD21_TRANSITION_LAYER  # diffusers module path of the RAR layer (its token grid is P's grid)
    heads: tuple[int, ...] = (1, 2)  # 0-based heads whose softmax probabilities are averaged (DiCLIP 1 and 2)
    sharpen: float = 0.02  # DiCLIP's p + s log10(e p) sharpening after the column-max normalisation (0: none)
    topk: int = 64  # entries kept per row (values renormalised; exact for rows with <= topk non-zeros); 0: no P stored
    store_dtype: str = "float16"  # of the stored values: float16 (ours, half the bytes) | float32 (with topk >= a row's non-zeros: DiCLIP's P exactly)

    def __post_init__(self) -> None:
        if not self.layer.strip():
            raise ValueError("layer must name a self-attention layer, got an empty string")
        _check_heads("heads", self.heads)
        if self.sharpen < 0:
            raise ValueError(f"sharpen must be >= 0, got {self.sharpen}")
        if not 0 <= self.topk <= 32767:
            raise ValueError(f"topk must lie in 0..32767 (ids are int16), got {self.topk}")
        if self.store_dtype not in STORE_DTYPES:
            raise ValueError(f"store_dtype must be one of {', '.join(STORE_DTYPES)}, got {self.store_dtype!r}")


@dataclass(frozen=True)
class StageAConfig:
    """One SD forward per image -> clusters, refined patch correlation R and RAR transition P.

    `image_size` and `timestep` may be null here; `pipeline.diffusion.plan` resolves them against the
    model's own configs, and the per-image function takes only resolved values."""

    recipe: str = "diclip"  # diclip (method.md A2-4) | acr (all layers aggregated, KL merging + k-means)
    # --- the forward pass (the model itself: models.sd.model, models.device, models.precision)
    image_size: int | None = 320  # images are resized to this square size before the VAE (DiCLIP: its 320 px CLIP input); null: the model's native size
    resize: str = "diclip"  # diclip: DiCLIP's SD input (its ImageNet-normalised CLIP input de-normalised, truncated to uint8, float16); antialias: the image resized with antialiasing, float32
    timestep: int | None = None  # diffusion timestep of the forward; null: the model's own scheduler at schedule_steps, entry schedule_index (SD 2.1-base's PNDM: 101)
    schedule_steps: int = 50  # with timestep null: inference steps the scheduler is set to (DiCLIP 50)
    schedule_index: int = 45  # with timestep null: which of its timesteps (DiCLIP 45)
    add_noise: bool = True  # add the scheduler's noise for the timestep to the VAE latent
    noise_seed: int = 0  # each image's noise is seeded by (noise_seed, image id): results do not depend on order or workers (DiCLIP's noise is unseeded)
    prompt: str = ""  # text conditioning of the UNet (encoded once); DiCLIP uses the empty prompt
    grid: int = 20  # the CLIP patch grid g of R and the clusters (20: ViT-B/16 at 320 px; 8: the tiny CLIP at 64 px)
    diclip: DiclipConfig = field(default_factory=DiclipConfig)
    acr: AcrConfig = field(default_factory=AcrConfig)
    transition: TransitionConfig = field(default_factory=TransitionConfig)

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

"""The CAM path's configuration (method.md Stage C): the `cams` params section is `CamConfig` plus
storage and evaluation keys.

One declaration per knob: the params section (pipeline.params.sections) subclasses `CamConfig`, and the
CAM path (`pipeline.cam.pseudo_labels.ImageCams`), the TSA cache's masks and the report take that
section as their config, so a field's name, default and check are written here only. Defaults are
DiCLIP's training-free path on ViT-B/16; the demo's params.yaml sets the tiny CLIP's. Declarations
only (no torch): params are validated before anything heavy is imported, and this module's values
enter a stage's key as resolved params, not as code (pipeline.codegraph).
"""

from __future__ import annotations

from dataclasses import dataclass

SURGERY_VARIANTS = ("diclip", "excel")  # their blocks and q/k/v weights: pipeline.cam.pseudo_labels
NORMALISATIONS = ("imagenet", "model")
CACHE_SCORES = ("diclip", "cosine")  # pipeline.tsa.retrieval
STORE_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class CamConfig:
    """CLIP surgery CAMs with stage A's R, the TSA cache, refinement, RAR and the label rule: every switch,
    so ablations run the same code."""

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
    cache_scores: str = "diclip"  # diclip: keys as they are, class-token weights, DiCLIP's min-max | cosine: unit keys and tokens, no weights (ours before issue 23)
    label_upsample: int | None = 512  # CAMs pass through this square size on the way to the image (DiCLIP 512); null: straight to the image
    store_dtype: str = "float16"  # of the stored CAMs, which the labels are made from: float16 (ours, half the bytes) | float32 (DiCLIP's labels exactly)

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
        for name in ("affinity_blocks", "sinkhorn_rounds", "rar_iterations", "par_iterations", "attribute_clusters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if 1.0 not in self.scales or any(not x > 0 for x in self.scales) or len(set(self.scales)) != len(self.scales):
            raise ValueError(f"scales must be distinct positive factors including 1.0 (the base scale), got {list(self.scales)}")
        if self.cache_scores not in CACHE_SCORES:
            raise ValueError(f"cache_scores must be one of {', '.join(CACHE_SCORES)}, got {self.cache_scores!r}")
        if self.label_upsample is not None and self.label_upsample < 1:
            raise ValueError(f"label_upsample must be null or >= 1, got {self.label_upsample}")
        if self.store_dtype not in STORE_DTYPES:
            raise ValueError(f"store_dtype must be one of {', '.join(STORE_DTYPES)}, got {self.store_dtype!r}")
        if self.bg_threshold is not None and not 0 <= self.bg_threshold <= 1:
            raise ValueError(f"bg_threshold must be null or lie in [0, 1], got {self.bg_threshold}")

"""Train the tiny CLIP from scratch on the shapes world (CPU friendly), save it, and evaluate it.

``train_clip(ClipPretrainConfig(...), out_dir)`` renders a fixed pool of shapes scenes
(``scene_seed(world_seed, "clip_pretrain", i)``, JPEG round trip as the demo dataset's files),
captions each with the classes it holds ("a photo of a disk and a star."), and trains the open_clip
architecture ``model_name`` contrastively with AdamW and a warmup + cosine schedule. Few distinct
class sets exist (58 in 500 scenes), so a batch holds repeated sets: every caption of the same class
set counts as a positive (multi-positive targets, rows normalised), whatever template it used.
An auxiliary multi-label term (``class_loss_weight``) scores every image against one single-class
caption per class ("a picture of a ring.", template drawn per step) with a sigmoid loss on the
cosine (training-only scale and per-class bias, not saved): the same image-level information as the
captions, stated per class, which is what zero-shot presence and the CAM's class texts ask for.

Determinism: ``torch.manual_seed(seed)`` before the model is built, and one
``numpy.random.default_rng(seed)`` drawing, in a fixed order per step, the pool permutation (one per
epoch), each caption's template and object order, and the flips. With the same thread count, two
runs give identical weights. ``max_minutes`` fixes the step count from the speed of the first
warmup steps (warmup does not depend on the total), so a timed run is reproduced exactly by its
recorded ``steps``.

Output in ``out_dir``: ``open_clip_model.safetensors`` (fp16 state dict, loaded back to fp32 by
``load_clip(model_name, path)``, checked to give exactly the saved values) and ``manifest.json``
(config, data fingerprint, training record, metrics, library versions).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.cam.images import to_clip_input
from pipeline.cam.text import encode_text_trimmed
from pipeline.data.shapes import CLASS_NAMES, ShapesConfig
from pipeline.tiny.eval_clip import ClipEvalConfig, SceneSet, evaluate_clip, render_scenes
from pipeline.tiny.manifest import file_sha256, jsonable, library_versions, write_manifest

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "open_clip_model.safetensors"
MANIFEST_FORMAT = 1
#: caption templates; "{}" is the object list ("a disk", "a disk and a star", "a bar, a ring and a boat")
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of {}.",
    "a picture of {}.",
    "an image of {}.",
    "a scene with {}.",
    "a rendering of {}.",
    "{}.",
)


@dataclass(frozen=True)
class ClipPretrainConfig:
    """Every knob of :func:`train_clip`."""

    model_name: str = "diclip-tiny-vit-p8-64"  # open_clip architecture (registered tiny config)
    seed: int = 0                     # torch init + the numpy generator of data order, captions, flips
    world_seed: int = 0               # shapes world seed (the demo dataset uses 0)
    split: str = "clip_pretrain"      # scene_seed split name of the training pool
    num_images: int = 50_000          # pre-rendered training pool
    jpeg_roundtrip: bool = True       # pool images pass the demo dataset's JPEG encoding
    batch_size: int = 128
    steps: int = 2000                 # optimiser steps (ignored when max_minutes is set)
    max_minutes: float | None = None  # training-loop budget: fixes the step count after calibration
    calibration_steps: int = 20       # steps timed to turn max_minutes into a step count (<= warmup)
    lr: float = 1e-3                  # peak learning rate
    min_lr: float = 0.0               # cosine floor
    warmup_steps: int = 100           # linear warmup from 0
    weight_decay: float = 0.1         # on >= 2-D weights (open_clip's rule), not on norms/biases/scale
    betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-6
    grad_clip: float = 1.0            # max global grad norm; 0 disables
    hflip_prob: float = 0.5           # horizontal flips only (boats stay upright on their water)
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    class_loss_weight: float = 1.0    # auxiliary multi-label loss on single-class captions (0 disables)
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0
    threads: int = 1                  # torch CPU threads during training and evaluation
    log_every: int = 50
    evaluate: bool = True             # evaluate the saved checkpoint (ClipEvalConfig) into the manifest
    eval: ClipEvalConfig = field(default_factory=ClipEvalConfig)

    def __post_init__(self) -> None:
        positive = ("num_images", "batch_size", "steps", "warmup_steps", "threads", "log_every", "calibration_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0 or None, got {self.max_minutes!r}")
        if self.calibration_steps > self.warmup_steps:
            raise ValueError("calibration_steps must not exceed warmup_steps (warmup must not depend on the total)")
        if not self.templates or any(t.count("{}") != 1 for t in self.templates):
            raise ValueError("templates must be a non-empty tuple of strings with exactly one '{}'")
        if self.class_loss_weight < 0:
            raise ValueError(f"class_loss_weight must be >= 0, got {self.class_loss_weight!r}")
        if not 0.0 <= self.hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {self.hflip_prob!r}")
        object.__setattr__(self, "templates", tuple(self.templates))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))


# --- captions and targets -----------------------------------------------------------------------


def caption(labels: Sequence[int], rng: np.random.Generator, templates: Sequence[str] = DEFAULT_TEMPLATES,
            class_names: Sequence[str] = CLASS_NAMES) -> str:
    """A caption naming the classes ``labels`` (class indices 0..C-1) in random order and template."""
    objects = [f"a {class_names[c]}" for c in labels]
    order = rng.permutation(len(objects))
    objects = [objects[i] for i in order]
    text = objects[0] if len(objects) == 1 else ", ".join(objects[:-1]) + " and " + objects[-1]
    return templates[int(rng.integers(len(templates)))].format(text)


def class_set_keys(labels: np.ndarray) -> np.ndarray:
    """(N,) int64 key of each image's class set from multi-hot labels (N, C): equal sets, equal keys."""
    return (np.asarray(labels, np.int64) << np.arange(labels.shape[1], dtype=np.int64)).sum(1)


def multi_positive_targets(keys: torch.Tensor) -> torch.Tensor:
    """(B, B) contrastive targets: 1 where captions/images share a class-set key, rows normalised to 1."""
    same = (keys[:, None] == keys[None, :]).float()
    return same / same.sum(1, keepdim=True)


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, keys: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE over a batch of (B, E) image and caption embeddings."""
    logits = logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T  # (B, B)
    targets = multi_positive_targets(keys)  # symmetric, so the same for both directions
    loss_i = -(targets * logits.log_softmax(1)).sum(1).mean()
    loss_t = -(targets * logits.T.log_softmax(1)).sum(1).mean()
    return 0.5 * (loss_i + loss_t)


class ClassCaptionHead(nn.Module):
    """Training-only scale and per-class bias of the auxiliary loss (never saved with the model)."""

    def __init__(self, num_classes: int, init_scale: float = 10.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean sigmoid BCE of (B, C) image-vs-class-caption cosines against multi-hot labels (B, C)."""
        cos = F.normalize(image_emb, dim=-1) @ F.normalize(class_emb, dim=-1).T
        logits = self.log_scale.exp() * cos + self.bias
        return F.binary_cross_entropy_with_logits(logits, labels.float())


def lr_at(step: int, total: int, config: ClipPretrainConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total``: linear warmup, then cosine."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def data_fingerprint(config: ClipPretrainConfig, world: ShapesConfig | None = None) -> dict[str, Any]:
    """What identifies the training data: the world config's sha256 (sorted JSON), seed, split, count."""
    world = world or ShapesConfig()
    world_json = json.dumps(dataclasses.asdict(world), sort_keys=True, separators=(",", ":"))
    record = {
        "shapes_config_sha256": hashlib.sha256(world_json.encode()).hexdigest(),
        "world_seed": config.world_seed,
        "split": config.split,
        "num_images": config.num_images,
        "jpeg_roundtrip": config.jpeg_roundtrip,
    }
    blob = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return {**record, "sha256": hashlib.sha256(blob).hexdigest()}


# --- training -----------------------------------------------------------------------------------


@dataclass
class _Batches:
    """Deterministic stream of (images (B,3,S,S), tokens (B,L), keys (B,)) from a pool."""

    pool: SceneSet
    config: ClipPretrainConfig
    visual: nn.Module
    tokenizer: Any

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.config.seed)
        self.keys = torch.from_numpy(class_set_keys(self.pool.labels))
        self.class_lists = [np.flatnonzero(row).tolist() for row in self.pool.labels]
        self.order = np.empty(0, np.int64)
        self.epoch = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """images (B, 3, S, S), caption tokens (B, L), class-set keys (B,), labels (B, C), class tokens (C, L)."""
        bs = self.config.batch_size
        if len(self.order) < bs:  # new epoch: a fresh permutation appended to the leftovers
            self.order = np.concatenate([self.order, self.rng.permutation(len(self.pool))])
            self.epoch += 1
        idx, self.order = self.order[:bs], self.order[bs:]
        texts = [caption(self.class_lists[i], self.rng, self.config.templates) for i in idx]
        flips = torch.from_numpy(self.rng.random(bs) < self.config.hflip_prob)
        images = to_clip_input(self.pool.images[idx], self.visual)
        images = torch.where(flips[:, None, None, None], images.flip(3), images)
        classes = [caption([c], self.rng, self.config.templates) for c in range(self.pool.labels.shape[1])]
        return (images, self.tokenizer(texts), self.keys[torch.from_numpy(idx)],
                torch.from_numpy(self.pool.labels[idx]), self.tokenizer(classes))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's rule: no weight decay on < 2-D params, norms, biases and the logit scale."""
    def exclude(name: str, p: torch.Tensor) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0}]


@dataclass
class FitResult:
    """What :func:`fit_clip` returns: the trained model (train mode) and its training record."""

    model: nn.Module
    steps: int
    train_s: float
    train_cpu_s: float           # process CPU time of the loop (wall time inflates when cores are shared)
    final_loss: float
    history: list[list[float]]   # [step, seconds, loss] every log_every steps
    epochs_started: int


def fit_clip(config: ClipPretrainConfig, pool: SceneSet, *, progress: bool = True) -> FitResult:
    """Build ``config.model_name`` from ``config.seed`` and train it on ``pool`` (threads as set by the caller)."""
    import open_clip
    from tqdm import tqdm

    import pipeline.models.clip  # noqa: F401  (registers the tiny configs)

    torch.manual_seed(config.seed)
    model = open_clip.create_model(config.model_name, pretrained=None, device="cpu")
    with torch.no_grad():
        model.logit_scale.fill_(config.init_logit_scale)
    model.train()
    batches = _Batches(pool, config, model.visual, open_clip.get_tokenizer(config.model_name))
    head = ClassCaptionHead(pool.labels.shape[1])
    groups = _param_groups(model, config.weight_decay)
    groups[1]["params"] += list(head.parameters())
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.adam_eps)
    timed = config.max_minutes is not None
    total = config.calibration_steps if timed else config.steps
    history: list[list[float]] = []
    t_loop, cpu_loop = time.perf_counter(), time.process_time()
    bar = tqdm(total=None if timed else total, desc="train clip", unit="step", disable=not progress,
               mininterval=5.0)
    step = 0
    loss = torch.tensor(float("nan"))
    while step < total:
        lr = lr_at(step, total, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, tokens, keys, labels, class_tokens = batches.next()
        image_emb = model.encode_image(images)
        if config.class_loss_weight > 0:  # one text pass for the captions and the class captions
            text_emb = encode_text_trimmed(model, torch.cat([tokens, class_tokens]))
            text_emb, class_emb = text_emb[:len(tokens)], text_emb[len(tokens):]
            loss = contrastive_loss(image_emb, text_emb, keys, model.logit_scale.exp()) \
                + config.class_loss_weight * head(image_emb, class_emb, labels)
        else:
            text_emb = encode_text_trimmed(model, tokens)
            loss = contrastive_loss(image_emb, text_emb, keys, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([*model.parameters(), *head.parameters()], config.grad_clip)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(config.max_logit_scale))
        step += 1
        bar.update(1)
        if timed and step == config.calibration_steps:  # warmup so far: the total never mattered
            per_step = (time.perf_counter() - t_loop) / step
            total = max(config.warmup_steps + 1, int(config.max_minutes * 60 / per_step))
            bar.total = total
            logger.info("%.2f s/step: %.1f min -> %d steps", per_step, config.max_minutes, total)
        if step % config.log_every == 0 or step == total:
            history.append([step, round(time.perf_counter() - t_loop, 1), round(loss.item(), 4)])
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", scale=f"{model.logit_scale.exp().item():.1f}")
            logger.info("step %d/%d loss %.4f lr %.2e scale %.1f (%.0f s)", step, total, loss.item(), lr,
                        model.logit_scale.exp().item(), time.perf_counter() - t_loop)
    bar.close()
    train_s, train_cpu_s = time.perf_counter() - t_loop, time.process_time() - cpu_loop
    logger.info("trained %d steps in %.0f s (%.0f s CPU; final loss %.4f)", step, train_s, train_cpu_s, loss.item())
    return FitResult(model, step, train_s, train_cpu_s, loss.item(), history, batches.epoch)


def train_clip(config: ClipPretrainConfig, out_dir: str | os.PathLike[str], *, progress: bool = True,
               command: str | None = None) -> dict[str, Any]:
    """Render the pool, train (:func:`fit_clip`), save to ``out_dir`` and evaluate; return the manifest.

    ``out_dir`` receives ``open_clip_model.safetensors`` and ``manifest.json``. ``command`` is
    recorded in the manifest (the CLI passes its canonical command line).
    """
    from pipeline.models.clip import load_clip

    out_dir = Path(out_dir)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        t_start = time.perf_counter()
        pool = render_scenes(config.split, config.num_images, world_seed=config.world_seed,
                             jpeg=config.jpeg_roundtrip, progress=progress)
        render_s = time.perf_counter() - t_start
        logger.info("rendered %d training scenes in %.0f s", len(pool), render_s)
        fit = fit_clip(config, pool, progress=progress)

        checkpoint = save_fp16_checkpoint(fit.model, out_dir / CHECKPOINT_NAME)
        loaded = load_clip(config.model_name, str(checkpoint), device="cpu")
        verify_checkpoint(loaded.model, checkpoint)
        manifest: dict[str, Any] = {
            "format_version": MANIFEST_FORMAT,
            "model_name": config.model_name,
            "checkpoint": CHECKPOINT_NAME,
            "checkpoint_sha256": file_sha256(checkpoint),
            "checkpoint_bytes": checkpoint.stat().st_size,
            "checkpoint_dtype": "float16",
            "command": command,
            "seed": config.seed,
            "config": jsonable(dataclasses.asdict(config)),
            "data": data_fingerprint(config),
            "training": {
                "steps": fit.steps,
                "batch_size": config.batch_size,
                "images_seen": fit.steps * config.batch_size,
                "epochs_started": fit.epochs_started,
                "train_wall_time_s": round(fit.train_s, 1),
                "train_cpu_time_s": round(fit.train_cpu_s, 1),
                "render_wall_time_s": round(render_s, 1),
                "threads": config.threads,
                "final_loss": round(fit.final_loss, 4),
                "final_logit_scale": round(fit.model.logit_scale.exp().item(), 3),
                "loss_history": fit.history,
                "data_order": "numpy default_rng(seed): a pool permutation per epoch; per step the captions "
                              "(template, object order), the flips, then one class caption per class; "
                              "torch.manual_seed(seed) before init",
            },
            "versions": library_versions("open_clip"),
        }
        if config.evaluate:
            manifest["metrics"] = evaluate_clip(loaded.model, loaded.tokenizer, config.eval,
                                                model_name=config.model_name, progress=progress)
        write_manifest(out_dir, manifest)
        return manifest
    finally:
        torch.set_num_threads(previous_threads)


# --- checkpoint ---------------------------------------------------------------------------------


def save_fp16_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save ``model``'s state dict in float16 (safetensors) without changing ``model``."""
    from pipeline.models.clip import save_clip_checkpoint

    half = copy.deepcopy(model).half()
    return save_clip_checkpoint(half, path)


def verify_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Raise unless ``model``'s state dict equals the saved tensors exactly (up-cast to its dtype)."""
    from safetensors.torch import load_file

    saved = load_file(str(path))
    state = model.state_dict()
    if set(saved) != set(state):
        raise RuntimeError(f"checkpoint keys differ from the model's: {sorted(set(saved) ^ set(state))[:5]}")
    bad = [k for k, v in saved.items() if not torch.equal(state[k], v.to(state[k].dtype))]
    if bad:
        raise RuntimeError(f"loaded weights differ from the saved ones for {bad[:5]}")


def evaluate_checkpoint(path: Path, model_name: str, world_seed: int, sizes: dict[str, int], threads: int,
                        metrics_out: Path | None, progress: bool) -> dict:
    """`diclip shapes pretrain-clip --eval-only`: evaluate a checkpoint (a file or a weights folder) as
    it was evaluated when trained (its manifest's settings), optionally writing the metrics as JSON."""
    import json

    from pipeline.models import load_clip
    from pipeline.tiny.eval_clip import ClipEvalConfig, evaluate_clip
    from pipeline.tiny.manifest import MANIFEST_NAME

    checkpoint = path / CHECKPOINT_NAME if path.is_dir() else path
    manifest = checkpoint.parent / MANIFEST_NAME
    eval_config = ClipEvalConfig(world_seed=world_seed, **sizes)
    if manifest.is_file():  # evaluate as the checkpoint was evaluated when it was trained
        record = json.loads(manifest.read_text(encoding="utf-8"))
        model_name = record.get("model_name", model_name)
        saved = record.get("config", {}).get("eval")
        if saved:
            eval_config = ClipEvalConfig(**{**saved, "thresholds": tuple(saved["thresholds"]),
                                            "world_seed": world_seed, **sizes})
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        loaded = load_clip(model_name, str(checkpoint), device="cpu")
        metrics = evaluate_clip(loaded.model, loaded.tokenizer, eval_config, model_name=model_name, progress=progress)
    finally:
        torch.set_num_threads(previous)
    if metrics_out is not None:
        metrics_out.parent.mkdir(parents=True, exist_ok=True)
        metrics_out.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics

"""Train the tiny Stable Diffusion on the shapes world: the VAE first, then UNet + text encoder on latents.

The result is an ordinary diffusers ``StableDiffusionPipeline`` directory (fp16 safetensors) that
:func:`pipeline.models.load_stable_diffusion` loads exactly as it loads SD 2.1-base.

Recipe (every knob is a field of :class:`SDPretrainConfig`):

* **Data**: ``n_scenes`` demo-world scenes ``render_scene(scene_seed(world_seed, split, i), ShapesConfig())``
  plus ``n_single_scenes`` single-object scenes (``max_objects=1``) from the split ``f"{split}_single"``, so
  that "a photo of a {class}." has clean examples to learn from. Captions name the present classes in a
  random order through one of ``caption_templates`` ("a photo of a disk and a star."); a scene whose objects
  were all dropped by occlusion gets the empty caption.
* **VAE** (``AutoencoderKL``): L1 + L2 reconstruction + a small KL on random ``vae_crop`` px crops (fully
  convolutional, 4x cheaper than whole scenes) with flips, the last ``vae_full_steps`` steps on whole
  scenes (image borders, the mid-block attention at full size); afterwards the latent scaling factor is
  set to 1 / std of the latents of the training scenes, as SD's 0.18215 was.
* **UNet + text encoder**: epsilon prediction on VAE latents (posterior samples times the scaling factor)
  noised with the DDIM scheduler's training betas; optional min-SNR loss weighting; the CLIP text encoder
  (random init) is trained jointly, because nothing pretrained exists to freeze; ``cfg_dropout`` of the
  captions is replaced by the empty caption for classifier-free guidance. EMA weights are shipped.

Determinism: a pure function of the config (seeded generators, one torch thread recommended). A
``*_minutes`` budget is turned into a step count after timing the first ``time_probe_steps`` steps
(before the learning-rate warmup ends, so the steps run before the count is known do not depend on
it); the record holds the steps, and passing them as ``*_steps`` reproduces the run.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pipeline import atomic
from pipeline.data.shapes import CLASS_NAMES, ShapesConfig, render_scene, scene_seed
from pipeline.interrupt import Interrupt, step_done
from pipeline.models.diffusion import (DEFAULT_TINY_SD, build_tiny_stable_diffusion, load_stable_diffusion,
                                       load_tiny_sd_config)
from pipeline.store.checkpoints import CheckpointStore
from pipeline.tiny.manifest import library_versions, write_manifest

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a {} on a cluttered background.",
)


@dataclass(frozen=True)
class SDPretrainConfig:
    """Every knob of tiny-SD pretraining. ``None`` minutes = run exactly ``*_steps`` steps."""

    seed: int = 0                          # initialisation, batch order, noise: the whole run
    tiny_config: str = DEFAULT_TINY_SD     # component sizes: tiny_configs/sd/<name>.json
    init: str | None = None                # a pipeline directory to fine-tune: its VAE is kept, UNet + text encoder go on
    image_sizes: tuple[int, ...] = ()      # UNet steps cycle through these input sizes (px); () = the scenes' own size
    # --- data
    world_seed: int = 0                    # shapes world seed (the demo world)
    split: str = "sd_pretrain"             # scene split name (never the demo dataset's train/val)
    n_scenes: int = 12000                  # demo-world scenes (1-3 objects)
    n_single_scenes: int = 6000            # single-object scenes, split f"{split}_single"
    caption_templates: tuple[str, ...] = DEFAULT_TEMPLATES
    cfg_dropout: float = 0.1               # share of captions replaced by "" (classifier-free guidance)
    # --- VAE
    vae_steps: int = 1100
    vae_minutes: float | None = None       # wall-clock budget instead of vae_steps (converted to steps)
    vae_batch: int = 32
    vae_crop: int = 32                     # random square crop side (px) for VAE training
    vae_full_steps: int = 100              # the last this many VAE steps use whole scenes (borders, global attention)
    vae_full_batch: int = 16
    vae_lr: float = 1.5e-3
    vae_warmup: int = 50
    vae_l1_weight: float = 1.0
    vae_l2_weight: float = 1.0
    vae_kl_weight: float = 1e-4            # on the KL per latent element (mean over elements)
    # --- UNet + text encoder
    unet_steps: int = 4000                 # loss is flat after ~1000 steps, but 4000 vs 2000 raised attention-cluster IoU ~0.02 (README)
    unet_minutes: float | None = None
    unet_batch: int = 64
    unet_lr: float = 1.5e-3
    text_lr: float = 1e-3
    unet_warmup: int = 100
    train_text_encoder: bool = True        # False: the text encoder stays at its seeded random init
    min_snr_gamma: float | None = 5.0      # min-SNR-gamma loss weighting (None: plain MSE)
    ema_decay: float = 0.998               # EMA of UNet (and text encoder); warmed up as (1+s)/(10+s)
    grad_clip: float = 1.0
    encode_batch: int = 128                # batch for encoding the training scenes to latents
    time_probe_steps: int = 20             # steps timed to turn a minutes budget into steps
    log_every: int = 50

    def __post_init__(self) -> None:
        load_tiny_sd_config(self.tiny_config)  # an unknown name fails here (naming the shipped ones), before any rendering
        if self.n_scenes + self.n_single_scenes < 1:
            raise ValueError("n_scenes + n_single_scenes must be >= 1")
        if not self.caption_templates or any(t.count("{}") != 1 for t in self.caption_templates):
            raise ValueError("caption_templates must be non-empty, each with exactly one '{}'")
        object.__setattr__(self, "caption_templates", tuple(self.caption_templates))
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise ValueError(f"cfg_dropout must be in [0, 1), got {self.cfg_dropout}")
        for name in ("vae_steps", "unet_steps", "vae_batch", "vae_full_batch", "unet_batch", "encode_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.time_probe_steps > min(self.vae_warmup, self.unet_warmup):
            raise ValueError("time_probe_steps must not exceed the warmups (the probe must not depend on the count)")
        if self.vae_crop % 8 or not 8 <= self.vae_crop <= ShapesConfig().image_size:
            raise ValueError(f"vae_crop must be a multiple of 8 in [8, image size], got {self.vae_crop}")
        object.__setattr__(self, "image_sizes", tuple(int(size) for size in self.image_sizes))
        if any(size < 16 or size % 16 for size in self.image_sizes):
            raise ValueError(f"image_sizes must be multiples of 16 (the VAE's 4 times the UNet's 2 downsamplings), "
                             f"got {list(self.image_sizes)}")
        if self.init is not None and not (Path(self.init) / "model_index.json").is_file():
            raise ValueError(f"init {self.init} is not a diffusers pipeline directory (no model_index.json)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["caption_templates"] = list(self.caption_templates)
        d["image_sizes"] = list(self.image_sizes)
        return d

    def input_sizes(self) -> tuple[int, ...]:
        """The UNet's training input sizes in px, in the order its steps cycle through them."""
        return self.image_sizes or (ShapesConfig().image_size,)


# --- data -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainScenes:
    images: np.ndarray                 # (N, S, S, 3) uint8
    labels: tuple[tuple[int, ...], ...]  # per scene: mask values present (1..C)


def single_object_world() -> ShapesConfig:
    """The demo world with one object per scene."""
    return ShapesConfig(max_objects=1)


def render_pretrain_scenes(config: SDPretrainConfig) -> PretrainScenes:
    """The training scenes: ``n_scenes`` demo-world scenes, then ``n_single_scenes`` single-object ones."""
    images, labels = [], []
    parts = ((config.split, ShapesConfig(), config.n_scenes),
             (f"{config.split}_single", single_object_world(), config.n_single_scenes))
    for split, world, count in parts:
        for i in range(count):
            scene = render_scene(scene_seed(config.world_seed, split, i), world)
            images.append(scene.image)
            labels.append(scene.labels)
    return PretrainScenes(np.stack(images), tuple(labels))


def data_fingerprint(config: SDPretrainConfig) -> dict[str, Any]:
    """What identifies the training data: world configs, seed, split names and counts, and their sha256."""
    record = {
        "world_seed": config.world_seed,
        "parts": [
            {"split": config.split, "count": config.n_scenes,
             "shapes_config": dataclasses.asdict(ShapesConfig())},
            {"split": f"{config.split}_single", "count": config.n_single_scenes,
             "shapes_config": dataclasses.asdict(single_object_world())},
        ],
    }
    if config.image_sizes:
        record["image_sizes"] = list(config.image_sizes)  # resized as stage A feeds SD (scenes_at_size)
    record["sha256"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return record


def scenes_at_size(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 scenes (N, S, S, 3) as stage A's `diclip` resize gives them to the VAE at ``size`` px (the CLIP
    input de-normalised and truncated to uint8; `pipeline.diffusion.sd_input`), so the UNet trains on the
    inputs it is read at. The scenes themselves at their own size."""
    if images.shape[1] == size:
        return images
    from pipeline.clip_input import IMAGENET_MEAN_255, IMAGENET_STD_255, normalise_then_resize
    from pipeline.diffusion.sd_input import diclip_sd_image

    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        clip_input = normalise_then_resize(image, size, mean=IMAGENET_MEAN_255, std=IMAGENET_STD_255)
        out[i] = (diclip_sd_image(clip_input)[0].float() * 255).round().byte().permute(1, 2, 0).numpy()
    return out


def init_fingerprint(init: str | os.PathLike[str]) -> dict[str, Any]:
    """The sha256 of a pipeline directory's weight files: what a fine-tune started from."""
    folder = Path(init)
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*/*.safetensors")):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return {"path": str(folder), "sha256": digest.hexdigest()}


def caption(labels: Sequence[int], template: str, rng: np.random.Generator) -> str:
    """"a photo of a disk and a star." for labels (1, 6): class names in a random order; "" for none."""
    if not labels:
        return ""
    names = [CLASS_NAMES[k - 1] for k in rng.permutation(np.asarray(labels))]
    joined = names[0] if len(names) == 1 else ", a ".join(names[:-1]) + " and a " + names[-1]
    return template.format(joined)


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the VAE's input range."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# --- schedules ------------------------------------------------------------------------------------


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup, then cosine to 0.1; the warmup part does not depend on ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


def _run_steps(
    step_fn: Callable[[int, int], dict[str, float]], *, steps: int, minutes: float | None,
    probe: int, log_every: int, name: str, resume: dict[str, Any] | None = None,
    save: Callable[[dict[str, Any]], None] | None = None, every: int = 0,
) -> dict[str, Any]:
    """Run ``step_fn(step, total)`` ``steps`` times, or as many as fit in ``minutes`` (timed on ``probe``).

    ``resume`` (a ``run`` dict an earlier ``save`` received) continues from its step with its total, history
    and wall time. ``save(run)`` is called every ``every`` steps, at the end, and on SIGTERM/SIGINT (then
    the run stops with :class:`TrainingInterrupted`); never before a minutes budget has settled the total,
    so a resumed run never re-times its probe.
    """
    run = resume or {"step": 0, "total": steps, "history": [], "wall_s": 0.0}
    total, step, history = int(run["total"]), int(run["step"]), list(run["history"])
    start = time.perf_counter() - float(run["wall_s"])  # wall time adds up over resumed sessions
    skip = probe // 2  # the first steps are slow (allocator, caches): time the second half of the probe
    interrupt = Interrupt()

    def snapshot() -> dict[str, Any]:
        return {"step": step, "total": total, "history": history, "wall_s": round(time.perf_counter() - start, 1)}

    try:
        while step < total:
            if step == skip:
                probe_start = time.perf_counter()
            stats = step_fn(step, total)
            step += 1
            if minutes is not None and step == probe:
                per_step = (time.perf_counter() - probe_start) / (probe - skip)
                total = max(probe, int((minutes * 60.0 - (time.perf_counter() - start)) / per_step) + probe)
                logger.info("%s: %.3f s/step -> %d steps for %.1f min", name, per_step, total, minutes)
            if step % log_every == 0 or step == total:
                stats = {k: round(float(v), 5) for k, v in stats.items()}
                history.append({"step": step, **stats})
                logger.info("%s step %d/%d %s (%.0fs)", name, step, total, stats, time.perf_counter() - start)
            settled = minutes is None or step >= probe
            if save is not None and settled and ((every and step % every == 0) or step == total or interrupt.raised):
                save(snapshot())
            if interrupt.raised:
                raise TrainingInterrupted(f"pretrain-sd: interrupted by signal {interrupt.raised} at {name} step {step}"
                                          + ("; checkpoint kept, rerun the same command to resume" if save else ""))
            step_done()
    finally:
        interrupt.restore()
    return {"steps": total, "wall_s": snapshot()["wall_s"], "history": history}


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT stopped pretraining after a checkpoint (rerun to resume)."""


def _rng_state(rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any]:
    return {"numpy": rng.bit_generator.state, "torch": gen.get_state()}


def _set_rng_state(rng: np.random.Generator, gen: torch.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = state["numpy"]
    gen.set_state(state["torch"])


# --- VAE ------------------------------------------------------------------------------------------


def _vae_batch(images: np.ndarray, rng: np.random.Generator, batch: int, crop: int) -> torch.Tensor:
    idx = rng.integers(0, len(images), batch)
    size = images.shape[1]
    ys, xs = rng.integers(0, size - crop + 1, (2, batch))
    flips = rng.random(batch) < 0.5
    crops = [images[i, y:y + crop, x:x + crop] for i, y, x in zip(idx, ys, xs)]
    crops = [c[:, ::-1] if f else c for c, f in zip(crops, flips)]
    return to_model_range(np.stack(crops))


def train_vae(vae: torch.nn.Module, images: np.ndarray, config: SDPretrainConfig, *,
              resume: dict[str, Any] | None = None, save: Callable[[dict[str, Any]], None] | None = None,
              every: int = 0) -> dict[str, Any]:
    """Train ``vae`` in place on random crops of ``images`` (N, S, S, 3) uint8; returns the run record.

    ``save(state)`` receives everything the run needs to continue (weights, optimiser, generators, the
    run's step and history) every ``every`` steps; ``resume`` is such a state: the run continues from it
    exactly as if it had never stopped."""
    rng = np.random.default_rng([config.seed, 1])
    gen = torch.Generator().manual_seed(config.seed * 1000 + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
    if resume is not None:
        vae.load_state_dict(resume["vae"])
        opt.load_state_dict(resume["opt"])
        _set_rng_state(rng, gen, resume["rng"])
    vae.train()

    def step_fn(step: int, total: int) -> dict[str, float]:
        for group in opt.param_groups:
            group["lr"] = config.vae_lr * _lr_factor(step, config.vae_warmup, total)
        full = step >= total - config.vae_full_steps
        x = _vae_batch(images, rng, config.vae_full_batch if full else config.vae_batch,
                       images.shape[1] if full else config.vae_crop)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=gen)).sample
        l1 = (rec - x).abs().mean()
        l2 = (rec - x).pow(2).mean()
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = config.vae_l1_weight * l1 + config.vae_l2_weight * l2 + config.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), config.grad_clip)
        opt.step()
        return {"loss": loss.item(), "l1": l1.item(), "kl": kl.item()}

    def save_state(run: dict[str, Any]) -> None:
        save({"vae": vae.state_dict(), "opt": opt.state_dict(), "rng": _rng_state(rng, gen), "run": run})

    record = _run_steps(step_fn, steps=config.vae_steps, minutes=config.vae_minutes,
                        probe=config.time_probe_steps, log_every=config.log_every, name="vae",
                        resume=None if resume is None else resume["run"], save=None if save is None else save_state, every=every)
    vae.eval()
    return record


@torch.no_grad()
def encode_posteriors(vae: torch.nn.Module, images: np.ndarray, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unscaled VAE posterior (mean, std), each (N, 4, S/4, S/4), of uint8 ``images`` (N, S, S, 3)."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        dist = vae.encode(to_model_range(images[i:i + batch])).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def latent_scaling_factor(mean: torch.Tensor, std: torch.Tensor) -> float:
    """1 / std of posterior samples (SD's recipe for its 0.18215), from the moments, noise-free."""
    second = (mean.pow(2) + std.pow(2)).mean()
    return float(1.0 / torch.sqrt(second - mean.mean().pow(2)))


# --- UNet + text encoder --------------------------------------------------------------------------


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1.0 - decay)


def train_unet(
    pipe: Any, mean: torch.Tensor | Sequence[torch.Tensor], std: torch.Tensor | Sequence[torch.Tensor],
    labels: Sequence[Sequence[int]], config: SDPretrainConfig,
    *, resume: dict[str, Any] | None = None, save: Callable[[dict[str, Any]], None] | None = None, every: int = 0,
) -> tuple[dict[str, Any], torch.nn.Module, torch.nn.Module]:
    """Train ``pipe.unet`` (and ``pipe.text_encoder``) on latents; returns (record, EMA unet, EMA text encoder).

    ``mean``/``std``: unscaled VAE posteriors (N, 4, h, w), or one pair per input size (the same N scenes),
    which step s uses the (s mod sizes)-th of; the latent is a fresh posterior sample each step, times
    ``pipe.vae.config.scaling_factor``. ``save`` / ``resume`` as in :func:`train_vae`.
    """
    means = [mean] if isinstance(mean, torch.Tensor) else list(mean)
    stds = [std] if isinstance(std, torch.Tensor) else list(std)
    unet, text_encoder, tokenizer, scheduler = pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    scale = float(pipe.vae.config.scaling_factor)
    rng = np.random.default_rng([config.seed, 2])
    gen = torch.Generator().manual_seed(config.seed * 1000 + 2)
    alphas = scheduler.alphas_cumprod.float()
    snr = alphas / (1.0 - alphas)
    n_train = scheduler.config.num_train_timesteps
    groups = [{"params": list(unet.parameters()), "lr": config.unet_lr, "base": config.unet_lr}]
    text_encoder.requires_grad_(config.train_text_encoder)
    if config.train_text_encoder:
        groups.append({"params": list(text_encoder.parameters()), "lr": config.text_lr, "base": config.text_lr})
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.99), weight_decay=0.0)
    trained = [p for g in groups for p in g["params"]]
    ema_unet = copy.deepcopy(unet).requires_grad_(False).eval()
    ema_text = copy.deepcopy(text_encoder).requires_grad_(False).eval()
    parts = {"unet": unet, "text_encoder": text_encoder, "ema_unet": ema_unet, "ema_text": ema_text, "opt": opt}
    if resume is not None:
        for name, part in parts.items():
            part.load_state_dict(resume[name])
        _set_rng_state(rng, gen, resume["rng"])
    unet.train()
    text_encoder.train(config.train_text_encoder)
    token_cache: dict[str, torch.Tensor] = {}

    def tokens(texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in token_cache]
        if missing:
            ids = tokenizer(missing, padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            token_cache.update(zip(missing, ids))
        return torch.stack([token_cache[t] for t in texts])

    def step_fn(step: int, total: int) -> dict[str, float]:
        for group in opt.param_groups:
            group["lr"] = group["base"] * _lr_factor(step, config.unet_warmup, total)
        mean, std = means[step % len(means)], stds[step % len(stds)]
        idx = rng.integers(0, len(mean), config.unet_batch)
        templates = rng.integers(0, len(config.caption_templates), config.unet_batch)
        drop = rng.random(config.unet_batch) < config.cfg_dropout
        texts = ["" if d else caption(labels[i], config.caption_templates[t], rng)
                 for i, t, d in zip(idx, templates, drop)]
        idx_t = torch.from_numpy(idx)
        eps = torch.randn(mean[idx_t].shape, generator=gen)
        latents = (mean[idx_t] + std[idx_t] * eps) * scale
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, n_train, (config.unet_batch,), generator=gen)
        noisy = scheduler.add_noise(latents, noise, t)
        with torch.set_grad_enabled(config.train_text_encoder):
            context = text_encoder(tokens(texts))[0]
        pred = unet(noisy, t, context).sample
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        if config.min_snr_gamma is not None:
            weight = snr[t].clamp(max=config.min_snr_gamma) / snr[t]
            loss = (weight * per_sample).mean()
        else:
            loss = per_sample.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, config.grad_clip)
        opt.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text_encoder, decay)
        return {"loss": loss.item(), "mse": per_sample.mean().item()}

    def save_state(run: dict[str, Any]) -> None:
        save({**{name: part.state_dict() for name, part in parts.items()}, "rng": _rng_state(rng, gen), "run": run})

    record = _run_steps(step_fn, steps=config.unet_steps, minutes=config.unet_minutes,
                        probe=config.time_probe_steps, log_every=config.log_every, name="unet",
                        resume=None if resume is None else resume["run"], save=None if save is None else save_state, every=every)
    unet.eval()
    text_encoder.eval()
    return record, ema_unet, ema_text


# --- the whole run --------------------------------------------------------------------------------


def train_sd(config: SDPretrainConfig, out_dir: str | os.PathLike[str], *, progress: bool = True,
             checkpoints: str | os.PathLike[str] | None = None, checkpoint_every: int = 100) -> dict[str, Any]:
    """Build the tiny SD from ``config.tiny_config``, train VAE then UNet + text encoder, save to ``out_dir``.

    ``out_dir`` receives ``pipe.save_pretrained`` (fp16 safetensors, EMA weights) and ``manifest.json``
    (the returned record: config, data fingerprint, steps and wall time per part, library versions).
    It is written beside and renamed into place; an existing pipeline directory there is replaced.
    ``progress`` logs losses at INFO (else only warnings).

    With ``checkpoints`` (a folder), the run saves its whole state there every ``checkpoint_every`` steps,
    at the end of each part and on SIGTERM/SIGINT, and starts from the newest checkpoint of the same run
    (same config, tiny config and torch version): a killed run rerun with the same arguments writes the
    same weights as one that never stopped. The folder is removed once ``out_dir`` is written.
    """
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    store = None if checkpoints is None else CheckpointStore(checkpoints, key=run_key(config))
    latest = None if store is None else store.latest()
    previous = logger.level
    logger.setLevel(logging.INFO if progress else logging.WARNING)
    try:
        t0 = time.perf_counter()
        scenes = render_pretrain_scenes(config)
        render_s = time.perf_counter() - t0
        logger.info("rendered %d scenes in %.0fs", len(scenes.images), render_s)
        if config.init is None:
            with tempfile.TemporaryDirectory() as tok_dir:
                pipe = build_tiny_stable_diffusion(load_tiny_sd_config(config.tiny_config), tok_dir, seed=config.seed)
        else:
            pipe = load_stable_diffusion(config.init, device="cpu", precision="fp32")
        phase, state = ("vae", None) if latest is None else (latest[1]["phase"], latest[1])
        if latest is not None:
            logger.info("resuming from %s (%s step %d)", store.folder, phase, state["run"]["step"])
        if config.init is not None and phase == "vae":  # a fine-tune keeps its VAE (and the latent scaling)
            phase, vae_record = "unet", {"steps": 0, "wall_s": 0.0, "history": [], "kept_from": config.init}
        elif phase == "vae":
            vae_record = train_vae(pipe.vae, scenes.images, config, resume=state,
                                   save=None if store is None else lambda st: store.save(st["run"]["step"], {"phase": "vae", **st}),
                                   every=checkpoint_every)
            state = None
        else:
            pipe.vae.load_state_dict(state["vae"])
            vae_record = state["vae_record"]
        vae_state = pipe.vae.state_dict()

        t1 = time.perf_counter()
        posteriors = [encode_posteriors(pipe.vae, scenes_at_size(scenes.images, size), config.encode_batch)
                      for size in config.input_sizes()]
        if config.init is None:  # SD's recipe, on the first size's latents
            pipe.vae.register_to_config(scaling_factor=latent_scaling_factor(*posteriors[0]))
        scale = float(pipe.vae.config.scaling_factor)
        encode_s = time.perf_counter() - t1
        logger.info("encoded %d scenes at %s px in %.0fs; latent scaling factor %.4f", len(scenes.images),
                    "/".join(map(str, config.input_sizes())), encode_s, scale)
        mean, std = [m for m, _ in posteriors], [s for _, s in posteriors]
        labels = scenes.labels
        del scenes

        def save_unet(st: dict[str, Any]) -> None:
            store.save(vae_record["steps"] + st["run"]["step"],
                       {"phase": "unet", "vae": vae_state, "vae_record": vae_record, **st})

        unet_record, ema_unet, ema_text = train_unet(pipe, mean, std, labels, config, resume=state,
                                                     save=None if store is None else save_unet, every=checkpoint_every)
        pipe.unet.load_state_dict(ema_unet.state_dict())
        pipe.text_encoder.load_state_dict(ema_text.state_dict())
        record = {
            "config": config.to_dict(),
            "init": None if config.init is None else init_fingerprint(config.init),
            "data": data_fingerprint(config),
            "vae": {**vae_record, "scaling_factor": round(scale, 6)},
            "unet": {**unet_record, "weights": "ema"},
            "data_prep_s": {"render": round(render_s, 1), "encode": round(encode_s, 1)},
            "total_wall_s": round(render_s + encode_s + vae_record["wall_s"] + unet_record["wall_s"], 1),
            "resumed_from": None if latest is None else {"phase": phase, "step": latest[1]["run"]["step"]},
            "sizes": {name: sum(p.numel() for p in getattr(pipe, name).parameters())
                      for name in ("vae", "unet", "text_encoder")},
            "versions": library_versions("diffusers", "transformers", "scikit-learn"),
        }
        save_pipeline(pipe, out_dir, record)
        if store is not None:
            store.clear()
        return record
    finally:
        logger.setLevel(previous)


def run_key(config: SDPretrainConfig) -> str:
    """What a checkpoint must match to be resumed: the config, the tiny config's sizes and torch's version."""
    sizes = load_tiny_sd_config(config.tiny_config)
    described = {"config": config.to_dict(), "init": None if config.init is None else init_fingerprint(config.init),
                 "tiny_config": {f.name: getattr(sizes, f.name) for f in dataclasses.fields(sizes)},
                 "torch": torch.__version__}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_pipeline(pipe: Any, out_dir: Path, record: dict[str, Any]) -> None:
    """``pipe.save_pretrained`` in fp16 safetensors plus ``manifest.json``, written beside and renamed in."""
    def write(tmp: Path) -> None:
        pipe.to(dtype=torch.float16)
        pipe.save_pretrained(tmp, safe_serialization=True)
        pipe.to(dtype=torch.float32)
        write_manifest(tmp, record)

    atomic.write_with(out_dir, write)


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a non-empty directory that is not a pipeline directory (a typo'd --out)."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "model_index.json").is_file():
        raise FileExistsError(f"{out_dir} exists and is not a diffusers pipeline directory; refusing to replace it")


def reproduce_command(record: dict, config: "SDPretrainConfig", *, out: Path | None, scenes: int | None,
                      single_scenes: int | None) -> str:
    """The command that trains the same weights again: the step counts a time budget turned into are fixed
    (no --out: the shipped directory)."""
    import shlex

    return shlex.join(["python", "-m", "stages.pretrain_sd"]
                      + (["--out", str(out)] if out is not None else [])
                      + (["--init", config.init] if config.init is not None else [])
                      + [arg for size in config.image_sizes for arg in ("--image-size", str(size))]
                      + ["--seed", str(config.seed), "--tiny-config", config.tiny_config]
                      + (["--vae-steps", str(record["vae"]["steps"])] if config.init is None else [])
                      + ["--unet-steps", str(record["unet"]["steps"])]
                      + [arg for name in ("unet_batch", "unet_lr", "text_lr")
                         if getattr(config, name) != getattr(SDPretrainConfig, name)
                         for arg in (f"--{name.replace('_', '-')}", str(getattr(config, name)))]
                      + (["--scenes", str(scenes)] if scenes is not None else [])
                      + (["--single-scenes", str(single_scenes)] if single_scenes is not None else []))

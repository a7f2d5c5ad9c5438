"""Evaluate a tiny (or any 64 px) Stable Diffusion pipeline on the shapes world.

Two measurements, both on scenes no training saw (split ``sd_holdout`` of the demo world):

* **(a) self-attention clusters vs objects.** Each held-out image, resized to ``image_size`` (256 px: the
  setting of the diffusion_attention stage on the shapes world), goes through the VAE, gets seeded noise
  at one timestep and one UNet forward with the empty prompt; every ``attn1`` map is aggregated at a
  ``grid`` x ``grid`` token grid (:class:`pipeline.diffusion.capture.ImageAttention`, the capture
  Stage A uses). The ``grid**2`` attention rows of an image are clustered with k-means for each K in
  ``ks`` (and with ACR, :func:`pipeline.diffusion.acr.acr`); the cluster map is upsampled (nearest) to
  the mask's resolution and scored with :func:`pipeline.metrics.cluster_map_iou` (mean over the image's
  object classes of the best IoU any one cluster reaches), averaged over images. The same is reported
  for an untrained UNet of the same config (:func:`pipeline.models.untrained_unet`; same VAE and text
  encoder) and for k-means on the image's pixel colours with the same K
  (:func:`pipeline.diffusion.baselines.colour_kmeans`, the diffusion_attention stage's colour baseline).
* **(b) text-to-image samples.** ``samples_per_class`` images per class from ``"a photo of a {class}."``
  (DDIM, classifier-free guidance, one seed per sample index, shared across classes) are classified
  zero-shot by a CLIP (argmax of cosine similarity over the class prompts); accuracy per class and mean.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from sklearn.cluster import KMeans

from pipeline.cam.images import presence_scores
from pipeline.cam.text import encode_class_prompts
from pipeline.data.shapes import CLASS_NAMES, Scene, ShapesConfig, render_scene, scene_seed
from pipeline.diffusion.acr import acr
from pipeline.diffusion.config import AcrConfig
from pipeline.diffusion.baselines import colour_kmeans
from pipeline.diffusion.capture import ImageAttention
from pipeline.diffusion.sd_input import native_image_size
from pipeline.metrics import cluster_map_iou, upsample_labels
from pipeline.models.diffusion import untrained_unet
from pipeline.tiny.manifest import jsonable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SDEvalConfig:
    """Every knob of the tiny-SD evaluation."""

    world_seed: int = 0
    split: str = "sd_holdout"              # held-out scenes (never a training split)
    n_scenes: int = 100                    # held-out scenes for (a)
    timesteps: tuple[int, ...] = (100, 200)  # noise levels of the single UNet forward (method.md: 100..300)
    image_size: int | None = 256           # scenes are resized to this before the VAE (None: the model's native 64 px);
                                           # 256 is what the diffusion_attention stage uses on the shapes world
    grid: int | None = None                # token grid of the aggregated attention (None: the latent size, the finest layer's)
    ks: tuple[int, ...] = (8, 12)          # k-means cluster counts (the stage caps ACR at 12 on the shapes world)
    fine_grid: int | None = None           # also cluster the attention resampled to this grid (None: skip) ...
    fine_timesteps: tuple[int, ...] = (100,)  # ... at these timesteps
    noise_seed: int = 0                    # image b's noise is seeded noise_seed + b
    kmeans_n_init: int = 1                 # one k-means++ start: 4096 rows of 4096 keys per image at 256 px
    acr_max_clusters: int | None = 12      # also score ACR (the stage's clustering; the shapes preset's settings:
    acr_merge_kl: float = 0.005            # anchors 16x16, 3 merge rounds, 10 k-means iterations); None: skip
    prompt: str = ""                       # UNet conditioning for the capture (Stage A: empty)
    untrained_seed: int = 0                # init seed of the untrained-UNet baseline
    batch: int = 25
    # --- (b) samples
    samples_per_class: int = 16
    sample_prompt: str = "a photo of a {}."
    sample_steps: int = 50                 # DDIM steps
    guidance: float = 7.5
    sample_seed: int = 0                   # sample i of every class starts from seed sample_seed + i
    clip_templates: tuple[str, ...] = ("a photo of a {}.",)  # zero-shot class prompts (averaged)


def holdout_scenes(config: SDEvalConfig, n: int | None = None) -> list[Scene]:
    """The first ``n`` (default ``config.n_scenes``) demo-world scenes of ``config.split``."""
    count = config.n_scenes if n is None else n
    return [render_scene(scene_seed(config.world_seed, config.split, i), ShapesConfig()) for i in range(count)]


# --- (a) attention clusters -----------------------------------------------------------------------


def cluster_rows(features: np.ndarray, k: int, *, n_init: int, seed: int = 0) -> np.ndarray:
    """k-means labels (G*G,) of one image's rows ``features`` (G*G, D)."""
    return KMeans(k, n_init=n_init, random_state=seed).fit_predict(np.asarray(features, dtype=np.float32))


def acr_score(features: np.ndarray, masks: Sequence[np.ndarray], grid: int, config: SDEvalConfig) -> float:
    """Mean best-match IoU of ACR hard maps (what the diffusion_attention stage stores) of (B, G*G, G*G) attention."""
    acr_config = AcrConfig(max_clusters=config.acr_max_clusters, merge_kl=config.acr_merge_kl)
    scores = [cluster_map_iou(acr(f, grid, acr_config).hard, m) for f, m in zip(features, masks)]
    return round(float(np.nanmean(scores)), 4)


def cluster_scores(features: np.ndarray, masks: Sequence[np.ndarray], ks: Sequence[int], *,
                   n_init: int, grid: int) -> dict[int, float]:
    """{K: mean over images of best-match IoU} for per-image row features (B, G*G, D)."""
    out = {}
    for k in ks:
        scores = [cluster_map_iou(cluster_rows(f, k, n_init=n_init).reshape(grid, grid), m)
                  for f, m in zip(features, masks)]
        out[int(k)] = round(float(np.nanmean(scores)), 4)
    return out


def attention_extractor(pipe: Any, config: SDEvalConfig, *, timestep: int = 0,
                        unet: torch.nn.Module | None = None) -> ImageAttention:
    """Stage A's capture at the eval's image size (None: native) and grid (None: the latent size)."""
    return ImageAttention(pipe, timestep=timestep, prompt=config.prompt, image_size=config.image_size,
                          grid=config.grid, unet=unet)


@torch.no_grad()
def aggregated_attention(pipe: Any, unet: torch.nn.Module, scenes: Sequence[Scene], *, timestep: int,
                         config: SDEvalConfig) -> np.ndarray:
    """(N, G*G, G*G) float32 row-stochastic aggregated self-attention of ``unet`` on the scenes."""
    extract = attention_extractor(pipe, config, timestep=timestep, unet=unet)
    out = []
    for b0 in range(0, len(scenes), config.batch):
        part = scenes[b0:b0 + config.batch]
        seeds = [config.noise_seed + b0 + i for i in range(len(part))]
        out.append(extract([s.image for s in part], seeds).float().numpy())
    return np.concatenate(out)


def colour_scores(scenes: Sequence[Scene], ks: Sequence[int]) -> dict[int, float]:
    """{K: mean over scenes of the best-match IoU of colour k-means (pixel RGB, K clusters)}: the colour baseline."""
    out = {}
    for k in ks:
        scores = [cluster_map_iou(colour_kmeans(s.image, int(k)), s.mask) for s in scenes]
        out[int(k)] = round(float(np.nanmean(scores)), 4)
    return out


def evaluate_attention(pipe: Any, config: SDEvalConfig, *, baselines: bool = True) -> dict[str, Any]:
    """(a) at ``config.grid``: {"trained": {t: {K: iou}}, "untrained": ..., "acr": {name: {t: iou}},
    "colour_kmeans": {K: iou} (pixel colours, :func:`colour_scores`; the same under "fine"),
    "oracle_grid": iou of the mask itself resampled to the grid and back (the ceiling), "best": ...}; with
    ``fine_grid`` the same under "fine" for the attention upsampled to that grid."""
    scenes = holdout_scenes(config)
    masks = [s.mask for s in scenes]
    models = [("trained", pipe.unet)]
    if baselines:
        models.append(("untrained", untrained_unet(pipe.unet, config.untrained_seed)))
    native = attention_extractor(pipe, config)  # its image size and grid, resolved from the pipeline
    runs = [(native.grid, config.timesteps)]
    if config.fine_grid:
        runs.append((config.fine_grid, config.fine_timesteps))
    out: dict[str, Any] = {}
    colour = None
    if baselines:  # at pixel level: the same for every grid
        colour = colour_scores(scenes, config.ks)
        logger.info("colour k-means: %s", colour)
    for run, (grid, timesteps) in enumerate(runs):
        kw = dict(n_init=config.kmeans_n_init, grid=grid)
        cfg = replace(config, grid=grid)
        result: dict[str, Any] = {"grid": grid}
        for name, unet in models:
            result[name] = {}
            for t in timesteps:
                t0 = time.perf_counter()
                feats = aggregated_attention(pipe, unet, scenes, timestep=t, config=cfg)
                result[name][int(t)] = cluster_scores(feats, masks, config.ks, **kw)
                acr_iou = acr_score(feats, masks, grid, config) if config.acr_max_clusters else None
                if acr_iou is not None:
                    result.setdefault("acr", {}).setdefault(name, {})[int(t)] = acr_iou
                logger.info("attention clusters grid %d %s t=%d: k-means %s ACR %s (%.0fs)", grid, name, t,
                            result[name][int(t)], acr_iou, time.perf_counter() - t0)
        if colour is not None:
            result["colour_kmeans"] = dict(colour)
        result["oracle_grid"] = round(float(np.nanmean([cluster_map_iou(upsample_labels(m, (grid, grid)), m)
                                                        for m in masks])), 4)
        result["best"] = {name: _best(result[name]) for name in ("trained", "untrained") if name in result}
        if run == 0:
            result["image_size"] = native.image_size
            out.update(result)
        else:
            out["fine"] = result
    return out


def _best(per_t: dict[int, dict[int, float]]) -> dict[str, float]:
    t, k = max(((t, k) for t in per_t for k in per_t[t]), key=lambda tk: per_t[tk[0]][tk[1]])
    return {"timestep": t, "k": k, "iou": per_t[t][k]}


# --- (b) samples ----------------------------------------------------------------------------------


@torch.no_grad()
def generate_class_samples(pipe: Any, config: SDEvalConfig, class_names: Sequence[str] = CLASS_NAMES,
                           size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(C*n, S, S, 3) uint8 samples and (C*n,) intended class indices (0-based), class-major."""
    size = size or native_image_size(pipe)
    n = config.samples_per_class
    images, intended = [], []
    for c, name in enumerate(class_names):
        gens = [torch.Generator().manual_seed(config.sample_seed + i) for i in range(n)]
        out = pipe(prompt=[config.sample_prompt.format(name)] * n, height=size, width=size,
                   num_inference_steps=config.sample_steps, guidance_scale=config.guidance,
                   generator=gens, output_type="np").images
        images.append((np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
        intended += [c] * n
    return np.concatenate(images), np.asarray(intended)


def clip_zero_shot(clip: Any, images: np.ndarray, class_names: Sequence[str] = CLASS_NAMES,
                   templates: Sequence[str] = ("a photo of a {}.",)) -> np.ndarray:
    """(N,) argmax class index of each uint8 image (at the CLIP's input size) over the class prompts:
    cosine with the prompt-ensemble class embeddings (:func:`pipeline.cam.encode_class_prompts`)."""
    if tuple(images.shape[1:3]) != (clip.image_size, clip.image_size):
        raise ValueError(f"images are {images.shape[1]}x{images.shape[2]} px; the CLIP takes "
                         f"{clip.image_size}x{clip.image_size} (resize them first)")
    text = encode_class_prompts(clip.model, clip.tokenizer, class_names, templates)  # (C, E)
    return presence_scores(clip.model, images, text, batch_size=max(1, len(images))).argmax(1)


def evaluate_samples(pipe: Any, clip: Any, config: SDEvalConfig, *, reference: bool = True
                     ) -> tuple[dict[str, Any], np.ndarray]:
    """(b): per-class and mean zero-shot accuracy of class-prompted samples; optionally the same CLIP's
    accuracy on real held-out single-object scenes (what the samples can hope for). Returns (metrics, images)."""
    t0 = time.perf_counter()
    images, intended = generate_class_samples(pipe, config)
    pred = clip_zero_shot(clip, images, templates=config.clip_templates)
    per_class = {name: round(float(np.mean(pred[intended == c] == c)), 4) for c, name in enumerate(CLASS_NAMES)}
    result: dict[str, Any] = {
        "per_class": per_class,
        "mean": round(float(np.mean(pred == intended)), 4),
        "chance": round(1.0 / len(CLASS_NAMES), 4),
        "n": int(len(images)),
        "sampling": {"steps": config.sample_steps, "guidance": config.guidance, "prompt": config.sample_prompt,
                     "seeds": f"{config.sample_seed}..{config.sample_seed + config.samples_per_class - 1}"},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    if reference:
        single = [render_scene(scene_seed(config.world_seed, f"{config.split}_single", i), ShapesConfig(max_objects=1))
                  for i in range(len(images))]
        single = [s for s in single if s.labels]
        ref = clip_zero_shot(clip, np.stack([s.image for s in single]), templates=config.clip_templates)
        truth = np.array([s.labels[0] - 1 for s in single])
        result["real_single_object_accuracy"] = round(float(np.mean(ref == truth)), 4)
    logger.info("samples: mean %.3f per class %s", result["mean"], per_class)
    return result, images


def save_sample_grid(images: np.ndarray, path: str | Path, per_row: int) -> None:
    """Write samples as a PNG grid, one class per row."""
    rows = [np.concatenate(list(images[r:r + per_row]), axis=1) for r in range(0, len(images), per_row)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


# --- VAE ------------------------------------------------------------------------------------------


@torch.no_grad()
def vae_reconstruction_error(vae: Any, images: np.ndarray) -> float:
    """Mean absolute error on the 0-255 scale of decode(encode(x).mean) for uint8 (N, S, S, 3) images."""
    param = next(vae.parameters())
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(param.device, torch.float32)
    x = x / 127.5 - 1.0
    rec = vae.decode(vae.encode(x.to(param.dtype)).latent_dist.mean).sample.float().clamp(-1, 1)
    return float((rec - x).abs().mean() * 127.5)


def evaluate_sd(pipe: Any, config: SDEvalConfig = SDEvalConfig(), *, clip: Any = None,
                samples_png: str | Path | None = None) -> dict[str, Any]:
    """(a) always, (b) when a CLIP is given, plus VAE reconstruction error on 16 held-out scenes."""
    result: dict[str, Any] = {"config": jsonable(asdict(config))}
    recon = np.stack([s.image for s in holdout_scenes(config, 16)])
    result["vae_l1_255"] = round(vae_reconstruction_error(pipe.vae, recon), 3)
    result["attention_clusters"] = evaluate_attention(pipe, config)
    if clip is not None:
        result["samples"], images = evaluate_samples(pipe, clip, config)
        if samples_png is not None:
            save_sample_grid(images, samples_png, config.samples_per_class)
    return result


def evaluate_shipped(path: Path, eval_scenes: int, samples_per_class: int, clip_dir: Path, clip_wait: float) -> dict:
    """`diclip shapes pretrain-sd`'s evaluation: reload the pipeline from ``path`` (as every user will),
    evaluate it with the shipped tiny CLIP at ``clip_dir`` (waiting up to ``clip_wait`` minutes for it
    to appear, for a CLIP trained alongside), and add the summary the manifest shows first."""
    from pipeline.models import load_shipped_clip, load_stable_diffusion
    from pipeline.tiny.manifest import manifest_path

    pipe = load_stable_diffusion(path, device="cpu", precision="fp32")
    clip = None
    deadline = time.monotonic() + 60.0 * clip_wait
    while not manifest_path(clip_dir).is_file() and time.monotonic() < deadline:
        logger.info("waiting for the tiny CLIP at %s", clip_dir)
        time.sleep(min(120.0, max(1.0, deadline - time.monotonic())))
    if manifest_path(clip_dir).is_file():
        clip = load_shipped_clip(clip_dir)
    else:
        logger.warning("no tiny CLIP at %s: the sample metric is skipped", clip_dir)
    config = SDEvalConfig(n_scenes=eval_scenes, samples_per_class=samples_per_class)
    t0 = time.perf_counter()
    metrics = evaluate_sd(pipe, config, clip=clip, samples_png=path / "samples.png" if clip is not None else None)
    metrics["wall_s"] = round(time.perf_counter() - t0, 1)
    metrics["clip"] = None if clip is None else {"dir": str(clip_dir), "model": clip.model_name,
                                                 "checkpoint": clip.pretrained}
    attn = metrics["attention_clusters"]
    metrics["summary"] = {
        "attention_iou_trained": attn["best"]["trained"],
        "attention_iou_untrained": attn["best"].get("untrained"),
        "attention_iou_acr": attn.get("acr"),
        "colour_kmeans_best": max(attn["colour_kmeans"].values()) if "colour_kmeans" in attn else None,
        "sample_accuracy": None if clip is None else metrics["samples"]["mean"],
        "vae_l1_255": metrics["vae_l1_255"],
    }
    return metrics

"""Evaluate a tiny (or any 64 px) Stable Diffusion pipeline on the shapes world.

Two measurements, both on scenes no training saw (split ``sd_holdout`` of the demo world):

* **(a) self-attention clusters vs objects.** Each held-out image, resized to ``image_size`` (256 px: the
  setting of the diffusion_attention stage on the shapes world), goes through the VAE, gets seeded noise
  at one timestep and one UNet forward with the empty prompt; every ``attn1`` map is aggregated at a
  ``grid`` x ``grid`` token grid (:class:`pipeline.diffusion.capture.ImageAttention`, the capture
  Stage A uses). The ``grid**2`` attention rows of an image are clustered with k-means for each K in
  ``ks``; the cluster map is upsampled (nearest) to the mask's resolution and scored with
  :func:`pipeline.metrics.best_match_iou` (mean over the image's object classes of the best IoU any one
  cluster reaches), averaged over images. The same is reported for an untrained UNet of the same
  config (same VAE and text encoder) and for k-means on the image's colours pooled to the same grid.
* **(b) text-to-image samples.** ``samples_per_class`` images per class from ``"a photo of a {class}."``
  (DDIM, classifier-free guidance, one seed per sample index, shared across classes) are classified
  zero-shot by a CLIP (argmax of cosine similarity over the class prompts); accuracy per class and mean.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from PIL import Image
from sklearn.cluster import KMeans

from pipeline.data.shapes import CLASS_NAMES, Scene, ShapesConfig, render_scene, scene_seed
from pipeline.diffusion.capture import ImageAttention, native_image_size
from pipeline.metrics import best_match_iou

logger = logging.getLogger(__name__)

#: where the tiny CLIP is shipped, relative to the repository root, and its manifest
TINY_CLIP_DIR = Path("pipeline/models/weights/diclip-tiny-clip")


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


def score_cluster_map(labels: np.ndarray, mask: np.ndarray) -> float:
    """best_match_iou of a (G, G) cluster map upsampled (nearest) to the (S, S) mask."""
    g, s = labels.shape[0], mask.shape[0]
    if s % g:
        up = np.asarray(Image.fromarray(labels.astype(np.uint8)).resize((s, s), Image.NEAREST))
    else:
        up = np.kron(labels, np.ones((s // g, s // g), dtype=labels.dtype))
    return best_match_iou(up, mask)


def acr_score(features: np.ndarray, masks: Sequence[np.ndarray], grid: int, config: SDEvalConfig) -> float:
    """Mean best-match IoU of ACR hard maps (what the diffusion_attention stage stores) of (B, G*G, G*G) attention."""
    from pipeline.diffusion.acr import acr
    from pipeline.diffusion.config import DiffusionAttentionParams

    p = DiffusionAttentionParams(max_clusters=config.acr_max_clusters, merge_kl=config.acr_merge_kl)
    scores = [score_cluster_map(acr(f, grid, anchor_grid=p.anchor_grid, merge_kl=p.merge_kl, merge_rounds=p.merge_rounds,
                                    max_clusters=p.max_clusters, kmeans_iters=p.kmeans_iters).hard, m)
              for f, m in zip(features, masks)]
    return round(float(np.nanmean(scores)), 4)


def cluster_scores(features: np.ndarray, masks: Sequence[np.ndarray], ks: Sequence[int], *,
                   n_init: int, grid: int) -> dict[int, float]:
    """{K: mean over images of best-match IoU} for per-image row features (B, G*G, D)."""
    out = {}
    for k in ks:
        scores = [score_cluster_map(cluster_rows(f, k, n_init=n_init).reshape(grid, grid), m)
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


def colour_features(scenes: Sequence[Scene], grid: int) -> np.ndarray:
    """(N, G*G, 3) mean RGB of each image over a G x G grid of cells (the colour k-means baseline)."""
    imgs = np.stack([s.image for s in scenes]).astype(np.float32) / 255.0
    n, size = imgs.shape[0], imgs.shape[1]
    cell = size // grid
    pooled = imgs[:, :grid * cell, :grid * cell].reshape(n, grid, cell, grid, cell, 3).mean(axis=(2, 4))
    return pooled.reshape(n, grid * grid, 3)


def untrained_unet(pipe: Any, seed: int) -> torch.nn.Module:
    """A freshly initialised UNet of the pipeline's UNet config (seeded, global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(pipe.unet.config)
    return unet.to(pipe.unet.device, pipe.unet.dtype).eval()


def evaluate_attention(pipe: Any, config: SDEvalConfig, *, baselines: bool = True) -> dict[str, Any]:
    """(a) at ``config.grid``: {"trained": {t: {K: iou}}, "untrained": ..., "colour_kmeans": {K: iou},
    "oracle_grid": iou of the mask itself snapped to the grid (the ceiling), "best": ...}; with
    ``fine_grid`` the same under "fine" for the attention upsampled to that grid."""
    scenes = holdout_scenes(config)
    masks = [s.mask for s in scenes]
    models = [("trained", pipe.unet)]
    if baselines:
        models.append(("untrained", untrained_unet(pipe, config.untrained_seed)))
    native = attention_extractor(pipe, config)  # its image size and grid, resolved from the pipeline
    runs = [(native.grid, config.timesteps)]
    if config.fine_grid:
        runs.append((config.fine_grid, config.fine_timesteps))
    out: dict[str, Any] = {}
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
        if baselines:
            result["colour_kmeans"] = cluster_scores(colour_features(scenes, grid), masks, config.ks, **kw)
            logger.info("colour k-means grid %d: %s", grid, result["colour_kmeans"])
        result["oracle_grid"] = round(float(np.nanmean([score_cluster_map(snap_mask(m, grid), m) for m in masks])), 4)
        result["best"] = {name: _best(result[name]) for name in ("trained", "untrained") if name in result}
        if run == 0:
            result["image_size"] = native.image_size
            out.update(result)
        else:
            out["fine"] = result
    return out


def snap_mask(mask: np.ndarray, grid: int) -> np.ndarray:
    """The (S, S) mask sampled at the centres of a G x G grid of cells: the best any G x G map can do."""
    cell = mask.shape[0] // grid
    return mask[cell // 2::cell, cell // 2::cell][:grid, :grid]


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


@torch.no_grad()
def clip_zero_shot(clip: Any, images: np.ndarray, class_names: Sequence[str] = CLASS_NAMES,
                   templates: Sequence[str] = ("a photo of a {}.",)) -> np.ndarray:
    """(N,) argmax class index of each uint8 image over the class prompts (cosine similarity)."""
    model = clip.model
    texts = []
    for name in class_names:
        feats = model.encode_text(clip.tokenizer([t.format(name) for t in templates]).to(clip.device))
        feats = torch.nn.functional.normalize(feats.float(), dim=-1).mean(0)
        texts.append(torch.nn.functional.normalize(feats, dim=-1))
    text = torch.stack(texts)  # (C, D)
    pixels = torch.stack([clip.preprocess(Image.fromarray(im)) for im in images]).to(clip.device, clip.dtype)
    feats = torch.nn.functional.normalize(model.encode_image(pixels).float(), dim=-1)
    return (feats @ text.T).argmax(1).cpu().numpy()


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


# --- the tiny CLIP --------------------------------------------------------------------------------


def load_shipped_clip(weights_dir: str | Path = TINY_CLIP_DIR) -> Any:
    """The shipped tiny CLIP, through ``load_clip`` with the model name and file its manifest names."""
    from pipeline.models import load_clip

    weights_dir = Path(weights_dir)
    manifest = json.loads((weights_dir / "manifest.json").read_text(encoding="utf-8"))
    name = manifest.get("model_name") or manifest.get("model") or "diclip-tiny-vit-p8-64"
    checkpoint = manifest.get("checkpoint") or manifest.get("weights") or manifest.get("file")
    if checkpoint is None:
        found = sorted(p.name for p in weights_dir.iterdir() if p.suffix in (".safetensors", ".pt", ".bin"))
        if len(found) != 1:
            raise FileNotFoundError(f"{weights_dir}: cannot tell the checkpoint file among {found}")
        checkpoint = found[0]
    return load_clip(name, str(weights_dir / Path(checkpoint).name), device="cpu", precision="fp32")


def evaluate_sd(pipe: Any, config: SDEvalConfig = SDEvalConfig(), *, clip: Any = None,
                samples_png: str | Path | None = None) -> dict[str, Any]:
    """(a) always, (b) when a CLIP is given, plus VAE reconstruction error on 16 held-out scenes."""
    result: dict[str, Any] = {"config": _jsonable(asdict(config))}
    recon = np.stack([s.image for s in holdout_scenes(config, 16)])
    result["vae_l1_255"] = round(vae_reconstruction_error(pipe.vae, recon), 3)
    result["attention_clusters"] = evaluate_attention(pipe, config)
    if clip is not None:
        result["samples"], images = evaluate_samples(pipe, clip, config)
        if samples_png is not None:
            save_sample_grid(images, samples_png, config.samples_per_class)
    return result


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

"""Evaluate a CLIP on held-out shapes scenes: zero-shot presence AUC and surgery-CAM pseudo-label mIoU.

Two numbers say whether a (tiny) CLIP is good enough for the DiCLIP stages:

* **presence AUC**: per class, ROC AUC over test images of ``cos(image embedding, text embedding of
  "a photo of a {class}.")`` against the image-level label; the mean over classes is reported.
* **surgery-CAM mIoU**: plain feature-surgery CAMs (:mod:`pipeline.cam`, no refinement) of the
  image's *present* classes, upsampled to the image; background where no present class reaches a
  threshold. The threshold is chosen on a tune split and the mIoU (7 classes + background,
  :func:`pipeline.metrics.mean_iou`) is reported on a separate test split.

Baselines computed beside it: all-background labels, and the same CAM recipe on a randomly
initialised model of the same architecture (its own tune-chosen threshold).

Scenes are rendered from the shapes world with :func:`pipeline.data.shapes.scene_seed` under split
names that the demo dataset ("train"/"val") and CLIP pre-training ("clip_pretrain") never use. They
go through the same JPEG round trip the demo dataset's files do, so the model sees what the
pipeline will read. This module is the evaluation protocol only (scenes, tune/test splits,
metrics); the CAMs, prompts and text/image embeddings come from :mod:`pipeline.cam`. Training shares
its scene rendering (:func:`render_scenes`, :func:`jpeg_roundtrip`).
"""

from __future__ import annotations

import dataclasses
import io
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from pipeline.cam.images import presence_scores, surgery_cams
from pipeline.cam.text import DEFAULT_PROMPT, class_prompts, encode_prompts
from pipeline.cam.text_cam import labels_from_cams
from pipeline.data.shapes import CLASS_NAMES, ShapesConfig, render_scene, scene_seed
from pipeline.metrics import mean_iou, presence_auc

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SceneSet:
    """Rendered scenes: images (N, S, S, 3) uint8, masks (N, S, S) uint8, labels (N, C) bool."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class ClipEvalConfig:
    """Every knob of :func:`evaluate_clip`."""

    world_seed: int = 0                       # shapes world seed (as artifacts/shapes)
    tune_split: str = "clip_holdout_tune"     # threshold (and surgery-depth sweep) chosen here
    test_split: str = "clip_holdout_test"     # reported numbers
    n_tune: int = 500
    n_test: int = 1000
    jpeg_roundtrip: bool = True               # pass images through the demo dataset's JPEG encoding
    prompt_template: str = DEFAULT_PROMPT     # class prompt, formatted with the class name
    surgery_blocks: int | None = None         # last blocks carrying the surgery path; None: chosen on tune
    head_reduce: str = "none"                 # surgery attention across heads: none | mean | sum
    self_similarity: str = "qkv"              # surgery attention: mean of the q-q, k-k, v-v softmaxes (subset)
    cls_weighting: bool | None = None         # CLIP-ES class-token weighting in feature surgery; None: chosen on tune
    cls_temperature: float = 2.0
    token_norm: str = "feature"               # feature (cosine) | token (ExCEL's code)
    thresholds: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
    batch_size: int = 250
    random_init_baseline: bool = True         # also score a random-init model of the same architecture
    random_init_seed: int = 0

    def __post_init__(self) -> None:
        if not self.thresholds or any(not 0.0 <= t <= 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must be a non-empty tuple of numbers in [0, 1], got {self.thresholds!r}")
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        for name in ("n_tune", "n_test", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.surgery_blocks is not None and self.surgery_blocks < 0:
            raise ValueError(f"surgery_blocks must be >= 0 or None, got {self.surgery_blocks!r}")
        if self.tune_split == self.test_split:
            raise ValueError("tune_split and test_split must differ")


# --- data ---------------------------------------------------------------------------------------


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode (S, S, 3) uint8 as the demo dataset's JPEG files are written (4:4:4, baseline) and decode."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0, optimize=False, progressive=False)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def render_scenes(
    split: str,
    count: int,
    *,
    world_seed: int = 0,
    config: ShapesConfig | None = None,
    jpeg: bool = True,
    progress: bool = False,
) -> SceneSet:
    """Render images 0 .. count-1 of ``split`` (``scene_seed(world_seed, split, i)``) as a :class:`SceneSet`."""
    from tqdm import tqdm

    config = config or ShapesConfig()
    size = config.image_size
    images = np.empty((count, size, size, 3), np.uint8)
    masks = np.empty((count, size, size), np.uint8)
    labels = np.zeros((count, len(CLASS_NAMES)), bool)
    for i in tqdm(range(count), desc=f"render {split}", unit="img", disable=not progress, mininterval=2.0):
        scene = render_scene(scene_seed(world_seed, split, i), config)
        images[i] = jpeg_roundtrip(scene.image, config.jpeg_quality) if jpeg else scene.image
        masks[i] = scene.mask
        labels[i, [c - 1 for c in scene.labels]] = True
    return SceneSet(images, masks, labels)


# --- evaluation ---------------------------------------------------------------------------------


def scene_cams(model: nn.Module, scenes: SceneSet, text: torch.Tensor, config: ClipEvalConfig) -> torch.Tensor:
    """(N, C, S, S) surgery CAMs (:func:`pipeline.cam.surgery_cams`) of the scenes with ``config``'s recipe.

    ``config.surgery_blocks`` and ``config.cls_weighting`` must be set (not None).
    """
    if config.surgery_blocks is None or config.cls_weighting is None:
        raise ValueError("scene_cams needs surgery_blocks and cls_weighting set (they are None)")
    return surgery_cams(model, scenes.images, text, surgery_blocks=config.surgery_blocks,
                        cls_weighting=config.cls_weighting, head_reduce=config.head_reduce,
                        self_similarity=config.self_similarity, cls_temperature=config.cls_temperature,
                        token_norm=config.token_norm, batch_size=config.batch_size)


def cam_miou(cams: torch.Tensor, scenes: SceneSet, threshold: float) -> tuple[float, np.ndarray]:
    """mIoU (background + C classes) and per-class IoU of thresholded CAM labels against the masks."""
    labels = labels_from_cams(cams, torch.from_numpy(scenes.labels), bg_threshold=threshold).numpy()
    return mean_iou(labels, scenes.masks, len(CLASS_NAMES) + 1)


def choose_threshold(cams: torch.Tensor, scenes: SceneSet, thresholds: Sequence[float]) -> tuple[float, dict[str, float]]:
    """The background threshold with the best mIoU on ``scenes`` (ties: the lowest), and the sweep."""
    sweep = {f"{t:.2f}": cam_miou(cams, scenes, t)[0] for t in thresholds}
    best = max(thresholds, key=lambda t: (sweep[f"{t:.2f}"], -t))
    return float(best), sweep


def evaluate_clip(model: nn.Module, tokenizer: Any, config: ClipEvalConfig = ClipEvalConfig(), *,
                  model_name: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Presence AUC and surgery-CAM mIoU of ``model`` on held-out shapes scenes, plus baselines.

    ``model`` is an open_clip CLIP in eval mode (e.g. ``load_clip(...).model``); ``model_name``
    (its architecture) is needed for the random-init baseline. CAM choices left None in ``config``
    (surgery depth, class-token weighting, see :func:`choose_recipe`) and the background threshold
    are chosen on the tune split; every reported number comes from the test split. The random-init
    baseline uses the same recipe with its own tune-chosen threshold. Returns a JSON-ready dict:
    ``presence_auc`` {mean, per_class}, ``cam`` {miou, per_class_iou, surgery_blocks, cls_weighting,
    bg_threshold, tune_miou, tune_sweep, recipe_tune}, ``baselines`` {all_background_miou,
    random_init {...}}, ``data``.
    """
    tune = render_scenes(config.tune_split, config.n_tune, world_seed=config.world_seed,
                         jpeg=config.jpeg_roundtrip, progress=progress)
    test = render_scenes(config.test_split, config.n_test, world_seed=config.world_seed,
                         jpeg=config.jpeg_roundtrip, progress=progress)
    recipe, recipe_sweep = choose_recipe(model, tokenizer, tune, config)
    record: dict[str, Any] = {"config": dataclasses.asdict(config)}
    record.update(_score(model, tokenizer, tune, test, recipe))
    if recipe_sweep:
        record["cam"]["recipe_tune"] = recipe_sweep
    all_bg = mean_iou(np.zeros_like(test.masks), test.masks, len(CLASS_NAMES) + 1)[0]
    record["baselines"] = {"all_background_miou": all_bg}
    if config.random_init_baseline:
        if model_name is None:
            raise ValueError("the random-init baseline needs model_name")
        from pipeline.models import load_clip

        random_model = load_clip(model_name, None, device="cpu", seed=config.random_init_seed).model
        scores = _score(random_model, tokenizer, tune, test, recipe)
        record["baselines"]["random_init"] = {"presence_auc_mean": scores["presence_auc"]["mean"],
                                              **{k: v for k, v in scores["cam"].items() if k != "tune_sweep"}}
    record["data"] = {"world_seed": config.world_seed, "tune_split": config.tune_split, "n_tune": config.n_tune,
                      "test_split": config.test_split, "n_test": config.n_test}
    logger.info("presence AUC %.4f, surgery-CAM mIoU %.4f (%d surgery blocks, cls weighting %s, threshold %.2f); "
                "all-background %.4f", record["presence_auc"]["mean"], record["cam"]["miou"], recipe.surgery_blocks,
                recipe.cls_weighting, record["cam"]["bg_threshold"], all_bg)
    return record


def choose_recipe(model: nn.Module, tokenizer: Any, tune: SceneSet,
                  config: ClipEvalConfig) -> tuple[ClipEvalConfig, dict[str, float]]:
    """Fill the CAM choices left None (surgery depth 0..blocks, class-token weighting) by tune mIoU.

    Returns ``config`` with them set, and the best tune mIoU (over thresholds) of every combination
    tried, keyed ``"blocks=<n>,cls_weighting=<bool>"`` (empty when nothing was left to choose).
    Ties go to fewer surgery blocks, then to weighting on (ExCEL's default).
    """
    depths = ([config.surgery_blocks] if config.surgery_blocks is not None
              else list(range(len(model.visual.transformer.resblocks) + 1)))
    weightings = [config.cls_weighting] if config.cls_weighting is not None else [True, False]
    if len(depths) == 1 and len(weightings) == 1:
        return config, {}
    text = encode_prompts(model, tokenizer, class_prompts(CLASS_NAMES, config.prompt_template))
    scores = {}
    for blocks in depths:
        for weighting in weightings:
            candidate = dataclasses.replace(config, surgery_blocks=blocks, cls_weighting=weighting)
            sweep = choose_threshold(scene_cams(model, tune, text, candidate), tune, config.thresholds)[1]
            scores[(blocks, weighting)] = max(sweep.values())
    blocks, weighting = max(scores, key=lambda bw: (scores[bw], -bw[0], bw[1]))
    sweep = {f"blocks={b},cls_weighting={w}": v for (b, w), v in scores.items()}
    return dataclasses.replace(config, surgery_blocks=blocks, cls_weighting=weighting), sweep


def _score(model: nn.Module, tokenizer: Any, tune: SceneSet, test: SceneSet, config: ClipEvalConfig) -> dict[str, Any]:
    text = encode_prompts(model, tokenizer, class_prompts(CLASS_NAMES, config.prompt_template))
    aucs = presence_auc(presence_scores(model, test.images, text, batch_size=config.batch_size), test.labels)
    threshold, sweep = choose_threshold(scene_cams(model, tune, text, config), tune, config.thresholds)
    miou, ious = cam_miou(scene_cams(model, test, text, config), test, threshold)
    return {
        "presence_auc": {"mean": float(np.nanmean(aucs)), "per_class": dict(zip(CLASS_NAMES, map(float, aucs)))},
        "cam": {
            "miou": miou,
            "per_class_iou": dict(zip(("background", *CLASS_NAMES), map(float, ious))),
            "surgery_blocks": config.surgery_blocks,
            "cls_weighting": config.cls_weighting,
            "bg_threshold": threshold,
            "tune_miou": sweep[f"{threshold:.2f}"],
            "tune_sweep": sweep,
        },
    }


def summary(metrics: dict) -> str:
    """The evaluation's few lines for the terminal."""
    auc = metrics["presence_auc"]
    cam = metrics["cam"]
    lines = [
        f"presence AUC (test): mean {auc['mean']:.4f}  "
        + " ".join(f"{k} {v:.3f}" for k, v in auc["per_class"].items()),
        f"surgery-CAM mIoU (test): {cam['miou']:.4f} at background threshold {cam['bg_threshold']:.2f} "
        f"(tune {cam['tune_miou']:.4f}; {cam['surgery_blocks']} surgery blocks, class-token weighting "
        f"{'on' if cam['cls_weighting'] else 'off'})",
        f"baselines: all-background {metrics['baselines']['all_background_miou']:.4f}",
    ]
    if "random_init" in metrics["baselines"]:
        lines[-1] += f", random-init CAM {metrics['baselines']['random_init']['miou']:.4f}"
    return "\n".join(lines)

"""Stage `evaluate` (stage D): the segmenter's mIoU on the eval split as DiCLIP evaluates it.

Each image is resized to `size`^2 times every scale (mirrored too at all but 1.0), the logits are
averaged at `fraction` of the image size and brought to it; optionally DenseCRF on the softmax; argmax.
Writes

```
artifacts/evaluation.zarr    per image: confusion (K, K) int64 of the prediction and of the stored
                             pseudo-label against the mask (rows truth, columns prediction; 255 ignored)
artifacts/predictions/results/VOC2012/Segmentation/comp6_<split>_cls/<id>.png
                             VOC-palette predictions in the layout the VOC evaluation server accepts
artifacts/metrics/seg.json   mIoU, per-class IoU, pixel accuracy of the segmenter and of the pseudo-labels
```
Resumable per image like every per-image stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from pipeline import artifacts
from pipeline.skeleton import StageContext, StageSpec, run_stage
from stages.common import artifact_options

SPEC = StageSpec(
    name="evaluate", module=__name__, params=("evaluate", "models.device", "models.precision"),
    inputs=(artifacts.INDEX, artifacts.SEGMENTER, artifacts.PSEUDO_LABELS),
    outputs=(artifacts.EVALUATION, artifacts.PREDICTIONS, artifacts.SEG_METRIC),
)
NOT_IN_KEY = ("evaluate.shard_images",)


def submission_folder(root: Path, split: str) -> Path:
    """Where the VOC evaluation server expects a split's PNGs (comp6: trained without outside data)."""
    return Path(root) / "results" / "VOC2012" / "Segmentation" / f"comp6_{split}_cls"


@dataclass(frozen=True)
class EvalTask:
    """Runner task: load the segmenter once per worker; per image its prediction and confusions."""

    segmenter: object  # stages.segmenter_io.SavedSegmenter
    index: str
    split: str
    labels: str  # the pseudo-label folder
    config: object  # EvaluateParams

    def build(self):
        import numpy as np
        import torch

        from pipeline.segment.crf import CrfConfig, dense_crf
        from pipeline.segment.inference import multiscale_logits
        from pipeline.segment.scores import confusion
        from pipeline.segment.training import segment_logits
        from pipeline.store.dataset_index import DatasetIndex
        from pipeline.store.image_store import FileSpec
        from stages.segmenter_io import normalise

        decoder, visual, saved = self.segmenter.load()
        device = next(visual.parameters()).device
        images = DatasetIndex.load(self.index).images([self.split])
        pseudo = FileSpec("label", self.labels)
        cfg, K = self.config, saved["num_classes"] + 1
        crf = CrfConfig(cfg.crf_iterations, cfg.crf_pos_xy, cfg.crf_pos_weight, cfg.crf_bi_xy, cfg.crf_bi_rgb,
                        cfg.crf_bi_weight)

        def compute(image_id: str) -> dict:
            image, mask = images.load_image(image_id), images.load_mask(image_id)
            x = normalise(image, saved["mean_255"], saved["std_255"]).to(device)
            logits = multiscale_logits(lambda xs: segment_logits(decoder, visual, xs), x[None], mask.shape,
                                       base=cfg.size, patch=saved["patch"], scales=tuple(cfg.scales), flip=cfg.flip,
                                       fraction=cfg.fraction)[0].float().cpu()
            if cfg.crf:
                pred = dense_crf(torch.softmax(logits, 0).numpy(), image, crf).argmax(0)
            else:
                pred = logits.argmax(0).numpy()
            pred = pred.astype(np.uint8)
            return {"confusion": confusion(pred, mask, K), "pseudo_confusion": confusion(pseudo.read(image_id), mask, K),
                    "prediction": pred}

        return compute

    def input_digest(self, image_id: str) -> bytes:
        from pipeline.store.dataset_index import image_digests

        return image_digests(self.index, (self.split,))[image_id]


def body(ctx: StageContext) -> dict:
    from pipeline.segment.scores import scores
    from pipeline.store.image_store import ArraySpec, FileSpec
    from stages.segmenter_io import SavedSegmenter

    cfg, models = ctx.params.evaluate, ctx.params.models
    index = ctx.index()
    split = index.meta["eval_split"]
    segmenter = SavedSegmenter(str(ctx.path(artifacts.SEGMENTER)), models.device, models.precision)
    saved = segmenter.config
    names = ("background", *index.class_names)
    K = len(names)
    task = EvalTask(segmenter, str(index.path), split, str(ctx.path(artifacts.PSEUDO_LABELS)), cfg)
    folder = submission_folder(ctx.path(artifacts.PREDICTIONS), split)
    stamp = ctx.stamp(exclude=NOT_IN_KEY, inputs={"index": index.fingerprint, "segmenter": saved["key"]})
    store, _ = ctx.images(task, ctx.path(artifacts.EVALUATION), ids=index.ids(split),
                          specs=[ArraySpec("confusion", (K, K), "int64"), ArraySpec("pseudo_confusion", (K, K), "int64")],
                          files=[FileSpec("prediction", str(folder))], key=stamp["fingerprint"],
                          attrs={**stamp, "split": split, "class_names": list(index.class_names)},
                          shard_images=cfg.shard_images, desc="evaluate")
    conf, pseudo = store.read("confusion").sum(0), store.read("pseudo_confusion").sum(0)
    metric = {"split": split, "images": len(store.ids()), "segmenter": scores(conf, names),
              "pseudo_labels": scores(pseudo, names),
              "inference": {"size": cfg.size, "scales": list(cfg.scales), "flip": cfg.flip, "crf": cfg.crf}}
    ctx.write_metric(artifacts.SEG_METRIC, metric)
    return metric


@click.command("evaluate")
@artifact_options(SPEC)
def evaluate_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Evaluate the segmenter on the eval split: multi-scale (`scales` of `size`) + `flip` inference,
    optional DenseCRF (`crf`), mIoU with background (255 ignored), per-class IoU and pixel accuracy
    beside the same split's pseudo-labels; palette PNGs in the VOC server's layout."""
    metric, _ = run_stage(SPEC, body, params_path=params_path, paths=paths)
    click.echo(f"{metric['split']}: segmenter mIoU {metric['segmenter']['miou']:.3f}, "
               f"pseudo-labels {metric['pseudo_labels']['miou']:.3f} over {metric['images']} images")

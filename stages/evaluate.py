"""Stage `evaluate` (stage D): the segmenter's mIoU on the eval split as DiCLIP evaluates it.

Each image is resized to `size`^2 times every scale (mirrored too at all but 1.0), the logits are
averaged at `fraction` of the image size and brought to it; optionally DenseCRF on the softmax; argmax.
Writes

```
artifacts/evaluation.zarr    per image: confusion (K, K) int64 of the prediction and of the stored
                             pseudo-label against the mask (rows truth, columns prediction; 255 ignored)
artifacts/predictions/results/VOC2012/Segmentation/comp6_<split>_cls/<id>.png
                             VOC-palette predictions in the layout the VOC evaluation server accepts
artifacts/metrics/seg.json   mIoU and pixel accuracy of the segmenter, and the pseudo-labels' mIoU
artifacts/metrics/seg_detail.json   per-class IoU of both, pixels, the inference settings
```
Resumable per image like every per-image stage.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipeline import artifacts
from pipeline.command import artifact_options
from pipeline.skeleton import StageContext, StageSpec, run_stage

SPEC = StageSpec(
    name="evaluate", module=__name__, command="evaluate", params=("evaluate", "models.device", "models.precision"),
    inputs=(artifacts.INDEX, artifacts.SEGMENTER, artifacts.PSEUDO_LABELS),
    outputs=(artifacts.EVALUATION, artifacts.PREDICTIONS, artifacts.SEG_METRIC, artifacts.SEG_DETAIL),
    worker_imports=("pipeline.segment.inference", "pipeline.metrics", "pipeline.tasks.segmenter"),
)
NOT_IN_KEY = ("evaluate.shard_images",)


def body(ctx: StageContext) -> tuple[dict, dict]:
    from pipeline.errors import ParamsError
    from pipeline.segment.crf import crf_available
    from pipeline.tasks.segmenter import EvalTask, SavedSegmenter

    cfg, models = ctx.params.evaluate, ctx.params.models
    if cfg.crf and not crf_available():
        raise ParamsError("evaluate.crf: true needs the pydensecrf2 package (pip install 'diclip[crf]'; it compiles "
                          "from source with gcc), or set evaluate.crf: false")
    index = ctx.index()
    split = index.meta["eval_split"]
    segmenter = SavedSegmenter(str(ctx.path(artifacts.SEGMENTER)), models.device, models.precision)
    saved = segmenter.config  # a missing or broken segmenter is refused here, before torch is imported
    ctx.start_workers()

    from pipeline.metrics import scores
    from pipeline.store.image_store import ArraySpec, FileSpec

    names = ("background", *index.class_names)
    task = EvalTask(segmenter, str(index.path), split, str(ctx.path(artifacts.PSEUDO_LABELS)), cfg)
    stamp = ctx.stamp(exclude=NOT_IN_KEY, inputs={"index": index.fingerprint, "segmenter": saved["key"]})
    store, _ = ctx.images(task, ctx.path(artifacts.EVALUATION), ids=index.ids(split),
                          specs=[ArraySpec(n, (len(names), len(names)), "int64") for n in ("confusion", "pseudo_confusion")],
                          files=[FileSpec("prediction", str(artifacts.submission_folder(ctx.path(artifacts.PREDICTIONS), split)))],
                          key=stamp["fingerprint"], attrs={**stamp, "split": split, "class_names": list(index.class_names)},
                          shard_images=cfg.shard_images, desc="evaluate")
    seg, pseudo = scores(store.read("confusion").sum(0), names), scores(store.read("pseudo_confusion").sum(0), names)
    headline = {"miou": seg["miou"], "pixel_accuracy": seg["pixel_accuracy"], "pseudo_miou": pseudo["miou"]}
    detail = {"split": split, "images": len(store.ids()), "segmenter": seg, "pseudo_labels": pseudo,
              "inference": {"size": cfg.size, "scales": list(cfg.scales), "flip": cfg.flip, "crf": cfg.crf}}
    return ctx.write_metrics(artifacts.SEG_METRIC, artifacts.SEG_DETAIL, headline, detail)


@click.command("evaluate")
@artifact_options(SPEC)
def evaluate_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Evaluate the segmenter on the eval split (stage D): multi-scale (`scales` of `size`) + `flip` inference,
    optional DenseCRF (`crf`), mIoU with background (255 ignored), per-class IoU and pixel accuracy
    beside the same split's pseudo-labels; palette PNGs in the VOC server's layout."""
    (metric, detail), _ = run_stage(SPEC, body, params_path=params_path, paths=paths)
    click.echo(f"{detail['split']}: segmenter mIoU {metric['miou']:.3f}, pseudo-labels {metric['pseudo_miou']:.3f} "
               f"over {detail['images']} images")

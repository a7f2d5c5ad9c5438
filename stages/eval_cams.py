"""Stage `eval_cams`: pseudo-label quality on the train split against ground truth (masks are read only here).

`artifacts/metrics/cams.json`: mIoU over all classes including background, per-class IoU, precision
and recall, pixel accuracy, all from one confusion matrix over the train split's stored pseudo-labels
(255 ignored). The background score in use (`cams.bg_threshold`, or DiCLIP's 1 - max) is reported with
a sweep of constant background scores on the eval split, the only split a threshold may be chosen on;
the JSON names both splits.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipeline import artifacts
from pipeline.skeleton import StageContext, StageSpec, run_stage
from stages.common import artifact_options

SPEC = StageSpec(
    name="eval_cams", module=__name__, params=("cams.bg_threshold", "cams.eval_thresholds"),
    inputs=(artifacts.INDEX, artifacts.CAMS, artifacts.PSEUDO_LABELS), outputs=(artifacts.CAMS_METRIC,),
)


def body(ctx: StageContext) -> dict:
    import numpy as np

    from pipeline.cam.pseudo_labels import label_from_cams
    from pipeline.metrics import confusion_matrix, iou_from_confusion
    from pipeline.store.image_store import ImageStore

    cfg = ctx.params.cams
    index = ctx.index()
    store = ImageStore.open(ctx.path(artifacts.CAMS), stage="cams")
    [labels] = store.files
    rows = {i: n for n, i in enumerate(store.ids())}
    names = ("background", *index.class_names)
    K = len(names)
    train, tune = index.meta["train_split"], index.meta["eval_split"]
    images = index.images([train, tune])

    conf = np.zeros((K, K), dtype=np.int64)
    for image_id in index.ids(train):
        conf += confusion_matrix(labels.read(image_id), images.load_mask(image_id), K)
    iou = iou_from_confusion(conf)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.diag(conf) / conf.sum(0)
        recall = np.diag(conf) / conf.sum(1)

    sweep = {}
    if tune != train:
        present = dict(zip(index.ids(tune), index.labels(tune).astype(bool)))
        for threshold in (None, *cfg.eval_thresholds):
            tconf = np.zeros((K, K), dtype=np.int64)
            for image_id in index.ids(tune):
                mask = images.load_mask(image_id)
                pred = label_from_cams(store.read("cams", rows[image_id]), present[image_id], mask.shape, threshold)
                tconf += confusion_matrix(pred, mask, K)
            sweep["1 - max" if threshold is None else f"{threshold:g}"] = float(np.nanmean(iou_from_confusion(tconf)))
    metric = {
        "split": train, "images": len(index.ids(train)), "miou": float(np.nanmean(iou)),
        "pixel_accuracy": float(np.diag(conf).sum() / max(conf.sum(), 1)),
        "per_class": {n: {"iou": _f(iou[k]), "precision": _f(precision[k]), "recall": _f(recall[k])} for k, n in enumerate(names)},
        "background": {"score": "1 - max" if cfg.bg_threshold is None else cfg.bg_threshold,
                       "chosen_on": tune, "reported_on": train, "sweep_miou_on_chosen_split": sweep},
    }
    ctx.write_metric(artifacts.CAMS_METRIC, metric)
    return metric


def _f(x) -> float | None:
    import math

    return None if math.isnan(float(x)) else float(x)


@click.command("eval-cams")
@artifact_options(SPEC)
def eval_cams_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Score the stored pseudo-labels of the train split against its masks (mIoU with background,
    per-class IoU, precision, recall) and sweep background scores on the eval split."""
    metric, _ = run_stage(SPEC, body, params_path=params_path, paths=paths)
    click.echo(f"{metric['split']}: pseudo-label mIoU {metric['miou']:.3f} over {metric['images']} images")

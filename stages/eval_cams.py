"""Stage `eval_cams`: pseudo-label quality on the train split against ground truth (masks are read only here).

`artifacts/metrics/cams.json`: mIoU over all classes including background, per-class IoU, precision
and recall, pixel accuracy, all from one confusion matrix over the train split's stored pseudo-labels
(255 ignored; pixels a pseudo-label leaves out with `cams.ignore_band` are not scored, and
`labelled_fraction` says how many were kept). The background score in use (`cams.bg_threshold`, or DiCLIP's 1 - max) is reported with
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
    from pipeline.store.image_store import ImageStore

    metric = score(ctx.index(), ImageStore.open(ctx.path(artifacts.CAMS), stage="cams"), ctx.params.cams)
    ctx.write_metric(artifacts.CAMS_METRIC, metric)
    return metric


def score(index, store, cfg) -> dict:
    """The metric of a cams store and its pseudo-labels (also round 2's, stage tsa_adapt): train-split
    confusion of the stored labels; the background sweep on the eval split with the store's own rule."""
    import numpy as np

    from pipeline.cam.pseudo_labels import LabelRule
    from pipeline.metrics import IGNORE, confusion_matrix, iou_from_confusion

    [labels] = store.files
    rows = {i: n for n, i in enumerate(store.ids())}
    names = ("background", *index.class_names)
    K = len(names)
    train, tune = index.meta["train_split"], index.meta["eval_split"]
    images = index.images([train, tune])

    def scored(pred, mask):  # pixels the pseudo-label leaves out (cams.ignore_band) are not scored
        keep = pred != IGNORE
        return confusion_matrix(pred[keep], mask[keep], K), int(keep.sum())

    conf = np.zeros((K, K), dtype=np.int64)
    labelled = pixels = 0
    for image_id in index.ids(train):
        mask = images.load_mask(image_id)
        c, n = scored(labels.read(image_id), mask)
        conf, labelled, pixels = conf + c, labelled + n, pixels + mask.size
    iou = iou_from_confusion(conf)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.diag(conf) / conf.sum(0)
        recall = np.diag(conf) / conf.sum(1)

    sweep = {}
    if tune != train:
        present = dict(zip(index.ids(tune), index.labels(tune).astype(bool)))
        rule = LabelRule.from_attrs(store.attrs["label_rule"])  # the stage's own rule, only the background varies
        thresholds = [None, *cfg.eval_thresholds]
        tconf = np.zeros((len(thresholds), K, K), dtype=np.int64)
        for image_id in index.ids(tune):
            mask = images.load_mask(image_id)
            preds = rule.sweep(store.read("cams", rows[image_id]), present[image_id], images.load_image(image_id), thresholds)
            for n, pred in enumerate(preds):
                tconf[n] += scored(pred, mask)[0]
        sweep = {"1 - max" if t is None else f"{t:g}": float(np.nanmean(iou_from_confusion(c)))
                 for t, c in zip(thresholds, tconf)}
    return {
        "split": train, "images": len(index.ids(train)), "miou": float(np.nanmean(iou)),
        "pixel_accuracy": float(np.diag(conf).sum() / max(conf.sum(), 1)),
        "labelled_fraction": labelled / max(pixels, 1),  # < 1 only with cams.ignore_band
        "per_class": {n: {"iou": _f(iou[k]), "precision": _f(precision[k]), "recall": _f(recall[k])} for k, n in enumerate(names)},
        "background": {"score": "1 - max" if cfg.bg_threshold is None else cfg.bg_threshold,
                       "chosen_on": tune, "reported_on": train, "sweep_miou_on_chosen_split": sweep},
    }


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

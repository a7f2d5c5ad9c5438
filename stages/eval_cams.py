"""Stage `eval_cams`: pseudo-label quality on the train split against ground truth (masks are read only
when scoring).

`artifacts/metrics/cams.json`: mIoU over all classes including background and pixel accuracy, from one
confusion matrix over the train split's stored pseudo-labels (255 ignored; pixels a pseudo-label
leaves out with `cams.ignore_band` are not scored). `artifacts/metrics/cams_detail.json`: per-class
IoU, precision and recall, the labelled fraction, and the background score in use (the store's own
label rule) with a sweep of constant background scores on the eval split, the only split a threshold
may be chosen on; it names both splits.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipeline import artifacts
from pipeline.command import artifact_options
from pipeline.skeleton import StageContext, StageSpec, run_stage

SPEC = StageSpec(
    name="eval_cams", module=__name__, command="eval-cams", params=("cams.eval_thresholds",),
    inputs=(artifacts.INDEX, artifacts.CAMS, artifacts.PSEUDO_LABELS), outputs=(artifacts.CAMS_METRIC, artifacts.CAMS_DETAIL),
)


def body(ctx: StageContext) -> tuple[dict, dict]:
    from pipeline.store.image_store import ImageStore
    from pipeline.tasks.label_scores import cams_metric

    store = ImageStore.open(ctx.path(artifacts.CAMS), stage="cams")
    headline, detail = cams_metric(ctx.index(), store, ctx.params.cams.eval_thresholds)
    return ctx.write_metrics(artifacts.CAMS_METRIC, artifacts.CAMS_DETAIL, headline, detail)


@click.command("eval-cams")
@artifact_options(SPEC)
def eval_cams_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Score the stored pseudo-labels of the train split against its masks (mIoU with background,
    pixel accuracy; per-class IoU, precision and recall in the detail file) and sweep background scores
    on the eval split."""
    (metric, detail), _ = run_stage(SPEC, body, params_path=params_path, paths=paths)
    click.echo(f"{detail['split']}: pseudo-label mIoU {metric['miou']:.3f} over {detail['images']} images")

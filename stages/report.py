"""Stage `report`: `artifacts/report/index.html`, a page a researcher opens to see what the pipeline did.

For a fixed sample (the first `report.images` images of the eval split): image, ground truth, text CAM
(the plain surgery CAM, no cache or refinement), final CAM (the stored one), stage A's clusters,
pseudo-label and prediction; the TSA cache's samples; per-class IoU of pseudo-labels and segmenter on
the eval split; the training curves (DVCLive's rows); the CAM ablation table (docs/cam_ablation.md).
Figures are PNGs beside the page (pipeline/report); the page has no script and loads nothing remote.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

from pipeline import artifacts
from pipeline.command import artifact_options
from pipeline.skeleton import StageContext, StageSpec, run_stage

ABLATION = Path("docs/cam_ablation.md")
SPEC = StageSpec(
    name="report", module=__name__, command="report",
    params=("report", "cams", "models.clip", "models.device", "models.precision"),
    inputs=(artifacts.INDEX, artifacts.DIFFUSION, artifacts.CAMS, artifacts.PSEUDO_LABELS, artifacts.TSA_PICTURE,
            artifacts.TRAIN_LIVE, artifacts.PREDICTIONS, artifacts.SEG_DETAIL, artifacts.CAMS_DETAIL),
    outputs=(artifacts.REPORT,), extra_deps=(ABLATION.as_posix(),),
)


def body(ctx: StageContext) -> dict:
    from pipeline import atomic
    from pipeline.report.figures import ROW_COLUMNS, curves, iou_bars, sample_grid
    from pipeline.report.page import markdown_table, page
    from pipeline.tasks.clip_cams import ClipCams
    from pipeline.tasks.report import attention_rows, sample_rows

    index = ctx.index()
    split = index.meta["eval_split"]
    sample_ids = index.ids(split)[:ctx.params.report.images]
    patch_rows = attention_rows(index, sample_ids, ctx.path(artifacts.DIFFUSION))
    text_only = ClipCams.from_params(ctx.params, index.class_names, vce=False, refine=False, rar=False, par=False)
    rows = sample_rows(index, sample_ids, text_only, ctx.path(artifacts.CAMS),
                       ctx.path(artifacts.DIFFUSION), ctx.path(artifacts.PSEUDO_LABELS),
                       artifacts.submission_folder(ctx.path(artifacts.PREDICTIONS), split))
    seg = json.loads(ctx.path(artifacts.SEG_DETAIL).read_text())
    cams_metric = json.loads(ctx.path(artifacts.CAMS_DETAIL).read_text())
    ablation = ABLATION.read_text() if ABLATION.is_file() else ""

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        sample_grid(rows, tmp / "samples.png")
        sample_grid(patch_rows, tmp / "rows.png", ROW_COLUMNS)
        iou_bars(seg, tmp / "iou.png")
        curves(ctx.path(artifacts.TRAIN_LIVE), tmp / "curves.png")
        shutil.copyfile(ctx.path(artifacts.TSA_PICTURE), tmp / "tsa_cache.png")
        (tmp / "index.html").write_text(page(split, seg, cams_metric, markdown_table(ablation)))

    atomic.write_with(ctx.path(artifacts.REPORT), write)
    return {"images": len(rows), "segmenter_miou": seg["segmenter"]["miou"]}


@click.command("report")
@artifact_options(SPEC)
def report_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Write artifacts/report/index.html: sample grids (image, truth, text and final CAM, clusters,
    pseudo-label, prediction), the TSA cache's samples, per-class IoU bars, training curves and the CAM
    ablation table. Open it in a browser."""
    metric, _ = run_stage(SPEC, body, params_path=params_path, paths=paths)
    click.echo(f"report: {paths.get('report') or artifacts.REPORT.path}/index.html ({metric['images']} sample images)")

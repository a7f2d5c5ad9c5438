"""Stage `report`: `artifacts/report/index.html`, a page a researcher opens to see what the pipeline did.

For a fixed sample (the first `report.images` images of the eval split): image, ground truth, text CAM
(the plain surgery CAM, no cache or refinement), final CAM (the stored one), stage A's clusters,
pseudo-label and prediction; the TSA cache's samples; per-class IoU of pseudo-labels and segmenter on
the eval split; the training curves (DVCLive's rows); the CAM ablation table (docs/cam_ablation.md).
Figures are PNGs beside the page (matplotlib); the page has no script and loads nothing remote.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import click

from pipeline import artifacts
from pipeline.skeleton import StageContext, StageSpec, run_stage
from stages.common import artifact_options

ABLATION = Path("docs/cam_ablation.md")
SPEC = StageSpec(
    name="report", module=__name__, params=("report", "cams", "models.clip", "models.device", "models.precision"),
    inputs=(artifacts.INDEX, artifacts.DIFFUSION, artifacts.CAMS, artifacts.PSEUDO_LABELS, artifacts.TSA_PICTURE,
            artifacts.TRAIN_LIVE, artifacts.PREDICTIONS, artifacts.SEG_METRIC, artifacts.CAMS_METRIC),
    outputs=(artifacts.REPORT,),
)
COLUMNS = ("image", "ground truth", "text CAM", "final CAM", "stage A clusters", "pseudo-label", "prediction")


def _palette(labels):
    import numpy as np

    from pipeline.data.palette import voc_palette

    pal = np.asarray(voc_palette(), dtype=np.uint8).reshape(-1, 3)
    return pal[np.asarray(labels, dtype=np.uint8)]


def _heat(cams, size):
    """(C, s, s) CAMs -> the max over classes, bilinear to the image size, in [0, 1]."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(cams, dtype=torch.float32).max(0).values[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()


def sample_grid(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(COLUMNS), figsize=(1.6 * len(COLUMNS), 1.7 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, name in enumerate(COLUMNS):
            ax = axes[r, c]
            value = row[name]
            ax.imshow(value, cmap="jet" if value.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
        axes[r, 0].set_ylabel(row["id"], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def iou_bars(seg: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(seg["segmenter"]["per_class_iou"])
    pseudo = [seg["pseudo_labels"]["per_class_iou"][n] or 0 for n in names]
    model = [seg["segmenter"]["per_class_iou"][n] or 0 for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(x - 0.2, pseudo, 0.4, label=f"pseudo-labels (mIoU {seg['pseudo_labels']['miou']:.3f})")
    ax.bar(x + 0.2, model, 0.4, label=f"segmenter (mIoU {seg['segmenter']['miou']:.3f})")
    ax.set_xticks(x, names, rotation=30, fontsize=8)
    ax.set_ylim(0, 1), ax.set_ylabel(f"IoU on {seg['split']}"), ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(live: Path, path: Path) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted((live / "plots" / "metrics").rglob("*.tsv"))
    fig, axes = plt.subplots(1, max(1, len(files)), figsize=(3.2 * max(1, len(files)), 2.6), squeeze=False)
    for ax, f in zip(axes[0], files):
        with f.open() as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        name = f.relative_to(live / "plots" / "metrics").with_suffix("").as_posix()
        key = name.split("/")[-1]
        ax.plot([int(r["step"]) for r in rows], [float(r[key]) for r in rows])
        ax.set_title(name, fontsize=8), ax.set_xlabel("step", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(text: str) -> str:
    """The first pipe table of a markdown text as an HTML table (bold kept)."""
    import re

    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    if len(lines) < 2:
        return "<p>(no table)</p>"
    cell = lambda s: re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(s.strip()))  # noqa: E731
    rows = [[cell(c) for c in ln.strip("|").split("|")] for ln in lines]
    head = "".join(f"<th>{c}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[2:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def body(ctx: StageContext) -> dict:
    import numpy as np

    from pipeline import atomic
    from pipeline.store.diffusion_maps import DiffusionMaps
    from pipeline.store.image_store import FileSpec, ImageStore
    from stages.cam_inputs import ClipCams
    from stages.evaluate import submission_folder

    index = ctx.index()
    split = index.meta["eval_split"]
    ids = index.ids(split)[:ctx.params.report.images]
    images = index.images([split])
    present = dict(zip(index.ids(split), index.labels(split).astype(bool)))
    cams_store = ImageStore.open(ctx.path(artifacts.CAMS), stage="cams")
    rows_of = {i: n for n, i in enumerate(cams_store.ids())}
    maps = DiffusionMaps.open(ctx.path(artifacts.DIFFUSION))
    pseudo = FileSpec("label", str(ctx.path(artifacts.PSEUDO_LABELS)))
    pred = FileSpec("prediction", str(submission_folder(ctx.path(artifacts.PREDICTIONS), split)))
    text_only = ClipCams.from_params(ctx.params, index.class_names, vce=False, refine=False, rar=False, par=False)
    clip, text = text_only.load()
    plain = text_only.image_cams(clip, text)
    rows = []
    for image_id in ids:
        image = images.load_image(image_id)
        size = image.shape[:2]
        [res] = plain.batch([image], [present[image_id]], [None], [None])
        clusters, _ = maps.clusters(image_id)
        rows.append({"id": image_id, "image": image, "ground truth": _palette(images.load_mask(image_id)),
                     "text CAM": _heat(res["cams"], size), "final CAM": _heat(cams_store.read("cams", rows_of[image_id]), size),
                     "stage A clusters": _palette(np.asarray(clusters) % 21 + 1),
                     "pseudo-label": _palette(pseudo.read(image_id)), "prediction": _palette(pred.read(image_id))})
    seg = json.loads(ctx.path(artifacts.SEG_METRIC).read_text())
    cams_metric = json.loads(ctx.path(artifacts.CAMS_METRIC).read_text())
    ablation = ABLATION.read_text() if ABLATION.is_file() else ""

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        sample_grid(rows, tmp / "samples.png")
        iou_bars(seg, tmp / "iou.png")
        curves(ctx.path(artifacts.TRAIN_LIVE), tmp / "curves.png")
        shutil.copyfile(ctx.path(artifacts.TSA_PICTURE), tmp / "tsa_cache.png")
        (tmp / "index.html").write_text(page(split, seg, cams_metric, markdown_table(ablation)))

    atomic.write_with(ctx.path(artifacts.REPORT), write)
    return {"images": len(ids), "segmenter_miou": seg["segmenter"]["miou"]}


def page(split: str, seg: dict, cams_metric: dict, ablation: str) -> str:
    s, p = seg["segmenter"], seg["pseudo_labels"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>diclip report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}} img{{max-width:100%}}
table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ccc;padding:3px 6px}}</style></head>
<body>
<h1>diclip report</h1>
<table id="headline"><tr><th></th><th>mIoU</th><th>pixel accuracy</th><th>split</th></tr>
<tr><td>pseudo-labels</td><td>{p['miou']:.3f}</td><td>{p['pixel_accuracy']:.3f}</td><td>{html.escape(split)}</td></tr>
<tr><td>pseudo-labels</td><td>{cams_metric['miou']:.3f}</td><td>{cams_metric['pixel_accuracy']:.3f}</td><td>{html.escape(cams_metric['split'])}</td></tr>
<tr><td>segmenter</td><td>{s['miou']:.3f}</td><td>{s['pixel_accuracy']:.3f}</td><td>{html.escape(split)}</td></tr></table>
<h2>Samples</h2><img id="samples" src="samples.png" alt="image, ground truth, CAMs, clusters, pseudo-label, prediction">
<h2>Per-class IoU</h2><img id="iou" src="iou.png" alt="per-class IoU bars">
<h2>Training</h2><img id="curves" src="curves.png" alt="training curves">
<h2>TSA cache samples</h2><img id="tsa" src="tsa_cache.png" alt="generated images above their masks">
<h2>CAM ablation</h2>{ablation}
</body></html>
"""


@click.command("report")
@artifact_options(SPEC)
def report_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Write artifacts/report/index.html: sample grids (image, truth, text and final CAM, clusters,
    pseudo-label, prediction), the TSA cache's samples, per-class IoU bars, training curves and the CAM
    ablation table. Open it in a browser."""
    metric, _ = run_stage(SPEC, body, params_path=params_path, paths=paths)
    click.echo(f"report: {paths.get('report') or artifacts.REPORT.path}/index.html ({metric['images']} sample images)")

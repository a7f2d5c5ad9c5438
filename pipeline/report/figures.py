"""The report's figures (matplotlib, written as PNG files): a sample grid, per-class IoU bars, training
curves. Pure functions of arrays and metric dicts; no stores."""

from __future__ import annotations

from pathlib import Path

COLUMNS = ("image", "ground truth", "text CAM", "final CAM", "stage A clusters", "pseudo-label", "prediction")


def palette(labels):
    """(H, W) label map -> (H, W, 3) uint8 in the VOC palette."""
    import numpy as np

    from pipeline.data.palette import voc_palette

    pal = np.asarray(voc_palette(), dtype=np.uint8).reshape(-1, 3)
    return pal[np.asarray(labels, dtype=np.uint8)]


def heat(cams, size):
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

"""The report's figures (matplotlib, written as PNG files): a sample grid, stage A's clusters as outlines
over the image, rows of R and P over the image, per-class IoU bars, training curves. Pure functions of
arrays and metric dicts; no stores."""

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


def cluster_outlines(image, clusters):
    """Stage A's (g, g) cluster ids drawn over the (H, W, 3) image so a person can read them: each
    cluster's colour at 40% over the image, its outline in white, at the image's size."""
    import numpy as np

    from pipeline.metrics import upsample_labels

    ids = upsample_labels(np.asarray(clusters), np.asarray(image).shape[:2]).astype(np.int64)
    over = 0.6 * np.asarray(image, dtype=np.float32) / 255 + 0.4 * palette(ids % 20 + 1) / 255
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    over[edge] = 1.0
    return over


def row_heat(row, image, patch: int | None = None, grid: int | None = None):
    """One row of R or P (t^2,) as a heat map over the (H, W, 3) image, min-max scaled; the chosen
    patch (an index on `grid`) marked with a white square."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    t = int(round(np.sqrt(len(row))))
    h, w = np.asarray(image).shape[:2]
    r = torch.as_tensor(np.asarray(row, dtype=np.float32)).reshape(1, 1, t, t)
    m = F.interpolate(r, size=(h, w), mode="nearest")[0, 0].numpy()
    m = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
    import matplotlib

    out = 0.35 * np.asarray(image, dtype=np.float32) / 255 + 0.65 * matplotlib.colormaps["jet"](m)[..., :3]
    if patch is not None and grid:
        y, x = divmod(patch, grid)
        y0, y1, x0, x1 = y * h // grid, (y + 1) * h // grid, x * w // grid, (x + 1) * w // grid
        out[y0:y1, [x0, x1 - 1]] = 1.0
        out[[y0, y1 - 1], x0:x1] = 1.0
    return out


ROW_COLUMNS = ("image", "R row (stage A)", "R row (oracle)", "P row (stage A)", "P row (oracle)")


def sample_grid(rows: list[dict], path: Path, columns: tuple[str, ...] = COLUMNS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:  # nothing to show (no sample image with an object): a figure that says so
        fig, ax = plt.subplots(figsize=(4, 0.6))
        ax.axis("off"), ax.text(0.5, 0.5, "no sample image has an object", ha="center", va="center")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(1.6 * len(columns), 1.7 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, name in enumerate(columns):
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

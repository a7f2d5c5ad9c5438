"""The report's sample rows, read from the stores: per image of a fixed sample, the image, its truth,
the plain text CAM (remade here), the stored final CAM, stage A's clusters, the pseudo-label and the
segmenter's prediction, as pictures (pipeline.report.figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def sample_rows(index: Any, ids: list[str], cams: Any, cams_store: Path, diffusion: Path, labels: Path,
                predictions: Path) -> list[dict]:
    """`cams` is the CAM path's recipe (pipeline.tasks.clip_cams.ClipCams) with refinement, VCE, RAR and
    PAR off: the text CAM before the diffusion half and the cache's fusion point's refinements."""
    import numpy as np

    from pipeline.report.figures import heat, palette
    from pipeline.store.diffusion_maps import DiffusionMaps
    from pipeline.store.image_store import FileSpec, ImageStore

    split = index.meta["eval_split"]
    images, present = index.images([split]), index.present([split])
    store = ImageStore.open(cams_store, stage="cams")
    rows_of = {i: n for n, i in enumerate(store.ids())}
    maps = DiffusionMaps.open(diffusion)
    pseudo, pred = FileSpec("label", str(labels)), FileSpec("prediction", str(predictions))
    clip, text = cams.load()
    plain = cams.image_cams(clip, text)
    rows = []
    for image_id in ids:
        image = images.load_image(image_id)
        size = image.shape[:2]
        [res] = plain.batch([image], [present[image_id]], [None], [None])
        clusters, _ = maps.clusters(image_id)
        rows.append({"id": image_id, "image": image, "ground truth": palette(images.load_mask(image_id)),
                     "text CAM": heat(res["cams"], size), "final CAM": heat(store.read("cams", rows_of[image_id]), size),
                     "stage A clusters": palette(np.asarray(clusters) % 21 + 1),
                     "pseudo-label": palette(pseudo.read(image_id)), "prediction": palette(pred.read(image_id))})
    return rows

"""The report's sample rows, read from the stores: per image of a fixed sample, the image, its truth,
the plain text CAM (remade here), the stored final CAM, stage A's clusters, the pseudo-label and the
segmenter's prediction; and one object patch's row of stage A's R and P beside the oracle's, built from
the mask (the report is an evaluation: it may read masks; the `cams` stage never does). As pictures
(pipeline.report.figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def sample_rows(index: Any, ids: list[str], cams: Any, cams_store: Path, diffusion: Path, labels: Path,
                predictions: Path) -> list[dict]:
    """`cams` is the CAM path's recipe (pipeline.tasks.clip_cams.ClipCams) with refinement, VCE, RAR and
    PAR off: the text CAM before the diffusion half and the cache's fusion point's refinements."""
    import numpy as np

    from pipeline.report.figures import cluster_outlines, heat, palette
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
                     "stage A clusters": cluster_outlines(image, clusters),
                     "pseudo-label": palette(pseudo.read(image_id)), "prediction": palette(pred.read(image_id))})
    return rows


def attention_rows(index: Any, ids: list[str], diffusion: Path) -> list[dict]:
    """Per image with an object: the image, then one object patch's row of R (the CLIP grid) and of P
    (the transition grid) from stage A's store beside the same rows of the oracle built from the mask
    (pipeline.diffusion.oracle), over the image. The patch is the largest object's most central one."""
    from pipeline.diffusion.oracle import labels_at_grid, object_patch, oracle_transition, segment_rows
    from pipeline.report.figures import row_heat
    from pipeline.store.diffusion_maps import DiffusionMaps

    split = index.meta["eval_split"]
    images = index.images([split])
    maps = DiffusionMaps.open(diffusion)
    g, t = maps.grid, maps.transition_grid
    rows = []
    for image_id in ids:
        image, mask = images.load_image(image_id), images.load_mask(image_id)
        patch = object_patch(mask, g)
        if patch is None:
            continue
        r, r_oracle = maps.correlation(image_id)[patch], segment_rows(labels_at_grid(mask, g))[patch]
        row = {"id": image_id, "image": image, "R row (stage A)": row_heat(r, image, patch, g),
               "R row (oracle)": row_heat(r_oracle, image, patch, g)}
        if t:
            tp = object_patch(mask, t)
            row["P row (stage A)"] = row_heat(maps.transition(image_id)[tp], image, tp, t)
            row["P row (oracle)"] = row_heat(oracle_transition(mask, t)[tp], image, tp, t)
        else:
            row["P row (stage A)"] = row["P row (oracle)"] = image
        rows.append(row)
    return rows

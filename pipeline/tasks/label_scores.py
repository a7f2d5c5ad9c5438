"""Scoring a stored set of pseudo-labels against the dataset's masks (stages eval_cams and tsa_adapt).

Masks are read here and in the other evaluation steps only, never by a stage that makes labels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def cams_metric(index, store, thresholds: Sequence[float]) -> tuple[dict, dict]:
    """(headline, detail) of a cams store and its pseudo-labels: the train split's stored labels against
    their masks (pixels a label leaves out with `cams.ignore_band` are not scored, and
    `labelled_fraction` says how many were kept), and a sweep of constant background scores on the eval
    split with the store's own label rule (the only split a threshold may be chosen on)."""
    from pipeline.cam.labels import LabelRule
    from pipeline.metrics import IGNORE, class_scores, confusion, scores

    [labels] = store.files
    names = ("background", *index.class_names)
    K = len(names)
    train, tune = index.meta["train_split"], index.meta["eval_split"]
    images = index.images([train, tune])

    def scored(pred: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, int]:
        keep = pred != IGNORE
        return confusion(pred[keep], mask[keep], K), int(keep.sum())

    conf = np.zeros((K, K), dtype=np.int64)
    labelled = pixels = 0
    for image_id in index.ids(train):
        mask = images.load_mask(image_id)
        c, n = scored(labels.read(image_id), mask)
        conf, labelled, pixels = conf + c, labelled + n, pixels + mask.size
    rule = LabelRule.from_attrs(store.attrs["label_rule"])
    sweep = {}
    if tune != train:
        rows = {i: n for n, i in enumerate(store.ids())}
        present = index.present([tune])
        candidates = [None, *thresholds]
        tconf = np.zeros((len(candidates), K, K), dtype=np.int64)
        for image_id in index.ids(tune):
            mask = images.load_mask(image_id)
            preds = rule.sweep(store.read("cams", rows[image_id]), present[image_id], images.load_image(image_id), candidates)
            for n, pred in enumerate(preds):
                tconf[n] += scored(pred, mask)[0]
        sweep = {"1 - max" if t is None else f"{t:g}": scores(c, names)["miou"] for t, c in zip(candidates, tconf)}
    total = scores(conf, names)
    headline = {"miou": total["miou"], "pixel_accuracy": total["pixel_accuracy"]}
    detail = {"split": train, "images": len(index.ids(train)), **headline,
              "labelled_fraction": labelled / max(pixels, 1),  # < 1 only with cams.ignore_band
              "per_class": class_scores(conf, names),
              "background": {"score": "1 - max" if rule.bg_threshold is None else rule.bg_threshold,
                             "chosen_on": tune, "reported_on": train, "sweep_miou_on_chosen_split": sweep}}
    return headline, detail

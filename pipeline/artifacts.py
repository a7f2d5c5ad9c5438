"""Every artifact of the pipeline, named once: its default path (relative to the project root, where
`dvc repro` runs each stage), what it holds, the stored format that lays out its bytes, and how DVC
keeps it. Stage commands take their path options from here and `dvc.yaml` is generated from the
stages' declarations (pipeline.dvcfile), so no path is written twice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: how DVC keeps an artifact: an output, a metric (headline numbers, DVC-cached so `dvc exp show`
#: reads them per experiment), a DVCLive folder (its metrics.json is a metric, its plots are plots),
#: or nothing (a stage's working state, kept between runs but never pushed: a clone that pulled
#: everything is up to date without it, where DVC would call a missing `cache: false` output "deleted")
Role = Literal["out", "metric", "live", "untracked"]


@dataclass(frozen=True)
class Artifact:
    """A stage output: `name` is also its command-line option (`--name`), `path` its default location,
    `layouts` the stored formats whose versions (pipeline.store.layouts) cover the code that writes its
    bytes outside the stage's own algorithm code (none: the stage's code alone decides them)."""

    name: str
    path: str
    what: str
    layouts: tuple[str, ...] = ()
    role: Role = "out"
    persist: bool = False  # kept by DVC across reruns, so an interrupted or extended run resumes

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def tracked(self) -> bool:
        return self.role != "untracked"


def _metric(name: str, stage: str, what: str) -> Artifact:
    return Artifact(name, f"artifacts/metrics/{stage}.json", what, layouts=("JSON",), role="metric")


def _detail(name: str, stage: str, what: str) -> Artifact:
    return Artifact(name, f"artifacts/metrics/{stage}_detail.json", what, layouts=("JSON",))


SHAPES = Artifact("shapes", "artifacts/shapes", "the shapes-world dataset folder (VOC layout, class_names.txt)")
INDEX = Artifact("index", "artifacts/index", "dataset index: ids, image-level labels, sizes, digests, fingerprint",
                 layouts=("DATASET_INDEX", "IMAGE_STORE"), persist=True)
DIFFUSION = Artifact("diffusion", "artifacts/diffusion.zarr",
                     "per-image SD attention clusters, refined correlation R and transition P (zarr)",
                     layouts=("IMAGE_STORE",), persist=True)
DIFFUSION_METRIC = _metric("diffusion_metric", "diffusion_attention",
                           "the stored clusters' best-match IoU with the object masks, its ceiling, P's kept mass")
DIFFUSION_DETAIL = _detail("diffusion_detail", "diffusion_attention",
                           "the same for the other recipe and the baselines, image counts, the model and sizes")

CAMS = Artifact("cams", "artifacts/cams.zarr", "per-image CAMs of the present classes (zarr); pseudo-labels beside it",
                layouts=("IMAGE_STORE",), persist=True)
PSEUDO_LABELS = Artifact("pseudo_labels", "artifacts/pseudo_labels", "pseudo-labels as VOC-palette PNGs, one per image",
                         layouts=("IMAGE_STORE",), persist=True)
CAMS_METRIC = _metric("cams_metric", "cams", "pseudo-label mIoU and pixel accuracy on the train split")
CAMS_DETAIL = _detail("cams_detail", "cams",
                      "per-class IoU, precision and recall; the background sweep on the eval split")

TSA_CACHE = Artifact("tsa_cache", "artifacts/tsa_cache.h5",
                     "the TSA cache: generated class images, masks, prototypes, keys and values (HDF5)",
                     layouts=("H5_RECORDS",), persist=True)
TSA_PICTURE = Artifact("tsa_picture", "artifacts/tsa_cache.png", "per class, generated images above their masks")
TSA_METRIC = _metric("tsa_metric", "tsa_cache", "patch accuracy of the cache's keys and of the texts alone on real scenes")
TSA_DETAIL = _detail("tsa_detail", "tsa_cache", "the same per configuration and per class; keys, empty masks, draws")

TSA_FEATURES = Artifact("tsa_features", "artifacts/tsa_features.zarr",
                        "round 2's training set: each train image's patch features and round-1 label (kept across reruns "
                        "for resuming; not a DVC output, never pushed)", layouts=("IMAGE_STORE",), role="untracked")
TSA_ADAPTER = Artifact("tsa_adapter", "artifacts/tsa_adapter.safetensors", "the key/value adapter trained on round-1 pseudo-labels")
CAMS_ROUND2 = Artifact("cams_round2", "artifacts/cams_round2.zarr", "round-2 CAMs, made with the adapted cache (zarr)",
                       layouts=("IMAGE_STORE",), persist=True)
PSEUDO_LABELS_ROUND2 = Artifact("pseudo_labels_round2", "artifacts/pseudo_labels_round2",
                                "round-2 pseudo-labels (VOC-palette PNGs)", layouts=("IMAGE_STORE",), persist=True)
TSA_ADAPT_METRIC = _metric("tsa_adapt_metric", "tsa_adapt", "round-2 pseudo-label mIoU and the adapter's last loss")
TSA_ADAPT_DETAIL = _detail("tsa_adapt_detail", "tsa_adapt", "the adapter's losses and the round-2 labels' detail, as cams'")

SEGMENTER = Artifact("segmenter", "artifacts/segmenter", "the trained segmenter: model.safetensors (decoder) and config.json",
                     layouts=("SEGMENTER",))
TRAIN_CHECKPOINTS = Artifact("train_checkpoints", "artifacts/checkpoints/train",
                             "training checkpoints (kept across reruns for resuming; not a DVC output, never pushed)",
                             layouts=("CHECKPOINTS",), role="untracked")
TRAIN_LIVE = Artifact("train_live", "artifacts/train_live",
                      "DVCLive logs of training: metrics.json and plots/metrics/*.tsv (loss, lr, val curve)", layouts=("LIVE",),
                      role="live")
EVALUATION = Artifact("evaluation", "artifacts/evaluation.zarr", "per-image confusion matrices of the segmenter (zarr)",
                      layouts=("IMAGE_STORE",), persist=True)
PREDICTIONS = Artifact("predictions", "artifacts/predictions",
                       "predictions as VOC-palette PNGs in the evaluation server's layout: results/VOC2012/Segmentation/comp6_<split>_cls/",
                       layouts=("IMAGE_STORE",), persist=True)
SEG_METRIC = _metric("seg_metric", "seg", "segmenter mIoU and pixel accuracy on the eval split, beside its pseudo-labels'")
SEG_DETAIL = _detail("seg_detail", "seg", "per-class IoU of the segmenter and of the pseudo-labels, the inference settings")
REPORT = Artifact("report", "artifacts/report", "the HTML report (index.html) and its figures")



def submission_folder(predictions: str | Path, split: str) -> Path:
    """Where the VOC evaluation server expects a split's PNGs inside PREDICTIONS (comp6: trained without
    outside data)."""
    return Path(predictions) / "results" / "VOC2012" / "Segmentation" / f"comp6_{split}_cls"


ALL: tuple[Artifact, ...] = (
    SHAPES, INDEX, DIFFUSION, DIFFUSION_METRIC, DIFFUSION_DETAIL, TSA_CACHE, TSA_PICTURE, TSA_METRIC, TSA_DETAIL, CAMS,
    PSEUDO_LABELS, CAMS_METRIC, CAMS_DETAIL, TSA_FEATURES, TSA_ADAPTER, CAMS_ROUND2, PSEUDO_LABELS_ROUND2, TSA_ADAPT_METRIC,
    TSA_ADAPT_DETAIL, SEGMENTER, TRAIN_CHECKPOINTS, TRAIN_LIVE, EVALUATION, PREDICTIONS, SEG_METRIC, SEG_DETAIL, REPORT,
)

"""Every artifact of the pipeline, named once: its default path (relative to the project root, where
`dvc repro` runs each stage) and what it holds. Stage commands take their path options from here and
`dvc.yaml` lists the same paths (a test checks that they agree), so no path is written twice."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Artifact:
    """A stage output: `name` is also its command-line option (`--name`), `path` its default location."""

    name: str
    path: str
    what: str
    metric: bool = False  # a small JSON metric file (dvc.yaml `metrics:`, DVC-cached so `dvc exp show` reads it)
    # False: a stage's working state, kept between runs but not a DVC output, so a clone that pulled
    # everything is up to date without it (DVC would call a missing `cache: false` output "deleted" and rerun)
    tracked: bool = True

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


SHAPES = Artifact("shapes", "artifacts/shapes", "the shapes-world dataset folder (VOC layout, class_names.txt)")
INDEX = Artifact("index", "artifacts/index", "dataset index: ids, image-level labels, sizes, digests, fingerprint")
DIFFUSION = Artifact("diffusion", "artifacts/diffusion.zarr", "per-image SD attention clusters, refined correlation R and transition P (zarr)")
DIFFUSION_METRIC = Artifact(
    "diffusion_metric", "artifacts/metrics/diffusion_attention.json",
    "cluster best-match IoU with the object masks for both recipes and baselines; P's kept mass", metric=True,
)

CAMS = Artifact("cams", "artifacts/cams.zarr", "per-image CAMs of the present classes (zarr); pseudo-labels beside it")
PSEUDO_LABELS = Artifact("pseudo_labels", "artifacts/pseudo_labels", "pseudo-labels as VOC-palette PNGs, one per image")
CAMS_METRIC = Artifact(
    "cams_metric", "artifacts/metrics/cams.json",
    "pseudo-label mIoU, per-class IoU, precision and recall on the train split; the background sweep on the eval split",
    metric=True,
)

TSA_CACHE = Artifact("tsa_cache", "artifacts/tsa_cache.h5",
                     "the TSA cache: generated class images, masks, prototypes, keys and values (HDF5)")
TSA_PICTURE = Artifact("tsa_picture", "artifacts/tsa_cache.png", "per class, generated images above their masks")
TSA_METRIC = Artifact(
    "tsa_metric", "artifacts/metrics/tsa_cache.json",
    "patch classification accuracy of the cache's keys and of the texts alone on real eval-split scenes",
    metric=True,
)

TSA_ADAPTER = Artifact("tsa_adapter", "artifacts/tsa_adapter.safetensors", "the key/value adapter trained on round-1 pseudo-labels")
CAMS_ROUND2 = Artifact("cams_round2", "artifacts/cams_round2.zarr", "round-2 CAMs, made with the adapted cache (zarr)")
PSEUDO_LABELS_ROUND2 = Artifact("pseudo_labels_round2", "artifacts/pseudo_labels_round2", "round-2 pseudo-labels (VOC-palette PNGs)")
TSA_ADAPT_METRIC = Artifact(
    "tsa_adapt_metric", "artifacts/metrics/tsa_adapt.json",
    "the adapter's training losses and the round-2 pseudo-labels' mIoU (as metrics/cams.json)", metric=True,
)

SEGMENTER = Artifact("segmenter", "artifacts/segmenter", "the trained segmenter: model.safetensors (decoder) and config.json")
TRAIN_CHECKPOINTS = Artifact("train_checkpoints", "artifacts/checkpoints/train",
                             "training checkpoints (kept across reruns for resuming; not a DVC output, never pushed)",
                             tracked=False)
TRAIN_LIVE = Artifact("train_live", "artifacts/train_live",
                      "DVCLive logs of training: metrics.json and plots/metrics/*.tsv (loss, lr, val curve)")
EVALUATION = Artifact("evaluation", "artifacts/evaluation.zarr", "per-image confusion matrices of the segmenter (zarr)")
PREDICTIONS = Artifact("predictions", "artifacts/predictions",
                       "predictions as VOC-palette PNGs in the evaluation server's layout: results/VOC2012/Segmentation/comp6_<split>_cls/")
SEG_METRIC = Artifact("seg_metric", "artifacts/metrics/seg.json",
                      "segmenter mIoU, per-class IoU and pixel accuracy on the eval split, beside its pseudo-labels'", metric=True)
REPORT = Artifact("report", "artifacts/report", "the HTML report (index.html) and its figures")

ALL: tuple[Artifact, ...] = (SHAPES, INDEX, DIFFUSION, DIFFUSION_METRIC, TSA_CACHE, TSA_PICTURE, TSA_METRIC, CAMS,
                             PSEUDO_LABELS, CAMS_METRIC, TSA_ADAPTER, CAMS_ROUND2, PSEUDO_LABELS_ROUND2, TSA_ADAPT_METRIC,
                             SEGMENTER, TRAIN_CHECKPOINTS, TRAIN_LIVE, EVALUATION, PREDICTIONS, SEG_METRIC, REPORT)

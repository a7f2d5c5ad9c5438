"""Stage `evaluate` (stage D): the segmenter's mIoU on the eval split as DiCLIP evaluates it.

Each image is resized to `size`^2 times every scale (mirrored too at all but 1.0), the logits are
averaged at `fraction` of the image size and brought to it; optionally DenseCRF on the softmax; argmax.
Writes

```
artifacts/evaluation.zarr    per image: confusion (K, K) int64 of the prediction and of the stored
                             pseudo-label against the mask (rows truth, columns prediction; 255 ignored)
artifacts/predictions/results/VOC2012/Segmentation/comp6_<split>_cls/<id>.png
                             VOC-palette predictions in the layout the VOC evaluation server accepts
artifacts/metrics/seg.json   mIoU, per-class IoU, pixel accuracy of the segmenter and of the pseudo-labels
```
Resumable per image like every per-image stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from pipeline import artifacts
from pipeline.skeleton import StageContext, StageSpec, run_stage
from stages.common import artifact_options, friendly_errors, params_option

SPEC = StageSpec(
    name="evaluate", module=__name__, params=("evaluate", "models.device", "models.precision"),
    inputs=(artifacts.INDEX, artifacts.SEGMENTER, artifacts.PSEUDO_LABELS),
    outputs=(artifacts.EVALUATION, artifacts.PREDICTIONS, artifacts.SEG_METRIC),
    worker_imports=("stages.segmenter_io", "pipeline.segment.scores"),
)
NOT_IN_KEY = ("evaluate.shard_images",)


def submission_folder(root: Path, split: str) -> Path:
    """Where the VOC evaluation server expects a split's PNGs (comp6: trained without outside data)."""
    return Path(root) / "results" / "VOC2012" / "Segmentation" / f"comp6_{split}_cls"


@dataclass(frozen=True)
class EvalTask:
    """Runner task: load the segmenter once per worker; per image its prediction and confusions."""

    segmenter: object  # stages.segmenter_io.SavedSegmenter
    index: str
    split: str
    labels: str  # the pseudo-label folder
    config: object  # EvaluateParams

    def build(self):
        from pipeline.segment.scores import confusion
        from pipeline.store.dataset_index import DatasetIndex
        from pipeline.store.image_store import FileSpec
        from stages.segmenter_io import segment_image

        decoder, visual, saved = self.segmenter.load()
        images = DatasetIndex.load(self.index).images([self.split])
        pseudo = FileSpec("label", self.labels)
        K = saved["num_classes"] + 1

        def compute(image_id: str) -> dict:
            image, mask = images.load_image(image_id), images.load_mask(image_id)
            pred = segment_image(decoder, visual, saved, self.config, image)
            return {"confusion": confusion(pred, mask, K), "pseudo_confusion": confusion(pseudo.read(image_id), mask, K),
                    "prediction": pred}

        return compute

    def input_digest(self, image_id: str) -> bytes:
        from pipeline.store.dataset_index import image_digests

        return image_digests(self.index, (self.split,))[image_id]


def body(ctx: StageContext) -> dict:
    from stages.segmenter_io import SavedSegmenter

    cfg, models = ctx.params.evaluate, ctx.params.models
    index = ctx.index()
    split = index.meta["eval_split"]
    segmenter = SavedSegmenter(str(ctx.path(artifacts.SEGMENTER)), models.device, models.precision)
    saved = segmenter.config  # a missing or broken segmenter is refused here, before torch is imported
    ctx.start_workers()

    from pipeline.segment.scores import scores
    from pipeline.store.image_store import ArraySpec, FileSpec
    names = ("background", *index.class_names)
    K = len(names)
    task = EvalTask(segmenter, str(index.path), split, str(ctx.path(artifacts.PSEUDO_LABELS)), cfg)
    folder = submission_folder(ctx.path(artifacts.PREDICTIONS), split)
    stamp = ctx.stamp(exclude=NOT_IN_KEY, inputs={"index": index.fingerprint, "segmenter": saved["key"]})
    store, _ = ctx.images(task, ctx.path(artifacts.EVALUATION), ids=index.ids(split),
                          specs=[ArraySpec("confusion", (K, K), "int64"), ArraySpec("pseudo_confusion", (K, K), "int64")],
                          files=[FileSpec("prediction", str(folder))], key=stamp["fingerprint"],
                          attrs={**stamp, "split": split, "class_names": list(index.class_names)},
                          shard_images=cfg.shard_images, desc="evaluate")
    conf, pseudo = store.read("confusion").sum(0), store.read("pseudo_confusion").sum(0)
    metric = {"split": split, "images": len(store.ids()), "segmenter": scores(conf, names),
              "pseudo_labels": scores(pseudo, names),
              "inference": {"size": cfg.size, "scales": list(cfg.scales), "flip": cfg.flip, "crf": cfg.crf}}
    ctx.write_metric(artifacts.SEG_METRIC, metric)
    return metric


@click.command("evaluate")
@artifact_options(SPEC)
def evaluate_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Evaluate the segmenter on the eval split (stage D): multi-scale (`scales` of `size`) + `flip` inference,
    optional DenseCRF (`crf`), mIoU with background (255 ignored), per-class IoU and pixel accuracy
    beside the same split's pseudo-labels; palette PNGs in the VOC server's layout."""
    metric, _ = run_stage(SPEC, body, params_path=params_path, paths=paths)
    click.echo(f"{metric['split']}: segmenter mIoU {metric['segmenter']['miou']:.3f}, "
               f"pseudo-labels {metric['pseudo_labels']['miou']:.3f} over {metric['images']} images")


@click.command("predict")
@click.option("--segmenter", type=click.Path(path_type=Path), default=artifacts.SEGMENTER.path, show_default=True,
              help="The trained segmenter folder (stage train).")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="A VOC-layout dataset folder (default: dataset.root in the params).")
@click.option("--split", default="test", show_default=True, help="The split list ImageSets/Segmentation/<split>.txt.")
@click.option("--out", type=click.Path(path_type=Path), default=artifacts.PREDICTIONS.path, show_default=True,
              help="Where results/VOC2012/Segmentation/comp6_<split>_cls/ is written.")
@params_option
@friendly_errors
def predict_command(params_path: Path, segmenter: Path, root: Path | None, split: str, out: Path) -> None:
    """Predict a split that has no masks (VOC test) for the evaluation server: every image of the split
    list through the `evaluate` section's inference, written as VOC-palette PNGs in the server's layout
    (tar `results/` and upload it). Not a DVC stage: the index holds only splits with masks."""
    from pipeline.data.decode import decode_image, read_bytes
    from pipeline.data.layout import IMAGE_DIR, IMAGE_SUFFIXES, Layout, find_split_file, read_split_ids
    from pipeline.data.voc import SPLIT_DIRS
    from pipeline.params import load_params

    params = load_params(params_path)
    root = Path(root or params.dataset.root)
    ids = read_split_ids(find_split_file(root, split, SPLIT_DIRS))
    layout = Layout(root / IMAGE_DIR, root, image_suffixes=IMAGE_SUFFIXES)
    paths = [layout.image_path(i) for i in ids]  # every image checked before any work
    from tqdm import tqdm

    from pipeline import atomic
    from pipeline.data.palette import palette_png
    from stages.segmenter_io import SavedSegmenter, segment_image

    decoder, visual, saved = SavedSegmenter(str(segmenter), params.models.device, params.models.precision).load()
    folder = submission_folder(out, split)
    for image_id, path in tqdm(list(zip(ids, paths)), desc=f"predict {split}", unit="img"):
        pred = segment_image(decoder, visual, saved, params.evaluate, decode_image(read_bytes(path, "image"), path))
        atomic.write_bytes(folder / f"{image_id}.png", palette_png(pred))
    click.echo(f"predict: {len(ids)} predictions in {folder}")

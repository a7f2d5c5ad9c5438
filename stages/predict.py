"""`diclip predict`: predictions for a split without masks (VOC test) in the evaluation server's layout.
Not a DVC stage: the index holds only splits with masks."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline import artifacts
from pipeline.command import friendly_errors, params_option


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
    (tar `results/` and upload it)."""
    from pipeline.data.decode import decode_image, read_bytes
    from pipeline.data.layout import IMAGE_DIR, IMAGE_SUFFIXES, Layout, find_split_file, read_split_ids
    from pipeline.data.voc import SPLIT_DIRS
    from pipeline.params import load_params

    params = load_params(params_path, sections=("evaluate", "models", "dataset"))
    root = Path(root or params.dataset.root)
    ids = read_split_ids(find_split_file(root, split, SPLIT_DIRS))
    layout = Layout(root / IMAGE_DIR, root, image_suffixes=IMAGE_SUFFIXES)
    paths = [layout.image_path(i) for i in ids]  # every image checked before any work
    from tqdm import tqdm

    from pipeline import atomic
    from pipeline.data.palette import palette_png
    from pipeline.segment.inference import segment_image
    from pipeline.tasks.segmenter import SavedSegmenter

    decoder, visual, saved = SavedSegmenter(str(segmenter), params.models.device, params.models.precision).load()
    folder = artifacts.submission_folder(out, split)
    for image_id, path in tqdm(list(zip(ids, paths)), desc=f"predict {split}", unit="img"):
        pred = segment_image(decoder, visual, saved, params.evaluate, decode_image(read_bytes(path, "image"), path))
        atomic.write_bytes(folder / f"{image_id}.png", palette_png(pred))
    click.echo(f"predict: {len(ids)} predictions in {folder}")

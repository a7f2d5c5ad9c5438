"""Builders of tiny on-disk datasets (VOC, COCO and folder layouts) for the reader tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.palette import voc_palette

SPLIT_DIR = "ImageSets/Segmentation"


@dataclass(frozen=True)
class Sample:
    """What was written for one image id."""

    image: np.ndarray  # (H, W, 3) uint8 as given to the writer (JPEG on disk is lossy)
    mask: np.ndarray  # (H, W) uint8 class indices
    image_path: Path
    mask_path: Path


def pattern_image(height: int, width: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 smooth colour ramps, different per seed (JPEG keeps them close)."""
    y, x = np.mgrid[0:height, 0:width]
    channels = (40 + 25 * seed + 3 * x, 220 - 4 * y - 5 * seed, 90 + 2 * (x + y) + 7 * seed)
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def banded_mask(height: int, width: int, values: tuple[int, ...]) -> np.ndarray:
    """(H, W) uint8 with one horizontal band per value, so exactly ``values`` occur."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for band, rows in enumerate(np.array_split(np.arange(height), len(values))):
        mask[rows] = values[band]
    return mask


def write_image(path: Path, image: np.ndarray) -> Path:
    """JPEG (quality 95) for .jpg/.jpeg, lossless otherwise (by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(image).save(path, format="JPEG", quality=95)
    else:
        Image.fromarray(image).save(path)
    return path


def write_mask(path: Path, mask: np.ndarray, *, palette: bool = True) -> Path:
    """Palette ('P') PNG of class indices with the VOC colours, or grayscale ('L')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask)  # mode L
    if palette:
        image.putpalette(voc_palette())  # L -> P, pixel values kept as indices
    image.save(path)
    return path


def write_split(root: Path, split: str, lines: list[str], *, split_dir: str = SPLIT_DIR) -> Path:
    path = root / split_dir / f"{split}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def _write_pair(
    image_dir: Path, mask_dir: Path, image_id: str, suffix: str, values: tuple[int, ...], seed: int,
    size: tuple[int, int] = (24, 40),
) -> Sample:
    image = pattern_image(*size, seed=seed)
    mask = banded_mask(*size, values)
    return Sample(
        image=image,
        mask=mask,
        image_path=write_image(image_dir / f"{image_id}{suffix}", image),
        mask_path=write_mask(mask_dir / f"{image_id}.png", mask),
    )


# Planted mask values per image of each layout.
VOC_SPLITS = {
    "train": {"2007_000032": (0, 1, 255), "2007_000039": (0, 3, 255), "2008_000002": (0, 15, 20)},
    "val": {"2007_000121": (0, 7), "2007_000123": (0, 255)},
}


def build_voc(root: Path, *, mask_folder: str = "SegmentationClassAug") -> dict[str, Sample]:
    """VOC 2012 layout with splits ``train`` (3 ids) and ``val`` (2 ids); masks in
    ``mask_folder``. Split lists keep the (non-sorted) order of ``VOC_SPLITS``."""
    samples = {}
    for split, planted in VOC_SPLITS.items():
        for seed, (image_id, values) in enumerate(planted.items()):
            samples[image_id] = _write_pair(
                root / "JPEGImages", root / mask_folder, image_id, ".jpg", values, seed
            )
        write_split(root, split, list(reversed(planted)))  # file order != sorted order
    return samples


COCO_SPLITS = {
    "train2014": {
        "COCO_train2014_000000000009": (0, 1, 80),
        "COCO_train2014_000000000025": (0, 25, 255),
        "COCO_train2014_000000000030": (0,),
    },
    "val2014": {"COCO_val2014_000000000042": (0, 18), "COCO_val2014_000000000073": (0, 4, 255)},
}


def build_coco(root: Path, *, split_lists: bool) -> dict[str, Sample]:
    """COCO 2014 layout (train2014/val2014 subfolders); split lists in reverse-sorted order
    when ``split_lists`` (so a listing-based reader would differ)."""
    samples = {}
    for seed, (subdir, planted) in enumerate(COCO_SPLITS.items()):
        for index, (image_id, values) in enumerate(planted.items()):
            samples[image_id] = _write_pair(
                root / "JPEGImages" / subdir,
                root / "SegmentationClass" / subdir,
                image_id,
                ".jpg",
                values,
                seed=10 * seed + index,
            )
        if split_lists:
            write_split(root, subdir.removesuffix("2014"), sorted(planted, reverse=True))
    return samples


FOLDER_CLASSES = ("square", "circle", "triangle")
FOLDER_IMAGES = {  # id -> (image suffix, planted mask values)
    "shape_0000": (".png", (0, 1, 2)),
    "shape_0001": (".png", (0, 3, 255)),
    "shape_0002": (".jpeg", (0, 2)),
    "shape_0003": (".jpg", (0,)),
}


def build_folder(
    root: Path, *, class_names: tuple[str, ...] | None = FOLDER_CLASSES, mask_folder: str = "SegmentationClass"
) -> dict[str, Sample]:
    """Folder layout with ``class_names.txt`` (omitted when ``class_names`` is None), mixed
    image suffixes, and a ``train`` split of all ids."""
    samples = {
        image_id: _write_pair(root / "JPEGImages", root / mask_folder, image_id, suffix, values, seed)
        for seed, (image_id, (suffix, values)) in enumerate(FOLDER_IMAGES.items())
    }
    write_split(root, "train", list(FOLDER_IMAGES))
    if class_names is not None:
        (root / "class_names.txt").write_text("".join(f"{name}\n" for name in class_names))
    return samples


def replace_with_link(path: Path, target: Path | str) -> Path:
    """Replace ``path`` (if present) by a symbolic link to ``target``, which may not exist:
    what a DVC link looks like once its cache file is gone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.symlink_to(target)
    return path

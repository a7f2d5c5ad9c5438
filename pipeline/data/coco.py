"""COCO 2014 with VOC-style masks.

Split ``train`` reads ``{root}/JPEGImages/train2014/{id}.jpg`` and
``{root}/SegmentationClass/train2014/{id}.png`` (``val``: the ``val2014`` subfolders). Ids come
from ``{root}/ImageSets/Segmentation/{split}.txt`` when it exists, else from the sorted stems
of the ``.jpg`` files in the image subfolder.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.class_names import COCO_CLASSES
from pipeline.data.layout import (
    IMAGE_DIR,
    SPLIT_DIR,
    DatasetError,
    Layout,
    Resolved,
    ids_from_folder,
    read_class_names,
    read_split_ids,
    refuse_broken_link,
    require_dir,
)

MASK_DIR = "SegmentationClass"
SPLIT_SUBDIRS = {"train": "train2014", "val": "val2014"}


def resolve_coco(root: Path, split: str, class_names_file: Path | None) -> Resolved:
    """COCO 2014: the 80 standard classes unless ``class_names_file`` overrides them."""
    if split not in SPLIT_SUBDIRS:
        choices = ", ".join(f"{name!r} ({sub}/)" for name, sub in SPLIT_SUBDIRS.items())
        raise DatasetError(f"unknown COCO split {split!r} for {root}: expected one of {choices}")
    names = COCO_CLASSES if class_names_file is None else read_class_names(class_names_file)
    subdir = SPLIT_SUBDIRS[split]
    image_dir = require_dir(root / IMAGE_DIR / subdir, "image folder")
    mask_dir = require_dir(root / MASK_DIR / subdir, "mask folder")
    split_file = root / SPLIT_DIR / f"{split}.txt"
    # A broken link is no reason to fall back to listing the image folder.
    refuse_broken_link(split_file, "split list", context=f"split {split!r}: ")
    if split_file.is_file():
        ids = read_split_ids(split_file)
    else:
        ids = ids_from_folder(image_dir, ".jpg", no_list=split_file)
    return Resolved(class_names=names, ids=ids, layout=Layout(image_dir, mask_dir))

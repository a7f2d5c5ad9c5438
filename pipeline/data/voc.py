"""PASCAL VOC 2012 path rules (also the layout of ``folder`` datasets).

``{root}/JPEGImages/{id}.jpg``; masks in ``{root}/SegmentationClassAug/{id}.png`` when that
folder exists, else ``{root}/SegmentationClass/{id}.png``; ids from
``{root}/ImageSets/Segmentation/{split}.txt`` (or ``ImageSets/SegmentationAug/{split}.txt``).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.class_names import VOC_CLASSES
from pipeline.data.layout import (
    IMAGE_DIR,
    SPLIT_DIR,
    Layout,
    Resolved,
    find_split_file,
    pick_mask_dir,
    read_class_names,
    read_split_ids,
    require_dir,
)

# Where split lists are looked for, in order (train_aug.txt sometimes sits in the second).
SPLIT_DIRS = (SPLIT_DIR, "ImageSets/SegmentationAug")


def resolve_voc_layout(
    root: Path, split: str, class_names: tuple[str, ...], *, image_suffixes: tuple[str, ...]
) -> Resolved:
    """Check the VOC folders exist and read the split list (no per-image work)."""
    image_dir = require_dir(root / IMAGE_DIR, "image folder")
    mask_dir, mask_note = pick_mask_dir(root)
    ids = read_split_ids(find_split_file(root, split, SPLIT_DIRS))
    layout = Layout(image_dir, mask_dir, image_suffixes=image_suffixes, mask_note=mask_note)
    return Resolved(class_names=class_names, ids=ids, layout=layout)


def resolve_voc(root: Path, split: str, class_names_file: Path | None) -> Resolved:
    """VOC 2012: the 20 standard classes unless ``class_names_file`` overrides them."""
    names = VOC_CLASSES if class_names_file is None else read_class_names(class_names_file)
    return resolve_voc_layout(root, split, names, image_suffixes=(".jpg",))

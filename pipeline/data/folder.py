"""``folder`` datasets: the VOC layout plus ``class_names.txt`` at the root (one foreground
name per line, line i = mask value i); images may be .jpg, .jpeg or .png (first that exists).
The synthetic shapes world is written in this form."""

from __future__ import annotations

from pathlib import Path

from pipeline.data.layout import CLASS_NAMES_FILE, IMAGE_SUFFIXES, Resolved, read_class_names
from pipeline.data.voc import resolve_voc_layout


def resolve_folder(root: Path, split: str, class_names_file: Path | None) -> Resolved:
    names = read_class_names(root / CLASS_NAMES_FILE if class_names_file is None else class_names_file)
    return resolve_voc_layout(root, split, names, image_suffixes=IMAGE_SUFFIXES)

"""Path rules shared by the dataset kinds: the error type, the path-resolver strategy, and
the readers for split lists and ``class_names.txt``.

Everything here is cheap (folder checks and small text files); per-image decoding lives in
``pipeline.data.decode``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

IMAGE_DIR = "JPEGImages"
# Mask folders of the VOC layout; the first one that exists is used for every image.
MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")
SPLIT_DIR = "ImageSets/Segmentation"
CLASS_NAMES_FILE = "class_names.txt"
IGNORE_INDEX = 255
MAX_CLASSES = 254  # mask values 1..254; 255 is ignore
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_BACKGROUND_NAMES = frozenset({"background", "_background_", "__background__", "bg"})


class DatasetError(ValueError):
    """Bad or missing data; the message names the file or image id and what was expected."""


@dataclass(frozen=True)
class Layout:
    """Where one split's files live (the path-resolver strategy).

    Image ``id`` is ``image_dir/{id}{suffix}`` for the first suffix in ``image_suffixes``
    that exists; its mask is ``mask_dir/{id}{mask_suffix}``.
    """

    image_dir: Path
    mask_dir: Path
    image_suffixes: tuple[str, ...] = (".jpg",)
    mask_suffix: str = ".png"
    mask_note: str = ""  # why mask_dir was chosen; appended to missing-mask errors

    def image_path(self, image_id: str) -> Path:
        tried = [self.image_dir / f"{image_id}{suffix}" for suffix in self.image_suffixes]
        for path in tried:
            if path.is_file():
                return path
        raise DatasetError(
            f"image id {image_id!r} has no image file; tried {', '.join(map(str, tried))}"
        )

    def mask_path(self, image_id: str) -> Path:
        path = self.mask_dir / f"{image_id}{self.mask_suffix}"
        if not path.is_file():
            raise DatasetError(
                f"missing mask for image id {image_id!r}: expected {path}{self.mask_note}"
            )
        return path


@dataclass(frozen=True)
class Resolved:
    """What a kind's resolver hands the factory: names, ids and the path strategy."""

    class_names: tuple[str, ...]
    ids: tuple[str, ...]
    layout: Layout


def require_root(root: str | Path) -> Path:
    """Absolute dataset root (symlinks kept, e.g. DVC links); raises if not a directory."""
    path = Path(root).expanduser().absolute()
    if not path.exists():
        raise DatasetError(f"dataset root {path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"dataset root {path} is not a directory")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        state = "is not a directory" if path.exists() else "is missing"
        raise DatasetError(f"required {what} {path} {state}")
    return path


def pick_mask_dir(root: Path) -> tuple[Path, str]:
    """First existing folder of ``MASK_DIRS`` under ``root``, plus a note for error messages."""
    for name in MASK_DIRS:
        if (root / name).is_dir():
            note = ""
            if name != MASK_DIRS[-1]:
                note = f" (masks are read from {name}/ because that folder exists)"
            return root / name, note
    tried = " or ".join(str(root / name) for name in MASK_DIRS)
    raise DatasetError(f"required mask folder is missing: expected {tried}")


def find_split_file(root: Path, split: str, split_dirs: tuple[str, ...]) -> Path:
    """``{root}/{split_dir}/{split}.txt`` for the first split dir holding it."""
    if not split or "/" in split or "\\" in split:
        raise DatasetError(f"invalid split name {split!r}: expected a bare name such as 'train'")
    tried = [root / split_dir / f"{split}.txt" for split_dir in split_dirs]
    for path in tried:
        if path.is_file():
            return path
    raise DatasetError(
        f"unknown split {split!r}: no split list at {' or '.join(map(str, tried))}"
    )


def _parse_split_line(line: str) -> str:
    """Image id from one split-list line.

    Accepts a bare id (``2007_000032``) or the two-column form some VOC ``train_aug.txt``
    files use (``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``):
    the id is then the stem of the first column; the second column is ignored.
    """
    token = line.split()[0]
    if "/" in token or "\\" in token or PurePosixPath(token).suffix.lower() in IMAGE_SUFFIXES:
        return PurePosixPath(token.replace("\\", "/")).stem
    return token


def read_split_ids(path: Path) -> tuple[str, ...]:
    """Ids of a split list in file order; raises on an empty list or a duplicated id."""
    text = _read_text(path, "split list")
    first_line: dict[str, int] = {}
    duplicates: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        image_id = _parse_split_line(line)
        if image_id in first_line:
            duplicates.append(f"{image_id!r} (lines {first_line[image_id]} and {number})")
        else:
            first_line[image_id] = number
    if duplicates:
        shown = ", ".join(duplicates[:5])
        more = f" and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""
        raise DatasetError(f"split list {path} has duplicated image ids: {shown}{more}")
    if not first_line:
        raise DatasetError(f"split list {path} is empty: expected one image id per line")
    return tuple(first_line)


def ids_from_folder(folder: Path, suffix: str, *, no_list: Path) -> tuple[str, ...]:
    """Sorted stems of the ``*{suffix}`` files in ``folder`` (used when no split list exists)."""
    with os.scandir(folder) as entries:
        ids = sorted(
            entry.name[: -len(suffix)]
            for entry in entries
            if entry.name.endswith(suffix) and not entry.name.startswith(".") and entry.is_file()
        )
    if not ids:
        raise DatasetError(f"no {suffix} images in {folder} and no split list at {no_list}")
    return tuple(ids)


def read_class_names(path: Path) -> tuple[str, ...]:
    """Foreground class names, one per line: line ``i`` (1-based) names mask value ``i``.

    Trailing blank lines are ignored; a blank line inside the list, a duplicated name, a
    leading "background" entry or more than 254 names is an error.
    """
    if not path.is_file():
        raise DatasetError(
            f"class-name file {path} is missing: expected one foreground class name per line "
            "(line i = mask value i)"
        )
    names = [line.strip() for line in _read_text(path, "class-name file").splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise DatasetError(f"class-name file {path} is empty: expected one class name per line")
    blank = [number for number, name in enumerate(names, start=1) if not name]
    if blank:
        raise DatasetError(
            f"class-name file {path} has blank lines {blank}: every line up to the last name "
            "must name a class (line i = mask value i)"
        )
    if names[0].lower() in _BACKGROUND_NAMES:
        raise DatasetError(
            f"class-name file {path} starts with {names[0]!r}: list foreground classes only "
            "(mask value 0 is background implicitly; line 1 names mask value 1)"
        )
    seen: dict[str, int] = {}
    duplicates = []
    for number, name in enumerate(names, start=1):
        if name in seen:
            duplicates.append(f"{name!r} (lines {seen[name]} and {number})")
        else:
            seen[name] = number
    if duplicates:
        raise DatasetError(f"class-name file {path} has duplicated names: {', '.join(duplicates)}")
    if len(names) > MAX_CLASSES:
        raise DatasetError(
            f"class-name file {path} lists {len(names)} classes; at most {MAX_CLASSES} fit in "
            f"8-bit masks ({IGNORE_INDEX} is the ignore value)"
        )
    return tuple(names)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{what} {path} is not UTF-8 text: {err}") from err
    except OSError as err:
        raise DatasetError(f"cannot read {what} {path}: {err}") from err

"""Path rules shared by the dataset kinds: the error type, the path-resolver strategy, and
the readers for split lists and ``class_names.txt``.

Everything here is cheap (folder checks and small text files); per-image decoding lives in
``pipeline.data.decode``.
"""

from __future__ import annotations

from pipeline.errors import UserError
from pipeline.metrics import IGNORE
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

IMAGE_DIR = "JPEGImages"
# Mask folders of the VOC layout; the first one that exists is used for every image.
MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")
SPLIT_DIR = "ImageSets/Segmentation"
CLASS_NAMES_FILE = "class_names.txt"
MAX_CLASSES = 254  # mask values 1..254; 255 is ignore
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_BACKGROUND_NAMES = frozenset({"background", "_background_", "__background__", "bg"})
# The one split-list form with two columns (some VOC train_aug.txt files); see _train_aug_id.
TRAIN_AUG_FORM = "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"
# Line ends of text files. str.splitlines would also break at \x0b, \x0c, \x1c-\x1e, \x85,
# \u2028 and \u2029, splitting one id (or class name) in two and shifting line numbers.
_LINE_END = re.compile(r"\r\n|\r|\n")


class DatasetError(UserError, ValueError):
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
        """First existing image file of ``image_id`` in suffix order.

        A broken symbolic link raises rather than falling through to a later suffix: it
        stands for the image the data owner meant (e.g. a DVC link whose cache is gone).
        """
        tried = [self.image_dir / f"{image_id}{suffix}" for suffix in self.image_suffixes]
        for path in tried:
            if path.is_file():
                return path
            refuse_broken_link(path, "image", context=f"image id {image_id!r}: ")
        raise DatasetError(
            f"image id {image_id!r} has no image file; tried "
            f"{', '.join(f'{path}{_not_a_file_note(path)}' for path in tried)}"
        )

    def mask_path(self, image_id: str) -> Path:
        """Existing mask file of ``image_id``; raises naming the expected path."""
        path = self.mask_dir / f"{image_id}{self.mask_suffix}"
        if not path.is_file():
            refuse_broken_link(path, "mask", context=f"image id {image_id!r}: ")
            raise DatasetError(
                f"missing mask for image id {image_id!r}: expected "
                f"{path}{_not_a_file_note(path)}{self.mask_note}"
            )
        return path


def broken_link(path: Path) -> str | None:
    """``"a broken symbolic link to TARGET (reason)"`` when ``path`` is a symbolic link that
    cannot be followed, else None.

    ``Path.is_file`` and ``Path.exists`` follow links, so without this check a dangling link
    (e.g. a DVC link whose cache file was removed) reads as a file that is simply missing.
    """
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except OSError as err:
        return f"a broken symbolic link to {_link_target(path)} ({err.strerror})"
    return None


def _link_target(path: Path) -> str:
    """The target of link ``path`` as written, plus where a relative one points."""
    try:
        target = os.readlink(path)
    except OSError as err:  # replaced or removed since the check
        return f"an unreadable target ({err.strerror})"
    if os.path.isabs(target):
        return target
    return f"{target} (= {os.path.normpath(path.parent / target)})"


def refuse_broken_link(path: Path, what: str, *, context: str = "") -> None:
    """Raise ``"{context}{what} {path} is a broken symbolic link to ..."`` if it is one.

    Called where a missing file would otherwise fall back to something else (a later image
    suffix, another mask folder, a folder listing) or be reported as simply missing.
    """
    link = broken_link(path)
    if link is not None:
        raise DatasetError(f"{context}{what} {path} is {link}")


def _not_a_file_note(path: Path) -> str:
    """`` (a directory)`` or `` (not a regular file)`` for a path that exists but cannot be
    read as a file; empty otherwise."""
    if path.is_dir():
        return " (a directory)"
    if path.exists():
        return " (not a regular file)"
    return ""


def _absent(path: Path, default: str) -> str:
    """``is a broken symbolic link to ...`` when ``path`` is one, else ``default`` (for
    messages about a path that does not exist)."""
    link = broken_link(path)
    return default if link is None else f"is {link}"


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
        raise DatasetError(f"dataset root {path} {_absent(path, 'does not exist')}")
    if not path.is_dir():
        raise DatasetError(f"dataset root {path} is not a directory")
    return path


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory; raises naming it and why not."""
    if not path.is_dir():
        state = "is not a directory" if path.exists() else _absent(path, "is missing")
        raise DatasetError(f"required {what} {path} {state}")
    return path


def pick_mask_dir(root: Path) -> tuple[Path, str]:
    """First existing folder of ``MASK_DIRS`` under ``root``, plus a note for error messages.

    A broken symbolic link in the list raises: falling through to the next folder would
    read other annotations silently.
    """
    for name in MASK_DIRS:
        refuse_broken_link(root / name, "mask folder")
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
        refuse_broken_link(path, "split list", context=f"split {split!r}: ")
    raise DatasetError(
        f"unknown split {split!r}: no split list at {' or '.join(map(str, tried))}"
    )


def _parse_split_line(line: str, path: Path, number: int) -> str:
    """Image id from line ``number`` of split list ``path``.

    Accepts a bare id (``2007_000032``), an image path (``/JPEGImages/2007_000032.jpg``:
    the id is its stem) or the two-column ``train_aug`` form (see ``_train_aug_id``). Any
    other line with whitespace inside raises: reading its first word would silently pick
    another image (``shot 2`` is not ``shot``).
    """
    columns = line.split()
    if len(columns) == 1:
        stem = _path_stem(columns[0])
        return columns[0] if stem is None else stem
    image_id = _train_aug_id(columns)
    if image_id is None:
        raise DatasetError(
            f"split list {path} line {number}: {line!r} is not an image id: ids cannot contain "
            f"whitespace, and the only two-column form is {TRAIN_AUG_FORM!r}"
        )
    return image_id


def _path_stem(token: str) -> str | None:
    """Stem of ``token`` when it is written as an image path (has a folder part or an image
    suffix), else None."""
    posix = token.replace("\\", "/")
    if "/" in posix or PurePosixPath(posix).suffix.lower() in IMAGE_SUFFIXES:
        return PurePosixPath(posix).stem
    return None


def _train_aug_id(columns: list[str]) -> str | None:
    """Id of a ``train_aug`` line: two columns, an image path then a ``.png`` mask path,
    both with a folder part and the same stem. None for anything else."""
    if len(columns) != 2:
        return None
    image, mask = (PurePosixPath(column.replace("\\", "/")) for column in columns)
    if len(image.parts) < 2 or len(mask.parts) < 2:
        return None
    if image.suffix.lower() not in IMAGE_SUFFIXES or mask.suffix.lower() != ".png":
        return None
    return image.stem if image.stem == mask.stem else None


def read_split_ids(path: Path) -> tuple[str, ...]:
    """Ids of a split list in file order; raises on an empty list, a duplicated id or a line
    that is no id (see ``_parse_split_line``)."""
    text = _read_text(path, "split list")
    first_line: dict[str, int] = {}
    duplicates: list[str] = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        image_id = _parse_split_line(line, path, number)
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
    """Sorted stems of the ``*{suffix}`` files in ``folder`` (used when no split list exists).

    Broken symbolic links are listed too, so that ``validate`` reports them instead of the
    image dropping out of the split silently; hidden files and folders are skipped.
    """
    with os.scandir(folder) as entries:
        ids = sorted(
            entry.name[: -len(suffix)]
            for entry in entries
            if entry.name.endswith(suffix)
            and not entry.name.startswith(".")
            and (entry.is_file() or _is_broken_entry(entry))
        )
    if not ids:
        raise DatasetError(f"no {suffix} images in {folder} and no split list at {no_list}")
    return tuple(ids)


def _is_broken_entry(entry: os.DirEntry[str]) -> bool:
    """Whether a directory entry is a symbolic link whose target is gone."""
    return entry.is_symlink() and not os.path.exists(entry.path)


def read_class_names(path: Path) -> tuple[str, ...]:
    """Foreground class names, one per line: line ``i`` (1-based) names mask value ``i``.

    Trailing blank lines are ignored; a blank line inside the list, a duplicated name, a
    leading "background" entry or more than 254 names is an error.
    """
    if not path.is_file():
        raise DatasetError(
            f"class-name file {path} {_absent(path, 'is missing')}: expected one foreground "
            "class name per line (line i = mask value i)"
        )
    names = [line.strip() for line in _lines(_read_text(path, "class-name file"))]
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
            f"8-bit masks ({IGNORE} is the ignore value)"
        )
    return tuple(names)


def _lines(text: str) -> list[str]:
    """Lines of ``text`` split at \\n, \\r\\n or \\r only (what editors number)."""
    return _LINE_END.split(text)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{what} {path} is not UTF-8 text: {err}") from err
    except OSError as err:
        raise DatasetError(f"cannot read {what} {path}: {err}") from err

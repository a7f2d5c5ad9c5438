"""One interface over the dataset kinds (``voc``, ``coco``, ``folder``).

``open_dataset(kind, root, split)`` is cheap: it checks the folders and reads the split list.
Per-image checks run in ``SegmentationDataset.validate``, which a runner can map over
``dataset.ids`` in parallel (the dataset object is small and picklable). Bad data raises
``DatasetError`` naming the file or image id; nothing is skipped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.coco import resolve_coco
from pipeline.data.decode import decode_image, decode_mask, labels_from_mask, pair_digest, read_bytes
from pipeline.data.folder import resolve_folder
from pipeline.data.layout import DatasetError, Layout, Resolved, require_root
from pipeline.data.voc import resolve_voc

__all__ = [
    "DatasetError",
    "ImageRecord",
    "SegmentationDataset",
    "list_dataset_kinds",
    "open_dataset",
]

# kind -> resolver(root, split, class_names_file) checking folders and reading ids.
_RESOLVERS: dict[str, Callable[[Path, str, Path | None], Resolved]] = {
    "voc": resolve_voc,
    "coco": resolve_coco,
    "folder": resolve_folder,
}


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """What ``validate`` returns for one image."""

    image_id: str
    height: int
    width: int
    labels: np.ndarray  # (C,) uint8 multi-hot: class k present <=> mask has value k + 1 (read-only)
    digest: bytes  # sha256 over the image file bytes and the mask file bytes

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageRecord):
            return NotImplemented
        return (
            (self.image_id, self.height, self.width, self.digest)
            == (other.image_id, other.height, other.width, other.digest)
            and np.array_equal(self.labels, other.labels)
        )

    def __hash__(self) -> int:
        return hash((self.image_id, self.height, self.width, self.labels.tobytes(), self.digest))


@dataclass(frozen=True)
class SegmentationDataset:
    """Images, class-index masks and class names of one split of one dataset.

    Mask value ``k`` (1..C) is ``class_names[k - 1]``; 0 is background, 255 is ignore.
    """

    kind: str
    root: Path
    split: str
    class_names: tuple[str, ...]  # foreground only
    ids: tuple[str, ...] = field(repr=False)
    layout: Layout = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset(kind={self.kind!r}, root={str(self.root)!r}, "
            f"split={self.split!r}, images={len(self.ids)}, classes={self.num_classes})"
        )

    @property
    def num_classes(self) -> int:
        """Number of foreground classes C."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: str) -> Path:
        """Existing image file of ``image_id``; raises naming the paths tried."""
        return self.layout.image_path(image_id)

    def mask_path(self, image_id: str) -> Path:
        """Existing mask file of ``image_id``; raises naming the expected path."""
        return self.layout.mask_path(image_id)

    def load_image(self, image_id: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        path = self.image_path(image_id)
        return decode_image(read_bytes(path, "image"), path)

    def load_mask(self, image_id: str) -> np.ndarray:
        """(H, W) uint8 class indices (values are not range-checked here; see ``labels``)."""
        path = self.mask_path(image_id)
        return decode_mask(read_bytes(path, "mask"), path)

    def labels(self, image_id: str) -> np.ndarray:
        """(C,) uint8 multi-hot of the foreground values in the mask; raises on values
        outside 0..C other than 255."""
        path = self.mask_path(image_id)
        mask = decode_mask(read_bytes(path, "mask"), path)
        return labels_from_mask(mask, self.num_classes, path)

    def digest(self, image_id: str) -> bytes:
        """sha256 of the image and mask file bytes: what an image's index record is computed from."""
        return pair_digest(read_bytes(self.image_path(image_id), "image"), read_bytes(self.mask_path(image_id), "mask"))

    def validate(self, image_id: str) -> ImageRecord:
        """Run every per-image check (files exist, full decodes, mask mode and values,
        image/mask sizes agree); each file is read once."""
        image_path = self.image_path(image_id)
        mask_path = self.mask_path(image_id)
        image_bytes = read_bytes(image_path, "image")
        mask_bytes = read_bytes(mask_path, "mask")
        image = decode_image(image_bytes, image_path)
        mask = decode_mask(mask_bytes, mask_path)
        if image.shape[:2] != mask.shape:
            (ih, iw), (mh, mw) = image.shape[:2], mask.shape
            raise DatasetError(
                f"image id {image_id!r}: image {image_path} is {iw}x{ih} (WxH) but mask "
                f"{mask_path} is {mw}x{mh}; they must match"
            )
        labels = labels_from_mask(mask, self.num_classes, mask_path)
        labels.setflags(write=False)
        return ImageRecord(
            image_id=image_id,
            height=int(mask.shape[0]),
            width=int(mask.shape[1]),
            labels=labels,
            digest=pair_digest(image_bytes, mask_bytes),
        )


def list_dataset_kinds() -> tuple[str, ...]:
    """Names accepted by ``open_dataset``, sorted."""
    return tuple(sorted(_RESOLVERS))


def open_dataset(
    kind: str,
    root: str | Path,
    split: str,
    *,
    class_names_file: str | Path | None = None,
) -> SegmentationDataset:
    """Open one split of a dataset: check its folders and read its split list.

    ``class_names_file`` (one foreground name per line, line i = mask value i) replaces the
    built-in VOC/COCO names, or ``{root}/class_names.txt`` for ``folder``.
    """
    try:
        resolve = _RESOLVERS[kind]
    except (KeyError, TypeError):
        raise DatasetError(
            f"unknown dataset kind {kind!r}; valid kinds: {', '.join(list_dataset_kinds())}"
        ) from None
    root_path = require_root(root)
    names_file = None if class_names_file is None else Path(class_names_file).expanduser().absolute()
    resolved = resolve(root_path, split, names_file)
    return SegmentationDataset(
        kind=kind,
        root=root_path,
        split=split,
        class_names=resolved.class_names,
        ids=resolved.ids,
        layout=resolved.layout,
    )

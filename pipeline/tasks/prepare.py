"""Stage `prepare` on a worker: validate one image of a split into its index record."""

from __future__ import annotations

import functools
from dataclasses import dataclass


def record_specs(num_classes: int):
    """The arrays stored per image: multi-hot labels, (height, width), sha256 of the image and mask files."""
    from pipeline.store.image_store import ArraySpec

    return (ArraySpec("labels", (num_classes,), "uint8"), ArraySpec("size", (2,), "int32"),
            ArraySpec("digest", (32,), "uint8"))


@dataclass(frozen=True)
class ValidateTask:
    """Runner task: per worker, open the split once; then validate images by id (decode the image, check
    the mask) into their record arrays. An image's input digest is its files' sha256."""

    kind: str
    root: str
    split: str
    class_names_file: str | None = None

    def build(self):
        from pipeline.data.indexing import record_arrays

        dataset = _dataset(self)
        return lambda image_id: record_arrays(dataset.validate(image_id))

    def input_digest(self, image_id: str) -> bytes:
        return _dataset(self).digest(image_id)


@functools.lru_cache(maxsize=8)
def _dataset(task: ValidateTask):
    """The split, opened once per process: the driver asks every image's digest, a worker validates its share."""
    from pipeline.data.datasets import open_dataset

    return open_dataset(task.kind, task.root, task.split, class_names_file=task.class_names_file)

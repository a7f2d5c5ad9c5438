"""The per-image work of `prepare`: validate one image and turn its record into stored arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.datasets import ImageRecord, open_dataset
from pipeline.store.image_store import ArraySpec


def record_specs(num_classes: int) -> tuple[ArraySpec, ...]:
    """The arrays `prepare` stores per image: multi-hot labels, (height, width), sha256 of the files."""
    return (
        ArraySpec("labels", (num_classes,), "uint8"),
        ArraySpec("size", (2,), "int32"),
        ArraySpec("digest", (32,), "uint8"),
    )


def record_arrays(record: ImageRecord) -> dict[str, np.ndarray]:
    return {
        "labels": np.asarray(record.labels, dtype="uint8"),
        "size": np.array([record.height, record.width], dtype="int32"),
        "digest": np.frombuffer(record.digest, dtype="uint8"),
    }


@dataclass(frozen=True)
class ValidateTask:
    """Runner task: open the dataset split once per worker, then validate images by id."""

    kind: str
    root: str
    split: str
    class_names_file: str | None = None

    def build(self):
        dataset = open_dataset(self.kind, self.root, self.split, class_names_file=self.class_names_file)
        return lambda image_id: record_arrays(dataset.validate(image_id))

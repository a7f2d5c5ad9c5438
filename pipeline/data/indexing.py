"""What `prepare` stores per image: a validated record as arrays."""

from __future__ import annotations

import numpy as np

from pipeline.data.datasets import ImageRecord


def record_arrays(record: ImageRecord) -> dict[str, np.ndarray]:
    return {
        "labels": np.asarray(record.labels, dtype="uint8"),
        "size": np.array([record.height, record.width], dtype="int32"),
        "digest": np.frombuffer(record.digest, dtype="uint8"),
    }

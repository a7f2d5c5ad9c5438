"""The `artifacts/index/` layout written by `prepare` and read by every later stage.

```
index/
  index.json            dataset kind, root and class-name file, class names, per-split counts, content
                        fingerprint, provenance
                        (written last: without it the index is incomplete)
  <split>.txt           accepted image ids, one per line, in split-list order
  rejected.json         images left out with prepare.on_error=skip, by split: {id: reason}
  records/<split>.zarr  ImageStore per split: labels (N, C) uint8 multi-hot, size (N, 2) int32
                        (height, width), digest (N, 32) uint8 sha256 of image+mask bytes
```
"""

from __future__ import annotations

import functools

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline import atomic
from pipeline.store.errors import StoreError
from pipeline.store.image_store import ImageStore

INDEX_JSON = "index.json"
REJECTED_JSON = "rejected.json"
STAGE = "prepare"


def records_path(index_dir: str | Path, split: str) -> Path:
    return Path(index_dir) / "records" / f"{split}.zarr"


def fingerprint(class_names: Sequence[str], split_digests: Mapping[str, tuple[Sequence[str], np.ndarray]]) -> str:
    """sha256 over class names and, per split, every accepted id with its file digest."""
    h = hashlib.sha256()
    h.update(json.dumps(list(class_names)).encode())
    for split in sorted(split_digests):
        ids, digests = split_digests[split]
        h.update(f"\0split={split}\0".encode())
        for image_id, digest in zip(ids, digests):
            h.update(image_id.encode() + b"\0" + bytes(np.asarray(digest, dtype="uint8")))
    return h.hexdigest()


def begin(index_dir: str | Path) -> None:
    """Mark the index incomplete before any work, so an interrupted prepare never looks finished."""
    (Path(index_dir) / INDEX_JSON).unlink(missing_ok=True)


def write_index(
    index_dir: str | Path,
    *,
    meta: Mapping[str, Any],
    split_ids: Mapping[str, Sequence[str]],
    rejected: Mapping[str, Mapping[str, str]],
) -> None:
    """Write split lists and rejected.json, remove stale files, then index.json last (atomically)."""
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    for split, ids in split_ids.items():
        atomic.write_text(index_dir / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    for stale in index_dir.glob("*.txt"):
        if stale.stem not in split_ids:
            stale.unlink()
    records = index_dir / "records"
    if records.exists():
        for stale in records.iterdir():
            if stale.name.removesuffix(".staging").removesuffix(".zarr") not in split_ids:
                atomic.remove(stale)
    rejected_path = index_dir / REJECTED_JSON
    if any(rejected.values()):
        atomic.write_json(rejected_path, {k: dict(v) for k, v in rejected.items()})
    else:
        rejected_path.unlink(missing_ok=True)
    atomic.write_json(index_dir / INDEX_JSON, dict(meta))


@dataclass(frozen=True)
class DatasetIndex:
    """Read access to a finished index: class names, ids, labels and sizes per split."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> "DatasetIndex":
        path = Path(path)
        try:
            meta = json.loads((path / INDEX_JSON).read_text())
        except FileNotFoundError:
            raise StoreError(f"{path / INDEX_JSON}: missing, so the index is absent or incomplete (run `dvc repro prepare`)") from None
        return cls(path, meta)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.meta["class_names"])

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.meta["splits"])

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    def ids(self, split: str) -> list[str]:
        self._check_split(split)
        return (self.path / f"{split}.txt").read_text().split()

    def ids_of(self, splits: Sequence[str]) -> list[str]:
        """The ids of several splits in order, each once (an id in several splits keeps its first place)."""
        return list(dict.fromkeys(i for s in splits for i in self.ids(s)))

    def present(self, splits: Sequence[str]) -> dict[str, np.ndarray]:
        """{image id: (C,) bool image-level labels} over several splits."""
        return {i: row.astype(bool) for s in reversed(splits) for i, row in zip(self.ids(s), self.labels(s))}

    def labels(self, split: str) -> np.ndarray:
        """(N, C) uint8 multi-hot image-level labels of the accepted images, in `ids(split)` order."""
        return self._accepted(split, "labels")

    def sizes(self, split: str) -> np.ndarray:
        """(N, 2) int32 (height, width) of the accepted images, in `ids(split)` order."""
        return self._accepted(split, "size")

    def digests(self, split: str) -> dict[str, bytes]:
        """{image id: sha256 of its image and mask files} of the accepted images of `split`."""
        return dict(zip(self.ids(split), (bytes(d) for d in self._accepted(split, "digest"))))

    def dataset(self, split: str):
        """The indexed split as a SegmentationDataset (reads its split list again from the dataset root)."""
        from pipeline.data.datasets import open_dataset

        return open_dataset(self.meta["dataset_kind"], self.meta["dataset_root"], split,
                            class_names_file=self.meta.get("class_names_file"))

    def images(self, splits: Sequence[str]) -> "SplitImages":
        """Images and masks by id over several splits (an id names one image file in every split)."""
        return SplitImages([self.dataset(s) for s in splits])

    def _accepted(self, split: str, name: str) -> np.ndarray:
        self._check_split(split)
        store = ImageStore.open(records_path(self.path, split), stage=STAGE, require_complete=False)
        return store.read(name)[store.done()]

    def _check_split(self, split: str) -> None:
        if split not in self.meta["splits"]:
            raise StoreError(f"{self.path}: split {split!r} is not indexed (indexed: {', '.join(self.meta['splits'])})")


class SplitImages:
    """Finds an id's image and mask in whichever of the given splits lists it first."""

    def __init__(self, datasets: Sequence[Any]) -> None:
        self.by_id: dict[str, Any] = {}
        for ds in datasets:
            for image_id in ds.ids:
                self.by_id.setdefault(image_id, ds)

    def load_image(self, image_id: str) -> np.ndarray:
        return self.by_id[image_id].load_image(image_id)

    def load_mask(self, image_id: str) -> np.ndarray:
        return self.by_id[image_id].load_mask(image_id)


@functools.lru_cache(maxsize=8)
def image_digests(index: str, splits: tuple[str, ...]) -> dict[str, bytes]:
    """{image id: file digest} over `splits` of the index at `index`, read once per process (a runner
    task's `input_digest`); an id in several splits takes its first split's digest, as SplitImages does."""
    idx = DatasetIndex.load(index)
    return {k: v for s in reversed(splits) for k, v in idx.digests(s).items()}

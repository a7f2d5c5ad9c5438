"""Per-image artifact stores: zarr v3 groups whose arrays share a leading image axis.

Why this shape: per-image stages run on many workers at once, and must survive a kill. The image
axis is cut into blocks of `shard_images` images; each block is one zarr shard per array (one inner
chunk per image), so a 10k-image store is a few hundred files, and a block has exactly one writer.
Inside a block, each finished image is first staged as its own file (atomic rename), so a kill
mid-block loses nothing already computed; the block is packed into the shards when complete, then
its done flags are written, then its staging files are removed. A store is *complete* only when
`attrs["complete"]` is true, which the stage sets last.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import zarr

log = logging.getLogger(__name__)

DONE = "_done"  # (N,) uint8: 1 once the image's values are durably in every array
IMAGE_ID = "image_id"  # (N,) str: the dataset image id of each row
LAYOUT_VERSION = 1


class StoreError(RuntimeError):
    """A store is missing, incomplete, or was written with other params; the message names the path."""


@dataclass(frozen=True)
class ArraySpec:
    """One per-image array: its name, the shape of one image's value, dtype and fill value."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    fill_value: float = 0

    def check(self, image_id: str, value: Any) -> np.ndarray:
        """Return `value` as this spec's dtype, or raise naming the image and the expected shape."""
        arr = np.asarray(value)
        if arr.shape != self.shape:
            raise ValueError(
                f"image {image_id!r}: array {self.name!r} has shape {arr.shape}, expected {self.shape}"
            )
        return arr.astype(self.dtype, copy=False)


class ImageStore:
    """A zarr v3 group of per-image arrays with done flags, staging and a completion flag."""

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = path
        self.group = group
        self.n_images: int = int(group.attrs["n_images"])
        self.shard_images: int = int(group.attrs["shard_images"])
        self.specs: tuple[ArraySpec, ...] = tuple(
            ArraySpec(s["name"], tuple(s["shape"]), s["dtype"], s["fill_value"]) for s in group.attrs["arrays"]
        )

    # ------------------------------------------------------------------ opening
    @classmethod
    def create_or_resume(
        cls,
        path: str | Path,
        *,
        ids: Sequence[str],
        specs: Sequence[ArraySpec],
        attrs: Mapping[str, Any],
        shard_images: int,
    ) -> "ImageStore":
        """Open `path` to resume an interrupted run with the same layout and `attrs`, else start anew.

        `attrs` must hold the provenance stamp (stage, params_hash); a store written with another
        params hash, other ids or other arrays is removed and recreated, never mixed. A *complete*
        store is recreated too: the stage is only run again when its inputs or code changed.
        """
        path = Path(path)
        layout = _layout(ids, specs, shard_images)
        if path.exists():
            try:
                existing = zarr.open_group(str(path), mode="r")
                same = (
                    {k: existing.attrs.get(k) for k in layout} == layout
                    and existing.attrs.get("params_hash") == attrs.get("params_hash")
                    and existing.attrs.get("stage") == attrs.get("stage")
                    and list(existing[IMAGE_ID][:]) == list(ids)
                    and not existing.attrs.get("complete", False)
                )
            except Exception as err:  # an unreadable leftover is not worth keeping
                log.warning("%s: unreadable existing store (%s); starting anew", path, err)
                same = False
            if same:
                store = cls(path, zarr.open_group(str(path), mode="r+"))
                log.info("%s: resuming, %d of %d images already done", path, int(store.done().sum()), len(ids))
                return store
            log.info("%s: finished earlier or written with other params/layout; starting anew", path)
            shutil.rmtree(path)
        shutil.rmtree(_staging_dir(path), ignore_errors=True)
        return cls._create(path, ids=ids, specs=specs, attrs=attrs, shard_images=shard_images)

    @classmethod
    def _create(cls, path: Path, *, ids, specs, attrs, shard_images: int) -> "ImageStore":
        """Build the empty store beside `path`, then rename it into place: never half-created."""
        n = len(ids)
        if n == 0:
            raise StoreError(f"{path}: refusing to create a store for zero images")
        tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        group = zarr.open_group(str(tmp), mode="w-")
        block = min(shard_images, n)
        for spec in specs:
            group.create_array(
                spec.name,
                shape=(n, *spec.shape),
                chunks=(1, *spec.shape),
                shards=(block, *spec.shape) if block > 1 else None,
                dtype=spec.dtype,
                fill_value=spec.fill_value,
                dimension_names=("image", *[f"{spec.name}_{i}" for i in range(len(spec.shape))]),
            )
        group.create_array(DONE, shape=(n,), chunks=(block,), dtype="uint8", fill_value=0)
        id_array = group.create_array(IMAGE_ID, shape=(n,), chunks=(n,), dtype=str)
        id_array[:] = np.asarray(list(ids), dtype=object)
        group.attrs.update({**dict(attrs), **_layout(ids, specs, shard_images), "complete": False})
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
        return cls(path, zarr.open_group(str(path), mode="r+"))

    @classmethod
    def open(cls, path: str | Path, *, stage: str | None = None, require_complete: bool = True) -> "ImageStore":
        """Open a finished store for reading; raise StoreError when it is absent or incomplete."""
        path = Path(path)
        if not (path / "zarr.json").exists():
            raise StoreError(f"{path}: no store here (run the stage that writes it first)")
        group = zarr.open_group(str(path), mode="r")
        if stage is not None and group.attrs.get("stage") != stage:
            raise StoreError(f"{path}: written by stage {group.attrs.get('stage')!r}, expected {stage!r}")
        if require_complete and not group.attrs.get("complete", False):
            raise StoreError(f"{path}: incomplete (the stage that writes it was interrupted; rerun it)")
        return cls(path, group)

    # ------------------------------------------------------------------ reading
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    def ids(self) -> list[str]:
        return [str(s) for s in self.group[IMAGE_ID][:]]

    def done(self) -> np.ndarray:
        """(N,) bool: which images are durably written."""
        return np.asarray(self.group[DONE][:], dtype=bool)

    def blocks(self) -> list[range]:
        """The image-index ranges that are written as a unit (one shard per array)."""
        step = min(self.shard_images, self.n_images)
        return [range(lo, min(lo + step, self.n_images)) for lo in range(0, self.n_images, step)]

    def read(self, name: str, index: int | slice = slice(None)) -> np.ndarray:
        return np.asarray(self.group[name][index])

    def read_block(self, block: range) -> dict[str, np.ndarray]:
        return {s.name: self.read(s.name, slice(block.start, block.stop)) for s in self.specs}

    # ------------------------------------------------------------------ writing
    def empty_block(self, block: range) -> dict[str, np.ndarray]:
        return {s.name: np.full((len(block), *s.shape), s.fill_value, dtype=s.dtype) for s in self.specs}

    def write_block(self, block: range, values: Mapping[str, np.ndarray], done: np.ndarray) -> None:
        """Write a whole block's arrays, then (only then) its done flags."""
        for spec in self.specs:
            self.group[spec.name][block.start:block.stop] = values[spec.name]
        self.group[DONE][block.start:block.stop] = np.asarray(done, dtype="uint8")

    def stage_image(self, index: int, values: Mapping[str, np.ndarray]) -> None:
        """Durably keep one computed image until its block is packed (write to temp, then rename)."""
        staging = _staging_dir(self.path)
        staging.mkdir(parents=True, exist_ok=True)
        final = staging / f"{index}.npz"
        tmp = staging / f".{index}.{os.getpid()}.tmp.npz"
        np.savez(tmp, **values)
        os.replace(tmp, final)

    def load_staged(self, index: int) -> dict[str, np.ndarray] | None:
        """The staged values of image `index`, or None when none (or a torn one) is there."""
        path = _staging_dir(self.path) / f"{index}.npz"
        if not path.exists():
            return None
        try:
            with np.load(path) as data:
                return {s.name: data[s.name] for s in self.specs}
        except Exception as err:  # a staged file that cannot be read is recomputed, not trusted
            log.warning("%s: ignoring unreadable staged image (%s)", path, err)
            return None

    def clear_staged(self, block: range) -> None:
        staging = _staging_dir(self.path)
        for index in block:
            (staging / f"{index}.npz").unlink(missing_ok=True)

    def mark_complete(self, extra: Mapping[str, Any] | None = None, *, allow_missing: bool = False) -> None:
        """Flag the store finished and drop the staging folder.

        Refuses while images are missing, unless `allow_missing` (rows left out on purpose, e.g.
        rejected images); readers then use `done()` to select the rows that hold data.
        """
        missing = int((~self.done()).sum())
        if missing and not allow_missing:
            raise StoreError(f"{self.path}: {missing} images are not written; refusing to mark complete")
        self.group.attrs.update({**dict(extra or {}), "n_missing": missing, "complete": True})
        shutil.rmtree(_staging_dir(self.path), ignore_errors=True)


def _layout(ids: Sequence[str], specs: Sequence[ArraySpec], shard_images: int) -> dict[str, Any]:
    return {
        "layout_version": LAYOUT_VERSION,
        "n_images": len(ids),
        "shard_images": int(shard_images),
        "arrays": [
            {"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "fill_value": s.fill_value} for s in specs
        ],
    }


def _staging_dir(path: Path) -> Path:
    """Staged per-image files live beside the store, so DVC never hashes them as part of it."""
    return path.with_name(path.name + ".staging")

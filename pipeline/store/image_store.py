"""Per-image artifact stores: zarr v3 groups whose arrays share a leading image axis.

Why this shape: per-image stages run on many workers at once and must survive a kill. Every chunk
carries a crc32c of its stored bytes (after zstd): a flipped byte is refused on read, naming the
store and the image, never read silently. The image axis
is cut into blocks of `shard_images` images; each block is one zarr shard per array (one inner chunk
per image), so a 10k-image store is a few hundred files, and a block has exactly one writer (the
runner's driver). A finished image is first *staged* as its own file (atomic rename), so a kill
loses nothing already computed; a block is packed into the shards when all its images are staged,
then its done flags are written, then its staged files removed. Each image row also keeps the digest
of the inputs it was computed from (`_input`): a resumed run recomputes a row whose inputs changed.

A store belongs to one *key* (the provenance fingerprint of everything but the per-image inputs): a
store with another key, other ids or another layout is never resumed, it is recreated. A store is
*complete* when `attrs["complete"]` is true, which the stage sets last.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import zarr

from pipeline import atomic
from pipeline.store.errors import StoreError

log = logging.getLogger(__name__)

DONE = "_done"  # (N,) uint8: 1 once the image's values are durably in every array
INPUT = "_input"  # (N, 32) uint8: digest of the image's inputs when it was computed
IMAGE_ID = "image_id"  # (N,) str: the dataset image id of each row
DIGEST_BYTES = 32
LAYOUT_VERSION = 2

__all__ = ["ArraySpec", "FileSpec", "ImageStore", "Pending", "StoreError"]


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
            raise ValueError(f"image {image_id!r}: array {self.name!r} has shape {arr.shape}, expected {self.shape}")
        return arr.astype(self.dtype, copy=False)


@dataclass(frozen=True)
class FileSpec:
    """A per-image output kept as a file, not in zarr: a (H, W) uint8 label map (any size, e.g. a
    pseudo-label at image resolution) written as `<folder>/<image id>.png` with the VOC palette.

    The file is written (atomically) when the image is staged, so it is as durable as the staged
    arrays, and the store's done flag and completion flag stand for it too: a reader trusts the
    folder only when the store is complete.
    """

    name: str
    folder: str

    def path(self, image_id: str) -> Path:
        return Path(self.folder) / f"{image_id}.png"

    def check(self, image_id: str, value: Any) -> np.ndarray:
        arr = np.asarray(value)
        if arr.ndim != 2 or arr.dtype != np.uint8 or 0 in arr.shape:
            raise ValueError(f"image {image_id!r}: file output {self.name!r} must be a non-empty (H, W) uint8 "
                             f"label map, got {arr.dtype} of shape {arr.shape}")
        return arr

    def write(self, image_id: str, value: np.ndarray) -> None:
        from pipeline.data.palette import palette_png

        atomic.write_bytes(self.path(image_id), palette_png(value))

    def read(self, image_id: str) -> np.ndarray:
        """The (H, W) uint8 label map of `image_id` (palette indices)."""
        from PIL import Image

        with Image.open(self.path(image_id)) as im:
            return np.array(im, dtype=np.uint8)


class ImageStore:
    """A zarr v3 group of per-image arrays with done flags, input digests, staging and a completion flag."""

    def __init__(self, path: str | Path, *, writable: bool = False) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise StoreError(f"{self.path}: no store here (run the stage that writes it first)")
        self._group = zarr.open_group(str(self.path), mode="r+" if writable else "r")
        attrs = self._group.attrs
        self.n_images: int = int(attrs["n_images"])
        self.shard_images: int = int(attrs["shard_images"])
        self.specs: tuple[ArraySpec, ...] = tuple(
            ArraySpec(s["name"], tuple(s["shape"]), s["dtype"], s["fill_value"]) for s in attrs["arrays"]
        )
        self.files: tuple[FileSpec, ...] = tuple(FileSpec(f["name"], f["folder"]) for f in attrs.get("files", []))

    # ------------------------------------------------------------------ opening
    @classmethod
    def create_or_resume(
        cls, path: str | Path, *, ids: Sequence[str], specs: Sequence[ArraySpec], key: str,
        attrs: Mapping[str, Any], shard_images: int, files: Sequence[FileSpec] = (),
    ) -> "ImageStore":
        """Open `path` to resume (or re-check) a store of the same `key`, ids and layout, else start anew.

        A complete store of the same key is opened too: the runner then recomputes only the rows
        whose input digest changed (none when nothing changed).
        """
        path = Path(path)
        layout = _layout(ids, specs, shard_images, files)
        if (path / "zarr.json").exists():
            try:
                existing = cls(path)
                same = (
                    {k: existing.attrs.get(k) for k in layout} == layout
                    and existing.attrs.get("key") == key
                    and existing.ids() == list(ids)
                )
            except Exception as err:  # an unreadable leftover is not worth keeping
                log.warning("%s: unreadable existing store (%s); starting anew", path, err)
                same = False
            if same:
                store = cls(path, writable=True)
                store._group.attrs.update(dict(attrs))
                log.info("%s: reusing, %d of %d images already done", path, int(store.done().sum()), len(ids))
                return store
            log.info("%s: written with other params, code, inputs or layout; starting anew", path)
        atomic.remove(path)
        atomic.remove(staging_dir(path))
        for f in files:  # files of an earlier run are not trusted
            atomic.remove(f.folder)
        return cls._create(path, ids=ids, specs=specs, attrs={**dict(attrs), "key": key}, shard_images=shard_images,
                           files=files)

    @classmethod
    def _create(cls, path: Path, *, ids, specs, attrs, shard_images: int, files) -> "ImageStore":
        """Build the empty store beside `path`, then rename it into place: never half-created."""
        n = len(ids)
        if n == 0:
            raise StoreError(f"{path}: refusing to create a store for zero images")
        block = min(shard_images, n)

        def build(tmp: Path) -> None:
            group = zarr.open_group(str(tmp), mode="w-")
            for spec in specs:
                group.create_array(
                    spec.name, shape=(n, *spec.shape), chunks=(1, *spec.shape),
                    shards=(block, *spec.shape) if block > 1 else None, dtype=spec.dtype,
                    fill_value=spec.fill_value, compressors=_compressors(),
                    dimension_names=("image", *[f"{spec.name}_{i}" for i in range(len(spec.shape))]),
                )
            group.create_array(DONE, shape=(n,), chunks=(block,), dtype="uint8", fill_value=0, compressors=_compressors())
            group.create_array(INPUT, shape=(n, DIGEST_BYTES), chunks=(block, DIGEST_BYTES), dtype="uint8", fill_value=0,
                               compressors=_compressors())
            id_array = group.create_array(IMAGE_ID, shape=(n,), chunks=(n,), dtype=str, compressors=_compressors())
            id_array[:] = np.asarray(list(ids), dtype=object)
            group.attrs.update({**dict(attrs), **_layout(ids, specs, shard_images, files), "complete": False})

        atomic.write_with(path, build)
        return cls(path, writable=True)

    @classmethod
    def open(cls, path: str | Path, *, stage: str | None = None, require_complete: bool = True) -> "ImageStore":
        """Open a finished store for reading; raise StoreError when it is absent, incomplete or foreign."""
        store = cls(path)
        if stage is not None and store.attrs.get("stage") != stage:
            raise StoreError(f"{store.path}: written by stage {store.attrs.get('stage')!r}, expected {stage!r}")
        if require_complete and not store.attrs.get("complete", False):
            raise StoreError(f"{store.path}: incomplete (the stage that writes it was interrupted; rerun it)")
        return store

    # ------------------------------------------------------------------ reading
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._group.attrs)

    @property
    def fingerprint(self) -> str:
        """Identity of the content: the provenance fingerprint the stage stamped when it completed."""
        return str(self.attrs.get("fingerprint", ""))

    def ids(self) -> list[str]:
        return [str(s) for s in self._checked(IMAGE_ID, slice(None))]

    def done(self) -> np.ndarray:
        """(N,) bool: which images are durably written."""
        return np.asarray(self._checked(DONE, slice(None)), dtype=bool)

    def blocks(self) -> list[range]:
        """The image-index ranges that are written as a unit (one shard per array)."""
        step = min(self.shard_images, self.n_images)
        return [range(lo, min(lo + step, self.n_images)) for lo in range(0, self.n_images, step)]

    def read(self, name: str, index: int | slice | np.ndarray = slice(None)) -> np.ndarray:
        """Array `name` at image row(s) `index`; StoreError naming the store and the image when a stored
        chunk no longer matches its checksum (a flipped bit on disk, a torn copy)."""
        return self._checked(name, index)

    def _checked(self, name: str, index: int | slice | np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self._group[name][index])
        except (ValueError, RuntimeError) as err:  # zarr's crc32c and zstd codecs refuse a corrupt chunk
            if not _corrupt(err):
                raise
            where = self._which_images(name, index)
            raise StoreError(f"{self.path}: {where}: array {name!r} is corrupt on disk ({err}); delete the store and "
                             "rerun the stage that writes it") from None

    def _which_images(self, name: str, index: int | slice | np.ndarray) -> str:
        """`image '<id>'` for one row (the first corrupt one of a range, found row by row)."""
        if name in (IMAGE_ID, DONE, INPUT):
            return "its index arrays"
        rows = [int(index)] if np.ndim(index) == 0 and not isinstance(index, slice) else \
            list(range(self.n_images))[index] if isinstance(index, slice) else [int(i) for i in np.asarray(index)]
        ids = self.ids()
        for row in rows:
            try:
                self._group[name][row]
            except (ValueError, RuntimeError):
                return f"image {ids[row]!r}"
        return f"images {ids[rows[0]]!r}..{ids[rows[-1]]!r}"

    def read_block(self, block: range) -> dict[str, np.ndarray]:
        return {s.name: self.read(s.name, slice(block.start, block.stop)) for s in self.specs}

    # ------------------------------------------------------------------ resuming and writing
    def resume(self, input_digest: Callable[[str], bytes]) -> "Pending":
        """What a run must compute now: every row not durably written with the inputs `input_digest(id)`
        names. Done rows whose inputs changed are forgotten, staged rows that are unreadable or were
        computed from other inputs are dropped, and blocks whose rows are all staged (a kill came
        between staging and packing) are packed here. The store alone decides what is reused."""
        ids, done, stored = self.ids(), self.done(), self._input_digests()
        wanted = {i: pad_digest(input_digest(ids[i])) for i in range(len(ids)) if done[i] or self._has_staged(i)}
        changed = [i for i in np.flatnonzero(done) if bytes(stored[i]) != wanted[i]]
        if changed:
            log.info("%s: %d images changed since they were computed; recomputing them", self.path, len(changed))
            self._forget(changed)
            done = self.done()
        staged = set()
        for i in self._staged_indices():
            kept = self.load_staged(i)
            if kept is None or kept[1] != wanted.get(i):
                self._drop_staged(i)
            else:
                staged.add(i)
        rows = [i for i in range(len(ids)) if not done[i] and i not in staged]
        pending = Pending(rows, len(ids) - len(rows), self.blocks())
        for block in self.blocks():  # staged before a kill, in blocks now whole
            if pending.left(block) == 0:
                self.pack_block(block)
        log.info("%s: %d images to compute, %d reused", self.path, len(rows), pending.reused)
        return pending

    def staging(self) -> "Staging":
        """The picklable half of the store a worker needs to check and stage images."""
        return Staging(self.path, self.specs, self.files)

    def stage_image(self, index: int, values: Mapping[str, Any], input_digest: bytes) -> None:
        """Durably keep one computed image until its block is packed."""
        image_id = self.ids()[index]
        staging = self.staging()
        staging.stage(index, image_id, staging.check(image_id, values), input_digest)

    def load_staged(self, index: int,
                    arrays: Sequence[str] | None = None) -> tuple[dict[str, np.ndarray], bytes] | None:
        """(values of `arrays`, default all, and the input digest) staged for image `index`, or None when none (or
        an unreadable one) is there."""
        path = staging_dir(self.path) / f"{index}.npz"
        if not path.exists():
            return None
        names = [s.name for s in self.specs] if arrays is None else arrays
        try:
            with np.load(path) as data:
                return {name: data[name] for name in names}, bytes(data[INPUT].tobytes())
        except Exception as err:  # a staged file that cannot be read is recomputed, not trusted
            log.warning("%s: ignoring unreadable staged image (%s)", path, err)
            return None

    def _has_staged(self, index: int) -> bool:
        return (staging_dir(self.path) / f"{index}.npz").exists()

    def _staged_indices(self) -> set[int]:
        """Rows with a staged file (temporary files of an interrupted write are not counted)."""
        staging = staging_dir(self.path)
        return {int(p.stem) for p in staging.glob("*.npz") if p.stem.isdigit()} if staging.exists() else set()

    def _drop_staged(self, index: int) -> None:
        (staging_dir(self.path) / f"{index}.npz").unlink(missing_ok=True)

    def _forget(self, indices: Sequence[int]) -> None:
        """Mark rows not done (their inputs changed) and the store incomplete, before recomputing them."""
        self._group.attrs["complete"] = False
        done = self._group[DONE]
        for i in indices:
            done[i] = 0

    def _input_digests(self) -> np.ndarray:
        """(N, 32) uint8: the input digest each row was computed from (zeros where not done)."""
        return np.asarray(self._group[INPUT][:])

    def pack_block(self, block: range) -> int:
        """Write the staged images of `block` into the shards, then their done flags, then drop the staged
        files. Rows neither done nor staged (failed images) stay not done. Returns rows packed now.

        One array at a time, each staged image's member read as it is placed: the memory this takes is one
        array's block, not every array's block twice over (stage A's at SD's size: 0.8 GB for P's values
        over a 4,096-image shard, against 3.4 GB holding the staged rows and the block of every array)."""
        start, stop = block.start, block.stop
        done = self.done()[start:stop]
        # the digests first; each array is read from the staged files as it is placed
        digests_of = {i: kept[1] for i in block
                      if not done[i - start] and (kept := self.load_staged(i, arrays=())) is not None}
        if not digests_of:
            return 0
        staging = staging_dir(self.path)
        for spec in self.specs:
            values = self.read(spec.name, slice(start, stop)) if done.any() else self._empty_block(block, spec)
            for i in list(digests_of):
                try:
                    with np.load(staging / f"{i}.npz") as data:
                        values[i - start] = data[spec.name]
                except Exception as err:  # torn after its check: the row stays not done and is recomputed
                    log.warning("%s: ignoring unreadable staged image %d (%s)", self.path, i, err)
                    del digests_of[i]
            self._group[spec.name][start:stop] = values
            del values
        digests = self._input_digests()[start:stop]
        for i, digest in digests_of.items():
            digests[i - start] = np.frombuffer(digest, dtype="uint8")
            done[i - start] = True
        self._group[INPUT][start:stop] = digests
        self._group[DONE][start:stop] = done.astype("uint8")
        for i in digests_of:
            (staging / f"{i}.npz").unlink(missing_ok=True)
        return len(digests_of)

    @staticmethod
    def _empty_block(block: range, spec: ArraySpec) -> np.ndarray:
        return np.full((len(block), *spec.shape), spec.fill_value, dtype=spec.dtype)

    def mark_complete(self, extra: Mapping[str, Any] | None = None, *, allow_missing: bool = False) -> None:
        """Flag the store finished and drop the staging folder.

        Refuses while images are missing, unless `allow_missing` (rows left out on purpose, e.g.
        rejected images); readers then use `done()` to select the rows that hold data.
        """
        missing = int((~self.done()).sum())
        if missing and not allow_missing:
            raise StoreError(f"{self.path}: {missing} images are not written; refusing to mark complete")
        self._group.attrs.update({**dict(extra or {}), "n_missing": missing, "complete": True})
        atomic.remove(staging_dir(self.path))


class Pending:
    """One run's work on a store (`ImageStore.resume`): the rows to compute, how many were reused, and
    which block each finished row completes, so the runner packs a block the moment it is whole."""

    def __init__(self, rows: list[int], reused: int, blocks: list[range]) -> None:
        self.rows, self.reused, self._blocks = rows, reused, blocks
        self._step = len(blocks[0])  # every block but the last holds this many rows
        self._left = [0] * len(blocks)
        for row in rows:
            self._left[row // self._step] += 1

    def left(self, block: range) -> int:
        """Rows of `block` still to compute."""
        return self._left[block.start // self._step]

    def finished(self, row: int) -> range | None:
        """Note `row` as computed (staged, or failed); its block when `row` was the block's last one."""
        b = row // self._step
        self._left[b] -= 1
        return self._blocks[b] if self._left[b] == 0 else None


@dataclass(frozen=True)
class Staging:
    """Checks one image's values against the store's arrays and stages them as one durable file.

    Small and picklable: workers get this, never an open zarr group.
    """

    path: Path
    specs: tuple[ArraySpec, ...]
    files: tuple[FileSpec, ...] = ()

    def check(self, image_id: str, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """One image's computed values as the store's arrays and files, or a ValueError naming what is wrong."""
        outputs = (*self.specs, *self.files)
        missing = [s.name for s in outputs if s.name not in values]
        if missing:
            raise ValueError(f"image {image_id!r}: no value for output(s) {', '.join(missing)}")
        return {s.name: s.check(image_id, values[s.name]) for s in outputs}

    def stage(self, index: int, image_id: str, values: Mapping[str, np.ndarray], input_digest: bytes) -> None:
        """Write the image's files, then stage its arrays: once staged, everything of the image is durable."""
        for f in self.files:
            f.write(image_id, values[f.name])
        buf = io.BytesIO()
        arrays = {s.name: values[s.name] for s in self.specs}
        np.savez(buf, **arrays, **{INPUT: np.frombuffer(pad_digest(input_digest), dtype="uint8")})
        atomic.write_bytes(staging_dir(self.path) / f"{index}.npz", buf.getvalue())


def _compressors() -> tuple:
    """Each chunk zstd-compressed, then a crc32c of the compressed bytes: a corrupt chunk is refused on read."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return ZstdCodec(level=0), Crc32cCodec()


def _corrupt(err: Exception) -> bool:
    """Whether a read error is a chunk failing its checksum or its decompression."""
    text = str(err).lower()
    return "checksum" in text or "decompress" in text or "zstd" in text or "crc" in text


def pad_digest(digest: bytes) -> bytes:
    """A digest as the fixed 32 bytes stored per row (cut or zero-padded)."""
    return digest[:DIGEST_BYTES].ljust(DIGEST_BYTES, b"\0")


def _layout(ids: Sequence[str], specs: Sequence[ArraySpec], shard_images: int,
            files: Sequence[FileSpec] = ()) -> dict[str, Any]:
    return {
        "files": [{"name": f.name, "folder": str(f.folder)} for f in files],
        "layout_version": LAYOUT_VERSION,
        "n_images": len(ids),
        "shard_images": int(shard_images),
        "arrays": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "fill_value": s.fill_value} for s in specs],
    }


def staging_dir(path: Path) -> Path:
    """Staged per-image files live beside the store, so DVC never hashes them as part of it."""
    return path.with_name(path.name + ".staging")

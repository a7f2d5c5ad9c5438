"""A single-writer HDF5 artifact of keyed records (e.g. the TSA cache's generated images by class and
sample), resumable by key, that appears complete or not at all.

Why not write the HDF5 file as records arrive: HDF5 is not crash-safe (a kill mid-write can leave a
file h5py cannot open, losing every record). So each finished record is staged as its own file
(atomic rename) in `<path>.staging/`, beside a `key` file naming the run's provenance; `finish` packs
all records into a temporary HDF5 file and renames it to `path`. A rerun with the same key keeps the
staged records (`has`), one with another key starts anew.

Layout (readable with h5py alone): `/records/<key>/<name>` datasets (chunked, gzip, Fletcher-32
checksums), the root's attributes (the stamp and whatever the stage adds), and `/<name>` datasets
given to `finish`.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from pipeline import atomic
from pipeline.store.errors import StoreError

_KEY_FILE = "key"
log = logging.getLogger(__name__)


class H5Writer:
    """Stage records by key, then `finish` into the HDF5 file. Use one writer per artifact."""

    def __init__(self, path: str | Path, *, key: str) -> None:
        self.path = Path(path)
        self.staging = self.path.with_name(self.path.name + ".staging")
        key_file = self.staging / _KEY_FILE
        if not key_file.exists() or key_file.read_text(encoding="utf-8") != key:
            atomic.remove(self.staging)
            self.staging.mkdir(parents=True)
            atomic.write_text(key_file, key)
        self.key = key

    def _file(self, record: str) -> Path:
        if not record or record.startswith("/") or ".." in record.split("/"):
            raise ValueError(f"record key {record!r} must be a relative name such as 'class/0007'")
        return self.staging / (record.replace("/", "%") + ".npz")

    def has(self, record: str) -> bool:
        return self._file(record).exists()

    def keys(self) -> list[str]:
        return sorted(p.stem.replace("%", "/") for p in self.staging.glob("*.npz"))

    def put(self, record: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Durably keep one record (its arrays by name) until `finish`."""
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        atomic.write_bytes(self._file(record), buf.getvalue())

    def get(self, record: str) -> dict[str, np.ndarray]:
        with np.load(self._file(record)) as data:
            return {k: data[k] for k in data.files}

    def drop(self, record: str) -> None:
        """Forget a staged record (it will not be written by `finish`)."""
        self._file(record).unlink(missing_ok=True)

    def finish(self, *, attrs: Mapping[str, Any], datasets: Mapping[str, np.ndarray] | None = None) -> Path:
        """Write every staged record and `datasets` into `path` (temporary file, then rename); drop the staging."""
        import h5py

        def write(tmp: Path) -> None:
            with h5py.File(tmp, "w") as f:
                for name, value in {**dict(attrs), "key": self.key}.items():
                    f.attrs[name] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value, sort_keys=True)
                records = f.create_group("records")
                for record in self.keys():
                    group = records.require_group(record)
                    for name, value in self.get(record).items():
                        _dataset(group, name, value)
                for name, value in (datasets or {}).items():
                    _dataset(f, name, np.asarray(value))

        atomic.write_with(self.path, write)
        atomic.remove(self.staging)
        return self.path


def seed_from_file(writer: H5Writer, path: str | Path) -> None:
    """Stage the records of an existing file at `path` written with the writer's key and not staged yet,
    so a rerun after `finish` (e.g. one that asks for more records) keeps every earlier record byte for
    byte without recomputing it. A missing file, another key or an unreadable file adds nothing; a
    corrupt record is left out (and computed again)."""
    if not Path(path).is_file():
        return
    try:
        with H5Reader(path) as reader:
            if reader.attrs.get("key") != writer.key:
                return
            for record in reader.keys():
                if not writer.has(record):
                    try:
                        writer.put(record, reader.record(record))
                    except StoreError as err:  # a corrupt record is made again, not copied
                        log.warning("%s", err)
    except OSError:
        return


def _dataset(group: Any, name: str, value: np.ndarray) -> None:
    import h5py

    if value.dtype.kind in "US":
        group.create_dataset(name, data=value.astype(object), dtype=h5py.string_dtype())
    elif value.ndim:
        # one chunk per array (per image in records), with a Fletcher-32 checksum: a flipped byte is refused on read
        group.create_dataset(name, data=value, chunks=value.shape, compression="gzip", compression_opts=4, shuffle=True,
                             fletcher32=True)
    else:
        group.create_dataset(name, data=value)


class H5Reader:
    """Read a finished HDF5 artifact: attributes, records by key, top-level datasets."""

    def __init__(self, path: str | Path) -> None:
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"{self.path}: no HDF5 artifact here (run the stage that writes it first)")
        self._file = h5py.File(self.path, "r")

    def __enter__(self) -> "H5Reader":
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._file.attrs)

    def keys(self) -> Iterator[str]:
        """Record keys, e.g. 'disk/0003' (groups holding datasets under /records)."""
        found: list[str] = []
        if "records" in self._file:
            self._file["records"].visititems(lambda name, obj: found.append(name) if _is_record(obj) else None)
        return iter(sorted(found))

    def record(self, key: str) -> dict[str, np.ndarray]:
        group = self._file["records"][key]
        return {name: self._read(group[name], f"record {key!r}") for name in group if not hasattr(group[name], "keys")}

    def dataset(self, name: str) -> np.ndarray:
        return self._read(self._file[name], f"dataset {name!r}")

    def _read(self, dataset: Any, what: str) -> np.ndarray:
        try:
            return dataset[()]
        except OSError as err:  # h5py's error for a chunk whose checksum or compression no longer holds
            raise StoreError(f"{self.path}: {what} is corrupt ({err}); delete the file and rerun the stage "
                             "that writes it") from None


def _is_record(obj: Any) -> bool:
    return hasattr(obj, "keys") and any(not hasattr(obj[k], "keys") for k in obj)

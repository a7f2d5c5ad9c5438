"""Atomic file writes: a reader (or a rerun after `kill -9`) sees the old file or the new one, never a
torn one. Every artifact file the project writes goes through these three functions."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable


def temp_path(path: Path) -> Path:
    """A hidden sibling of `path` unique to this process (same folder, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary sibling and an atomic rename."""
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    """Sorted, indented JSON with a final newline (stable bytes for the same data)."""
    return write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def write_with(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Let `writer` fill a temporary sibling of `path` (a file or a folder), then rename it into place.

    An existing folder at `path` is replaced as a whole; the temporary is removed if `writer` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    remove(tmp)
    try:
        writer(tmp)
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            remove(old)
        else:
            os.replace(tmp, path)
    except OSError as err:
        remove(tmp)
        if err.filename is None or str(err.filename).startswith(str(tmp)):  # name the artifact, not its temporary
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        remove(tmp)
        raise
    return path


def remove(path: str | Path) -> None:
    """Remove a file or a folder tree if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

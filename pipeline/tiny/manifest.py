"""``manifest.json`` of a shipped tiny model: how its weights were made (written beside them).

One format for the tiny CLIP and the tiny SD: a JSON object written atomically (temporary name,
then rename), values made JSON-ready by :func:`jsonable`, and the versions of the libraries that
made it (:func:`library_versions`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import atomic

MANIFEST_NAME = "manifest.json"

# manifest key -> module carrying ``__version__``
_LIBRARY_MODULES = {
    "open_clip": "open_clip",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "scikit-learn": "sklearn",
}


def manifest_path(out_dir: str | os.PathLike[str]) -> Path:
    """``out_dir/manifest.json``."""
    return Path(out_dir) / MANIFEST_NAME


def write_manifest(out_dir: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` (through :func:`jsonable`) as ``out_dir/manifest.json``, atomically; creates ``out_dir``."""
    return atomic.write_text(manifest_path(out_dir), json.dumps(jsonable(manifest), indent=1, sort_keys=False) + "\n")


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of ``out_dir``."""
    return json.loads(manifest_path(out_dir).read_text(encoding="utf-8"))


def library_versions(*libraries: str) -> dict[str, str]:
    """Python, torch, numpy and diclip (package and code) versions, plus those of ``libraries``
    (manifest names: ``open_clip``, ``diffusers``, ``transformers``, ``scikit-learn``, or a module name)."""
    import torch

    from pipeline import __version__
    from pipeline.provenance import code_version

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in libraries:
        versions[name] = importlib.import_module(_LIBRARY_MODULES.get(name, name)).__version__
    versions.update(diclip=__version__, code=code_version())
    return versions


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def jsonable(value: Any) -> Any:
    """``value`` with str keys, lists for tuples, Python numbers for numpy scalars and None for NaN/inf."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

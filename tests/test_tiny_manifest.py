"""The manifest.json written beside the shipped tiny models (pipeline.tiny.manifest)."""

from __future__ import annotations

import json

import numpy as np

from pipeline.tiny.manifest import (
    MANIFEST_NAME,
    file_sha256,
    jsonable,
    library_versions,
    manifest_path,
    read_manifest,
    write_manifest,
)


def test_write_then_read_round_trips_json_ready_values(tmp_path):
    out = tmp_path / "new" / "dir"  # created
    record = {"steps": np.int64(3), "loss": np.float32(0.5), "templates": ("a", "b"), "nan": float("nan"),
              "per_t": {100: {8: 0.61}}}
    path = write_manifest(out, record)
    assert path == manifest_path(out) == out / MANIFEST_NAME
    assert read_manifest(out) == {"steps": 3, "loss": 0.5, "templates": ["a", "b"], "nan": None,
                                  "per_t": {"100": {"8": 0.61}}}
    assert json.loads(path.read_text()) == jsonable(record)
    assert [p.name for p in out.iterdir()] == [MANIFEST_NAME]  # no temporary file left behind
    write_manifest(out, {"steps": 4})
    assert read_manifest(out) == {"steps": 4}


def test_library_versions_name_the_core_and_the_asked_libraries():
    import sklearn
    import torch

    versions = library_versions("scikit-learn")
    assert versions["torch"] == torch.__version__ and versions["scikit-learn"] == sklearn.__version__
    assert {"python", "numpy", "diclip", "code"} <= set(versions) and "open_clip" not in versions


def test_file_sha256(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

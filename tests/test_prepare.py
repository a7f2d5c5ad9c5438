"""The prepare stage: index contents match planted data; bad data leaves no index; a resumed run never
keeps results of files that changed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.params import parse_params
from pipeline.runner import ImageFailures
from pipeline.store.dataset_index import DatasetIndex
from pipeline.skeleton import run_stage
from pipeline.store.image_store import StoreError
from stages import prepare
from tests.datasets_factory import VOC_SPLITS, build_voc, write_mask, banded_mask


def voc_params(root, **prepare):
    return parse_params({
        "dataset": {"kind": "voc", "root": str(root), "train_split": "train", "eval_split": "val"},
        "runner": {"in_process": True},
        "prepare": {"shard_images": 2, **prepare},
    })


def prepare_index(params, out):
    counts, _ = run_stage(prepare.SPEC, prepare.body, params=params, params_path=None, paths={"index": out})
    return counts


def test_index_holds_planted_labels_sizes_and_split_order(tmp_path):
    samples = build_voc(tmp_path / "voc")
    counts = prepare_index(voc_params(tmp_path / "voc"), tmp_path / "index")
    assert counts == {"train": 3, "val": 2}
    index = DatasetIndex.load(tmp_path / "index")
    assert index.class_names[0] == "aeroplane" and len(index.class_names) == 20
    for split, planted in VOC_SPLITS.items():
        ids = index.ids(split)
        assert ids == list(reversed(planted))  # split-list order, not sorted
        labels, sizes = index.labels(split), index.sizes(split)
        for row, image_id in enumerate(ids):
            want = {v for v in planted[image_id] if v not in (0, 255)}
            assert set(np.flatnonzero(labels[row]) + 1) == want
            assert tuple(sizes[row]) == samples[image_id].mask.shape
    assert index.meta["dataset_kind"] == "voc" and index.meta["provenance"]["stage"] == "prepare"
    assert len(index.fingerprint) == 64


def test_fingerprint_follows_file_content(tmp_path):
    samples = build_voc(tmp_path / "voc")
    prepare_index(voc_params(tmp_path / "voc"), tmp_path / "a")
    prepare_index(voc_params(tmp_path / "voc"), tmp_path / "b")
    first = DatasetIndex.load(tmp_path / "a").fingerprint
    assert DatasetIndex.load(tmp_path / "b").fingerprint == first
    sample = samples["2007_000121"]
    write_mask(sample.mask_path, banded_mask(*sample.mask.shape, (0, 9)))
    prepare_index(voc_params(tmp_path / "voc"), tmp_path / "a")
    index = DatasetIndex.load(tmp_path / "a")
    assert index.fingerprint != first
    assert np.flatnonzero(index.labels("val")[index.ids("val").index("2007_000121")]).tolist() == [8]


def corrupt(tmp_path):
    build_voc(tmp_path / "voc")
    jpeg = tmp_path / "voc" / "JPEGImages" / "2007_000039.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])  # truncated


def test_bad_image_fails_the_stage_by_name_and_leaves_no_index(tmp_path):
    corrupt(tmp_path)
    with pytest.raises(ImageFailures) as info:
        prepare_index(voc_params(tmp_path / "voc"), tmp_path / "index")
    assert list(info.value.failures) == ["2007_000039"]
    assert "2007_000039.jpg" in str(info.value)
    assert not (tmp_path / "index" / "index.json").exists()
    with pytest.raises(StoreError, match="index is absent or incomplete"):
        DatasetIndex.load(tmp_path / "index")


def test_skip_leaves_bad_images_out_and_lists_them(tmp_path):
    corrupt(tmp_path)
    counts = prepare_index(voc_params(tmp_path / "voc", on_error="skip"), tmp_path / "index")
    assert counts == {"train": 2, "val": 2}
    index = DatasetIndex.load(tmp_path / "index")
    assert "2007_000039" not in index.ids("train") and index.labels("train").shape == (2, 20)
    rejected = json.loads((tmp_path / "index" / "rejected.json").read_text())
    assert list(rejected["train"]) == ["2007_000039"] and index.meta["rejected"] == {"train": 1}


def test_missing_split_fails_before_any_work(tmp_path):
    build_voc(tmp_path / "voc")
    params = parse_params({"dataset": {"kind": "voc", "root": str(tmp_path / "voc"), "train_split": "train_aug"}})
    with pytest.raises(Exception, match="train_aug"):
        prepare_index(params, tmp_path / "index")
    assert not (tmp_path / "index").exists()


def test_a_resumed_run_recomputes_images_whose_files_changed(tmp_path):
    """Fix a bad file and correct another image's mask, rerun: the result equals a fresh run's."""
    samples = build_voc(tmp_path / "voc")
    jpeg = tmp_path / "voc" / "JPEGImages" / "2007_000039.jpg"
    good = jpeg.read_bytes()
    jpeg.write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageFailures):
        prepare_index(voc_params(tmp_path / "voc"), tmp_path / "index")  # the other images are recorded
    jpeg.write_bytes(good)
    sample = samples["2007_000121"]
    write_mask(sample.mask_path, banded_mask(*sample.mask.shape, (0, 9)))
    prepare_index(voc_params(tmp_path / "voc"), tmp_path / "index")
    prepare_index(voc_params(tmp_path / "voc"), tmp_path / "fresh")
    resumed, fresh = DatasetIndex.load(tmp_path / "index"), DatasetIndex.load(tmp_path / "fresh")
    assert np.flatnonzero(resumed.labels("val")[resumed.ids("val").index("2007_000121")]).tolist() == [8]
    assert resumed.fingerprint == fresh.fingerprint
    for split in ("train", "val"):
        assert resumed.digests(split) == fresh.digests(split)

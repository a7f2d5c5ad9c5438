"""Slow: the cams stage with full-size architectures on two images of a VOC-layout folder.

ViT-B-16-quickgelu built from its config with random weights (`models.clip.pretrained: null`) at
320 px, DiCLIP's whole training-free path (the params' defaults), and a stage A store of SD 2.1's
layout at 320 px (g = 20, 16 cluster rows, P on 40 x 40 with 64 entries per row) holding random
row-stochastic R and P written through the store, so the test needs no SD weights. Checks shapes,
dtypes and value ranges of every output and prints the peak memory.
"""

from __future__ import annotations

import resource

import numpy as np
import pytest

from pipeline.params import parse_params
from pipeline.skeleton import run_stage


@pytest.mark.slow
def test_full_size_cams_on_a_voc_folder(tmp_path):
    from pipeline.store.dataset_index import DatasetIndex
    from pipeline.store.image_store import ArraySpec, ImageStore
    from stages import cams, prepare
    from tests.datasets_factory import build_voc

    build_voc(tmp_path / "voc")
    dataset = {"kind": "voc", "root": str(tmp_path / "voc"), "train_split": "val", "eval_split": "val"}
    run_stage(prepare.SPEC, prepare.body, paths={"index": tmp_path / "index"},
              params=parse_params({"dataset": dataset, "runner": {"in_process": True}}))
    index = DatasetIndex.load(tmp_path / "index")
    ids = index.ids("val")
    assert len(ids) == 2

    g, k, t, kt = 20, 16, 40, 64
    specs = [ArraySpec("clusters", (g, g), "uint8"), ArraySpec("k", (), "int32"), ArraySpec("rows", (k, g * g), "float16"),
             ArraySpec("transition_values", (t * t, kt), "float16"), ArraySpec("transition_index", (t * t, kt), "int16"),
             ArraySpec("transition_kept", (), "float32"), ArraySpec("transition_truncated", (), "float32")]
    attrs = {"stage": "diffusion_attention", "grid": g, "transition": {"grid": t, "k": kt}, "splits": {"val": 2},
             "index_fingerprint": index.fingerprint}
    store = ImageStore.create_or_resume(tmp_path / "diffusion.zarr", ids=ids, specs=specs, key="sd21-sized",
                                        attrs=attrs, shard_images=2)
    rng = np.random.default_rng(0)
    for i in range(len(ids)):
        rows = rng.random((k, g * g)) ** 8
        values = rng.random((t * t, kt)) ** 4
        store.stage_image(i, {
            "clusters": rng.integers(0, k, (g, g)).astype(np.uint8), "k": np.int32(k),
            "rows": (rows / rows.sum(1, keepdims=True)).astype(np.float16),
            "transition_values": (values / values.sum(1, keepdims=True)).astype(np.float16),
            "transition_index": np.argsort(rng.random((t * t, t * t)), axis=1)[:, :kt].astype(np.int16),
            "transition_kept": np.float32(1), "transition_truncated": np.float32(0)}, bytes(32))
    for block in store.blocks():
        store.pack_block(block)
    store.mark_complete({"fingerprint": "sd21-sized"})

    # a VOC-sized TSA cache (DiCLIP: 25 background + 10 keys per class, 512-d), fused at DiCLIP's weight 0.5
    from pipeline.store.h5_store import H5Writer

    key_class = np.concatenate([np.full(25, -1), np.repeat(np.arange(20), 10)])
    values = np.zeros((len(key_class), 21), np.float32)
    values[np.arange(len(key_class)), key_class + 1] = 1
    H5Writer(tmp_path / "tsa_cache.h5", key="voc-sized").finish(attrs={"fingerprint": "voc-sized"}, datasets={
        "keys": rng.normal(size=(len(key_class), 512)).astype(np.float32), "values": values, "key_class": key_class})
    params = parse_params({"models": {"clip": {"model": "ViT-B-16-quickgelu", "pretrained": None}, "device": "cpu",
                                      "precision": "fp32"}, "runner": {"in_process": True}})
    _, summary = run_stage(cams.SPEC, cams.body, params=params,
                           paths={"index": tmp_path / "index", "diffusion": tmp_path / "diffusion.zarr",
                                  "tsa_cache": tmp_path / "tsa_cache.h5", "cams": tmp_path / "cams.zarr", "pseudo_labels": tmp_path / "pseudo_labels"})
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"full-size cams on {len(ids)} images: peak RSS {peak_gib:.2f} GiB")
    assert (summary.computed, summary.failed) == (2, 0)
    out = ImageStore.open(tmp_path / "cams.zarr", stage="cams")
    assert {s.name: (s.shape, s.dtype) for s in out.specs} == {"cams": ((20, t, t), "float16")}  # VOC's 20 classes on P's grid
    [labels] = out.files
    images = index.images(["val"])
    for row, image_id in enumerate(ids):
        stored = out.read("cams", row)
        present = index.labels("val")[row].astype(bool)
        assert stored.dtype == np.float16 and (stored[~present] == 0).all() and 0 <= stored.min() and stored.max() <= 1
        label = labels.read(image_id)
        assert label.dtype == np.uint8 and label.shape == images.load_mask(image_id).shape
        assert set(np.unique(label)) <= {0, *(np.flatnonzero(present) + 1)}

"""Stage tsa_cache on a small shapes world (untrained tiny SD, shipped tiny CLIP): the HDF5 layout read
back with h5py alone, raising N draws only the new images and keeps the others byte-identical, a kill
mid-generation leaves no complete-looking file and the rerun completes, and the cams stage fuses the
cache (weight 0 = the text CAM).

Also a script (`python -m tests.test_tsa_stage OUT INDEX DIFFUSION SD`): runs the stage in process, for
the kill test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.params import parse_params
from pipeline.skeleton import run_stage
from stages import tsa_cache as stage
from tests.kill_run import run_killed_after
from tests.test_cams_stage import CAMS, N_TRAIN, N_VAL, world  # noqa: F401  (the module-scoped world fixture)
from tests.test_diffusion_stage import TINY

TSA = {"images_per_class": 2, "template": "a photo of a {}.", "prompt_names_file": None, "steps": 3,
       "guidance": 3.0, "image_size": 64, "batch": 2, "keys_per_class": 2, "background_keys": 3, "eval_images": 4}


def params(sd: Path, runner=None, cams=None, **tsa):
    return parse_params({"tsa_cache": {**TSA, **tsa}, "cams": {**CAMS, "cache_weight": 0.0, **(cams or {})},
                         "diffusion_attention": {**TINY, "eval_images": 0}, "runner": runner or {"in_process": True},
                         "models": {"sd": {"model": str(sd)}, "device": "cpu"}})


def paths(world, out: Path) -> dict:
    return {"index": world["index"], "diffusion": world["diffusion"], "tsa_cache": out / "tsa_cache.h5",
            "tsa_picture": out / "tsa_cache.png", "tsa_metric": out / "tsa_cache.json",
            "tsa_detail": out / "tsa_cache_detail.json"}


def run(world, out: Path, runner=None, **tsa):
    return run_stage(stage.SPEC, stage.body, params=params(world["root"] / "sd", runner, **tsa), paths=paths(world, out))


def records(path: Path) -> dict[str, dict[str, np.ndarray]]:
    import h5py

    out = {}

    def visit(name, obj):  # returns None so h5py keeps visiting
        if isinstance(obj, h5py.Group) and "image" in obj:
            out[name] = {k: obj[k][()] for k in obj}

    with h5py.File(path, "r") as f:
        f["records"].visititems(visit)
    return out


@pytest.fixture(scope="module")
def first(world):
    out = world["root"] / "tsa"
    (_, detail), _ = run(world, out)
    return out, detail


def test_layout_read_back_with_h5py_and_the_picture_and_metric(world, first):
    import h5py
    from PIL import Image

    out, metric = first
    names = ["disk", "bar", "ring", "triangle", "cross", "star", "boat"]
    got = records(out / "tsa_cache.h5")
    assert sorted(got) == sorted(f"{n}/{i:05d}" for n in names for i in range(2))
    with h5py.File(out / "tsa_cache.h5", "r") as f:
        assert [s.decode() for s in f["class_names"][()]] == names
        keys, values, key_class = f["keys"][()], f["values"][()], f["key_class"][()]
        assert json.loads(f.attrs["prompts"]) == [f"a photo of a {n}." for n in names]
        assert f.attrs["images_per_class"] == 2 and f.attrs["seed"] == 0
        assert f["records/disk/00000/image"].chunks == (64, 64, 3) and f["records/disk/00000/image"].compression == "gzip"
        assert f["records/disk/00000/image"].fletcher32  # a checksum per chunk
    for key, r in got.items():
        c = names.index(key.split("/")[0])
        assert r["image"].shape == (64, 64, 3) and r["image"].dtype == np.uint8
        assert set(np.unique(r["mask"])) <= {0, c + 1}
        assert ("fg_prototype" in r) == bool((r["mask"] > 0).any())
    assert keys.dtype == np.float32 and keys.shape[0] == values.shape[0] == key_class.shape[0]
    assert (values.argmax(1) == key_class + 1).all() and values.shape[1] == len(names) + 1
    assert metric["drawn_now"] == 14 and metric["keys"] == len(keys)
    for name in ("cache", "text", "cache_present", "text_present"):
        assert 0 <= metric[name]["accuracy"] <= 1
    assert json.loads((out / "tsa_cache_detail.json").read_text()) == metric
    assert json.loads((out / "tsa_cache.json").read_text()) == {  # the headline numbers
        "keys": len(keys), "cache_accuracy": metric["cache"]["accuracy"], "text_accuracy": metric["text"]["accuracy"]}
    assert np.asarray(Image.open(out / "tsa_cache.png")).shape == (7 * 2 * 64, 2 * 64, 3)


def test_raising_n_draws_only_the_new_images_and_keeps_the_others_byte_identical(world, first, tmp_path):
    import shutil

    out, _ = first
    shutil.copytree(out, tmp_path / "tsa")
    (_, metric), _ = run(world, tmp_path / "tsa", images_per_class=3)
    assert metric["drawn_now"] == 7  # one new image per class
    before, after = records(out / "tsa_cache.h5"), records(tmp_path / "tsa" / "tsa_cache.h5")
    assert set(before) < set(after) and len(after) == 21
    for key, r in before.items():
        assert set(r) == set(after[key]) and all(np.array_equal(r[k], after[key][k]) for k in r)
    fresh, _ = run(world, tmp_path / "fresh", images_per_class=3)  # the same groups: the same bytes
    for key, r in records(tmp_path / "fresh" / "tsa_cache.h5").items():
        assert all(np.array_equal(r[k], after[key][k]) for k in r), key


def test_a_kill_mid_generation_leaves_no_complete_looking_file_and_the_rerun_completes(world, first, tmp_path):
    out, _ = first
    run_killed_after(["-m", "tests.test_tsa_stage", str(tmp_path), str(world["index"]), str(world["diffusion"]),
                      str(world["root"] / "sd")], images=4)
    assert not (tmp_path / "tsa_cache.h5").exists()
    staged = len(list((tmp_path / "tsa_cache.h5.staging").glob("*.npz")))
    assert 4 <= staged < 14
    (_, metric), _ = run(world, tmp_path)
    assert metric["drawn_now"] == 14 - staged
    ref, got = records(out / "tsa_cache.h5"), records(tmp_path / "tsa_cache.h5")
    assert set(ref) == set(got) and all(np.array_equal(ref[k]["image"], got[k]["image"]) for k in ref)


def test_the_cams_stage_fuses_the_cache_and_weight_zero_is_the_text_cam(world, first, tmp_path):
    from stages import cams

    out, _ = first
    stores = {}
    for weight in (0.0, 0.5):
        p = parse_params({"cams": {**CAMS, "cache_weight": weight, "bg_threshold": 0.6}, "models": {"device": "cpu"},
                          "runner": {"in_process": True}})
        run_stage(cams.SPEC, cams.body, params=p, paths={
            "index": world["index"], "diffusion": world["diffusion"], "tsa_cache": out / "tsa_cache.h5",
            "cams": tmp_path / str(weight) / "cams.zarr", "pseudo_labels": tmp_path / str(weight) / "pl"})
        from pipeline.store.image_store import ImageStore

        stores[weight] = ImageStore.open(tmp_path / str(weight) / "cams.zarr")
    base = world["root"] / "ref" / "cams.zarr"
    if base.exists():  # the cams tests' run with the same params and no cache
        np.testing.assert_array_equal(stores[0.0].read("cams"), ImageStore.open(base).read("cams"))
    assert not np.array_equal(stores[0.0].read("cams"), stores[0.5].read("cams"))
    assert stores[0.5].attrs["cache"]["weight"] == 0.5 and stores[0.5].attrs["cache"]["fingerprint"]


def test_tsa_adapt_trains_the_adapter_on_round_one_and_writes_round_two(world, first, tmp_path):
    from safetensors.torch import load_file

    from pipeline.store.h5_store import H5Reader
    from pipeline.store.image_store import ImageStore
    from stages import cams, tsa_adapt

    out, _ = first
    cam_params = {**CAMS, "cache_weight": 0.5, "bg_threshold": 0.6}
    p = parse_params({"cams": cam_params, "models": {"device": "cpu"}, "runner": {"in_process": True},
                      "tsa_adapt": {"hidden": 40, "iterations": 30, "warmup": 5}})
    paths = {"index": world["index"], "diffusion": world["diffusion"], "tsa_cache": out / "tsa_cache.h5",
             "cams": tmp_path / "cams.zarr", "pseudo_labels": tmp_path / "pl", "tsa_features": tmp_path / "features.zarr"}
    run_stage(cams.SPEC, cams.body, params=p, paths=paths)
    metrics, summaries = [], []
    for n, iterations in ((1, 30), (2, 30), (3, 20)):
        paths.update(tsa_adapter=tmp_path / f"a{n}.safetensors", cams_round2=tmp_path / f"r{n}.zarr",
                     pseudo_labels_round2=tmp_path / f"pl{n}", tsa_adapt_metric=tmp_path / f"m{n}.json",
                     tsa_adapt_detail=tmp_path / f"d{n}.json")
        pn = parse_params({"cams": cam_params, "models": {"device": "cpu"}, "runner": {"in_process": True},
                           "tsa_adapt": {"hidden": 40, "iterations": iterations, "warmup": 5}})
        (_, metric), summary = run_stage(tsa_adapt.SPEC, tsa_adapt.body, params=pn, paths=paths)
        metrics.append(metric)
        summaries.append(summary)
    # the training set is stored once: a rerun, or one with other adapter params, reads it back
    assert [(s.computed, s.reused) for s in summaries] == [(2 * N_TRAIN + N_VAL, 0), (N_TRAIN + N_VAL, N_TRAIN),
                                                           (N_TRAIN + N_VAL, N_TRAIN)]
    assert metrics[2]["adapter"]["iterations"] == 20 and metrics[2] != metrics[0]
    a, b = load_file(tmp_path / "a1.safetensors"), load_file(tmp_path / "a2.safetensors")
    with H5Reader(out / "tsa_cache.h5") as reader:
        keys = reader.dataset("keys")
    assert a["key.weight"].shape == (40, keys.shape[1]) and a["value.weight"].shape == (8, 40)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)  # seeded: the same weights twice
    assert metrics[0] == metrics[1] and metrics[0]["round2"]["split"] == "train"
    r1, r2 = ImageStore.open(tmp_path / "cams.zarr"), ImageStore.open(tmp_path / "r1.zarr")
    assert r2.ids() == r1.ids() and r2.attrs["round"] == 2
    assert not np.array_equal(r1.read("cams"), r2.read("cams"))  # the adapted cache replaced the static one
    assert sorted(p.name for p in (tmp_path / "pl1").iterdir()) == sorted(f"{i}.png" for i in r1.ids())


if __name__ == "__main__":
    out, index, diffusion, sd = (Path(a) for a in sys.argv[1:5])
    run_stage(stage.SPEC, stage.body, params=params(sd),
              paths=paths({"index": index, "diffusion": diffusion}, out))

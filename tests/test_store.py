"""ImageStore: resume only what matches, never mix params, never look complete when it is not."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.store.image_store import ArraySpec, ImageStore, StoreError

SPECS = (ArraySpec("m", (2, 2), "float16"),)
IDS = [f"a{i}" for i in range(5)]


def create(path, ids=IDS, params_hash="h1", specs=SPECS, shard=2):
    return ImageStore.create_or_resume(path, ids=ids, specs=specs, attrs={"stage": "s", "params_hash": params_hash}, shard_images=shard)


def write_first_block(store):
    block = store.blocks()[0]
    values = store.empty_block(block)
    values["m"][:] = 7
    store.write_block(block, values, np.ones(len(block), bool))


def test_blocks_cover_images_once_and_match_shards(tmp_path):
    store = create(tmp_path / "s.zarr")
    assert [list(b) for b in store.blocks()] == [[0, 1], [2, 3], [4]]
    assert store.ids() == IDS
    assert store.group["m"].shards == (2, 2, 2) and store.group["m"].chunks == (1, 2, 2)


def test_resume_keeps_done_images_with_same_params(tmp_path):
    write_first_block(create(tmp_path / "s.zarr"))
    again = create(tmp_path / "s.zarr")
    assert again.done().tolist() == [True, True, False, False, False]
    assert again.read("m", 1).tolist() == [[7, 7], [7, 7]]


@pytest.mark.parametrize("change", [
    {"params_hash": "h2"},
    {"ids": IDS[:4]},
    {"specs": (ArraySpec("m", (2, 3), "float16"),)},
    {"shard": 3},
])
def test_other_params_or_layout_start_anew(tmp_path, change):
    write_first_block(create(tmp_path / "s.zarr"))
    again = create(tmp_path / "s.zarr", **change)
    assert not again.done().any()


def test_a_complete_store_is_recomputed_when_the_stage_runs_again(tmp_path):
    store = create(tmp_path / "s.zarr", ids=IDS[:2])
    write_first_block(store)
    store.mark_complete()
    assert ImageStore.open(tmp_path / "s.zarr", stage="s").attrs["complete"]
    assert not create(tmp_path / "s.zarr", ids=IDS[:2]).done().any()


def test_incomplete_store_is_refused_by_readers_and_by_mark_complete(tmp_path):
    store = create(tmp_path / "s.zarr")
    write_first_block(store)
    with pytest.raises(StoreError, match="incomplete"):
        ImageStore.open(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="3 images are not written"):
        store.mark_complete()
    store.mark_complete(allow_missing=True)
    assert ImageStore.open(tmp_path / "s.zarr").attrs["n_missing"] == 3
    with pytest.raises(StoreError, match="expected 'other'"):
        ImageStore.open(tmp_path / "s.zarr", stage="other")
    with pytest.raises(StoreError, match="no store here"):
        ImageStore.open(tmp_path / "absent.zarr")


def test_staging_round_trip_and_torn_files_are_ignored(tmp_path):
    store = create(tmp_path / "s.zarr")
    store.stage_image(3, {"m": np.full((2, 2), 5, "float16")})
    assert store.load_staged(3)["m"].tolist() == [[5, 5], [5, 5]]
    torn = store.path.with_name("s.zarr.staging") / "4.npz"
    torn.write_bytes(b"PK\x03\x04 torn")
    assert store.load_staged(4) is None
    store.clear_staged(range(2, 5))
    assert store.load_staged(3) is None


def test_spec_check_names_image_and_expected_shape():
    with pytest.raises(ValueError, match=r"image 'x7': array 'm' has shape \(3,\), expected \(2, 2\)"):
        SPECS[0].check("x7", np.zeros(3))

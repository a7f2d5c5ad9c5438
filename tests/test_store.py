"""The stores: per-image zarr (resume by key and input digest, never complete when it is not), per-image
PNG files under the same protocol, the single-writer HDF5 store and the checkpoint store."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.store.image_store import ArraySpec, FileSpec, ImageStore, StoreError

SPECS = (ArraySpec("m", (2, 2), "float16"),)
IDS = [f"a{i}" for i in range(5)]


def create(path, ids=IDS, key="k1", specs=SPECS, shard=2, files=()):
    return ImageStore.create_or_resume(path, ids=ids, specs=specs, key=key, attrs={"stage": "s"}, shard_images=shard,
                                       files=files)


def write_first_block(store, value=7):
    for i in store.blocks()[0]:
        store.stage_image(i, {"m": np.full((2, 2), value)}, b"d%d" % i)
    assert store.pack_block(store.blocks()[0]) == 2


def test_blocks_cover_images_once_and_match_shards(tmp_path):
    store = create(tmp_path / "s.zarr")
    assert [list(b) for b in store.blocks()] == [[0, 1], [2, 3], [4]]
    assert store.ids() == IDS
    assert not (tmp_path / "s.zarr" / "m" / "c").exists()  # nothing written yet
    write_first_block(store)
    assert len(list((tmp_path / "s.zarr" / "m" / "c").iterdir())) == 1  # one shard file for the block


def test_packing_writes_values_digests_and_done_flags_then_drops_staged_files(tmp_path):
    store = create(tmp_path / "s.zarr")
    write_first_block(store)
    assert store.done().tolist() == [True, True, False, False, False]
    assert bytes(store.input_digests()[1]).rstrip(b"\0") == b"d1"
    assert store.read("m", 1).tolist() == [[7, 7], [7, 7]]
    assert store.staged_indices() == set()


def test_resume_keeps_done_images_with_the_same_key(tmp_path):
    write_first_block(create(tmp_path / "s.zarr"))
    again = create(tmp_path / "s.zarr")
    assert again.done().tolist() == [True, True, False, False, False]
    assert again.read("m", 1).tolist() == [[7, 7], [7, 7]]


@pytest.mark.parametrize("change", [
    {"key": "k2"},
    {"ids": IDS[:4]},
    {"specs": (ArraySpec("m", (2, 3), "float16"),)},
    {"shard": 3},
])
def test_another_key_or_layout_starts_anew(tmp_path, change):
    write_first_block(create(tmp_path / "s.zarr"))
    again = create(tmp_path / "s.zarr", **change)
    assert not again.done().any()


def test_a_complete_store_of_the_same_key_is_reused_and_forget_reopens_rows(tmp_path):
    store = create(tmp_path / "s.zarr", ids=IDS[:2])
    write_first_block(store)
    store.mark_complete()
    assert ImageStore.open(tmp_path / "s.zarr", stage="s").attrs["complete"]
    again = create(tmp_path / "s.zarr", ids=IDS[:2])
    assert again.done().all()
    again.forget([1])
    assert again.done().tolist() == [True, False] and not again.attrs["complete"]
    with pytest.raises(StoreError, match="incomplete"):
        ImageStore.open(tmp_path / "s.zarr")


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


def test_staging_round_trip_and_torn_or_temporary_files_are_ignored(tmp_path):
    store = create(tmp_path / "s.zarr")
    store.stage_image(3, {"m": np.full((2, 2), 5, "float16")}, b"x")
    values, digest = store.load_staged(3)
    assert values["m"].tolist() == [[5, 5], [5, 5]] and digest.rstrip(b"\0") == b"x"
    staging = store.path.with_name("s.zarr.staging")
    (staging / "4.npz").write_bytes(b"PK\x03\x04 torn")
    (staging / ".2.12345.tmp").write_bytes(b"half a write")  # what a kill mid-write leaves
    assert store.load_staged(4) is None
    assert store.staged_indices() == {3, 4}
    store.drop_staged(3)
    assert store.load_staged(3) is None


def test_spec_check_names_image_and_expected_shape():
    with pytest.raises(ValueError, match=r"image 'x7': array 'm' has shape \(3,\), expected \(2, 2\)"):
        SPECS[0].check("x7", np.zeros(3))


def test_png_files_are_written_with_the_staged_image_and_read_back_as_indices(tmp_path):
    labels = FileSpec("label", str(tmp_path / "labels"))
    store = create(tmp_path / "s.zarr", files=(labels,))
    value = np.array([[0, 1, 2], [255, 3, 0]], dtype=np.uint8)  # any size per image
    store.stage_image(0, {"m": np.zeros((2, 2)), "label": value}, b"d")
    png = Image.open(io.BytesIO((tmp_path / "labels" / "a0.png").read_bytes()))
    assert png.mode == "P" and np.array_equal(np.array(png), value)
    with pytest.raises(ValueError, match="'label' must be a non-empty \\(H, W\\) uint8"):
        store.stage_image(1, {"m": np.zeros((2, 2)), "label": np.zeros((2, 2), np.float32)}, b"d")
    with pytest.raises(ValueError, match="no value for output\\(s\\) label"):
        store.stage_image(1, {"m": np.zeros((2, 2))}, b"d")
    # a store started anew (another key) does not keep the files of the earlier run
    create(tmp_path / "s.zarr", key="other", files=(labels,))
    assert not (tmp_path / "labels").exists()


# ------------------------------------------------------------------ HDF5
def test_h5_records_are_staged_resumed_by_key_and_packed_into_one_file(tmp_path):
    import h5py

    from pipeline.store.h5_store import H5Reader, H5Writer

    path = tmp_path / "cache.h5"
    writer = H5Writer(path, key="k1")
    writer.put("disk/0000", {"image": np.arange(12, dtype=np.uint8).reshape(2, 2, 3), "score": np.float32(0.5)})
    assert not path.exists() and writer.has("disk/0000") and not writer.has("disk/0001")

    resumed = H5Writer(path, key="k1")  # a rerun after a kill keeps what was staged
    assert resumed.keys() == ["disk/0000"]
    resumed.put("star/0003", {"image": np.ones((2, 2, 3), np.uint8), "score": np.float32(0.25)})
    resumed.finish(attrs={"stage": "tsa_cache", "prompts": {"disk": "a disk"}},
                   datasets={"class_names": np.array(["disk", "star"])})
    assert not path.with_name("cache.h5.staging").exists()

    with H5Reader(path) as r:
        assert list(r.keys()) == ["disk/0000", "star/0003"]
        assert np.array_equal(r.record("disk/0000")["image"], np.arange(12, dtype=np.uint8).reshape(2, 2, 3))
        assert r.attrs["stage"] == "tsa_cache" and r.attrs["key"] == "k1"
        assert [s.decode() for s in r.dataset("class_names")] == ["disk", "star"]
    with h5py.File(path) as f:  # readable with h5py alone
        assert f["records/star/0003/score"][()] == np.float32(0.25)

    other = H5Writer(path, key="k2")  # another key: the staged records of k1 are not reused
    assert other.keys() == []


def test_h5_record_keys_must_be_relative(tmp_path):
    from pipeline.store.h5_store import H5Writer

    with pytest.raises(ValueError, match="relative name"):
        H5Writer(tmp_path / "c.h5", key="k").put("../x", {"a": np.zeros(1)})


# ------------------------------------------------------------------ checkpoints
def test_checkpoints_keep_the_newest_and_resume_only_their_own_key(tmp_path):
    import torch

    from pipeline.store.checkpoints import CheckpointStore

    store = CheckpointStore(tmp_path / "ckpt", key="run-a", keep=2)
    assert store.latest() is None
    for step in (10, 20, 30):
        store.save(step, {"w": torch.full((2,), float(step))})
    (tmp_path / "ckpt" / ".step_000000040.pt.999.tmp").write_bytes(b"torn")  # a kill mid-save
    assert store.steps() == [20, 30]
    step, state = store.latest()
    assert step == 30 and state["w"].tolist() == [30.0, 30.0]
    assert CheckpointStore(tmp_path / "ckpt", key="run-b").latest() is None


# ------------------------------------------------------------------ aligned inputs
def test_aligned_inputs_give_rows_by_id_and_refuse_a_store_rewritten_mid_run(tmp_path):
    from pipeline.store.aligned import AlignedInputs

    store = create(tmp_path / "in.zarr", ids=IDS[:2], key="k1")
    for i in range(2):
        store.stage_image(i, {"m": np.full((2, 2), i + 1)}, b"d")
    store.pack_block(store.blocks()[0])
    store.mark_complete({"fingerprint": "fp1"})
    inputs = AlignedInputs.of({"prev": tmp_path / "in.zarr"})
    assert inputs.fingerprints == {"prev": "fp1"}
    assert inputs.row("a1")["prev"]["m"].tolist() == [[2, 2], [2, 2]]
    with pytest.raises(StoreError, match="image 'zz' is not in this input store"):
        inputs.row("zz")
    ImageStore(tmp_path / "in.zarr", writable=True).mark_complete({"fingerprint": "fp2"})  # rewritten by a rerun
    stale = AlignedInputs((("prev", str(tmp_path / "in.zarr"), "fp-old"),))
    with pytest.raises(StoreError, match="changed while this stage ran"):
        stale.row("a0")
    incomplete = create(tmp_path / "half.zarr", key="k1")
    with pytest.raises(StoreError, match="incomplete"):
        AlignedInputs.of({"half": incomplete.path})

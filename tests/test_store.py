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
    assert store.read("m", 1).tolist() == [[7, 7], [7, 7]]
    assert not store.path.with_name("s.zarr.staging").exists() or not list(store.path.with_name("s.zarr.staging").glob("*.npz"))
    # the stored input digests decide the resume: the first block's rows are reused for unchanged inputs
    digests = {image_id: b"d%d" % i for i, image_id in enumerate(IDS)}
    assert store.resume(digests.__getitem__).rows == [2, 3, 4]


def test_packing_a_block_holds_one_arrays_block_at_a_time(tmp_path):
    """What packing takes grows with a shard's images times one array's bytes, not every array's twice over
    (stage A packs R, P's values and P's indices; at SD's size a 4,096-image shard of P's values is 0.8 GB)."""
    import tracemalloc

    n, shape = 64, (64, 256)  # 32 KiB per image per array, 2 MiB per array's block
    specs = (ArraySpec("a", shape, "float16"), ArraySpec("b", shape, "float16"), ArraySpec("c", shape, "float16"))
    store = create(tmp_path / "s.zarr", ids=[f"i{i}" for i in range(n)], specs=specs, shard=n)
    rng = np.random.default_rng(0)
    rows = {i: {name: rng.standard_normal(shape).astype("float16") for name in "abc"} for i in range(n)}
    for i, values in rows.items():
        store.stage_image(i, values, b"d%d" % i)
    tracemalloc.start()
    assert store.pack_block(store.blocks()[0]) == n
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    one_block = n * 64 * 256 * 2
    # one array's block, its compressed chunks and the shard zarr encodes them into: 3.0x (incompressible noise);
    # holding the staged rows and every array's block took 8.0x
    assert peak < 4 * one_block, peak / one_block
    assert all(np.array_equal(store.read(name, i), rows[i][name]) for i in (0, 17, n - 1) for name in "abc")
    assert store.done().all()


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


def test_a_complete_store_of_the_same_key_is_reused_and_a_changed_input_reopens_its_row(tmp_path):
    store = create(tmp_path / "s.zarr", ids=IDS[:2])
    write_first_block(store)
    store.mark_complete()
    assert ImageStore.open(tmp_path / "s.zarr", stage="s").attrs["complete"]
    again = create(tmp_path / "s.zarr", ids=IDS[:2])
    assert again.done().all()
    assert again.resume({"a0": b"d0", "a1": b"d1"}.__getitem__).rows == []  # nothing changed: nothing pending
    pending = again.resume({"a0": b"d0", "a1": b"changed"}.__getitem__)
    assert pending.rows == [1] and pending.reused == 1
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
    store.stage_image(2, {"m": np.full((2, 2), 6, "float16")}, b"y")
    values, digest = store.load_staged(3)
    assert values["m"].tolist() == [[5, 5], [5, 5]] and digest.rstrip(b"\0") == b"x"
    staging = store.path.with_name("s.zarr.staging")
    (staging / "4.npz").write_bytes(b"PK\x03\x04 torn")
    (staging / ".1.12345.tmp").write_bytes(b"half a write")  # what a kill mid-write leaves
    assert store.load_staged(4) is None
    # resuming: a staged row with the same inputs is kept (and its now-whole block packed), one staged from
    # other inputs and a torn one are computed again, the temporary file is not a row
    pending = store.resume({"a0": b"", "a1": b"", "a2": b"y", "a3": b"other", "a4": b"z"}.__getitem__)
    assert pending.rows == [0, 1, 3, 4] and pending.reused == 1
    assert store.load_staged(3) is None and store.load_staged(4) is None and store.load_staged(2) is not None
    assert [pending.finished(r) for r in (0, 1, 3)] == [None, range(0, 2), range(2, 4)]


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


# ------------------------------------------------------------------ checksums
def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("shard", [1, 4])
def test_a_flipped_byte_in_a_stored_chunk_is_refused_naming_the_store_and_the_image(tmp_path, shard):
    """Every chunk carries a crc32c: a bit flipped on disk is an error naming the store and the image, never
    wrong values read silently; the other images still read."""
    import struct

    ids = [f"img{i}" for i in range(6)]
    store = create(tmp_path / "s.zarr", ids=ids, shard=shard)
    for i in range(6):
        store.stage_image(i, {"m": np.full((2, 2), i + 0.5)}, b"d")
    for block in store.blocks():
        store.pack_block(block)
    store.mark_complete()
    if shard == 1:  # one file per chunk: flip a byte of image 3's
        _flip(tmp_path / "s.zarr" / "m" / "c" / "3" / "0" / "0", 2)
    else:  # a shard holds images 0-3: its index (at the end) says where image 3's bytes lie
        shard_file = tmp_path / "s.zarr" / "m" / "c" / "0" / "0" / "0"
        raw = shard_file.read_bytes()
        offset, _ = struct.unpack("<QQ", raw[-(4 * 16 + 4):][3 * 16:4 * 16])
        _flip(shard_file, offset + 2)
    reader = ImageStore.open(tmp_path / "s.zarr")
    assert reader.read("m", 2).tolist() == [[2.5, 2.5], [2.5, 2.5]]
    with pytest.raises(StoreError, match=rf"s.zarr: image 'img3': array 'm' is corrupt on disk .*checksum"):
        reader.read("m", 3)
    with pytest.raises(StoreError, match=r"image 'img3': array 'm' is corrupt"):
        reader.read("m")  # a whole-array read names the first corrupt image


def test_a_flipped_byte_in_an_hdf5_record_is_refused_naming_the_file_and_the_record(tmp_path):
    from pipeline.store.h5_store import H5Reader, H5Writer

    writer = H5Writer(tmp_path / "c.h5", key="k")
    writer.put("disk/00000", {"image": np.arange(4096, dtype=np.uint8).reshape(64, 64)})
    writer.put("disk/00001", {"image": np.ones((64, 64), np.uint8)})
    writer.finish(attrs={"stage": "s"})
    with H5Reader(tmp_path / "c.h5") as reader:
        offset = reader._file["records/disk/00000/image"].id.get_chunk_info(0).byte_offset  # its one chunk
    _flip(tmp_path / "c.h5", offset + 5)
    with H5Reader(tmp_path / "c.h5") as reader:
        assert reader.record("disk/00001")["image"].sum() == 4096
        with pytest.raises(StoreError, match=r"c.h5: record 'disk/00000' is corrupt"):
            reader.record("disk/00000")

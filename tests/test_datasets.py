"""Dataset readers: layouts, round trips, labels, digests, and one test per bad-data case."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline.data.class_names import COCO_CLASSES, VOC_CLASSES
from pipeline.data.datasets import (
    DatasetError,
    ImageRecord,
    SegmentationDataset,
    list_dataset_kinds,
    open_dataset,
)
from tests.datasets_factory import (
    COCO_SPLITS,
    FOLDER_CLASSES,
    VOC_SPLITS,
    banded_mask,
    build_coco,
    build_folder,
    build_voc,
    pattern_image,
    replace_with_link,
    write_image,
    write_mask,
    write_split,
)


def _assert_jpeg_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape and actual.dtype == np.uint8
    error = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    assert error.mean() < 2, error.mean()
    assert np.percentile(error, 99) < 10


def _message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    """The message, checked to be one line without object reprs such as ``<_io.BytesIO ...>``."""
    message = str(excinfo.value)
    assert "\n" not in message and " object at 0x" not in message, message
    return message


def _mode(path: Path) -> str:
    with Image.open(path) as image:
        return image.mode


# --------------------------------------------------------------------------- constants, kinds


def test_class_name_constants():
    assert len(VOC_CLASSES) == 20 and len(set(VOC_CLASSES)) == 20
    assert (VOC_CLASSES[0], VOC_CLASSES[14], VOC_CLASSES[-1]) == ("aeroplane", "person", "tvmonitor")
    assert len(COCO_CLASSES) == 80 and len(set(COCO_CLASSES)) == 80
    assert (COCO_CLASSES[0], COCO_CLASSES[1], COCO_CLASSES[-1]) == ("person", "bicycle", "toothbrush")
    assert COCO_CLASSES[62] == "tv" and COCO_CLASSES[79 - 1] == "hair drier"


def test_list_dataset_kinds():
    assert list_dataset_kinds() == ("coco", "folder", "voc")


# --------------------------------------------------------------------------- VOC


@pytest.mark.parametrize("mask_folder", ["SegmentationClassAug", "SegmentationClass"])
def test_voc_reads_split_in_file_order_and_round_trips(tmp_path, mask_folder):
    samples = build_voc(tmp_path, mask_folder=mask_folder)
    ds = open_dataset("voc", tmp_path, "train")
    assert ds.kind == "voc" and ds.split == "train" and ds.root == tmp_path.absolute()
    assert ds.ids == tuple(reversed(VOC_SPLITS["train"]))
    assert len(ds) == 3
    assert ds.class_names == VOC_CLASSES and ds.num_classes == 20
    for image_id in ds.ids:
        assert ds.image_path(image_id) == tmp_path / "JPEGImages" / f"{image_id}.jpg"
        assert ds.mask_path(image_id) == tmp_path / mask_folder / f"{image_id}.png"
        _assert_jpeg_close(ds.load_image(image_id), samples[image_id].image)
        mask = ds.load_mask(image_id)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, samples[image_id].mask)


def test_voc_prefers_segmentation_class_aug(tmp_path):
    build_voc(tmp_path, mask_folder="SegmentationClassAug")
    # A SegmentationClass folder with different content must be ignored.
    for image_id in VOC_SPLITS["train"]:
        write_mask(tmp_path / "SegmentationClass" / f"{image_id}.png", banded_mask(24, 40, (0, 9)))
    ds = open_dataset("voc", tmp_path, "train")
    assert ds.mask_path("2007_000039").parent.name == "SegmentationClassAug"
    assert set(np.unique(ds.load_mask("2007_000039"))) == {0, 3, 255}


def test_voc_labels_from_planted_values(tmp_path):
    build_voc(tmp_path)
    ds = open_dataset("voc", tmp_path, "train")
    labels = ds.labels("2007_000039")  # mask values {0, 3, 255}
    assert labels.dtype == np.uint8 and labels.shape == (20,)
    assert np.flatnonzero(labels).tolist() == [2]
    assert np.flatnonzero(ds.labels("2008_000002")).tolist() == [14, 19]  # {0, 15, 20}


def test_voc_validate_record(tmp_path):
    samples = build_voc(tmp_path)
    ds = open_dataset("voc", tmp_path, "val")
    assert ds.ids == ("2007_000123", "2007_000121")
    record = ds.validate("2007_000121")
    assert isinstance(record, ImageRecord)
    assert (record.image_id, record.height, record.width) == ("2007_000121", 24, 40)
    assert np.flatnonzero(record.labels).tolist() == [6]
    assert len(record.digest) == 32
    assert not record.labels.flags.writeable
    empty = ds.validate("2007_000123")  # only background and ignore
    assert empty.labels.sum() == 0
    assert record == ds.validate("2007_000121") and record != empty
    assert hash(record) == hash(ds.validate("2007_000121"))
    assert samples["2007_000121"].mask.shape == (record.height, record.width)


def test_voc_palette_indices_not_colours(tmp_path):
    build_voc(tmp_path)
    ds = open_dataset("voc", tmp_path, "train")
    assert _mode(ds.mask_path("2007_000032")) == "P"  # the factory writes real palette PNGs
    assert set(np.unique(ds.load_mask("2007_000032"))) == {0, 1, 255}


def test_voc_grayscale_mask_accepted(tmp_path):
    build_voc(tmp_path)
    write_mask(tmp_path / "SegmentationClassAug" / "2007_000032.png", banded_mask(24, 40, (0, 5, 255)), palette=False)
    ds = open_dataset("voc", tmp_path, "train")
    assert _mode(ds.mask_path("2007_000032")) == "L"
    assert np.flatnonzero(ds.validate("2007_000032").labels).tolist() == [4]


def test_voc_train_aug_two_column_list_and_segmentation_aug_dir(tmp_path):
    build_voc(tmp_path)
    lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in ("2007_000039", "2007_000032")]
    write_split(tmp_path, "train_aug", lines, split_dir="ImageSets/SegmentationAug")
    ds = open_dataset("voc", tmp_path, "train_aug")
    assert ds.ids == ("2007_000039", "2007_000032")
    assert ds.validate("2007_000039").image_id == "2007_000039"


def test_voc_split_list_blank_lines_crlf_and_bom(tmp_path):
    build_voc(tmp_path)
    path = tmp_path / "ImageSets" / "Segmentation" / "train.txt"
    path.write_bytes("\ufeff2007_000032\r\n\r\n  2007_000039  \r\n".encode("utf-8"))
    assert open_dataset("voc", tmp_path, "train").ids == ("2007_000032", "2007_000039")


def test_digest_changes_with_image_or_mask(tmp_path):
    samples = build_voc(tmp_path)
    ds = open_dataset("voc", tmp_path, "train")
    before = ds.validate("2007_000032").digest
    assert ds.validate("2007_000032").digest == before  # deterministic
    assert ds.validate("2007_000039").digest != before
    write_mask(samples["2007_000032"].mask_path, banded_mask(24, 40, (0, 2, 255)))
    after_mask = ds.validate("2007_000032").digest
    assert after_mask != before
    write_image(samples["2007_000032"].image_path, pattern_image(24, 40, seed=99))
    assert ds.validate("2007_000032").digest not in (before, after_mask)


def test_dataset_pickles_for_parallel_validate(tmp_path):
    build_voc(tmp_path)
    ds = open_dataset("voc", tmp_path, "train")
    clone = pickle.loads(pickle.dumps(ds))
    assert clone == ds and clone.ids == ds.ids
    assert clone.validate("2007_000039") == ds.validate("2007_000039")
    assert "images=3" in repr(ds) and "2007_000039" not in repr(ds)


def test_open_is_cheap_bad_images_only_fail_in_validate(tmp_path):
    build_voc(tmp_path)
    (tmp_path / "JPEGImages" / "2007_000039.jpg").unlink()
    ds = open_dataset("voc", tmp_path, "train")  # does not touch images
    assert len(ds) == 3
    ds.validate("2007_000032")
    with pytest.raises(DatasetError):
        ds.validate("2007_000039")


def test_voc_class_names_file_overrides(tmp_path):
    build_voc(tmp_path)
    names = tmp_path / "names.txt"
    names.write_text("".join(f"{name} thing\n" for name in VOC_CLASSES))
    ds = open_dataset("voc", tmp_path, "train", class_names_file=str(names))
    assert ds.class_names[0] == "aeroplane thing" and ds.num_classes == 20


# --------------------------------------------------------------------------- COCO


@pytest.mark.parametrize("split_lists", [True, False])
def test_coco_layout(tmp_path, split_lists):
    samples = build_coco(tmp_path, split_lists=split_lists)
    ds = open_dataset("coco", tmp_path, "train")
    ordered = sorted(COCO_SPLITS["train2014"], reverse=split_lists)
    assert ds.ids == tuple(ordered)
    assert ds.class_names == COCO_CLASSES and ds.num_classes == 80
    image_id = "COCO_train2014_000000000009"
    assert ds.image_path(image_id) == tmp_path / "JPEGImages" / "train2014" / f"{image_id}.jpg"
    assert ds.mask_path(image_id) == tmp_path / "SegmentationClass" / "train2014" / f"{image_id}.png"
    _assert_jpeg_close(ds.load_image(image_id), samples[image_id].image)
    record = ds.validate(image_id)  # values {0, 1, 80}
    assert record.labels.shape == (80,)
    assert np.flatnonzero(record.labels).tolist() == [0, 79]
    assert ds.validate("COCO_train2014_000000000030").labels.sum() == 0

    val = open_dataset("coco", tmp_path, "val")
    assert set(val.ids) == set(COCO_SPLITS["val2014"])
    assert val.image_path(val.ids[0]).parent.name == "val2014"
    assert np.flatnonzero(val.labels("COCO_val2014_000000000073")).tolist() == [3]


def test_coco_listing_ignores_other_files(tmp_path):
    build_coco(tmp_path, split_lists=False)
    folder = tmp_path / "JPEGImages" / "val2014"
    (folder / "notes.txt").write_text("x")
    (folder / ".hidden.jpg").write_bytes(b"")
    (folder / "sub.jpg").mkdir()
    assert open_dataset("coco", tmp_path, "val").ids == tuple(sorted(COCO_SPLITS["val2014"]))


# --------------------------------------------------------------------------- folder


def test_folder_layout_and_exact_png_round_trip(tmp_path):
    samples = build_folder(tmp_path)
    ds = open_dataset("folder", tmp_path, "train")
    assert ds.class_names == FOLDER_CLASSES and ds.num_classes == 3
    assert ds.ids == ("shape_0000", "shape_0001", "shape_0002", "shape_0003")
    assert [ds.image_path(i).suffix for i in ds.ids] == [".png", ".png", ".jpeg", ".jpg"]
    np.testing.assert_array_equal(ds.load_image("shape_0000"), samples["shape_0000"].image)
    _assert_jpeg_close(ds.load_image("shape_0002"), samples["shape_0002"].image)
    assert np.flatnonzero(ds.labels("shape_0001")).tolist() == [2]  # {0, 3, 255}
    assert np.flatnonzero(ds.validate("shape_0000").labels).tolist() == [0, 1]


def test_folder_image_suffix_priority(tmp_path):
    build_folder(tmp_path)
    # shape_0000 has a .png; a .jpg beside it wins (order .jpg, .jpeg, .png).
    write_image(tmp_path / "JPEGImages" / "shape_0000.jpg", pattern_image(24, 40, seed=5))
    ds = open_dataset("folder", tmp_path, "train")
    assert ds.image_path("shape_0000").name == "shape_0000.jpg"


def test_folder_class_names_file_elsewhere(tmp_path):
    build_folder(tmp_path / "data", class_names=None)
    names = tmp_path / "my_names.txt"
    names.write_text("red\ngreen\nblue\n\n\n")  # trailing blank lines are fine
    ds = open_dataset("folder", tmp_path / "data", "train", class_names_file=names)
    assert ds.class_names == ("red", "green", "blue")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("L", lambda rgb: np.repeat(rgb[..., :1], 3, axis=2)),
        ("RGBA", lambda rgb: rgb),
        ("CMYK", None),
    ],
)
def test_image_modes_converted_to_rgb(tmp_path, mode, expected):
    build_folder(tmp_path)
    rgb = np.zeros((24, 40, 3), dtype=np.uint8)
    rgb[:, :20] = (200, 50, 100)
    rgb[:, 20:] = (10, 220, 30)
    if mode == "L":
        rgb[..., 1:] = rgb[..., :1]
    path = tmp_path / "JPEGImages" / ("shape_0003.jpg" if mode == "CMYK" else "shape_0000.png")
    if mode == "CMYK":
        Image.fromarray(rgb).convert("CMYK").save(path, format="JPEG", quality=95)
    elif mode == "RGBA":
        Image.fromarray(np.dstack([rgb, np.full((24, 40), 7, np.uint8)]), mode="RGBA").save(path)
    else:
        Image.fromarray(rgb[..., 0]).save(path)
    assert _mode(path) == mode
    ds = open_dataset("folder", tmp_path, "train")
    image = ds.load_image(path.stem)
    assert image.shape == (24, 40, 3) and image.dtype == np.uint8
    if expected is None:
        _assert_jpeg_close(image, rgb)
    else:
        np.testing.assert_array_equal(image, expected(rgb))


# --------------------------------------------------------------------------- bad data: opening


def test_unknown_kind_names_valid_kinds(tmp_path):
    with pytest.raises(DatasetError) as excinfo:
        open_dataset("cityscapes", tmp_path, "train")
    message = _message(excinfo)
    assert "cityscapes" in message and all(kind in message for kind in ("voc", "coco", "folder"))


def test_missing_root(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=re.escape(str(missing))):
        open_dataset("voc", missing, "train")


def test_root_is_a_file(tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(DatasetError) as excinfo:
        open_dataset("folder", file, "train")
    assert str(file) in _message(excinfo) and "not a directory" in _message(excinfo)


def test_missing_image_folder(tmp_path):
    build_voc(tmp_path)
    (tmp_path / "JPEGImages").rename(tmp_path / "Images")
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "JPEGImages"))):
        open_dataset("voc", tmp_path, "train")


def test_missing_mask_folder(tmp_path):
    build_voc(tmp_path, mask_folder="SegmentationClass")
    (tmp_path / "SegmentationClass").rename(tmp_path / "Masks")
    with pytest.raises(DatasetError) as excinfo:
        open_dataset("voc", tmp_path, "train")
    assert str(tmp_path / "SegmentationClass") in _message(excinfo)
    assert str(tmp_path / "SegmentationClassAug") in _message(excinfo)


def test_coco_missing_split_subfolder(tmp_path):
    build_coco(tmp_path, split_lists=False)
    (tmp_path / "SegmentationClass" / "val2014").rename(tmp_path / "SegmentationClass" / "val")
    open_dataset("coco", tmp_path, "train")  # train is intact
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "SegmentationClass" / "val2014"))):
        open_dataset("coco", tmp_path, "val")


def test_unknown_split_names_split_file(tmp_path):
    build_voc(tmp_path)
    with pytest.raises(DatasetError) as excinfo:
        open_dataset("voc", tmp_path, "trainval")
    message = _message(excinfo)
    assert "trainval" in message
    assert str(tmp_path / "ImageSets" / "Segmentation" / "trainval.txt") in message


def test_unknown_split_folder_kind(tmp_path):
    build_folder(tmp_path)
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "ImageSets" / "Segmentation" / "val.txt"))):
        open_dataset("folder", tmp_path, "val")


def test_coco_unknown_split_names_valid_splits(tmp_path):
    build_coco(tmp_path, split_lists=True)
    with pytest.raises(DatasetError) as excinfo:
        open_dataset("coco", tmp_path, "test")
    message = _message(excinfo)
    assert "'test'" in message and "train2014" in message and "val2014" in message


def test_coco_empty_image_folder_without_split_list(tmp_path):
    build_coco(tmp_path, split_lists=False)
    for path in (tmp_path / "JPEGImages" / "val2014").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "JPEGImages" / "val2014"))):
        open_dataset("coco", tmp_path, "val")


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_empty_split_list(tmp_path, content):
    build_voc(tmp_path)
    path = tmp_path / "ImageSets" / "Segmentation" / "train.txt"
    path.write_text(content)
    with pytest.raises(DatasetError) as excinfo:
        open_dataset("voc", tmp_path, "train")
    assert str(path) in _message(excinfo) and "empty" in _message(excinfo)


def test_duplicated_id_in_split_list(tmp_path):
    build_voc(tmp_path)
    path = write_split(tmp_path, "train", ["2007_000032", "2007_000039", "2007_000032"])
    with pytest.raises(DatasetError) as excinfo:
        open_dataset("voc", tmp_path, "train")
    message = _message(excinfo)
    assert str(path) in message and "'2007_000032'" in message and "lines 1 and 3" in message


def test_coco_duplicated_id_in_split_list(tmp_path):
    build_coco(tmp_path, split_lists=True)
    path = write_split(tmp_path, "val", ["COCO_val2014_000000000042"] * 2)
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        open_dataset("coco", tmp_path, "val")


# --------------------------------------------------------------------------- bad data: class names


def test_folder_class_names_missing(tmp_path):
    build_folder(tmp_path, class_names=None)
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "class_names.txt"))):
        open_dataset("folder", tmp_path, "train")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "empty"),
        ("\n \n", "empty"),
        ("square\ncircle\nsquare\n", "'square' (lines 1 and 3)"),
        ("square\n\ncircle\n", "blank lines [2]"),
        ("background\nsquare\n", "foreground classes only"),
    ],
)
def test_folder_class_names_bad(tmp_path, content, expected):
    build_folder(tmp_path)
    path = tmp_path / "class_names.txt"
    path.write_text(content)
    with pytest.raises(DatasetError) as excinfo:
        open_dataset("folder", tmp_path, "train")
    assert str(path) in _message(excinfo) and expected in _message(excinfo)


def test_class_names_too_many(tmp_path):
    build_folder(tmp_path)
    (tmp_path / "class_names.txt").write_text("".join(f"c{i}\n" for i in range(255)))
    with pytest.raises(DatasetError, match="at most 254"):
        open_dataset("folder", tmp_path, "train")


# --------------------------------------------------------------------------- bad data: per image


def test_id_without_image_names_id_and_paths(tmp_path):
    build_voc(tmp_path)
    write_split(tmp_path, "train", ["2007_000032", "2099_999999"])
    ds = open_dataset("voc", tmp_path, "train")
    with pytest.raises(DatasetError) as excinfo:
        ds.validate("2099_999999")
    message = _message(excinfo)
    assert "'2099_999999'" in message and str(tmp_path / "JPEGImages" / "2099_999999.jpg") in message
    with pytest.raises(DatasetError, match="2099_999999"):
        ds.load_image("2099_999999")


def test_folder_id_without_image_names_every_suffix_tried(tmp_path):
    build_folder(tmp_path)
    (tmp_path / "JPEGImages" / "shape_0001.png").unlink()
    ds = open_dataset("folder", tmp_path, "train")
    with pytest.raises(DatasetError) as excinfo:
        ds.validate("shape_0001")
    for suffix in (".jpg", ".jpeg", ".png"):
        assert str(tmp_path / "JPEGImages" / f"shape_0001{suffix}") in _message(excinfo)


def test_missing_mask(tmp_path):
    samples = build_voc(tmp_path)
    samples["2007_000039"].mask_path.unlink()
    ds = open_dataset("voc", tmp_path, "train")
    for call in (ds.validate, ds.load_mask, ds.labels):
        with pytest.raises(DatasetError) as excinfo:
            call("2007_000039")
        message = _message(excinfo)
        assert "'2007_000039'" in message and str(samples["2007_000039"].mask_path) in message
        assert "SegmentationClassAug/ because that folder exists" in message


def test_truncated_jpeg(tmp_path):
    samples = build_voc(tmp_path)
    path = samples["2007_000032"].image_path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = open_dataset("voc", tmp_path, "train")
    for call in (ds.validate, ds.load_image):
        with pytest.raises(DatasetError) as excinfo:
            call("2007_000032")
        assert str(path) in _message(excinfo) and "truncated" in _message(excinfo)


def test_text_file_named_jpg(tmp_path):
    samples = build_voc(tmp_path)
    path = samples["2007_000039"].image_path
    path.write_text("this is not a JPEG\n")
    ds = open_dataset("voc", tmp_path, "train")
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        ds.validate("2007_000039")


def test_truncated_png_mask(tmp_path):
    samples = build_folder(tmp_path)
    path = samples["shape_0000"].mask_path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])
    ds = open_dataset("folder", tmp_path, "train")
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        ds.validate("shape_0000")


def test_load_truncated_images_flag_refused(tmp_path, monkeypatch):
    samples = build_voc(tmp_path)
    path = samples["2007_000032"].image_path
    path.write_bytes(path.read_bytes()[:400])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    ds = open_dataset("voc", tmp_path, "train")
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        ds.validate("2007_000032")


def test_mask_values_out_of_range(tmp_path):
    samples = build_folder(tmp_path)  # 3 classes: allowed 0..3 and 255
    path = samples["shape_0002"].mask_path
    write_mask(path, banded_mask(24, 40, (0, 2, 4, 200, 255)))
    ds = open_dataset("folder", tmp_path, "train")
    for call in (ds.validate, ds.labels):
        with pytest.raises(DatasetError) as excinfo:
            call("shape_0002")
        message = _message(excinfo)
        assert str(path) in message and "[4, 200]" in message and "0..3" in message


def test_voc_mask_value_21_out_of_range(tmp_path):
    samples = build_voc(tmp_path)
    write_mask(samples["2007_000032"].mask_path, banded_mask(24, 40, (0, 21)))
    ds = open_dataset("voc", tmp_path, "train")
    with pytest.raises(DatasetError, match=r"\[21\].*0\.\.20"):
        ds.validate("2007_000032")


def test_rgb_mask_rejected(tmp_path):
    samples = build_voc(tmp_path)
    path = samples["2007_000032"].mask_path
    with Image.open(path) as mask:
        mask.convert("RGB").save(path)
    ds = open_dataset("voc", tmp_path, "train")
    with pytest.raises(DatasetError) as excinfo:
        ds.load_mask("2007_000032")
    assert str(path) in _message(excinfo) and "'RGB'" in _message(excinfo)


def test_image_mask_size_mismatch(tmp_path):
    samples = build_voc(tmp_path)
    write_mask(samples["2007_000039"].mask_path, banded_mask(20, 40, (0, 3)))
    ds = open_dataset("voc", tmp_path, "train")
    with pytest.raises(DatasetError) as excinfo:
        ds.validate("2007_000039")
    message = _message(excinfo)
    assert "'2007_000039'" in message and "40x24" in message and "40x20" in message
    assert str(samples["2007_000039"].image_path) in message
    assert str(samples["2007_000039"].mask_path) in message


def test_errors_are_value_errors():
    assert issubclass(DatasetError, ValueError)
    assert SegmentationDataset.__dataclass_params__.frozen


# --------------------------------------------------------------------------- hostile split lists


@pytest.mark.parametrize("kind", ["voc", "folder"])
def test_split_line_with_space_refused_even_when_first_word_is_an_image(tmp_path, kind):
    build_voc(tmp_path) if kind == "voc" else build_folder(tmp_path)
    write_image(tmp_path / "JPEGImages" / "shot.jpg", pattern_image(24, 40, seed=3))
    write_mask(tmp_path / "SegmentationClassAug" / "shot.png", banded_mask(24, 40, (0, 1)))
    write_mask(tmp_path / "SegmentationClass" / "shot.png", banded_mask(24, 40, (0, 1)))
    path = write_split(tmp_path, "train", ["shot", "", "shot 2"])
    with pytest.raises(DatasetError) as excinfo:  # was: id 'shot' twice, or 'shot' used for 'shot 2'
        open_dataset(kind, tmp_path, "train")
    message = _one_line_error(excinfo)
    assert str(path) in message and "line 3" in message and "'shot 2'" in message
    assert "whitespace" in message


@pytest.mark.parametrize("line", ["img 001", "  img 001 ", "img\t001", "img\xa0001", "img\x0c001", "img\u2028001"])
def test_split_line_with_whitespace_inside_names_the_line_not_its_first_word(tmp_path, line):
    build_voc(tmp_path)
    path = tmp_path / "ImageSets" / "Segmentation" / "train.txt"
    path.write_text(f"2007_000032\r\n\r\n{line}\r\n2007_000039\r\n", encoding="utf-8")
    with pytest.raises(DatasetError) as excinfo:
        open_dataset("voc", tmp_path, "train")
    message = _one_line_error(excinfo)
    assert str(path) in message and "line 3:" in message and repr(line) in message
    assert "'img'" not in message


def test_coco_split_line_with_space_refused(tmp_path):
    build_coco(tmp_path, split_lists=True)
    path = write_split(tmp_path, "val", ["COCO_val2014_000000000042", "COCO_val2014_000000000073 copy"])
    with pytest.raises(DatasetError) as excinfo:
        open_dataset("coco", tmp_path, "val")
    message = _one_line_error(excinfo)
    assert str(path) in message and "line 2" in message and "'COCO_val2014_000000000073 copy'" in message


@pytest.mark.parametrize(
    "line",
    [
        "JPEGImages/2007_000032.jpg\tSegmentationClassAug/2007_000032.png",  # no leading /, tab
        "  /JPEGImages/2007_000032.jpg   /SegmentationClass/2007_000032.png  ",
        "\\JPEGImages\\2007_000032.jpg \\SegmentationClassAug\\2007_000032.png",
    ],
)
def test_train_aug_two_column_variants_still_read(tmp_path, line):
    build_voc(tmp_path)
    write_split(tmp_path, "train_aug", [line, "/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png"])
    ds = open_dataset("voc", tmp_path, "train_aug")
    assert ds.ids == ("2007_000032", "2007_000039")
    assert ds.validate("2007_000032").image_id == "2007_000032"


@pytest.mark.parametrize(
    "line",
    [
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000039.png",  # columns disagree
        "2007_000032.jpg 2007_000032.png",  # no folders: not the train_aug form
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png extra",
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.jpg",  # mask not .png
        "/JPEGImages/my shot.jpg /SegmentationClassAug/my shot.png",
    ],
)
def test_two_column_lines_other_than_train_aug_refused(tmp_path, line):
    build_voc(tmp_path)
    path = write_split(tmp_path, "train_aug", ["2007_000039", line], split_dir="ImageSets/SegmentationAug")
    with pytest.raises(DatasetError) as excinfo:
        open_dataset("voc", tmp_path, "train_aug")
    message = _one_line_error(excinfo)
    assert str(path) in message and "line 2" in message and repr(line) in message
    assert "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png" in message


def test_class_names_split_only_at_line_ends(tmp_path):
    build_folder(tmp_path)
    # U+2028 / NEL inside a name must not shift the later names to other mask values.
    (tmp_path / "class_names.txt").write_text("square\ncir\u2028cle\r\ntri\x85angle\n", encoding="utf-8")
    ds = open_dataset("folder", tmp_path, "train")
    assert ds.class_names == ("square", "cir\u2028cle", "tri\x85angle")


# --------------------------------------------------------------------------- hostile image files


@pytest.mark.parametrize("content", [b"this is not a JPEG\n", b""])
def test_text_file_named_jpg_message(tmp_path, content):
    samples = build_voc(tmp_path)
    path = samples["2007_000039"].image_path
    path.write_bytes(content)
    ds = open_dataset("voc", tmp_path, "train")
    for call in (ds.validate, ds.load_image):
        with pytest.raises(DatasetError) as excinfo:
            call("2007_000039")
        message = _one_line_error(excinfo)
        assert message.startswith(f"image {path} is not a readable image: ")
        if content:
            assert "UnidentifiedImageError: cannot identify image file" in message
            assert "starts with b'this is not a JPEG\\n'" in message
        else:
            assert "empty (0 bytes)" in message


def test_text_file_named_png_mask_message(tmp_path):
    samples = build_folder(tmp_path)
    path = samples["shape_0001"].mask_path
    path.write_text("<html>404 Not Found</html>\n")
    ds = open_dataset("folder", tmp_path, "train")
    for call in (ds.validate, ds.load_mask, ds.labels):
        with pytest.raises(DatasetError) as excinfo:
            call("shape_0001")
        message = _one_line_error(excinfo)
        assert message.startswith(f"mask {path} is not a readable image: PIL reported ")
        assert "cannot identify image file" in message and "b'<html>404" in message


def test_truncated_files_message_has_no_object_repr(tmp_path):
    samples = build_folder(tmp_path)
    for sample in (samples["shape_0000"], samples["shape_0003"]):
        for path in (sample.image_path, sample.mask_path):
            path.write_bytes(path.read_bytes()[:-30])
    ds = open_dataset("folder", tmp_path, "train")
    for image_id in ("shape_0000", "shape_0003"):  # PNG and JPEG
        path = samples[image_id].image_path
        with pytest.raises(DatasetError) as excinfo:
            ds.load_image(image_id)
        message = _one_line_error(excinfo)
        assert str(path) in message and "not a readable image (corrupt or truncated)" in message
    with pytest.raises(DatasetError) as excinfo:
        ds.load_mask("shape_0000")
    assert _one_line_error(excinfo).startswith(f"mask {samples['shape_0000'].mask_path} is not a readable image")


# --------------------------------------------------------------------------- broken symbolic links


def test_broken_image_link_named_with_target(tmp_path):
    samples = build_voc(tmp_path)
    target = tmp_path / "dvc-cache" / "ab" / "cdef"
    path = replace_with_link(samples["2007_000039"].image_path, target)
    ds = open_dataset("voc", tmp_path, "train")
    for call in (ds.validate, ds.load_image, ds.image_path):
        with pytest.raises(DatasetError) as excinfo:
            call("2007_000039")
        message = _one_line_error(excinfo)
        assert message == (
            f"image id '2007_000039': image {path} is a broken symbolic link to {target} "
            "(No such file or directory)"
        )


def test_broken_mask_link_relative_target(tmp_path):
    samples = build_voc(tmp_path)
    path = replace_with_link(samples["2007_000032"].mask_path, "../cache/gone.png")
    ds = open_dataset("voc", tmp_path, "train")
    for call in (ds.validate, ds.load_mask, ds.labels, ds.mask_path):
        with pytest.raises(DatasetError) as excinfo:
            call("2007_000032")
        message = _one_line_error(excinfo)
        assert f"image id '2007_000032': mask {path} is a broken symbolic link" in message
        assert f"../cache/gone.png (= {tmp_path / 'cache' / 'gone.png'})" in message
        assert "missing mask" not in message


def test_symlink_loop_reported_as_broken_link(tmp_path):
    samples = build_voc(tmp_path)
    path = replace_with_link(samples["2007_000032"].image_path, samples["2007_000032"].image_path)
    ds = open_dataset("voc", tmp_path, "train")
    with pytest.raises(DatasetError) as excinfo:
        ds.validate("2007_000032")
    message = _one_line_error(excinfo)
    assert f"{path} is a broken symbolic link to {path}" in message and "symbolic links" in message


def test_working_links_still_read(tmp_path):
    samples = build_voc(tmp_path)
    sample = samples["2007_000039"]
    for path in (sample.image_path, sample.mask_path):
        stored = tmp_path / "cache" / path.name
        stored.parent.mkdir(exist_ok=True)
        path.rename(stored)
        replace_with_link(path, stored)
    ds = open_dataset("voc", tmp_path, "train")
    assert ds.validate("2007_000039").image_id == "2007_000039"
    np.testing.assert_array_equal(ds.load_mask("2007_000039"), sample.mask)


def test_folder_broken_link_does_not_fall_through_to_next_suffix(tmp_path):
    build_folder(tmp_path)  # shape_0000 is a .png; a .jpg takes priority
    path = replace_with_link(tmp_path / "JPEGImages" / "shape_0000.jpg", tmp_path / "gone.jpg")
    ds = open_dataset("folder", tmp_path, "train")
    with pytest.raises(DatasetError) as excinfo:
        ds.validate("shape_0000")
    assert f"image {path} is a broken symbolic link to {tmp_path / 'gone.jpg'}" in _one_line_error(excinfo)


def test_coco_listing_keeps_broken_links(tmp_path):
    samples = build_coco(tmp_path, split_lists=False)
    path = replace_with_link(samples["COCO_val2014_000000000042"].image_path, tmp_path / "gone.jpg")
    ds = open_dataset("coco", tmp_path, "val")
    assert ds.ids == tuple(sorted(COCO_SPLITS["val2014"]))  # not dropped silently
    with pytest.raises(DatasetError, match=re.escape(f"{path} is a broken symbolic link")):
        ds.validate("COCO_val2014_000000000042")


@pytest.mark.parametrize("kind", ["voc", "coco"])
def test_broken_split_list_link(tmp_path, kind):
    build_voc(tmp_path) if kind == "voc" else build_coco(tmp_path, split_lists=True)
    split = "val"
    path = replace_with_link(tmp_path / "ImageSets" / "Segmentation" / f"{split}.txt", tmp_path / "gone.txt")
    with pytest.raises(DatasetError) as excinfo:  # coco must not fall back to a folder listing
        open_dataset(kind, tmp_path, split)
    assert _one_line_error(excinfo) == (
        f"split 'val': split list {path} is a broken symbolic link to {tmp_path / 'gone.txt'} "
        "(No such file or directory)"
    )


def test_broken_mask_folder_link_does_not_fall_back(tmp_path):
    build_voc(tmp_path, mask_folder="SegmentationClass")
    path = replace_with_link(tmp_path / "SegmentationClassAug", tmp_path / "gone")
    with pytest.raises(DatasetError) as excinfo:
        open_dataset("voc", tmp_path, "train")
    assert f"mask folder {path} is a broken symbolic link to {tmp_path / 'gone'}" in _one_line_error(excinfo)


def test_broken_class_names_and_root_links(tmp_path):
    build_folder(tmp_path / "data")
    names = replace_with_link(tmp_path / "data" / "class_names.txt", tmp_path / "gone.txt")
    with pytest.raises(DatasetError) as excinfo:
        open_dataset("folder", tmp_path / "data", "train")
    expected = f"class-name file {names} is a broken symbolic link to {tmp_path / 'gone.txt'}"
    assert expected in _one_line_error(excinfo)
    root = replace_with_link(tmp_path / "root", tmp_path / "gone")
    with pytest.raises(DatasetError) as excinfo:
        open_dataset("folder", root, "train")
    assert f"dataset root {root} is a broken symbolic link to {tmp_path / 'gone'}" in _one_line_error(excinfo)

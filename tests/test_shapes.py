"""The shapes world: determinism, mask/label invariants, occlusion drops, the boat/water co-occurrence,
class separability, scale range, config validation and atomic dataset writing."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data import shapes
from pipeline.data.shapes import (BOAT, CLASS_NAMES, ShapesConfig, generate_dataset, render_scene,
                                  scene_seed, voc_palette)

C = len(CLASS_NAMES)


def _scenes(n: int, config: ShapesConfig = ShapesConfig(), split: str = "test", seed: int = 11):
    return [render_scene(scene_seed(seed, split, i), config) for i in range(n)]


@pytest.fixture(scope="module")
def default_scenes():
    return _scenes(300)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- seeds


def test_scene_seed_is_stable_and_separates_splits_and_indices():
    # golden values: a change here silently changes every generated dataset
    assert scene_seed(0, "train", 5).generate_state(2).tolist() == [941173264, 1011108816]
    assert scene_seed(2024, "val", 123).generate_state(2).tolist() == [1597892172, 309142713]
    states = {tuple(scene_seed(s, sp, i).generate_state(2))
              for s in (0, 1) for sp in ("train", "val") for i in range(5)}
    assert len(states) == 20


def test_render_scene_is_pure():
    a = render_scene(scene_seed(3, "train", 7), ShapesConfig())
    b = render_scene(scene_seed(3, "train", 7), ShapesConfig())
    c = render_scene(scene_seed(3, "train", 8), ShapesConfig())
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.labels == b.labels
    assert not np.array_equal(a.image, c.image)


# ------------------------------------------------------------------------------------------ the files


def test_generate_dataset_is_byte_identical_across_worker_counts(tmp_path):
    splits = {"train": 12, "val": 8}
    from pipeline.params import RunnerParams
    from pipeline.runner import Runner

    generate_dataset(tmp_path / "a", splits=splits, seed=5, config=ShapesConfig())
    with Runner(RunnerParams(n_workers=2)) as runner:  # rendered on a 2-worker LocalCluster, out of order
        generate_dataset(tmp_path / "b", splits=splits, seed=5, config=ShapesConfig(), map_chunks=runner.map)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    assert len([k for k in a if k.startswith("JPEGImages/")]) == 20
    assert len([k for k in a if k.startswith("SegmentationClass/")]) == 20


def test_layout_contents_match_rendered_scenes(tmp_path):
    config = ShapesConfig(jpeg_quality=90)
    generate_dataset(tmp_path / "w", splits={"train": 3, "val": 2}, seed=9, config=config)
    root = tmp_path / "w"
    ids = (root / "ImageSets/Segmentation/val.txt").read_text().splitlines()
    assert ids == ["val_000000", "val_000001"]
    assert (root / "class_names.txt").read_text().splitlines() == list(CLASS_NAMES)
    record = json.loads((root / "shapes_world.json").read_text())
    assert record["seed"] == 9 and record["splits"] == {"train": 3, "val": 2}
    assert ShapesConfig(**record["config"]) == config and record["format_version"] == shapes.FORMAT_VERSION
    for index, name in enumerate(ids):
        scene = render_scene(scene_seed(9, "val", index), config)
        png = Image.open(root / "SegmentationClass" / f"{name}.png")
        assert png.mode == "P" and png.getpalette()[: 3 * (C + 1)] == voc_palette()[: 3 * (C + 1)]
        assert np.array_equal(np.asarray(png), scene.mask)
        jpg = Image.open(root / "JPEGImages" / f"{name}.jpg")
        assert jpg.mode == "RGB" and not jpg.info.get("exif")
        error = np.abs(np.asarray(jpg).astype(int) - scene.image).mean()
        other = np.abs(np.asarray(jpg).astype(int) - render_scene(scene_seed(9, "val", index + 5), config).image)
        assert error < 8 and error < other.mean() / 3  # lossy, but this image's pixels


def test_extending_a_split_keeps_existing_files(tmp_path):
    generate_dataset(tmp_path / "small", splits={"train": 3}, seed=1, config=ShapesConfig())
    generate_dataset(tmp_path / "big", splits={"val": 2, "train": 5}, seed=1, config=ShapesConfig())
    small, big = _tree(tmp_path / "small"), _tree(tmp_path / "big")
    for i in range(3):
        for path in (f"JPEGImages/train_00000{i}.jpg", f"SegmentationClass/train_00000{i}.png"):
            assert small[path] == big[path]
    assert big["ImageSets/Segmentation/train.txt"].startswith(small["ImageSets/Segmentation/train.txt"])


def test_refuses_to_overwrite_a_non_empty_root(tmp_path):
    root = tmp_path / "world"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="world"):
        generate_dataset(root, splits={"train": 2}, seed=0, config=ShapesConfig())
    assert (root / "keep.txt").read_text() == "mine"
    generate_dataset(root, splits={"train": 2}, seed=0, config=ShapesConfig(),
                     overwrite=True)
    assert not (root / "keep.txt").exists() and (root / "JPEGImages/train_000001.jpg").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]  # no temporary or old siblings left


def test_an_empty_root_directory_is_filled(tmp_path):
    (tmp_path / "world").mkdir()
    generate_dataset(tmp_path / "world", splits={"train": 1}, seed=0, config=ShapesConfig())
    assert (tmp_path / "world/shapes_world.json").is_file()


def test_an_interrupted_run_leaves_no_root(tmp_path, monkeypatch):
    real_save, calls = shapes.save_scene, []

    def failing_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real_save(*args, **kwargs)

    monkeypatch.setattr(shapes, "save_scene", failing_save)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "world", splits={"train": 10}, seed=0, config=ShapesConfig())
    assert len(calls) == 4
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- the world itself


def test_mask_and_label_invariants(default_scenes):
    label_counts, classes, fully_dropped = Counter(), Counter(), 0
    for scene in default_scenes:
        assert scene.image.shape == (64, 64, 3) and scene.image.dtype == np.uint8
        assert scene.mask.shape == (64, 64) and scene.mask.dtype == np.uint8
        assert scene.labels == tuple(sorted(set(np.unique(scene.mask).tolist()) - {0}))
        objects = scene.extras["objects"]
        assert 1 <= len(objects) <= 3
        for c in range(1, C + 1):  # every mask pixel of a class belongs to a kept object of it
            assert (scene.mask == c).sum() == sum(o.visible_area for o in objects if o.label == c and o.kept)
        fully_dropped += sum(1 for c in {o.label for o in objects if not o.kept} if c not in scene.labels)
        label_counts[len(scene.labels)] += 1
        classes.update(scene.labels)
    assert set(classes) == set(range(1, C + 1))
    assert {1, 2, 3} <= set(label_counts)
    assert fully_dropped > 0  # occlusion removes whole classes from the labels (and their pixels)


def test_min_visible_controls_occlusion_drops():
    def drop_rate(**kw):
        objects = [o for s in _scenes(150, ShapesConfig(**kw)) for o in s.extras["objects"]]
        for o in objects:
            assert o.kept == (o.drawn_area > 0 and o.visible_area >= kw["min_visible"] * o.drawn_area
                              and o.visible_area >= kw["min_visible_area"] * 64 * 64)
        return np.mean([not o.kept for o in objects])

    lax, default, strict = (drop_rate(min_visible=v, min_visible_area=a)
                            for v, a in ((0.0, 0.0), (0.3, 0.004), (0.95, 0.004)))
    assert lax < default < strict


def test_boat_and_water_co_occur(default_scenes):
    scenes = default_scenes + _scenes(300, seed=12)
    with_boat = [s.extras["water"] for s in scenes if BOAT in s.labels]
    without = [s.extras["water"] for s in scenes if BOAT not in s.labels]
    assert len(with_boat) > 80 and len(without) > 300
    assert np.mean(with_boat) > 0.8
    assert np.mean(without) < 0.2
    for s in scenes:  # the band is background: the bottom row is almost all 0 when the water is drawn
        if s.extras["water"]:
            assert (s.mask[-1] == 0).mean() > 0.4
    never = _scenes(200, ShapesConfig(boat_water_prob=0.0, water_without_boat_prob=0.0))
    assert not any(s.extras["water"] for s in never)


def _object_features(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hue features, other colour features, shape + texture features) of one object's pixels."""
    rgb = image[mask].astype(np.float64) / 255
    hi, lo = rgb.max(1), rgb.min(1)
    chroma = np.maximum(hi - lo, 1e-6)
    r, g, b = rgb.T
    hue = np.where(hi == r, (g - b) / chroma, np.where(hi == g, 2 + (b - r) / chroma, 4 + (r - g) / chroma)) / 6
    hue_f = np.array([np.cos(2 * np.pi * hue).mean(), np.sin(2 * np.pi * hue).mean()])
    colour_f = np.concatenate([rgb.mean(0), rgb.std(0), [(chroma / np.maximum(hi, 1e-6)).mean(), hi.mean()]])
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    ev = np.linalg.eigvalsh(np.cov(np.stack([ys, xs])) + 1e-6 * np.eye(2))
    inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    grey = image.astype(np.float64).mean(2) / 255
    pairs = mask[:, 1:] & mask[:, :-1]
    detail = np.abs(np.diff(grey, axis=1))[pairs].mean() if pairs.any() else 0.0
    shape_f = np.array([fill, np.sqrt(ev[0] / ev[1]), (mask.sum() - inner.sum()) / np.sqrt(mask.sum()), detail])
    return hue_f, colour_f, shape_f


def test_classes_differ_in_shape_and_texture_and_hue_alone_is_not_enough():
    feats, ys = [], []
    for scene in _scenes(500, ShapesConfig(min_objects=1, max_objects=1), seed=3):
        if scene.labels:
            feats.append(_object_features(scene.image, scene.mask == scene.labels[0]))
            ys.append(scene.labels[0])
    y = np.array(ys)
    half = len(y) // 2

    def nearest_mean_accuracy(parts):
        x = np.array([np.concatenate([f[p] for p in parts]) for f in feats])
        x = (x - x[:half].mean(0)) / (x[:half].std(0) + 1e-9)
        means = np.stack([x[:half][y[:half] == c].mean(0) for c in range(1, C + 1)])
        pred = np.argmin(((x[half:, None] - means[None]) ** 2).sum(-1), 1) + 1
        return (pred == y[half:]).mean()

    chance = 1 / C
    everything, hue_only, shape_texture = (nearest_mean_accuracy(p) for p in ((0, 1, 2), (0,), (2,)))
    assert everything > 0.8
    assert shape_texture > 3 * chance  # shape and texture carry the class without colour
    assert hue_only < everything - 0.1  # overlapping hue ranges: colour alone is not sufficient


def test_scale_range_is_wide(default_scenes):
    areas = np.array([o.drawn_area for s in default_scenes for o in s.extras["objects"] if o.kept])
    low, high = np.percentile(areas, [5, 95])
    assert high / low > 8
    narrow = [o.drawn_area for s in _scenes(100, ShapesConfig(min_scale=0.2, max_scale=0.2))
              for o in s.extras["objects"] if o.kept]
    assert np.median(narrow) > np.median(areas)


@pytest.mark.parametrize("size", [32, 96, 128, 320])
def test_other_image_sizes(size):
    scenes = _scenes(4 if size > 128 else 12, ShapesConfig(image_size=size))
    for scene in scenes:
        assert scene.image.shape == (size, size, 3) and scene.mask.shape == (size, size)
        assert scene.labels == tuple(sorted(set(np.unique(scene.mask).tolist()) - {0}))
    areas = [o.drawn_area for s in scenes for o in s.extras["objects"] if o.kept]
    assert np.median(areas) > 0.01 * size * size  # objects scale with the image


# --------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("field, value, expected", [
    ("image_size", 8, "image_size must be an int >= 32, got 8"),
    ("image_size", 64.0, "image_size must be an int, got 64.0"),
    ("max_objects", True, "max_objects must be an int, got True"),
    ("max_objects", 0, "max_objects must be an int in [min_objects (1), 255], got 0"),
    ("max_objects", 300, "max_objects must be an int in [min_objects (1), 255], got 300"),
    ("min_noise_std", -0.01, "min_noise_std must be a number in [0, 0.5], got -0.01"),
    ("min_visible", 1.5, "min_visible must be a number in [0, 1], got 1.5"),
    ("boat_water_prob", -0.1, "boat_water_prob must be a number in [0, 1], got -0.1"),
    ("max_scale", 0.05, "max_scale must be a number in [min_scale (0.08), 0.5], got 0.05"),
    ("min_scale", 0.0, "min_scale must be a number in (0, 0.5], got 0.0"),
    ("jpeg_quality", 101, "jpeg_quality must be an int in [1, 100], got 101"),
    ("stripe_prob", float("nan"), "stripe_prob must be a finite number, got nan"),
    ("max_hue_distractors", -1, "max_hue_distractors must be an int >= 0, got -1"),
])
def test_config_errors_name_the_field_and_value(field, value, expected):
    with pytest.raises(ValueError) as err:
        ShapesConfig(**{field: value})
    assert str(err.value) == expected


def test_config_stores_numbers_as_declared():
    config = ShapesConfig(min_visible=0, max_scale=np.float64(0.3))
    assert type(config.min_visible) is float and type(config.max_scale) is float
    assert config == ShapesConfig(min_visible=0.0, max_scale=0.3)


@pytest.mark.parametrize("splits, seed, match", [
    ({}, 0, "non-empty"),
    ({"../x": 3}, 0, "split name"),
    ({"train": -1}, 0, "splits.train"),
    ({"train": 1}, -3, "seed"),
])
def test_generate_dataset_rejects_bad_arguments(tmp_path, splits, seed, match):
    with pytest.raises(ValueError, match=match):
        generate_dataset(tmp_path / "w", splits=splits, seed=seed, config=ShapesConfig())
    assert not (tmp_path / "w").exists()

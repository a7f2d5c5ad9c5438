"""The shapes world: a procedural segmentation dataset in PASCAL VOC layout that stands in for VOC.

No real images or weights can be downloaded where this project is built, so tiny CLIP and tiny Stable
Diffusion models are trained on this world and weakly supervised CAMs are evaluated on it. A scene is:

* a cluttered background: a two-colour gradient, low-frequency colour noise, stripes, thin lines and
  small squares (`pipeline.data.shapes_render.background`);
* confusable distractors that are *not* in the mask: irregular blobs filled with a class's texture
  (texture right, shape wrong) and plain blobs in a class's hue (colour right, texture and shape wrong);
* 1-3 objects from `CLASS_NAMES`, which differ in shape *and* texture/colour statistics, with
  intra-class variation (hue jittered around a class centre so neighbouring classes' hue ranges
  overlap; random saturation, value, rotation, shape proportions) and a wide, log-uniform scale range;
* occlusion: later objects are drawn over earlier ones. An object whose visible area falls below
  `min_visible` of its drawn (in-image) area, or below `min_visible_area` of the image, is dropped: its
  class is not in the labels (unless another instance of it survives) and its leftover pixels are
  background (0) in the mask, although they stay in the image;
* per-pixel sensor noise.

Co-occurrence (the VOC boat/water bias): when a scene holds a "boat", a water band (a textured region
along the bottom of the image, labelled background 0) is drawn with probability `boat_water_prob`
(0.9) and the boats sit on it; without a boat the band appears with probability
`water_without_boat_prob` (0.1). The pair exists so that CAMs can be shown to spill onto the
co-occurring background, as CLIP CAMs spill from boats onto water in VOC. `Scene.extras["water"]`
tells whether the band was drawn.

Determinism: `render_scene` is a pure function of (seed, config). `generate_dataset` seeds image
`index` of split `split` with `scene_seed(seed, split, index)`, so files are byte-identical for the same
seed, config and library versions (numpy, Pillow, zlib), whatever the worker count or order, and a
split can be extended without changing its existing images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from pipeline.data import shapes_render

log = logging.getLogger(__name__)

#: foreground class names; mask value k (1..C) is CLASS_NAMES[k-1]
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in shapes_render.OBJECT_CLASSES)
#: one-line shape/texture description per class, same order as CLASS_NAMES
CLASS_DESCRIPTIONS: tuple[str, ...] = tuple(c.description for c in shapes_render.OBJECT_CLASSES)
BOAT = CLASS_NAMES.index("boat") + 1  # the mask value of the class that co-occurs with water

FORMAT_VERSION = 1        # of the layout and shapes_world.json; bump on any change to what is written
ID_WIDTH = 6              # image ids are f"{split}_{index:06d}"; fixed so that splits can be extended
WORLD_FILE = "shapes_world.json"
CLASS_NAMES_FILE = "class_names.txt"
IMAGE_DIR = "JPEGImages"
MASK_DIR = "SegmentationClass"
SPLIT_DIR = "ImageSets/Segmentation"
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_CHUNK = 128              # images per worker task


@dataclass(frozen=True)
class ShapesConfig:
    """Every knob of the shapes world. Sizes and scales are fractions of `image_size` unless noted."""

    image_size: int = 64                  # side of the square images, in pixels (>= 32)
    min_objects: int = 1                  # fewest objects placed in a scene (>= 1)
    max_objects: int = 3                  # most objects placed in a scene (before occlusion drops)
    min_visible: float = 0.3              # drop an object whose visible share of its drawn area is below this
    min_visible_area: float = 0.004       # ... or whose visible area is below this fraction of the image
    min_scale: float = 0.08               # smallest object radius; radii are log-uniform in [min, max]
    max_scale: float = 0.35               # largest object radius
    hue_jitter: float = 0.10              # instance hue = class hue centre +- this (ranges overlap at 0.1)
    boat_water_prob: float = 0.9          # P(water band | a boat is placed)
    water_without_boat_prob: float = 0.1  # P(water band | no boat is placed)
    min_water_height: float = 0.3         # height of the water band along the bottom edge
    max_water_height: float = 0.55
    max_texture_distractors: int = 2      # 0..this blobs filled with a random class's texture per scene
    max_hue_distractors: int = 2          # 0..this plain blobs in a random class's hue per scene
    min_distractor_scale: float = 0.06    # distractor blob radius range
    max_distractor_scale: float = 0.18
    min_clutter: int = 2                  # thin lines and small squares on the background, per scene
    max_clutter: int = 6
    stripe_prob: float = 0.6              # probability of a stripe layer on the background
    min_noise_std: float = 0.01           # per-pixel Gaussian noise std (RGB in [0, 1]) range
    max_noise_std: float = 0.06
    jpeg_quality: int = 95                # JPEG quality of the written images (4:4:4, baseline)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise ValueError(f"{f.name} must be an int, got {value!r}")
                object.__setattr__(self, f.name, int(value))
            else:  # floats: accept ints, store floats so that the recorded config has stable bytes
                if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                        or not math.isfinite(value):
                    raise ValueError(f"{f.name} must be a finite number, got {value!r}")
                object.__setattr__(self, f.name, float(value))
        _at_least(self, "image_size", 32, "an int >= 32")
        _at_least(self, "min_objects", 1, "an int >= 1")
        _at_least(self, "max_objects", self.min_objects, f"an int in [min_objects ({self.min_objects}), 255]",
                  hi=255)
        _at_least(self, "jpeg_quality", 1, "an int in [1, 100]", hi=100)
        for name in ("min_visible", "boat_water_prob", "water_without_boat_prob", "stripe_prob"):
            _at_least(self, name, 0.0, "a number in [0, 1]", hi=1.0)
        _at_least(self, "min_visible_area", 0.0, "a number in [0, 0.5]", hi=0.5)
        _at_least(self, "hue_jitter", 0.0, "a number in [0, 0.5]", hi=0.5)
        for name in ("max_texture_distractors", "max_hue_distractors", "min_clutter"):
            _at_least(self, name, 0, "an int >= 0")
        _at_least(self, "max_clutter", self.min_clutter, f"an int >= shapes.min_clutter ({self.min_clutter})")
        for lo, hi, top in (("min_scale", "max_scale", 0.5), ("min_distractor_scale", "max_distractor_scale", 0.5),
                            ("min_water_height", "max_water_height", 0.9)):
            _range(self, lo, hi, top, zero_ok=False)
        _range(self, "min_noise_std", "max_noise_std", 0.5, zero_ok=True)


def _at_least(cfg: ShapesConfig, name: str, lo: float, expected: str, hi: float | None = None) -> None:
    value = getattr(cfg, name)
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _range(cfg: ShapesConfig, lo: str, hi: str, top: float, *, zero_ok: bool) -> None:
    low = getattr(cfg, lo)
    if not (0.0 <= low if zero_ok else 0.0 < low) or low > top:
        raise ValueError(f"{lo} must be a number in {'[' if zero_ok else '('}0, {top}], got {low!r}")
    _at_least(cfg, hi, low, f"a number in [{lo} ({low}), {top}]", hi=top)


@dataclass(frozen=True)
class PlacedObject:
    """One object the composer placed (kept or dropped); all areas in pixels."""
    label: int              # mask value, 1..C
    radius: float           # pixels
    drawn_area: int         # pixels it covered inside the image when drawn
    visible_area: int       # pixels still showing after later objects were drawn
    kept: bool              # False: dropped as too occluded (or too small); its pixels are 0 in the mask


@dataclass(frozen=True, eq=False)
class Scene:
    """One rendered scene. `extras` carries generation facts that are not part of the VOC layout:
    "water" (bool, whether the water band was drawn) and "objects" (tuple of PlacedObject, in drawing
    order). Arrays make `==` meaningless, so equality is identity (eq=False)."""
    image: np.ndarray                 # (H, W, 3) uint8 RGB
    mask: np.ndarray                  # (H, W) uint8, 0 = background, k = CLASS_NAMES[k-1]
    labels: tuple[int, ...]           # sorted mask values present (1..C) == set(np.unique(mask)) - {0}
    extras: Mapping[str, Any] = field(default_factory=dict)


def scene_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The seed of image `index` of `split`: depends on nothing else, and is the same on every run and
    platform (the split name enters through SHA-256, never Python's salted hash())."""
    seed, index = _natural("shapes seed", seed), _natural("shapes image index", index)
    split_key = int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:8], "little")
    return np.random.SeedSequence(entropy=seed, spawn_key=(split_key, index))


def _natural(what: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{what} must be an int >= 0, got {value!r}")
    return int(value)


def render_scene(seed: int | np.random.SeedSequence, config: ShapesConfig) -> Scene:
    """Render one scene; a pure function of (seed, config). Returns image (S, S, 3) uint8, mask (S, S)
    uint8 and labels, see `Scene`."""
    rng = np.random.default_rng(seed)
    cfg = config
    size = cfg.image_size
    classes = rng.integers(1, len(CLASS_NAMES) + 1, size=int(rng.integers(cfg.min_objects, cfg.max_objects + 1)))
    water_prob = cfg.boat_water_prob if BOAT in classes else cfg.water_without_boat_prob
    water = bool(rng.random() < water_prob)

    img = shapes_render.background(rng, size, stripe_prob=cfg.stripe_prob,
                       n_clutter=int(rng.integers(cfg.min_clutter, cfg.max_clutter + 1)))
    water_top = size
    if water:
        water_top = size * (1.0 - rng.uniform(cfg.min_water_height, cfg.max_water_height))
        band, colour = shapes_render.water_band(rng, size, water_top)
        img[band] = colour[band]
    _draw_distractors(rng, img, cfg)

    instances = np.zeros((size, size), np.uint8)  # 0 = none, k = k-th drawn object (1-based)
    radii, drawn = [], []
    for k, label in enumerate(classes, start=1):
        radius = size * math.exp(rng.uniform(math.log(cfg.min_scale), math.log(cfg.max_scale)))
        cls = shapes_render.OBJECT_CLASSES[label - 1]
        if label == BOAT:  # upright; with water, its hull's middle (v ~ 0.3 radii) sits on the band
            cx = rng.uniform(0.1, 0.9) * size
            if water:
                cy = water_top + rng.uniform(0.05, 0.6) * (size - water_top) - 0.3 * radius
            else:
                cy = rng.uniform(0.15, 0.85) * size
            angle, mirror = rng.uniform(-0.25, 0.25), bool(rng.random() < 0.5)
            frame = shapes_render.make_frame(size, cx, cy, radius, angle, mirror=mirror)
        else:
            cx, cy = rng.uniform(0.15, 0.85, 2) * size
            frame = shapes_render.make_frame(size, cx, cy, radius, rng.uniform(0, 2 * math.pi))
        hue = cls.hue + rng.uniform(-cfg.hue_jitter, cfg.hue_jitter)
        area = 0
        if frame is not None:
            shape, colour = cls.draw(frame, rng, hue)
            img[frame.rows, frame.cols][shape] = colour[shape]
            instances[frame.rows, frame.cols][shape] = k
            area = int(shape.sum())
        radii.append(radius)
        drawn.append(area)

    # occlusion: keep an object only if enough of it is still visible
    visible = np.bincount(instances.ravel(), minlength=len(classes) + 1)[1:]
    min_area = cfg.min_visible_area * size * size
    kept = [d > 0 and vis >= cfg.min_visible * d and vis >= min_area for d, vis in zip(drawn, visible)]
    lut = np.zeros(256, np.uint8)  # instance index -> mask value (0 for dropped objects)
    lut[1:len(classes) + 1] = np.where(kept, classes, 0)
    mask = lut[instances]

    noise_std = np.float32(rng.uniform(cfg.min_noise_std, cfg.max_noise_std))
    img += rng.standard_normal(img.shape, dtype=np.float32) * noise_std
    image = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    objects = tuple(PlacedObject(int(c), float(r), int(d), int(v), bool(k))
                    for c, r, d, v, k in zip(classes, radii, drawn, visible, kept))
    labels = tuple(sorted({o.label for o in objects if o.kept}))
    return Scene(image, mask, labels, {"water": water, "objects": objects})


def _draw_distractors(rng: np.random.Generator, img: np.ndarray, cfg: ShapesConfig) -> None:
    """Irregular blobs that are not in the mask: some filled with a random class's texture, some with a
    plain colour in a random class's hue."""
    size = cfg.image_size
    n_texture = int(rng.integers(0, cfg.max_texture_distractors + 1))
    n_hue = int(rng.integers(0, cfg.max_hue_distractors + 1))
    for k in range(n_texture + n_hue):
        cls = shapes_render.OBJECT_CLASSES[int(rng.integers(len(shapes_render.OBJECT_CLASSES)))]
        radius = size * rng.uniform(cfg.min_distractor_scale, cfg.max_distractor_scale)
        cx, cy = rng.uniform(0, size, 2)
        frame = shapes_render.make_frame(size, cx, cy, radius, rng.uniform(0, 2 * math.pi))
        if frame is None:
            continue
        hue = cls.hue + rng.uniform(-cfg.hue_jitter, cfg.hue_jitter)
        shape = shapes_render.blob_mask(frame, rng)
        colour = cls.draw(frame, rng, hue)[1] if k < n_texture else shapes_render.flat_blob_colour(frame, rng, hue)
        img[frame.rows, frame.cols][shape] = colour[shape]


# ----------------------------------------------------------------------------------------------------
# files


def image_id(split: str, index: int) -> str:
    return f"{split}_{index:0{ID_WIDTH}d}"


def voc_palette() -> list[int]:
    """The standard PASCAL VOC colour map, 256 RGB entries flattened (class k's colour from bits of k)."""
    palette = []
    for k in range(256):
        r = g = b = 0
        c = k
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


_PALETTE = voc_palette()


def save_scene(root: Path, name: str, scene: Scene, jpeg_quality: int) -> None:
    """Write one scene's JPEG and palette PNG under `root` (no metadata, so bytes depend on pixels only)."""
    Image.fromarray(scene.image).save(root / IMAGE_DIR / f"{name}.jpg", format="JPEG", quality=jpeg_quality,
                                      subsampling=0, optimize=False, progressive=False)
    mask = Image.fromarray(scene.mask)
    mask.putpalette(_PALETTE)
    mask.save(root / MASK_DIR / f"{name}.png", format="PNG", optimize=False, compress_level=6)


def _render_chunk(root: str, split: str, start: int, stop: int, seed: int, config: ShapesConfig) -> int:
    out = Path(root)
    for index in range(start, stop):
        save_scene(out, image_id(split, index), render_scene(scene_seed(seed, split, index), config),
                   config.jpeg_quality)
    return stop - start


def _check_splits(splits: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(splits, Mapping) or not splits:
        raise ValueError(f"shapes splits must be a non-empty mapping of split name to image count, got {splits!r}")
    for name, count in splits.items():
        if not isinstance(name, str) or not _SPLIT_NAME.fullmatch(name):
            raise ValueError(f"shapes split name must match {_SPLIT_NAME.pattern}, got {name!r}")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 10 ** ID_WIDTH:
            raise ValueError(f"shapes splits.{name} must be an int in [0, {10 ** ID_WIDTH}], got {count!r}")
    return dict(splits)


def world_record(*, splits: Mapping[str, int], seed: int, config: ShapesConfig) -> str:
    """The text of shapes_world.json: config, seed, splits, classes and format version (sorted keys)."""
    record = {"format_version": FORMAT_VERSION, "generator": __name__, "seed": seed, "splits": dict(splits),
              "class_names": list(CLASS_NAMES), "id_width": ID_WIDTH, "config": dataclasses.asdict(config)}
    return json.dumps(record, sort_keys=True, indent=2) + "\n"


def generate_dataset(root: str | Path, *, splits: Mapping[str, int], seed: int, config: ShapesConfig,
                     workers: int = 2, progress: bool = True, overwrite: bool = False) -> None:
    """Write the shapes world in VOC layout under `root`:

        root/JPEGImages/{id}.jpg, root/SegmentationClass/{id}.png (palette PNG, values 0..C),
        root/ImageSets/Segmentation/{split}.txt, root/class_names.txt, root/shapes_world.json

    with ids f"{split}_{index:06d}". Atomic: everything is written into a hidden temporary sibling that
    is renamed to `root` at the end, so an interrupted run leaves no `root`. An existing non-empty `root`
    is refused unless `overwrite=True`. Renders with `workers` processes (1: in this process).
    """
    root = Path(root)
    splits = _check_splits(splits)
    seed = _natural("shapes seed", seed)
    if not isinstance(config, ShapesConfig):
        raise TypeError(f"config must be a ShapesConfig, got {type(config).__name__}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if _occupied(root) and not overwrite:
        raise FileExistsError(f"{root} already exists and is not empty; pass overwrite=True to replace it")

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for sub in (IMAGE_DIR, MASK_DIR, SPLIT_DIR):
            (tmp / sub).mkdir(parents=True)
        total = sum(splits.values())
        log.info("rendering %d shapes-world images (%s) at %d px with %d worker(s) into %s",
                 total, ", ".join(f"{k}={v}" for k, v in splits.items()), config.image_size, workers, root)
        tasks = [(str(tmp), split, start, min(start + _CHUNK, count), seed, config)
                 for split, count in splits.items() for start in range(0, count, _CHUNK)]
        _run_tasks(tasks, total, workers, progress)
        for split, count in splits.items():
            _write_text(tmp / SPLIT_DIR / f"{split}.txt", "".join(image_id(split, i) + "\n" for i in range(count)))
        _write_text(tmp / CLASS_NAMES_FILE, "".join(name + "\n" for name in CLASS_NAMES))
        _write_text(tmp / WORLD_FILE, world_record(splits=splits, seed=seed, config=config))
        _move_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d shapes-world images to %s", total, root)


def _run_tasks(tasks: list[tuple], total: int, workers: int, progress: bool) -> None:
    from tqdm import tqdm

    with tqdm(total=total, unit="img", desc="shapes world", disable=not progress) as bar:
        if workers == 1:
            for task in tasks:
                bar.update(_render_chunk(*task))
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_render_chunk, *task) for task in tasks]
            try:
                for future in as_completed(futures):
                    bar.update(future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise


def _occupied(path: Path) -> bool:
    if not path.exists() and not path.is_symlink():
        return False
    return not path.is_dir() or any(path.iterdir())


def _write_text(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8"))


def _move_into_place(tmp: Path, root: Path) -> None:
    """Rename the finished `tmp` to `root`, replacing whatever is there (the caller checked overwrite)."""
    if not root.exists() and not root.is_symlink():
        tmp.rename(root)
        return
    old = root.parent / f".{root.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    root.rename(old)
    tmp.rename(root)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()

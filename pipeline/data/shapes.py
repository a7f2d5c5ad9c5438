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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from PIL import Image

from pipeline.data import shapes_render
from pipeline.data.palette import voc_palette
from pipeline.data.config import ShapesConfig
from pipeline import atomic

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


_PALETTE = voc_palette()


def save_scene(root: Path, name: str, scene: Scene, jpeg_quality: int) -> None:
    """Write one scene's JPEG and palette PNG under `root` (no metadata, so bytes depend on pixels only)."""
    Image.fromarray(scene.image).save(root / IMAGE_DIR / f"{name}.jpg", format="JPEG", quality=jpeg_quality,
                                      subsampling=0, optimize=False, progressive=False)
    mask = Image.fromarray(scene.mask)
    mask.putpalette(_PALETTE)
    mask.save(root / MASK_DIR / f"{name}.png", format="PNG", optimize=False, compress_level=6)


def _render_chunk(chunk: tuple[str, str, int, int, int, ShapesConfig]) -> int:
    root, split, start, stop, seed, config = chunk
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


Mapper = Callable[..., list]  # (fn, items, *, desc, unit, weights) -> [fn(x) for x in items], e.g. Runner.map


def generate_dataset(root: str | Path, *, splits: Mapping[str, int], seed: int, config: ShapesConfig,
                     map_chunks: Mapper | None = None, overwrite: bool = False) -> None:
    """Write the shapes world in VOC layout under `root`:

        root/JPEGImages/{id}.jpg, root/SegmentationClass/{id}.png (palette PNG, values 0..C),
        root/ImageSets/Segmentation/{split}.txt, root/class_names.txt, root/shapes_world.json

    with ids f"{split}_{index:06d}". Atomic: everything is written into a hidden temporary sibling that
    is renamed to `root` at the end, so an interrupted run leaves no `root`. An existing non-empty `root`
    is refused unless `overwrite=True`. Chunks of scenes are rendered through `map_chunks` (the
    pipeline's runner, so the same workers and progress bar as every stage); None renders here.
    """
    root = Path(root)
    splits = _check_splits(splits)
    seed = _natural("shapes seed", seed)
    if not isinstance(config, ShapesConfig):
        raise TypeError(f"config must be a ShapesConfig, got {type(config).__name__}")
    if _occupied(root) and not overwrite:
        raise FileExistsError(f"{root} already exists and is not empty; pass overwrite=True to replace it")

    def write(tmp: Path) -> None:
        for sub in (IMAGE_DIR, MASK_DIR, SPLIT_DIR):
            (tmp / sub).mkdir(parents=True)
        log.info("rendering %d shapes-world images (%s) at %d px into %s", sum(splits.values()),
                 ", ".join(f"{k}={v}" for k, v in splits.items()), config.image_size, root)
        chunks = [(str(tmp), split, start, min(start + _CHUNK, count), seed, config)
                  for split, count in splits.items() for start in range(0, count, _CHUNK)]
        if map_chunks is None:
            [_render_chunk(c) for c in chunks]
        else:
            map_chunks(_render_chunk, chunks, desc="shapes world", unit="img", weights=[c[3] - c[2] for c in chunks])
        for split, count in splits.items():
            (tmp / SPLIT_DIR / f"{split}.txt").write_bytes("".join(image_id(split, i) + "\n" for i in range(count)).encode())
        (tmp / CLASS_NAMES_FILE).write_bytes("".join(name + "\n" for name in CLASS_NAMES).encode())
        (tmp / WORLD_FILE).write_bytes(world_record(splits=splits, seed=seed, config=config).encode())

    atomic.write_with(root, write)
    log.info("wrote %d shapes-world images to %s", sum(splits.values()), root)


def _occupied(path: Path) -> bool:
    if not path.exists() and not path.is_symlink():
        return False
    return not path.is_dir() or any(path.iterdir())

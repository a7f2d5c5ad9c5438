"""The shapes world's knobs, in a module of their own: params validation reads this config without
importing the scene renderer (so the `prepare` stage does not depend on the renderer's code)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np


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

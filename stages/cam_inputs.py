"""What the stages that make CAMs share (cams, tsa_cache, tsa_adapt): the cams params resolved into the
CAM path's config, the prompt and attribute files read and checked, and a picklable spec that loads
the CLIP and builds `ImageCams` once per worker. One place, so the cache's masks and the pseudo-labels
come from the same code and params."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def read_words(path: str, key: str) -> list[str]:
    """Non-empty lines of a word file; ParamsError naming the param and the file."""
    from pipeline.params import ParamsError

    try:
        words = [w.strip() for w in Path(path).read_text(encoding="utf-8").splitlines() if w.strip()]
    except OSError as err:
        raise ParamsError(f"{key} {path}: cannot be read ({err.strerror})") from None
    if not words:
        raise ParamsError(f"{key} {path}: no words in the file")
    return words


def read_names(path: str | None, key: str, class_names: tuple[str, ...]) -> list[str]:
    """One prompt name per class, in index order (the class names when `path` is None)."""
    from pipeline.params import ParamsError

    if not path:
        return list(class_names)
    names = read_words(path, key)
    if len(names) != len(class_names):
        raise ParamsError(f"{key} {path}: {len(names)} names for the dataset's {len(class_names)} classes "
                          f"({', '.join(class_names)}); one line per class, in that order")
    return names


def prompts(cfg: Any, class_names: tuple[str, ...]) -> list[str]:
    """The cams section's class prompts (index order) then background prompts."""
    names = read_names(cfg.prompt_names_file, "cams.prompt_names_file", class_names)
    background = read_words(cfg.background_words_file, "cams.background_words_file") if cfg.background_words_file else []
    return [cfg.template.format(n) for n in names + background]


def attribute_sentences(cfg: Any, class_names: tuple[str, ...]) -> tuple[tuple[str, ...], ...] | None:
    """Descriptor sentences per class from `cams.attributes_file` (None when unset)."""
    from pipeline.cam.attributes import read_descriptors
    from pipeline.params import ParamsError

    if not cfg.attributes_file:
        return None
    try:
        per_class = read_descriptors(cfg.attributes_file, class_names)
    except ValueError as err:
        raise ParamsError(str(err)) from None
    if cfg.attribute_clusters > sum(map(len, per_class)):
        raise ParamsError(f"cams.attribute_clusters {cfg.attribute_clusters} exceeds the {sum(map(len, per_class))} "
                          f"sentences of cams.attributes_file {cfg.attributes_file}")
    return tuple(map(tuple, per_class))


def cam_config(cams: Any, clip: Any, **replace: Any):
    """The cams params section (and models.clip) -> `CamConfig`, the CLIP's own mean/std resolved when
    `normalise: model` (no weights loaded); `replace` overrides fields (e.g. the cache masks' box threshold)."""
    from pipeline.cam.pseudo_labels import CamConfig

    names = [k for k in CamConfig.__dataclass_fields__ if k not in replace and k not in ("mean_255", "std_255")]
    fields = {k: getattr(cams, k) for k in names}
    fields["ignore_band"] = None if fields["ignore_band"] is None else tuple(fields["ignore_band"])
    fields["scales"] = tuple(fields["scales"])
    from stages.clip_input import input_normalisation

    mean_255, std_255 = input_normalisation(cams.normalise, clip)
    return CamConfig(**fields, mean_255=mean_255, std_255=std_255, **replace)


@dataclass(frozen=True)
class ClipCams:
    """Picklable: the CAM config, the texts, and the CLIP to load; `load()` on a worker gives the CLIP
    and the text features the cams stage uses, `image_cams()` the per-image path."""

    config: Any  # pipeline.cam.pseudo_labels.CamConfig
    texts: tuple[str, ...]
    num_classes: int
    model: str
    pretrained: str | None
    device: str
    precision: str
    descriptors: tuple[tuple[str, ...], ...] | None = None
    attribute_clusters: int = 112
    attribute_drop: float = 0.1

    @classmethod
    def from_params(cls, params: Any, class_names: tuple[str, ...], **replace: Any) -> "ClipCams":
        cfg, models = params.cams, params.models
        return cls(cam_config(cfg, models.clip, **replace), tuple(prompts(cfg, class_names)), len(class_names),
                   models.clip.model, models.clip.pretrained, models.device, models.precision,
                   attribute_sentences(cfg, class_names), cfg.attribute_clusters, cfg.attribute_drop)

    @property
    def words_digest(self) -> str:
        """The texts' and descriptors' content (files enter a stage's key by content, not path)."""
        return hashlib.sha256(json.dumps([self.texts, self.descriptors]).encode()).hexdigest()[:16]

    def load(self):
        """(loaded CLIP, text features (T, E) on the CPU)."""
        from pipeline.cam.attributes import class_text_features
        from pipeline.models import load_clip

        clip = load_clip(self.model, self.pretrained, device=self.device, precision=self.precision)
        text = class_text_features(clip.model, clip.tokenizer, list(self.texts), self.num_classes,
                                   descriptors=self.descriptors, clusters=self.attribute_clusters,
                                   drop=self.attribute_drop)
        return clip, text

    def image_cams(self, clip, text, cache=None, cache_weight: float = 0.0):
        from pipeline.cam.pseudo_labels import ImageCams

        return ImageCams(clip.model.visual, text, self.num_classes, self.config, cache=cache, cache_weight=cache_weight)

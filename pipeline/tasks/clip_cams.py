"""The CAM path on a worker, for every stage that makes CAMs (cams, tsa_cache's masks, tsa_adapt, report).

`ClipCams` is the picklable recipe: the `cams` params section (the CAM path's config), the CLIP input's
normalisation, the prompts and attribute sentences read from their files, and which CLIP to load;
`load()` on a worker gives the CLIP and the text features, `image_cams()` the per-image path. One
builder, so the cache's masks, the pseudo-labels and the report's text CAMs come from the same code
and params. `CamTask` makes a store's CAMs and labels; `FeatureTask` only the patch features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ParamsError
from pipeline.tasks.groups import ImageGroups


def read_words(path: str, key: str) -> list[str]:
    """Non-empty lines of a word file; ParamsError naming the param and the file."""
    try:
        words = [w.strip() for w in Path(path).read_text(encoding="utf-8").splitlines() if w.strip()]
    except OSError as err:
        raise ParamsError(f"{key} {path}: cannot be read ({err.strerror})") from None
    if not words:
        raise ParamsError(f"{key} {path}: no words in the file")
    return words


def read_names(path: str | None, key: str, class_names: tuple[str, ...]) -> list[str]:
    """One prompt name per class, in index order (the class names when `path` is None)."""
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


@dataclass(frozen=True)
class ClipCams:
    """Picklable: the CAM path's config, the CLIP input's normalisation, the texts, and the CLIP to load."""

    config: Any  # the cams params section (pipeline.cam.config.CamConfig or a subclass)
    normalisation: tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) on the 0-255 scale
    texts: tuple[str, ...]
    num_classes: int
    model: str
    pretrained: str | None
    device: str
    precision: str
    descriptors: tuple[tuple[str, ...], ...] | None = None

    @classmethod
    def from_params(cls, params: Any, class_names: tuple[str, ...], **replace: Any) -> "ClipCams":
        """From the `cams` and `models` params a stage declared; `replace` overrides CAM path fields
        (round 2's cache weight, the report's plain text CAM)."""
        return cls.of(dataclasses.replace(params.cams, **replace), params.models, class_names)

    @classmethod
    def of(cls, config: Any, models: Any, class_names: tuple[str, ...]) -> "ClipCams":
        """From a CAM path config (pipeline.cam.config.CamConfig or the cams section) and the `models` params."""
        from pipeline.models.clip import input_normalisation

        return cls(config, input_normalisation(config.normalise, models.clip.model, models.clip.pretrained),
                   tuple(prompts(config, class_names)), len(class_names), models.clip.model, models.clip.pretrained,
                   models.device, models.precision, attribute_sentences(config, class_names))

    @property
    def weights(self) -> str:
        """The CLIP weights' content (a local checkpoint by its bytes, a tag by name): part of a stage's key."""
        from pipeline.models.clip import weights_fingerprint

        return weights_fingerprint(self.model, self.pretrained)

    @property
    def words_digest(self) -> str:
        """The texts' and descriptors' content (files enter a stage's key by content, not path)."""
        return hashlib.sha256(json.dumps([self.texts, self.descriptors]).encode()).hexdigest()[:16]

    def label_rule(self):
        """How this path's CAMs become labels (stored with the CAMs, re-applied by eval_cams)."""
        from pipeline.cam.labels import LabelRule

        return LabelRule.from_config(self.config, self.normalisation)

    def load(self):
        """(loaded CLIP, text features (T, E) on the CPU)."""
        from pipeline.cam.attributes import class_text_features
        from pipeline.models import load_clip

        clip = load_clip(self.model, self.pretrained, device=self.device, precision=self.precision)
        text = class_text_features(clip.model, clip.tokenizer, list(self.texts), self.num_classes,
                                   descriptors=self.descriptors, clusters=self.config.attribute_clusters,
                                   drop=self.config.attribute_drop)
        return clip, text

    def image_cams(self, clip, text, cache=None):
        """The per-image CAM path (pipeline.cam.pseudo_labels.ImageCams) on a loaded CLIP."""
        from pipeline.cam.pseudo_labels import ImageCams

        return ImageCams(clip.model.visual, text, self.num_classes, self.config, self.normalisation, cache=cache)


def load_cache(path: str, text, num_classes: int, scores: str):
    """The static cache CAM (pipeline.tsa.retrieval.StaticCache) over the keys of a TSA cache file; the
    background's text is the mean of the background words' features (None without any)."""
    import torch

    from pipeline.store.h5_store import H5Reader
    from pipeline.tsa.retrieval import StaticCache

    with H5Reader(path) as reader:
        keys, key_class = reader.dataset("keys"), reader.dataset("key_class")
    background = text[num_classes:].mean(0) if len(text) > num_classes else None
    return StaticCache(torch.from_numpy(keys), torch.from_numpy(key_class), text[:num_classes], background, scores=scores)


def load_adapter(path: str):
    """Round 2's cache hook (pipeline.tsa.adapter.AdaptedCache) over saved adapter weights."""
    from safetensors.torch import load_file

    from pipeline.tsa.adapter import AdaptedCache, KVAdapter

    return AdaptedCache(KVAdapter.from_state(load_file(path)))


@dataclass(frozen=True)
class CamTask:
    """Runner task: CAMs and a pseudo-label per image of `splits`. Per worker: the CLIP, the texts, the
    cache (the static TSA cache, or round 2's adapter) and stage A's store, loaded once."""

    cams: ClipCams
    index: str
    splits: tuple[str, ...]
    diffusion: str
    cache: str | None = None  # the TSA cache file (used when the config's cache_weight > 0)
    adapter: str | None = None  # round 2 (stage tsa_adapt): the adapted cache replaces the static one

    def build(self):
        from pipeline.store.dataset_index import DatasetIndex
        from pipeline.store.diffusion_maps import DiffusionMaps

        clip, text = self.cams.load()
        config = self.cams.config
        cache = None
        if config.cache_weight:
            cache = load_adapter(self.adapter) if self.adapter else \
                load_cache(self.cache, text, self.cams.num_classes, config.cache_scores) if self.cache else None
        fn = self.cams.image_cams(clip, text, cache=cache)
        index = DatasetIndex.load(self.index)
        images = index.images(self.splits)
        present = index.present(self.splits)
        groups = ImageGroups(index.ids_of(self.splits), config.batch_images)
        maps = DiffusionMaps.open(self.diffusion)
        with_p = maps.transition_grid is not None and config.rar

        def compute(group: list[str]) -> list[dict]:
            return fn.batch([images.load_image(i) for i in group], [present[i] for i in group],
                            [maps.correlation(i) if config.vce else None for i in group],
                            [maps.transition(i) if with_p else None for i in group])

        return groups.serve(compute)

    def input_digest(self, image_id: str) -> bytes:
        from pipeline.store.dataset_index import image_digests

        return image_digests(self.index, self.splits)[image_id]

    def grid(self, maps) -> int:
        """The stored CAMs' grid: P's grid t with RAR (when stage A stored P), else the CLIP's patch grid."""
        from pipeline.models.clip import clip_patch_size

        config = self.cams.config
        return maps.transition_grid if (config.rar and maps.transition_grid) else config.clip_size // clip_patch_size(self.cams.model)

    def specs(self, maps) -> list:
        """The array one image gives (layout: stages/cams.py)."""
        from pipeline.store.image_store import ArraySpec

        side = self.grid(maps)
        return [ArraySpec("cams", (self.cams.num_classes, side, side), self.cams.config.store_dtype)]

    def files(self, folder: Path) -> list:
        """The pseudo-label PNG each image gives."""
        from pipeline.store.image_store import FileSpec

        return [FileSpec("label", str(folder))]

    def attrs(self, index, maps) -> dict:
        """What the store records of how it was made (besides provenance); `label_rule` is how eval_cams
        re-makes labels from the stored CAMs."""
        return {"clip": {"model": self.cams.model, "pretrained": self.cams.pretrained}, "grid": self.grid(maps),
                "class_names": list(index.class_names), "prompts": list(self.cams.texts),
                "splits": {s: len(index.ids(s)) for s in self.splits}, "index_fingerprint": index.fingerprint,
                "label_rule": self.cams.label_rule().to_attrs()}


@dataclass(frozen=True)
class FeatureTask:
    """Runner task: per train image, its patch features (the base scale's surgery tokens with R, as the
    cache's keys are made) and its round-1 pseudo-label at the CLIP input size: the adapter's training
    set, stored per image (pipeline.store.patch_features) so that no process holds the whole split."""

    cams: ClipCams
    index: str
    diffusion: str
    labels: str  # the round-1 pseudo-label folder
    split: str  # the index's train split

    def specs(self, grid: int, dim: int) -> list:
        """The arrays one image gives (layout: pipeline/store/patch_features.py)."""
        from pipeline.store.patch_features import patch_specs

        return patch_specs(grid, dim, self.cams.config.clip_size)

    def build(self):
        import numpy as np
        from PIL import Image

        from pipeline.store.dataset_index import DatasetIndex
        from pipeline.store.diffusion_maps import DiffusionMaps
        from pipeline.store.image_store import FileSpec

        clip, text = self.cams.load()
        fn = self.cams.image_cams(clip, text)
        index = DatasetIndex.load(self.index)
        images, maps, labels = index.images([self.split]), DiffusionMaps.open(self.diffusion), FileSpec("label", self.labels)
        groups = ImageGroups(index.ids(self.split), self.cams.config.batch_images)
        size, vce = self.cams.config.clip_size, self.cams.config.vce

        def features(group: list[str]) -> list:
            return fn.patch_features([images.load_image(i) for i in group], [maps.correlation(i) if vce else None for i in group])

        one = groups.serve(features)

        def image(image_id: str) -> dict:
            small = Image.fromarray(labels.read(image_id)).resize((size, size), Image.NEAREST)
            return {"features": one(image_id).astype(np.float16), "labels": np.asarray(small, dtype=np.uint8)}

        return image

    def input_digest(self, image_id: str) -> bytes:
        from pipeline.store.dataset_index import image_digests

        return image_digests(self.index, (self.split,))[image_id]

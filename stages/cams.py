"""Stage `cams` (stage C): CLIP surgery CAMs with stage A's R, the TSA cache, affinity refinement, RAR with P, pseudo-labels.

Layout of `artifacts/cams.zarr` (a per-image store over the train split, then the eval split's other
images, so `eval_cams` can choose a background score on a split it does not report):

```
cams     (N, C, s, s) float16   CAMs in [0, 1] of the present classes on the output grid s (P's grid t
                                with RAR, else the CLIP grid); absent classes are zero
image_id, _done, _input         see pipeline.store.image_store
attrs    provenance, key, clip model, grid s, class names, prompts, splits, index_fingerprint,
         label_rule (how eval_cams re-makes labels), cache (the TSA cache's fingerprint and weight), complete
```
and `artifacts/pseudo_labels/<id>.png`: VOC-palette pseudo-labels (0 background, c + 1 class c, 255
ignored with `ignore_band`), written with each image and trusted when the store is complete. With
`cache_weight` > 0 the TSA cache's CAM (artifacts/tsa_cache.h5, DiCLIP's retrieval) is fused with the
text CAM as minmax(cache_weight * cache + text) before refinement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from pipeline import artifacts
from pipeline.skeleton import StageContext, StageSpec, run_stage
from stages.common import artifact_options

SPEC = StageSpec(
    name="cams", module=__name__,
    params=("cams", "models.clip", "models.device", "models.precision"),
    inputs=(artifacts.INDEX, artifacts.DIFFUSION, artifacts.TSA_CACHE), outputs=(artifacts.CAMS, artifacts.PSEUDO_LABELS),
    worker_imports=("pipeline.models", "pipeline.cam.pseudo_labels", "pipeline.store.diffusion_maps"),
)
EVAL_ONLY = ("cams.eval_thresholds",)


@dataclass(frozen=True)
class CamTask:
    """Runner task: load CLIP, the texts and the cache, and open stage A's store once per worker."""

    cams: object  # stages.cam_inputs.ClipCams
    index: str
    splits: tuple[str, ...]
    diffusion: str
    cache: str | None = None  # the TSA cache file when cache_weight > 0
    cache_weight: float = 0.0
    batch_images: int = 1  # images per CLIP forward (cams.batch_images)
    adapter: str | None = None  # round 2 (stage tsa_adapt): the adapted cache replaces the static one

    def build(self):
        from pipeline.store.dataset_index import DatasetIndex
        from pipeline.store.diffusion_maps import DiffusionMaps

        clip, text = self.cams.load()
        cache = load_adapter(self.adapter) if self.adapter else load_cache(self.cache, text, self.cams.num_classes)
        fn = self.cams.image_cams(clip, text, cache=cache, cache_weight=self.cache_weight if cache else 0.0)
        config = self.cams.config
        index = DatasetIndex.load(self.index)
        images = index.images(self.splits)
        present = {i: row.astype(bool) for s in self.splits for i, row in zip(index.ids(s), index.labels(s))}
        order = list(dict.fromkeys(i for s in self.splits for i in index.ids(s)))
        position = {i: n for n, i in enumerate(order)}
        maps = DiffusionMaps.open(self.diffusion)
        with_p = maps.transition_grid is not None and config.rar
        done: dict[str, dict] = {}  # the rest of the last computed group, handed out as the runner asks

        def compute(image_id: str):
            # groups are fixed by position (not by the runner's chunks), so a result never depends
            # on worker counts or on which images a resumed run had left
            if image_id not in done:
                start = position[image_id] // self.batch_images * self.batch_images
                group = order[start:start + self.batch_images]
                results = fn.batch([images.load_image(i) for i in group], [present[i] for i in group],
                                   [maps.correlation(i) if config.vce else None for i in group],
                                   [maps.transition(i) if with_p else None for i in group])
                done.clear()
                done.update(zip(group, results))
            return done.pop(image_id)

        return compute

    def input_digest(self, image_id: str) -> bytes:
        from pipeline.store.dataset_index import image_digests

        return image_digests(self.index, self.splits)[image_id]


def load_cache(path: str | None, text, num_classes: int):
    """The static cache CAM (pipeline.tsa.retrieval.StaticCache) over the keys of a TSA cache file; the
    background's text is the mean of the background words' features (None without any)."""
    if not path:
        return None
    import torch

    from pipeline.store.h5_store import H5Reader
    from pipeline.tsa.retrieval import StaticCache

    with H5Reader(path) as reader:
        keys, key_class = reader.dataset("keys"), reader.dataset("key_class")
    background = text[num_classes:].mean(0) if len(text) > num_classes else None
    return StaticCache(torch.from_numpy(keys), torch.from_numpy(key_class), text[:num_classes], background)


def load_adapter(path: str):
    """Round 2's cache hook (pipeline.tsa.adapter.AdaptedCache) over saved adapter weights."""
    from safetensors.torch import load_file

    from pipeline.tsa.adapter import AdaptedCache, KVAdapter

    return AdaptedCache(KVAdapter.from_state(load_file(path)))


def body(ctx: StageContext) -> dict:
    """CAMs and pseudo-labels for the train and eval splits."""
    from pipeline.store.diffusion_maps import DiffusionMaps
    from pipeline.store.h5_store import H5Reader
    from pipeline.store.image_store import ArraySpec, FileSpec

    cfg, models = ctx.params.cams, ctx.params.models
    index = ctx.index()
    maps = DiffusionMaps.open(ctx.path(artifacts.DIFFUSION), index_fingerprint=index.fingerprint)
    cache, cache_id = None, None
    if cfg.cache_weight:
        cache = str(ctx.path(artifacts.TSA_CACHE))
        with H5Reader(cache) as reader:  # a clear message when the cache stage has not run
            cache_id = reader.attrs.get("fingerprint") or reader.attrs["key"]
    ctx.start_workers()  # inputs are good: the workers load torch and CLIP while this process does too

    from pipeline.cam.pseudo_labels import LabelRule
    from pipeline.models.clip import clip_patch_size
    from stages.cam_inputs import ClipCams

    splits = tuple(dict.fromkeys([index.meta["train_split"], index.meta["eval_split"]]))
    ids = list(dict.fromkeys(i for s in splits for i in index.ids(s)))
    cams = ClipCams.from_params(ctx.params, index.class_names)
    side = maps.transition_grid if (cfg.rar and maps.transition_grid) else cfg.clip_size // clip_patch_size(models.clip.model)
    inputs = {"index": index.fingerprint, "diffusion": maps.store.fingerprint, "texts": cams.words_digest}
    if cache_id:
        inputs["tsa_cache"] = cache_id
    stamp = ctx.stamp(exclude=EVAL_ONLY, inputs=inputs)
    C = len(index.class_names)
    attrs = {**stamp, "clip": {"model": models.clip.model, "pretrained": models.clip.pretrained}, "grid": side,
             "class_names": list(index.class_names), "prompts": list(cams.texts),
             "splits": {s: len(index.ids(s)) for s in splits}, "index_fingerprint": index.fingerprint,
             "label_rule": LabelRule.from_config(cams.config).to_attrs(),
             "cache": {"fingerprint": cache_id, "weight": cfg.cache_weight}}
    task = CamTask(cams, str(index.path), splits, str(ctx.path(artifacts.DIFFUSION)), cache, cfg.cache_weight,
                   cfg.batch_images)
    store, report = ctx.images(task, ctx.path(artifacts.CAMS), ids=ids, specs=[ArraySpec("cams", (C, side, side), "float16")],
                               files=[FileSpec("label", str(ctx.path(artifacts.PSEUDO_LABELS)))], key=stamp["fingerprint"],
                               attrs=attrs, shard_images=cfg.shard_images, desc="cams")
    return {"images": len(ids), "computed": report.computed}


@click.command("cams")
@artifact_options(SPEC)
def cams_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Stage C: CAMs and pseudo-labels for the train and eval splits, offline from stage A's store and the TSA cache.

    Reads params sections `cams`, `models` (clip.model, clip.pretrained, device, precision) and `runner`.
    Per image: the CLIP input (`clip_size`, `normalise`), the surgery forward (`surgery`: DiCLIP's or
    ExCEL's) with stage A's R added to every surgery head (`vce`), feature-surgery text CAMs of
    `template` over the class names (`prompt_names_file`, optionally enriched by `attributes_file`) and
    background words (`background_words_file`), fused with the TSA cache's CAM (`cache_weight`, 0 = off),
    affinity refinement from CLIP's attention inside per-class boxes (`refine`, `box_threshold`), the
    random walk with stage A's P (`rar`, `rar_iterations`), then background = 1 - max (or
    `bg_threshold`), optional PAR (`par`) and an ignore band (`ignore_band`), argmax over the present
    classes. Writes artifacts/cams.zarr and artifacts/pseudo_labels/<id>.png; resumable like every
    per-image stage.
    """
    run_stage(SPEC, body, params_path=params_path, paths=paths)

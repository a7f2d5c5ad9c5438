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

from pathlib import Path

import click

from pipeline import artifacts
from pipeline.command import artifact_options
from pipeline.skeleton import StageContext, StageSpec, run_stage

SPEC = StageSpec(
    name="cams", module=__name__, command="cams",
    params=("cams", "models.clip", "models.device", "models.precision"),
    inputs=(artifacts.INDEX, artifacts.DIFFUSION, artifacts.TSA_CACHE), outputs=(artifacts.CAMS, artifacts.PSEUDO_LABELS),
    worker_imports=("pipeline.models", "pipeline.cam.pseudo_labels", "pipeline.store.diffusion_maps"),
)
EVAL_ONLY = ("cams.eval_thresholds",)


def body(ctx: StageContext) -> dict:
    """CAMs and pseudo-labels for the train and eval splits."""
    from pipeline.store.diffusion_maps import DiffusionMaps
    from pipeline.store.h5_store import H5Reader

    cfg = ctx.params.cams
    index = ctx.index()
    maps = DiffusionMaps.open(ctx.path(artifacts.DIFFUSION), index_fingerprint=index.fingerprint)
    cache, cache_id = None, None
    if cfg.cache_weight:
        cache = str(ctx.path(artifacts.TSA_CACHE))
        with H5Reader(cache) as reader:  # a clear message when the cache stage has not run
            cache_id = reader.attrs.get("fingerprint") or reader.attrs["key"]
    splits = tuple(dict.fromkeys([index.meta["train_split"], index.meta["eval_split"]]))
    reads_stage_a = cfg.vce or cfg.rar  # else stage A's maps decide no byte of the CAMs (the demo: README, Stage A)
    if reads_stage_a:
        maps.require_splits({s: index.ids(s) for s in splits}, "cams.vce" if cfg.vce else "cams.rar")
    ctx.start_workers()  # inputs are good: the workers load torch and CLIP while this process does too

    from pipeline.tasks.clip_cams import CamTask, ClipCams

    cams = ClipCams.from_params(ctx.params, index.class_names)
    inputs = {"index": index.fingerprint, "texts": cams.words_digest}
    if reads_stage_a:
        inputs["diffusion"] = maps.store.fingerprint
    if cache_id:
        inputs["tsa_cache"] = cache_id
    stamp = ctx.stamp(exclude=EVAL_ONLY, inputs=inputs, clip_weights=cams.weights)
    task = CamTask(cams, str(index.path), splits, str(ctx.path(artifacts.DIFFUSION)), cache=cache)
    attrs = {**stamp, **task.attrs(index, maps), "cache": {"fingerprint": cache_id, "weight": cfg.cache_weight}}
    store, report = ctx.images(task, ctx.path(artifacts.CAMS), ids=index.ids_of(splits), specs=task.specs(maps),
                               files=task.files(ctx.path(artifacts.PSEUDO_LABELS)), key=stamp["fingerprint"],
                               attrs=attrs, shard_images=cfg.shard_images, desc="cams")
    return {"images": len(store.ids()), "computed": report.computed}


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
    per-image stage. Stage A's maps are read (and are part of the stage's key) only with `vce` or `rar`;
    then stage A must hold every train and eval image (`diffusion_attention.splits`).
    """
    run_stage(SPEC, body, params_path=params_path, paths=paths)

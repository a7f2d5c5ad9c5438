"""Stage `tsa_cache` (stage B): class images drawn by Stable Diffusion, their masks, prototype keys and values.

Per class c and image i < images_per_class: the image of `template` (the class's prompt name), drawn
from noise seeded by (seed, c, i); stage A's R and P of that image (the diffusion_attention params);
its mask from the cams stage's own path with only class c present (box threshold
`tsa_cache.box_threshold`); its foreground and background prototypes (mean patch feature inside and
outside the mask). Images whose mask is empty are kept but give no foreground prototype (DiCLIP drops
them). Keys: KMeans per class over the foreground prototypes, and over every background prototype.
Layout of `artifacts/tsa_cache.h5`: pipeline/tasks/tsa_cache.py. `artifacts/metrics/tsa_cache.json`:
patch classification accuracy of the cache (nearest key) and of the texts alone on real eval-split
scenes. `artifacts/tsa_cache.png`: per class, generated images with masks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from pipeline import artifacts
from pipeline.cam.config import CamConfig
from pipeline.command import artifact_options
from pipeline.skeleton import StageContext, StageSpec, run_stage

#: the cams params the masks are made with: the CAM path but its box threshold (the cache's own) and the
#: cache's fusion (no cache makes its own masks)
MASK_FIELDS = tuple(f.name for f in dataclasses.fields(CamConfig) if f.name not in ("box_threshold", "cache_weight"))
MASK_PARAMS = tuple(f"cams.{k}" for k in MASK_FIELDS)
SPEC = StageSpec(
    name="tsa_cache", module=__name__, command="tsa-cache",
    params=("tsa_cache", "diffusion_attention", *MASK_PARAMS, "models.clip", "models.sd", "models.device",
            "models.precision"),
    inputs=(artifacts.INDEX, artifacts.DIFFUSION),
    outputs=(artifacts.TSA_CACHE, artifacts.TSA_PICTURE, artifacts.TSA_METRIC, artifacts.TSA_DETAIL),
    worker_imports=("pipeline.models", "pipeline.tsa.generate", "pipeline.tsa.masks", "pipeline.cam.pseudo_labels"),
)
#: params that change neither an image nor its mask: records are reused across them (raising N draws only new images)
NOT_PER_RECORD = tuple(f"tsa_cache.{k}" for k in ("images_per_class", "keys_per_class", "background_keys", "eval_images"))


def body(ctx: StageContext) -> tuple[dict, dict]:
    """Draw (or reuse) every class's images, mask them, build keys, write the cache, its picture and metric."""
    from pipeline.diffusion.plan import plan
    from pipeline.models.sd_config import weights_fingerprint
    from pipeline.store.h5_store import H5Writer, seed_from_file
    from pipeline.tasks.clip_cams import ClipCams, read_names
    from pipeline.tasks.tsa_cache import DrawTask, cache_keys, draw_items, held_out_accuracy, record_name, write_picture

    cfg, models = ctx.params.tsa_cache, ctx.params.models
    index = ctx.index()
    names = index.class_names
    prompt_of = tuple(cfg.template.replace("{}", n) for n in read_names(cfg.prompt_names_file, "tsa_cache.prompt_names_file", names))
    mask_path = CamConfig(**{k: getattr(ctx.params.cams, k) for k in MASK_FIELDS}, box_threshold=cfg.box_threshold)
    cams = ClipCams.of(mask_path, models, names)
    p = plan(ctx.params.diffusion_attention, models.sd.model)
    ctx.start_workers()
    words = {"words": cams.words_digest, "prompts": list(prompt_of)}
    weights = {"clip_weights": cams.weights, "sd_weights": weights_fingerprint(models.sd.model)}
    record_key = ctx.stamp(exclude=NOT_PER_RECORD, inputs=words, **weights)["fingerprint"]
    out = ctx.path(artifacts.TSA_CACHE)
    writer = H5Writer(out, key=record_key)
    seed_from_file(writer, out)  # an earlier run's records with the same key are kept: raising N draws only new ones
    items = draw_items(writer, names, cfg.images_per_class, cfg.batch)
    task = DrawTask(models.sd.model, models.device, models.precision, cfg.scheduler, p, cams, prompt_of, cfg.steps,
                    cfg.guidance, cfg.image_size, cfg.seed)
    for c, name in enumerate(names):  # a progress bar per class
        mine = [item for item in items if item[0] == c]
        for _, records in ctx.runner.imap(task, mine, desc=f"tsa_cache {name}", unit="img",
                                            weights=[len(i[2]) for i in mine], uses_torch=True):
            for k, i, arrays in records:
                writer.put(record_name(names[k], i), arrays)  # durable at once: a kill loses only what is in flight
    keys, values, key_class, empty = cache_keys(writer, names, cfg.images_per_class, per_class=cfg.keys_per_class,
                                                background=cfg.background_keys)
    stamp = ctx.stamp(exclude=("tsa_cache.eval_images",), inputs=words, **weights)
    attrs = {**stamp, "record_key": record_key, "prompts": list(prompt_of), "seed": cfg.seed,
             "seed_rule": "sha256('tsa/{seed}/{class index}/{image index}')[:8] little-endian, 63 bits",
             "images_per_class": cfg.images_per_class, "sd_model": models.sd.model, "clip_model": models.clip.model,
             "clip_pretrained": models.clip.pretrained or "", "steps": cfg.steps, "guidance": cfg.guidance,
             "scheduler": cfg.scheduler, "image_size": cfg.image_size, "batch": cfg.batch, "empty_masks": empty}
    writer.finish(attrs=attrs, datasets={"keys": keys, "values": values, "key_class": key_class, "class_names": names})
    write_picture(out, ctx.path(artifacts.TSA_PICTURE), names, min(8, cfg.images_per_class))
    detail = held_out_accuracy(index, ctx.path(artifacts.DIFFUSION), cams, keys, key_class, cfg.eval_images) \
        if cfg.eval_images else {}
    detail.update({"keys": int(len(keys)), "empty_masks": empty, "images": len(names) * cfg.images_per_class,
                   "drawn_now": sum(len(i[2]) for i in items)})
    headline = {"keys": detail["keys"], **{f"{n}_accuracy": detail[n]["accuracy"] for n in ("cache", "text") if n in detail}}
    return ctx.write_metrics(artifacts.TSA_METRIC, artifacts.TSA_DETAIL, headline, detail)


@click.command("tsa-cache")
@artifact_options(SPEC)
def tsa_cache_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Stage B: draw `images_per_class` images of every class with Stable Diffusion (`models.sd`, `template`,
    `steps`, `guidance`, `scheduler`, `image_size`; noise seeded by (`seed`, class, image)), mask them with
    the cams stage's path (stage A's R and P of each drawn image, `box_threshold`), and cluster their
    prototypes into keys (`keys_per_class`, `background_keys`). Writes artifacts/tsa_cache.h5, a picture
    and a metric. Raising `images_per_class` draws only the new images; a killed run resumes."""
    run_stage(SPEC, body, params_path=params_path, paths=paths)

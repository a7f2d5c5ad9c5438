"""Stage `tsa_cache` (stage B): class images drawn by Stable Diffusion, their masks, prototype keys and values.

Per class c and image i < images_per_class: the image of `template` (the class's prompt name), drawn
from noise seeded by (seed, c, i); stage A's R and P of that image (the diffusion_attention params);
its mask from the cams stage's own path with only class c present (box threshold
`tsa_cache.box_threshold`); its foreground and background prototypes (mean patch feature inside and
outside the mask). Images whose mask is empty are kept but give no foreground prototype (DiCLIP drops
them). Keys: KMeans per class over the foreground prototypes, and over every background prototype.

Layout of `artifacts/tsa_cache.h5` (h5py alone reads it):
```
/records/<class name>/<iiiii>/image         (S, S, 3) uint8   the generated image (gzip, one chunk)
                             /mask          (S, S) uint8      0 background, c + 1 the class (VOC ids)
                             /fg_prototype  (E,) float32      mean patch feature inside (absent if the mask is empty)
                             /bg_prototype  (E,) float32      mean patch feature outside (absent if the mask is full)
                             /seed          () int64          the noise seed of the image
/keys        (K, E) float32   [background keys, class 0 keys, class 1 keys, ...]
/values      (K, C + 1) float32  one-hot, column 0 = background
/key_class   (K,) int64       -1 background, else the class index
/class_names (C,) str
attrs: provenance, key (the record key), prompts (JSON), seed, model ids, images_per_class, generation, ...
```
`artifacts/metrics/tsa_cache.json`: patch classification accuracy of the cache (nearest key) and of the
texts alone on real eval-split scenes. `artifacts/tsa_cache.png`: per class, generated images with masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from pipeline import artifacts
from pipeline.skeleton import StageContext, StageSpec, run_stage
from stages.common import artifact_options

#: the cams params the masks are made with (the stage's own path; eval and storage keys left out)
MASK_PARAMS = tuple(f"cams.{k}" for k in (
    "clip_size", "normalise", "template", "prompt_names_file", "background_words_file", "attributes_file",
    "attribute_clusters", "attribute_drop", "surgery", "surgery_blocks", "head_reduce", "token_norm", "cls_weighting",
    "vce", "refine", "affinity_blocks", "sinkhorn_rounds", "exclusive_box_end", "rar", "rar_iterations",
    "bg_threshold", "par", "par_iterations", "ignore_band", "scales", "flip"))
SPEC = StageSpec(
    name="tsa_cache", module=__name__,
    params=("tsa_cache", "diffusion_attention", *MASK_PARAMS, "models.clip", "models.sd", "models.device",
            "models.precision"),
    inputs=(artifacts.INDEX, artifacts.DIFFUSION),
    outputs=(artifacts.TSA_CACHE, artifacts.TSA_PICTURE, artifacts.TSA_METRIC),
    worker_imports=("pipeline.models", "pipeline.tsa.generate", "pipeline.tsa.masks", "pipeline.cam.pseudo_labels"),
)
#: params that change neither an image nor its mask: records are reused across them (raising N draws only new images)
NOT_PER_RECORD = tuple(f"tsa_cache.{k}" for k in ("images_per_class", "keys_per_class", "background_keys", "eval_images"))


@dataclass(frozen=True)
class DrawTask:
    """Runner item function: draw one fixed group of a class's images, keep the wanted ones, and mask
    them (stage A's R and P of each drawn image, then the cams path). Models load once per worker."""

    sd_model: str
    device: str
    precision: str
    scheduler: str
    plan: object  # stages.diffusion_attention.Plan: stage A's per-image function
    cams: object  # stages.cam_inputs.ClipCams with the cache masks' box threshold
    prompt_of: tuple[str, ...]
    steps: int
    guidance: float
    image_size: int
    seed: int

    def __call__(self, item: tuple[int, tuple[int, ...], tuple[int, ...]]) -> list[tuple[int, int, dict]]:
        import numpy as np

        from pipeline.tsa.generate import generate, generation_seed
        from pipeline.tsa.masks import mask_records

        c, group, wanted = item
        pipe, stage_a, cams = _tools(self)
        seeds = [generation_seed(self.seed, c, i) for i in group]
        images = generate(pipe, self.prompt_of[c], seeds, steps=self.steps, guidance=self.guidance, size=self.image_size)
        keep = [n for n, i in enumerate(group) if i in wanted]
        records = mask_records(cams, stage_a, c, [images[n] for n in keep], [f"tsa/{c}/{group[n]}" for n in keep])
        return [(c, group[n], {**r, "seed": np.int64(seeds[n])}) for n, r in zip(keep, records)]


_TOOLS: dict[DrawTask, tuple] = {}


def _tools(task: DrawTask) -> tuple:
    """(pipeline with the task's sampler, stage A's per-image function, ImageCams), once per worker."""
    if task not in _TOOLS:
        from pipeline.models import load_stable_diffusion
        from pipeline.tsa.generate import use_scheduler

        pipe = load_stable_diffusion(task.sd_model, device=task.device, precision=task.precision)
        stage_a = task.plan.maps(pipe)  # keeps the model's own scheduler's noise table
        clip, text = task.cams.load()
        _TOOLS.clear()
        _TOOLS[task] = (use_scheduler(pipe, task.scheduler), stage_a, task.cams.image_cams(clip, text))
    return _TOOLS[task]


def body(ctx: StageContext) -> dict:
    """Draw (or reuse) every class's images, mask them, build keys, write the cache, its picture and metric."""
    import numpy as np

    from stages.diffusion_attention import plan
    from pipeline.store.h5_store import H5Writer, seed_from_file
    from pipeline.tsa.generate import group_of
    from pipeline.tsa.prototypes import build_keys
    from stages.cam_inputs import ClipCams, read_names

    cfg, models = ctx.params.tsa_cache, ctx.params.models
    index = ctx.index()
    names = index.class_names
    C = len(names)
    prompt_of = tuple(cfg.template.replace("{}", n)
                      for n in read_names(cfg.prompt_names_file, "tsa_cache.prompt_names_file", names))
    cams = ClipCams.from_params(ctx.params, names, box_threshold=cfg.box_threshold)
    p = plan(ctx.params.diffusion_attention, models.sd.model)
    ctx.start_workers()
    words = {"words": cams.words_digest, "prompts": list(prompt_of)}
    record_key = ctx.stamp(exclude=NOT_PER_RECORD, inputs=words)["fingerprint"]
    out = ctx.path(artifacts.TSA_CACHE)
    writer = H5Writer(out, key=record_key)
    seed_from_file(writer, out)  # an earlier run's records with the same key are kept: raising N draws only new ones
    items = []
    for c in range(C):
        missing = [i for i in range(cfg.images_per_class) if not writer.has(_record(names[c], i))]
        for start in dict.fromkeys(group_of(i, cfg.batch).start for i in missing):
            group = tuple(group_of(start, cfg.batch))
            items.append((c, group, tuple(i for i in missing if i in group)))
    task = DrawTask(models.sd.model, models.device, models.precision, cfg.scheduler, p, cams, prompt_of, cfg.steps,
                    cfg.guidance, cfg.image_size, cfg.seed)
    for c, name in enumerate(names):  # a progress bar per class
        mine = [item for item in items if item[0] == c]
        for _, records in ctx.runner.imap(task, mine, desc=f"tsa_cache {name}", unit="img",
                                            weights=[len(i[2]) for i in mine], uses_torch=True):
            for k, i, arrays in records:
                writer.put(_record(names[k], i), arrays)  # durable at once: a kill loses only what is in flight

    chosen = {_record(names[c], i): c for c in range(C) for i in range(cfg.images_per_class)}
    for record in set(writer.keys()) - set(chosen):  # images past a lowered N stay out of the file
        writer.drop(record)
    fg: dict[int, list] = {c: [] for c in range(C)}
    bg, empty = [], {n: 0 for n in names}
    for record, c in chosen.items():
        r = writer.get(record)
        if "fg_prototype" in r:
            fg[c].append(r["fg_prototype"])
        else:
            empty[names[c]] += 1
        if "bg_prototype" in r:
            bg.append(r["bg_prototype"])
    keys, values, key_class = build_keys({c: np.stack(v) for c, v in fg.items() if v}, np.asarray(bg, np.float32), C,
                                         per_class=cfg.keys_per_class, background=cfg.background_keys)
    stamp = ctx.stamp(exclude=(f"tsa_cache.eval_images",), inputs=words)
    attrs = {**stamp, "record_key": record_key, "prompts": list(prompt_of), "seed": cfg.seed,
             "seed_rule": "sha256('tsa/{seed}/{class index}/{image index}')[:8] little-endian, 63 bits",
             "images_per_class": cfg.images_per_class, "sd_model": models.sd.model, "clip_model": models.clip.model,
             "clip_pretrained": models.clip.pretrained or "", "steps": cfg.steps, "guidance": cfg.guidance,
             "scheduler": cfg.scheduler, "image_size": cfg.image_size, "batch": cfg.batch, "empty_masks": empty}
    writer.finish(attrs=attrs, datasets={"keys": keys, "values": values, "key_class": key_class,
                                         "class_names": np.asarray(names, dtype=str)})
    write_picture(out, ctx.path(artifacts.TSA_PICTURE), names, min(8, cfg.images_per_class))
    metric = held_out_accuracy(ctx, cams, keys, key_class) if cfg.eval_images else {}
    metric.update({"keys": int(len(keys)), "empty_masks": empty, "images": C * cfg.images_per_class,
                   "drawn_now": sum(len(i[2]) for i in items)})
    ctx.write_metric(artifacts.TSA_METRIC, metric)
    return metric


def write_picture(cache: Path, out: Path, names: tuple[str, ...], per_class: int) -> None:
    """artifacts/tsa_cache.png: per class, the first drawn images above their masks."""
    from PIL import Image

    from pipeline import atomic
    from pipeline.store.h5_store import H5Reader
    from pipeline.tsa.report import picture

    with H5Reader(cache) as reader:
        rows = [[(r["image"], r["mask"]) for r in (reader.record(_record(n, i)) for i in range(per_class))] for n in names]
    atomic.write_with(out, lambda tmp: Image.fromarray(picture(rows, per_class=per_class)).save(tmp, format="PNG"))


def held_out_accuracy(ctx: StageContext, cams, keys, key_class) -> dict:
    """Patch classification on the eval split's first `eval_images` real scenes: nearest key vs texts."""
    from pipeline.store.diffusion_maps import DiffusionMaps
    from pipeline.tsa.report import cache_metric

    index = ctx.index()
    split = index.meta["eval_split"]
    ids = index.ids(split)[: ctx.params.tsa_cache.eval_images]
    present = dict(zip(index.ids(split), index.labels(split).astype(bool)))
    clip, text = cams.load()
    maps = DiffusionMaps.open(ctx.path(artifacts.DIFFUSION), index_fingerprint=index.fingerprint)
    correlation = (lambda i: maps.correlation(i)) if cams.config.vce else (lambda i: None)
    metric = cache_metric(index.images([split]), ids, present, cams.image_cams(clip, text), correlation, keys,
                          key_class, text.numpy(), cams.num_classes)
    return {"split": split, **metric}


def _record(name: str, i: int) -> str:
    return f"{name}/{i:05d}"


@click.command("tsa-cache")
@artifact_options(SPEC)
def tsa_cache_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Stage B: draw `images_per_class` images of every class with Stable Diffusion (`models.sd`, `template`,
    `steps`, `guidance`, `scheduler`, `image_size`; noise seeded by (`seed`, class, image)), mask them with
    the cams stage's path (stage A's R and P of each drawn image, `box_threshold`), and cluster their
    prototypes into keys (`keys_per_class`, `background_keys`). Writes artifacts/tsa_cache.h5, a picture
    and a metric. Raising `images_per_class` draws only the new images; a killed run resumes."""
    run_stage(SPEC, body, params_path=params_path, paths=paths)

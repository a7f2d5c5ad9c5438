"""Stage `tsa_cache` on a worker and around it: draw a class's images, mask them through the cams path,
turn the records into keys, and show and score the result.

Layout of `artifacts/tsa_cache.h5` (h5py alone reads it; pipeline/store/h5_store.py):
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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.diffusion.plan import Plan
from pipeline.tasks.clip_cams import ClipCams


def record_name(class_name: str, i: int) -> str:
    return f"{class_name}/{i:05d}"


@dataclass(frozen=True)
class DrawTask:
    """Runner item task: draw one fixed group of a class's images, keep the wanted ones, and mask them
    (stage A's R and P of each drawn image, then the cams path). Models load once per worker."""

    sd_model: str
    device: str
    precision: str
    scheduler: str
    plan: Plan  # stage A's per-image function
    cams: ClipCams  # with the cache masks' box threshold
    prompt_of: tuple[str, ...]
    steps: int
    guidance: float
    image_size: int
    seed: int

    def build(self):
        import numpy as np

        from pipeline.models import load_stable_diffusion
        from pipeline.tsa.generate import generate, generation_seed, use_scheduler
        from pipeline.tsa.masks import mask_records

        pipe = load_stable_diffusion(self.sd_model, device=self.device, precision=self.precision)
        stage_a = self.plan.maps(pipe)  # keeps the model's own scheduler's noise table
        sampler = use_scheduler(pipe, self.scheduler)
        clip, text = self.cams.load()
        cams = self.cams.image_cams(clip, text)

        def draw(item: tuple[int, tuple[int, ...], tuple[int, ...]]) -> list[tuple[int, int, dict]]:
            c, group, wanted = item
            seeds = [generation_seed(self.seed, c, i) for i in group]
            images = generate(sampler, self.prompt_of[c], seeds, steps=self.steps, guidance=self.guidance, size=self.image_size)
            keep = [n for n, i in enumerate(group) if i in wanted]
            records = mask_records(cams, stage_a, c, [images[n] for n in keep], [f"tsa/{c}/{group[n]}" for n in keep])
            return [(c, group[n], {**r, "seed": np.int64(seeds[n])}) for n, r in zip(keep, records)]

        return draw


def draw_items(writer: Any, names: tuple[str, ...], images_per_class: int, batch: int) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """(class, group of image indices drawn together, the ones of them not yet stored) for every record
    the writer lacks: groups are fixed (pipeline.tsa.generate.group_of), so an image never depends on N."""
    from pipeline.tsa.generate import group_of

    items = []
    for c, name in enumerate(names):
        missing = [i for i in range(images_per_class) if not writer.has(record_name(name, i))]
        for start in dict.fromkeys(group_of(i, batch).start for i in missing):
            group = tuple(group_of(start, batch))
            items.append((c, group, tuple(i for i in missing if i in group)))
    return items


def cache_keys(writer: Any, names: tuple[str, ...], images_per_class: int, *, per_class: int, background: int):
    """Drop records past `images_per_class`, then cluster the kept records' prototypes into keys:
    (keys, values, key_class, {class name: images whose mask came out empty})."""
    import numpy as np

    from pipeline.tsa.prototypes import build_keys

    chosen = {record_name(name, i): c for c, name in enumerate(names) for i in range(images_per_class)}
    for record in set(writer.keys()) - set(chosen):  # images past a lowered N stay out of the file
        writer.drop(record)
    fg: dict[int, list] = {c: [] for c in range(len(names))}
    bg, empty = [], {n: 0 for n in names}
    for record, c in chosen.items():
        r = writer.get(record)
        if "fg_prototype" in r:
            fg[c].append(r["fg_prototype"])
        else:
            empty[names[c]] += 1
        if "bg_prototype" in r:
            bg.append(r["bg_prototype"])
    keys, values, key_class = build_keys({c: np.stack(v) for c, v in fg.items() if v}, np.asarray(bg, np.float32),
                                         len(names), per_class=per_class, background=background)
    return keys, values, key_class, empty


def write_picture(cache: Path, out: Path, names: tuple[str, ...], per_class: int) -> None:
    """artifacts/tsa_cache.png: per class, the first drawn images above their masks."""
    from PIL import Image

    from pipeline import atomic
    from pipeline.store.h5_store import H5Reader
    from pipeline.tsa.report import picture

    with H5Reader(cache) as reader:
        rows = [[(r["image"], r["mask"]) for r in (reader.record(record_name(n, i)) for i in range(per_class))] for n in names]
    atomic.write_with(out, lambda tmp: Image.fromarray(picture(rows, per_class=per_class)).save(tmp, format="PNG"))


def held_out_accuracy(index: Any, diffusion: Path, cams: ClipCams, keys, key_class, images: int) -> dict:
    """Patch classification on the eval split's first `images` real scenes: nearest key vs texts."""
    from pipeline.store.diffusion_maps import DiffusionMaps
    from pipeline.tsa.report import cache_metric

    split = index.meta["eval_split"]
    ids = index.ids(split)[:images]
    clip, text = cams.load()
    maps = DiffusionMaps.open(diffusion, index_fingerprint=index.fingerprint)
    correlation = (lambda i: maps.correlation(i)) if cams.config.vce else (lambda i: None)
    metric = cache_metric(index.images([split]), ids, index.present([split]), cams.image_cams(clip, text), correlation,
                          keys, key_class, text.numpy(), cams.num_classes)
    return {"split": split, **metric}

"""Stage `cams` (stage C): CLIP surgery CAMs with stage A's R, affinity refinement, RAR with P, pseudo-labels.

Layout of `artifacts/cams.zarr` (a per-image store over the train split, then the eval split's other
images, so `eval_cams` can choose a background score on a split it does not report):

```
cams     (N, C, s, s) float16   CAMs in [0, 1] of the present classes on the output grid s (P's grid t
                                with RAR, else the CLIP grid); absent classes are zero
image_id, _done, _input         see pipeline.store.image_store
attrs    provenance, key, clip model, grid s, class names, prompts, splits, index_fingerprint, complete
```
and `artifacts/pseudo_labels/<id>.png`: VOC-palette pseudo-labels (0 background, c + 1 class c),
written with each image and trusted when the store is complete. The fusion point of the TSA cache
(next stage) is where the text CAM is made (pipeline.cam.pseudo_labels.ImageCams).
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
    inputs=(artifacts.INDEX, artifacts.DIFFUSION), outputs=(artifacts.CAMS, artifacts.PSEUDO_LABELS),
)
EVAL_ONLY = ("cams.eval_thresholds",)


def prompts(cfg, class_names: tuple[str, ...]) -> list[str]:
    """Class prompts (index order) then background prompts; ParamsError naming a file that does not fit."""
    from pipeline.params import ParamsError

    names = list(class_names)
    if cfg.prompt_names_file:
        names = _read_words(cfg.prompt_names_file, "cams.prompt_names_file")
        if len(names) != len(class_names):
            raise ParamsError(f"cams.prompt_names_file {cfg.prompt_names_file}: {len(names)} names for the dataset's "
                              f"{len(class_names)} classes ({', '.join(class_names)}); one line per class, in that order")
    background = _read_words(cfg.background_words_file, "cams.background_words_file") if cfg.background_words_file else []
    return [cfg.template.format(n) for n in names + background]


def _read_words(path: str, key: str) -> list[str]:
    from pipeline.params import ParamsError

    try:
        words = [w.strip() for w in Path(path).read_text(encoding="utf-8").splitlines() if w.strip()]
    except OSError as err:
        raise ParamsError(f"{key} {path}: cannot be read ({err.strerror})") from None
    if not words:
        raise ParamsError(f"{key} {path}: no words in the file")
    return words


@dataclass(frozen=True)
class CamTask:
    """Runner task: load CLIP, encode the prompts and open stage A's store once per worker."""

    config: object  # pipeline.cam.pseudo_labels.CamConfig without the normalisation resolved
    normalise: str
    model: str
    pretrained: str | None
    device: str
    precision: str
    texts: tuple[str, ...]
    num_classes: int
    index: str
    splits: tuple[str, ...]
    diffusion: str

    def build(self):
        import dataclasses

        from pipeline.cam.pseudo_labels import ImageCams
        from pipeline.cam.text import encode_prompts
        from pipeline.models import load_clip
        from pipeline.store.dataset_index import DatasetIndex
        from pipeline.store.diffusion_maps import DiffusionMaps

        clip = load_clip(self.model, self.pretrained, device=self.device, precision=self.precision)
        config = self.config
        if self.normalise == "model":
            cfg = clip.model.visual.preprocess_cfg
            config = dataclasses.replace(config, mean_255=tuple(255 * m for m in cfg["mean"]),
                                         std_255=tuple(255 * s for s in cfg["std"]))
        text = encode_prompts(clip.model, clip.tokenizer, list(self.texts)).cpu()
        fn = ImageCams(clip.model.visual, text, self.num_classes, config)
        index = DatasetIndex.load(self.index)
        images = index.images(self.splits)
        present = {i: row.astype(bool) for s in self.splits for i, row in zip(index.ids(s), index.labels(s))}
        maps = DiffusionMaps.open(self.diffusion)
        with_p = maps.transition_grid is not None and config.rar

        def compute(image_id: str):
            p = maps.transition(image_id) if with_p else None
            r = maps.correlation(image_id) if config.vce else None
            return fn(images.load_image(image_id), present[image_id], r, p)

        return compute

    def input_digest(self, image_id: str) -> bytes:
        from pipeline.store.dataset_index import image_digests

        return image_digests(self.index, self.splits)[image_id]


def body(ctx: StageContext) -> dict:
    """CAMs and pseudo-labels for the train and eval splits."""
    from pipeline.cam.pseudo_labels import CamConfig
    from pipeline.models.clip import clip_patch_size
    from pipeline.store.diffusion_maps import DiffusionMaps
    from pipeline.store.image_store import ArraySpec, FileSpec

    cfg, models = ctx.params.cams, ctx.params.models
    index = ctx.index()
    maps = DiffusionMaps.open(ctx.path(artifacts.DIFFUSION), index_fingerprint=index.fingerprint)
    splits = tuple(dict.fromkeys([index.meta["train_split"], index.meta["eval_split"]]))
    ids = list(dict.fromkeys(i for s in splits for i in index.ids(s)))
    texts = tuple(prompts(cfg, index.class_names))
    fields = {k: getattr(cfg, k) for k in CamConfig.__dataclass_fields__ if hasattr(cfg, k)}
    config = CamConfig(**fields)  # ImageNet normalisation unless the task swaps in the model's (normalise: model)
    side = maps.transition_grid if (cfg.rar and maps.transition_grid) else cfg.clip_size // clip_patch_size(models.clip.model)
    stamp = ctx.stamp(exclude=EVAL_ONLY, inputs={"index": index.fingerprint, "diffusion": maps.store.fingerprint})
    C = len(index.class_names)
    attrs = {**stamp, "clip": {"model": models.clip.model, "pretrained": models.clip.pretrained}, "grid": side,
             "class_names": list(index.class_names), "prompts": list(texts),
             "splits": {s: len(index.ids(s)) for s in splits}, "index_fingerprint": index.fingerprint}
    task = CamTask(config, cfg.normalise, models.clip.model, models.clip.pretrained, models.device, models.precision,
                   texts, C, str(index.path), splits, str(ctx.path(artifacts.DIFFUSION)))
    store, report = ctx.images(task, ctx.path(artifacts.CAMS), ids=ids, specs=[ArraySpec("cams", (C, side, side), "float16")],
                               files=[FileSpec("label", str(ctx.path(artifacts.PSEUDO_LABELS)))], key=stamp["fingerprint"],
                               attrs=attrs, shard_images=cfg.shard_images, desc="cams")
    return {"images": len(ids), "computed": report.computed}


@click.command("cams")
@artifact_options(SPEC)
def cams_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Stage C: CAMs and pseudo-labels for the train and eval splits, offline from stage A's store.

    Reads params sections `cams`, `models` (clip.model, clip.pretrained, device, precision) and `runner`.
    Per image: the CLIP input (`clip_size`, `normalise`), the surgery forward (`surgery`: DiCLIP's or
    ExCEL's) with stage A's R added to every surgery head (`vce`), feature-surgery text CAMs of
    `template` over the class names (`prompt_names_file`) and background words
    (`background_words_file`), affinity refinement from CLIP's attention inside per-class boxes
    (`refine`, `box_threshold`), the random walk with stage A's P (`rar`, `rar_iterations`), then
    background = 1 - max (or `bg_threshold`) and argmax over the present classes. Writes
    artifacts/cams.zarr and artifacts/pseudo_labels/<id>.png; resumable like every per-image stage.
    """
    run_stage(SPEC, body, params_path=params_path, paths=paths)

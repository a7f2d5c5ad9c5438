"""Stage `diffusion_attention` (stage A): per image, DiCLIP's clusters, refined correlation R and RAR
transition P, into `artifacts/diffusion.zarr` (layout: pipeline/store/diffusion_maps.py)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline import artifacts
from pipeline.command import artifact_options
from pipeline.skeleton import StageContext, StageSpec, run_stage

SPEC = StageSpec(
    name="diffusion_attention", module=__name__, command="diffusion-attention",
    params=("diffusion_attention", "models.sd", "models.device", "models.precision"),
    inputs=(artifacts.INDEX,), outputs=(artifacts.DIFFUSION, artifacts.DIFFUSION_METRIC, artifacts.DIFFUSION_DETAIL),
    worker_imports=("pipeline.models", "pipeline.diffusion.recipes", "pipeline.store.dataset_index"),
)
# params that only shape the metric: changing them never recomputes the store
EVAL_ONLY = tuple(f"diffusion_attention.{k}" for k in ("eval_split", "eval_images", "eval_baselines", "compare_recipes"))


def body(ctx: StageContext) -> dict:
    """Compute (or reuse) the store for the splits of the params, mark it complete, write the metric."""
    from pipeline.diffusion.plan import plan
    from pipeline.errors import ParamsError
    from pipeline.models.sd_config import weights_fingerprint
    from pipeline.tasks.stage_a import MapsTask

    cfg, models = ctx.params.diffusion_attention, ctx.params.models
    index = ctx.index()
    splits = tuple(cfg.splits) or tuple(dict.fromkeys([index.meta["train_split"], index.meta["eval_split"]]))
    eval_split = cfg.eval_split or index.meta["eval_split"]
    if cfg.eval_images and eval_split not in splits:
        raise ParamsError(f"diffusion_attention.eval_split {eval_split!r} is not among the computed splits "
                          f"{list(splits)} (add it to diffusion_attention.splits, or set eval_images: 0)")
    p = plan(cfg, models.sd.model)
    ctx.start_workers()  # params and inputs are good: the workers load the model stack while we go on
    weights = weights_fingerprint(models.sd.model)
    extra = {"timestep": p.config.timestep, "image_size": p.config.image_size, "weights": weights, "splits": list(splits)}
    key = ctx.stamp(exclude=EVAL_ONLY, **extra)  # the resume key: per-image index digests cover the images
    stamp = ctx.stamp(exclude=EVAL_ONLY, inputs={"index": index.fingerprint}, **extra)
    task = MapsTask(p, models.sd.model, models.device, models.precision, str(index.path), splits, cfg.batch_images)
    attrs = {**stamp, **task.attrs(weights), "splits": {s: len(index.ids(s)) for s in splits},
             "index_fingerprint": index.fingerprint}
    store, _ = ctx.images(task, ctx.path(artifacts.DIFFUSION), ids=index.ids_of(splits), specs=task.specs(),
                          key=key["fingerprint"], attrs=attrs, shard_images=cfg.shard_images, desc="diffusion attention")
    return ctx.write_metrics(artifacts.DIFFUSION_METRIC, artifacts.DIFFUSION_DETAIL, *evaluate(ctx, p, store, index, eval_split))


def evaluate(ctx: StageContext, p, store, index, split: str) -> tuple[dict, dict]:
    """Best-match IoU of the stored clusters with the eval split's object masks, beside the other recipe,
    an untrained UNet and colour k-means on the same images (scored on the runner's workers); P's kept
    mass over every stored image. Returns (headline, detail)."""
    from pipeline.diffusion.evaluate import stage_a_metric
    from pipeline.store.diffusion_maps import DiffusionMaps
    from pipeline.tasks.stage_a import ScoreTask

    cfg, models = ctx.params.diffusion_attention, ctx.params.models
    ids = index.ids(split)[: cfg.eval_images]
    others = ((("acr" if p.recipe == "diclip" else "diclip"),) if cfg.compare_recipes else ()) + \
        (("untrained_unet",) if cfg.eval_baselines else ())
    task = ScoreTask(p, models.sd.model, models.device, models.precision, str(index.path), split, str(store.path),
                     others, cfg.eval_baselines)
    size = max(1, -(-len(ids) // 8))  # a few chunks per worker: models load once per worker
    chunks = [tuple(ids[i:i + size]) for i in range(0, len(ids), size)]
    per_image = [s for chunk in ctx.runner.map(task, chunks, desc="diffusion metric", unit="img",
                                               weights=[len(c) for c in chunks]) for s in chunk]
    stats = DiffusionMaps(store).transition_stats() if p.transition_k else None
    return stage_a_metric(p.recipe, per_image, stats, split=split, model=models.sd.model,
                          timestep=p.config.timestep, image_size=p.config.image_size, grid=p.grid)


@click.command("diffusion-attention")
@artifact_options(SPEC)
def diffusion_attention_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Stage A: one Stable Diffusion forward per image -> clusters, refined correlation R, transition P.

    Reads params sections `diffusion_attention`, `models` (sd.model, device, precision) and `runner`.
    Per image: VAE latent of the image resized to `image_size`, noise at `timestep` seeded by the
    image id (timestep null: DiCLIP's pick from the model's own scheduler), one UNet forward with
    the prompt. Recipe `diclip` (default) taps only two layers: q and k of the `diclip.heads` of
    `diclip.layer` give the patch correlation A at the CLIP grid `grid`, clustered by KL assignment
    to anchors, and R = each cluster's mean row of A; `acr` aggregates every self-attention layer
    and clusters by KL merging + k-means. Both store R (cluster ids + rows) and the RAR transition
    P of `transition.layer` as the top `transition.topk` entries per row. Resumable: a rerun after
    a kill computes only the missing images; a finished store with the same key is kept (only
    images whose files changed are recomputed) and the metric is computed again: best-match IoU
    of the clusters with the eval split's masks beside the other recipe, an untrained UNet and
    colour k-means, and how much of P's mass the stored entries hold.
    """
    (metric, detail), _ = run_stage(SPEC, body, params_path=params_path, paths=paths)
    if metric["best_match_iou"] is not None:
        others = ", ".join(f"{name} {detail[f'{name}_best_match_iou']:.3f}" for name in ("diclip", "acr", "untrained_unet", "colour_kmeans")
                           if name != detail["recipe"] and detail.get(f"{name}_best_match_iou") is not None)
        click.echo(f"{detail['split']}: {detail['recipe']} best-match IoU {metric['best_match_iou']:.3f} over "
                   f"{detail['images']} images (ceiling {metric['best_match_ceiling']:.3f}{'; ' + others if others else ''})")

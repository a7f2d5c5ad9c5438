"""Stage `diffusion_attention` (stage A): per image, DiCLIP's clusters, refined correlation R and RAR transition P.

Layout of `artifacts/diffusion.zarr` (a per-image store, pipeline.store.image_store) over the images of
the computed splits (train split first, then the eval split's images not already there):

```
clusters              (N, g, g) uint8          cluster id of every CLIP patch (ids < k)
k                     (N,) int32               clusters of the image
rows                  (N, max_k, g^2) float16  R's row for each cluster, zero after k: R[i] = rows[clusters[i]]
transition_values     (N, t^2, k_t) float16    P's top-k_t entries per row, renormalised (only with transition.topk > 0)
transition_index      (N, t^2, k_t) int16      their column ids on the t x t grid of the transition layer
transition_kept       (N,) float32             mean over rows of the mass the kept entries held
transition_truncated  (N,) float32             fraction of rows with more than k_t non-zeros
image_id, _done, _input                        see pipeline.store.image_store
attrs  provenance, key, recipe, model, weights, precision, timestep, image_size, latent_size, grid g,
       transition_grid t, transition_k, max_clusters, correlation/transition layers and heads, splits,
       index_fingerprint, complete
```
Readers use pipeline.store.diffusion_maps.DiffusionMaps (dense R at any grid, dense P).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from pipeline import artifacts
from pipeline.skeleton import StageContext, StageSpec, run_stage
from stages.common import artifact_options

SPEC = StageSpec(
    name="diffusion_attention", module=__name__,
    params=("diffusion_attention", "models.sd", "models.device", "models.precision"),
    inputs=(artifacts.INDEX,), outputs=(artifacts.DIFFUSION, artifacts.DIFFUSION_METRIC),
    worker_imports=("pipeline.models", "pipeline.diffusion.recipes", "pipeline.store.dataset_index"),
)
# params that only shape the metric: changing them never recomputes the store
EVAL_ONLY = tuple(f"diffusion_attention.{k}" for k in ("eval_split", "eval_images", "eval_baselines", "compare_recipes"))


@dataclass(frozen=True)
class Plan:
    """Everything the per-image function needs, resolved from the params and the model's configs
    (no weights loaded): sizes, the timestep, checked layer paths, store widths."""

    recipe: str
    forward: object  # pipeline.diffusion.recipes.ForwardConfig
    grid: int
    diclip: object  # DiclipConfig
    acr: object  # ACRConfig
    cluster_grid: int
    block_bytes: int
    transition: object | None  # TransitionConfig, None when topk is 0
    latent_size: int
    transition_grid: int
    transition_k: int
    max_clusters: int

    def maps(self, pipe, *, recipe: str | None = None, unet=None, transition: bool = True):
        """The per-image function (pipeline.diffusion.recipes.StageAMaps) of this plan."""
        from pipeline.diffusion.recipes import StageAMaps

        return StageAMaps(pipe, recipe=recipe or self.recipe, forward=self.forward, grid=self.grid, diclip=self.diclip,
                          acr_config=self.acr, transition=self.transition if transition else None,
                          cluster_grid=self.cluster_grid, block_bytes=self.block_bytes, unet=unet)


def plan(cfg, model: str) -> Plan:
    """Resolve `cfg` (the diffusion_attention params) against `model`; ParamsError naming the key when
    a size, layer or head does not fit the model."""
    from pipeline.diffusion.acr import ACRConfig
    from pipeline.diffusion.capture import vae_factor_from_config
    from pipeline.diffusion.recipes import DiclipConfig, ForwardConfig, TransitionConfig, max_clusters
    from pipeline.diffusion.selected import LayerTap, UnknownLayerError, check_taps
    from pipeline.models.sd_config import inference_timestep, read_component_config, self_attention_layers_of
    from pipeline.params import ParamsError

    unet_config = read_component_config(model, "unet")
    factor = vae_factor_from_config(read_component_config(model, "vae"))
    image_size = cfg.image_size or int(unet_config["sample_size"]) * factor
    if image_size % factor:
        raise ParamsError(f"diffusion_attention.image_size {image_size} is not a multiple of the VAE factor {factor} of {model}")
    latent = image_size // factor
    timestep = cfg.timestep
    if timestep is None:
        timestep = inference_timestep(read_component_config(model, "scheduler", "scheduler_config.json"),
                                      cfg.schedule_steps, cfg.schedule_index)
    layers = self_attention_layers_of(unet_config)
    heads = {path: layer.heads for path, layer in layers.items()}
    try:
        [corr] = check_taps(heads, [LayerTap(cfg.diclip.layer, cfg.diclip.heads)], what="diffusion_attention.diclip.layer")
        [trans] = check_taps(heads, [LayerTap(cfg.transition.layer, cfg.transition.heads)], what="diffusion_attention.transition.layer")
    except UnknownLayerError as err:
        raise ParamsError(f"{err} (model {model})") from None
    t = layers[trans.path].grid(latent)
    forward = ForwardConfig(image_size, int(timestep), cfg.resize, cfg.add_noise, cfg.noise_seed, cfg.prompt)
    diclip = DiclipConfig(corr.path, corr.heads, cfg.diclip.threshold, cfg.diclip.anchor_stride, cfg.diclip.rounds)
    a = cfg.acr
    acr = ACRConfig(a.anchor_grid, a.merge_kl, a.merge_rounds, a.max_clusters, a.kmeans_iters)
    transition = TransitionConfig(trans.path, trans.heads, cfg.transition.sharpen, cfg.transition.topk) if cfg.transition.topk else None
    return Plan(cfg.recipe, forward, cfg.grid, diclip, acr, a.cluster_grid or latent, a.block_mb << 20, transition,
                latent, t, min(cfg.transition.topk, t * t), max_clusters(cfg.recipe, diclip, acr, cfg.grid))


@dataclass(frozen=True)
class MapsTask:
    """Runner task: load SD and open the splits once per worker, then compute images by id."""

    plan: Plan
    model: str
    device: str
    precision: str
    index: str
    splits: tuple[str, ...]

    def build(self):
        from pipeline.models import load_stable_diffusion
        from pipeline.store.dataset_index import DatasetIndex

        images = DatasetIndex.load(self.index).images(self.splits)
        fn = self.plan.maps(load_stable_diffusion(self.model, device=self.device, precision=self.precision))
        return lambda image_id: fn(images.load_image(image_id), image_id)

    def input_digest(self, image_id: str) -> bytes:
        from pipeline.store.dataset_index import image_digests

        return image_digests(self.index, self.splits)[image_id]


def body(ctx: StageContext) -> dict:
    """Compute (or reuse) the store for the splits of the params, mark it complete, write the metric."""
    from pipeline.models.sd_config import weights_fingerprint
    from pipeline.params import ParamsError
    from pipeline.store.image_store import ArraySpec

    cfg, sd = ctx.params.diffusion_attention, ctx.params.models
    index = ctx.index()
    splits = tuple(cfg.splits) or tuple(dict.fromkeys([index.meta["train_split"], index.meta["eval_split"]]))
    eval_split = cfg.eval_split or index.meta["eval_split"]
    if cfg.eval_images and eval_split not in splits:
        raise ParamsError(f"diffusion_attention.eval_split {eval_split!r} is not among the computed splits "
                          f"{list(splits)} (add it to diffusion_attention.splits, or set eval_images: 0)")
    p = plan(cfg, sd.sd.model)
    ctx.start_workers()  # params and inputs are good: the workers load the model stack while we go on
    ids = list(dict.fromkeys(i for s in splits for i in index.ids(s)))
    weights = weights_fingerprint(sd.sd.model)
    extra = {"timestep": p.forward.timestep, "image_size": p.forward.image_size, "weights": weights, "splits": list(splits)}
    key = ctx.stamp(exclude=EVAL_ONLY, **extra)  # the resume key: per-image index digests cover the images
    stamp = ctx.stamp(exclude=EVAL_ONLY, inputs={"index": index.fingerprint}, **extra)
    g = p.grid
    specs = [ArraySpec("clusters", (g, g), "uint8"), ArraySpec("k", (), "int32"),
             ArraySpec("rows", (p.max_clusters, g * g), "float16")]
    if p.transition:
        t2 = p.transition_grid ** 2
        specs += [ArraySpec("transition_values", (t2, p.transition_k), "float16"),
                  ArraySpec("transition_index", (t2, p.transition_k), "int16"),
                  ArraySpec("transition_kept", (), "float32"), ArraySpec("transition_truncated", (), "float32")]
    attrs = {**stamp, "recipe": p.recipe, "model": sd.sd.model, "precision": sd.precision, "weights": weights,
             **asdict(p.forward), "latent_size": p.latent_size, "grid": g, "max_clusters": p.max_clusters,
             "correlation": {"layer": p.diclip.layer, "heads": list(p.diclip.heads)} if p.recipe == "diclip" else None,
             "transition": ({"layer": p.transition.layer, "heads": list(p.transition.heads), "sharpen": p.transition.sharpen,
                             "grid": p.transition_grid, "k": p.transition_k} if p.transition else None),
             "splits": {s: len(index.ids(s)) for s in splits}, "index_fingerprint": index.fingerprint}
    task = MapsTask(p, sd.sd.model, sd.device, sd.precision, str(index.path), splits)
    store, _ = ctx.images(task, ctx.path(artifacts.DIFFUSION), ids=ids, specs=specs, key=key["fingerprint"],
                          attrs=attrs, shard_images=cfg.shard_images, desc="diffusion attention")
    metric = evaluate(ctx, cfg, p, store, index, eval_split)
    ctx.write_metric(artifacts.DIFFUSION_METRIC, metric)
    return metric


def evaluate(ctx: StageContext, cfg, p: Plan, store, index, split: str) -> dict:
    """Best-match IoU of the stored clusters with the eval split's object masks, beside the other recipe,
    an untrained UNet and colour k-means on the same images (scored on the runner's workers); P's kept
    mass over every stored image."""
    from pipeline.diffusion.evaluate import summarise, transition_summary
    from pipeline.store.diffusion_maps import DiffusionMaps

    sd = ctx.params.models
    ids = index.ids(split)[: cfg.eval_images]
    others = ((("acr" if p.recipe == "diclip" else "diclip"),) if cfg.compare_recipes else ()) + \
        (("untrained_unet",) if cfg.eval_baselines else ())
    task = ScoreTask(p, sd.sd.model, sd.device, sd.precision, str(index.path), split, str(store.path), others, cfg.eval_baselines)
    size = max(1, -(-len(ids) // 8))  # a few chunks per worker: models load once per chunk at most
    chunks = [tuple(ids[i:i + size]) for i in range(0, len(ids), size)]
    per_image = [s for chunk in ctx.runner.map(task, chunks, desc="diffusion metric", unit="img",
                                               weights=[len(c) for c in chunks]) for s in chunk]
    metric = summarise(p.recipe, per_image)
    maps = DiffusionMaps(store)
    summary = transition_summary(*maps.transition_stats()) if p.transition else {}
    return {"split": split, "recipe": p.recipe, **metric, **summary, "model": sd.sd.model,
            "timestep": p.forward.timestep, "image_size": p.forward.image_size, "grid": p.grid}


@dataclass(frozen=True)
class ScoreTask:
    """Runner work for the metric: score a chunk of eval images by id (stage A's per-image functions
    for the other recipe and the untrained UNet are built once per worker process)."""

    plan: Plan
    model: str
    device: str
    precision: str
    index: str
    split: str
    store: str
    others: tuple[str, ...]
    colour: bool

    def __call__(self, ids: tuple[str, ...]) -> list[dict]:
        from pipeline.diffusion.evaluate import image_scores

        maps, images, others = _scoring(self)
        return [image_scores(i, recipe=self.plan.recipe, clusters=maps.clusters, mask=images.load_mask,
                             image=images.load_image, others=others, colour_baseline=self.colour) for i in ids]


@functools.lru_cache(maxsize=2)
def _scoring(task: ScoreTask):
    from pipeline.store.dataset_index import DatasetIndex
    from pipeline.store.diffusion_maps import DiffusionMaps
    from pipeline.store.image_store import ImageStore

    maps = DiffusionMaps(ImageStore(task.store))
    images = DatasetIndex.load(task.index).images([task.split])
    others = {}
    if task.others:
        from pipeline.models import load_stable_diffusion, untrained_unet

        pipe = load_stable_diffusion(task.model, device=task.device, precision=task.precision)
        for name in task.others:
            others[name] = (task.plan.maps(pipe, unet=untrained_unet(pipe.unet), transition=False) if name == "untrained_unet"
                            else task.plan.maps(pipe, recipe=name, transition=False))
    return maps, images, others


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
    a kill computes only the missing images; a finished store with the same params, code and model
    is kept (only images whose files changed are recomputed) and the metric is computed again. The
    metric scores the clusters against the eval split's masks beside the other recipe, an
    untrained UNet and colour k-means, and reports how much of P's mass the stored entries hold.
    """
    metric, _ = run_stage(SPEC, body, params_path=params_path, paths=paths)
    score = metric.get(f"{metric['recipe']}_best_match_iou")
    if score is not None:
        others = ", ".join(f"{name} {metric[f'{name}_best_match_iou']:.3f}" for name in ("diclip", "acr", "untrained_unet", "colour_kmeans")
                           if name != metric["recipe"] and metric.get(f"{name}_best_match_iou") is not None)
        click.echo(f"{metric['split']}: {metric['recipe']} best-match IoU {score:.3f} over {metric['images']} images"
                   + (f" ({others})" if others else ""))

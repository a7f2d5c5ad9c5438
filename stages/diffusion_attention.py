"""Stage `diffusion_attention` (stage A): Stable Diffusion self-attention clusters for every indexed image.

Layout of `artifacts/diffusion.zarr` (a per-image store, pipeline.store.image_store) over the images of
the computed splits (train split first, then the eval split's images not already there):

```
soft       (N, max_clusters, G, G) float16  soft cluster maps, zero after the image's k (sum 1 over k per pixel)
hard       (N, G, G) uint8                  hard cluster map (ids < k)
k          (N,) int32                       clusters of the image
attention  (N, g^2, g^2) float16            aggregated attention at the attention grid (rows sum to 1); only with store_attention
image_id, _done, _input                     see pipeline.store.image_store
attrs      provenance (stage, params_hash, code_digest, inputs, fingerprint), key, model, weights, timestep,
           prompt, image_size, latent_size, cluster_grid G, attention_grid g, max_clusters, splits,
           index_fingerprint, complete
```
Readers use pipeline.store.diffusion_maps.DiffusionMaps.
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
)
# params that only shape the metric: changing them never recomputes the store
EVAL_ONLY = tuple(f"diffusion_attention.{k}" for k in ("eval_split", "eval_images", "eval_baselines"))


@dataclass(frozen=True)
class Geometry:
    """Sizes that follow from the params and the model: image size, latent size, grids."""

    image_size: int
    latent_size: int
    cluster_grid: int
    attention_grid: int


def geometry(cfg, model: str) -> Geometry:
    """Resolve the null sizes of the params from the UNet and VAE configs of `model` (no weights loaded)."""
    from pipeline.diffusion.capture import vae_factor_from_config
    from pipeline.models.sd_config import read_component_config

    factor = vae_factor_from_config(read_component_config(model, "vae"))
    image_size = cfg.image_size or int(read_component_config(model, "unet")["sample_size"]) * factor
    if image_size % factor:
        from pipeline.params import ParamsError

        raise ParamsError(f"diffusion_attention.image_size {image_size} is not a multiple of the VAE factor {factor}")
    return Geometry(image_size, image_size // factor, cfg.cluster_grid or image_size // factor, cfg.attention_grid)


def clusterer(cfg, geo: Geometry, pipe, *, unet=None, store_attention: bool | None = None):
    """The per-image function of the params `cfg` (pipeline.diffusion.clusters.ImageClusterer)."""
    from pipeline.diffusion.acr import ACRConfig
    from pipeline.diffusion.clusters import ImageClusterer

    keep = cfg.store_attention if store_attention is None else store_attention
    return ImageClusterer(
        pipe, acr_config=ACRConfig.from_fields(cfg), timestep=cfg.timestep, prompt=cfg.prompt,
        image_size=geo.image_size, cluster_grid=geo.cluster_grid, add_noise=cfg.add_noise, noise_seed=cfg.noise_seed,
        block_bytes=cfg.block_mb << 20, attention_grid=geo.attention_grid if keep else None, unet=unet,
    )


@dataclass(frozen=True)
class ClusterTask:
    """Runner task: load SD and open the splits once per worker, then cluster images by id."""

    cfg: object
    geo: Geometry
    model: str
    device: str
    precision: str
    index: str
    splits: tuple[str, ...]

    def build(self):
        from pipeline.models import load_stable_diffusion
        from pipeline.store.dataset_index import DatasetIndex

        images = DatasetIndex.load(self.index).images(self.splits)
        fn = clusterer(self.cfg, self.geo, load_stable_diffusion(self.model, device=self.device, precision=self.precision))
        return lambda image_id: fn(images.load_image(image_id), image_id)

    def input_digest(self, image_id: str) -> bytes:
        return _index_digests(self.index, self.splits)[image_id]


@functools.lru_cache(maxsize=4)
def _index_digests(index: str, splits: tuple[str, ...]) -> dict[str, bytes]:
    from pipeline.store.dataset_index import DatasetIndex

    idx = DatasetIndex.load(index)
    return {k: v for s in reversed(splits) for k, v in idx.digests(s).items()}


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
    ids = list(dict.fromkeys(i for s in splits for i in index.ids(s)))
    geo = geometry(cfg, sd.sd.model)
    weights = weights_fingerprint(sd.sd.model)
    extra = {"geometry": asdict(geo), "weights": weights, "splits": list(splits)}
    key = ctx.stamp(exclude=EVAL_ONLY, **extra)  # the resume key: per-image index digests cover the images
    stamp = ctx.stamp(exclude=EVAL_ONLY, inputs={"index": index.fingerprint}, **extra)
    G, g = geo.cluster_grid, geo.attention_grid
    specs = [ArraySpec("soft", (cfg.max_clusters, G, G), "float16"), ArraySpec("hard", (G, G), "uint8"),
             ArraySpec("k", (), "int32")] + ([ArraySpec("attention", (g * g, g * g), "float16")] if cfg.store_attention else [])
    attrs = {**stamp, "model": sd.sd.model, "precision": sd.precision, "weights": weights, "timestep": cfg.timestep,
             "prompt": cfg.prompt, **asdict(geo), "max_clusters": cfg.max_clusters,
             "splits": {s: len(index.ids(s)) for s in splits}, "index_fingerprint": index.fingerprint}
    task = ClusterTask(cfg, geo, sd.sd.model, sd.device, sd.precision, str(index.path), splits)
    store, _ = ctx.images(task, ctx.path(artifacts.DIFFUSION), ids=ids, specs=specs, key=key["fingerprint"],
                          attrs=attrs, shard_images=cfg.shard_images, desc="diffusion attention")
    metric = evaluate(ctx, cfg, geo, store, index, eval_split)
    ctx.write_metric(artifacts.DIFFUSION_METRIC, metric)
    return metric


def evaluate(ctx: StageContext, cfg, geo: Geometry, store, index, split: str) -> dict:
    """Best-match IoU of the stored clusters with the eval split's object masks, beside baselines."""
    from pipeline.diffusion.evaluate import evaluate_clusters
    from pipeline.store.diffusion_maps import DiffusionMaps

    maps, sd = DiffusionMaps(store), ctx.params.models
    ids = index.ids(split)[: cfg.eval_images]
    images = index.images([split])
    baseline = None
    if cfg.eval_baselines and ids:
        from pipeline.models import load_stable_diffusion, untrained_unet

        pipe = load_stable_diffusion(sd.sd.model, device=sd.device, precision=sd.precision)
        baseline = clusterer(cfg, geo, pipe, unet=untrained_unet(pipe.unet), store_attention=False)

    def clusters(image_id: str):
        soft, hard = maps.clusters(image_id)
        return hard, len(soft)

    metric = evaluate_clusters(ids, clusters=clusters, mask=images.load_mask, image=images.load_image, baseline=baseline)
    return {"split": split, **metric, "model": sd.sd.model, "timestep": cfg.timestep, "cluster_grid": geo.cluster_grid}


@click.command("diffusion-attention")
@artifact_options(SPEC)
def diffusion_attention_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Capture SD self-attention and cluster it (ACR) for every image of the train and eval splits.

    Reads params sections `diffusion_attention`, `models` (sd.model, device, precision) and `runner`.
    Per image: VAE latent of the image resized to `image_size` (null: the model's native size; the
    shapes preset uses 256), noise at `timestep` seeded by the image id, one UNet forward with the
    prompt; every self-attention layer's head-mean map is aggregated on the fly at the cluster grid
    (resolution-weighted, rows normalised); ACR merges anchor attention rows by symmetric KL and
    refines with k-means. Stores soft and hard cluster maps, the cluster count and (optionally) the
    aggregated attention at the CLIP patch grid. Resumable: a rerun after a kill computes only the
    missing images; a finished store with the same params, code and model is kept (only images whose
    files changed are recomputed) and the metric is computed again. The metric scores the clusters
    against the eval split's masks, beside an untrained-UNet and a colour k-means baseline.
    """
    metric, _ = run_stage(SPEC, body, params_path=params_path, paths=paths)
    if metric.get("acr_best_match_iou") is not None:
        line = f"{metric['split']}: ACR best-match IoU {metric['acr_best_match_iou']:.3f} over {metric['images']} images"
        if metric.get("untrained_unet_best_match_iou") is not None:
            line += (f" (untrained UNet {metric['untrained_unet_best_match_iou']:.3f},"
                     f" colour k-means {metric['colour_kmeans_best_match_iou']:.3f})")
        click.echo(line)

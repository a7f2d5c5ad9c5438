"""Stage `tsa_adapt` (DiCLIP's "dynamic" cache, offline; method.md C8): round-2 pseudo-labels.

DiCLIP co-trains a key/value adapter with its decoder on labels the adapter helps make. Here the
rounds are staged: the adapter (initialised from the TSA cache's keys and values) is trained alone on
the round-1 pseudo-labels of the train split, over the same patch features the cache's keys were made
of; then every image's CAMs are made again with minmax(cache_weight * ReLU(adapter) + text CAM) in
place of the static cache, through the cams stage's own task, into round-2 outputs:

```
artifacts/tsa_features.zarr         the adapter's training set, per train image (pipeline/store/patch_features.py;
                                    working state: kept for resuming, never pushed)
artifacts/tsa_adapter.safetensors   key.weight (H, E), value.weight (C + 1, H)
artifacts/cams_round2.zarr          as artifacts/cams.zarr
artifacts/pseudo_labels_round2/     as artifacts/pseudo_labels/
artifacts/metrics/tsa_adapt.json    round-2 mIoU and pixel accuracy (as cams.json), the adapter's last loss
```
Round 1 stays as it was; a later stage chooses which labels to train on. Ground truth is read only
for the metric.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipeline import artifacts
from pipeline.command import artifact_options
from pipeline.skeleton import StageContext, StageSpec, run_stage

SPEC = StageSpec(
    name="tsa_adapt", module=__name__, command="tsa-adapt",
    params=("tsa_adapt", "cams", "models.clip", "models.device", "models.precision"),
    inputs=(artifacts.INDEX, artifacts.DIFFUSION, artifacts.TSA_CACHE, artifacts.CAMS, artifacts.PSEUDO_LABELS),
    outputs=(artifacts.TSA_FEATURES, artifacts.TSA_ADAPTER, artifacts.CAMS_ROUND2, artifacts.PSEUDO_LABELS_ROUND2, artifacts.TSA_ADAPT_METRIC,
             artifacts.TSA_ADAPT_DETAIL),
    worker_imports=("pipeline.models", "pipeline.cam.pseudo_labels", "pipeline.store.diffusion_maps", "pipeline.tsa.adapter"),
)


def body(ctx: StageContext) -> tuple[dict, dict]:
    """Train the adapter on round-1 labels, then make round-2 CAMs and labels and score them."""
    from pipeline.errors import ParamsError
    from pipeline.store.diffusion_maps import DiffusionMaps
    from pipeline.store.h5_store import H5Reader
    from pipeline.store.image_store import ImageStore

    cfg = ctx.params.tsa_adapt
    index = ctx.index()
    round1 = ImageStore.open(ctx.path(artifacts.CAMS), stage="cams")
    maps = DiffusionMaps.open(ctx.path(artifacts.DIFFUSION), index_fingerprint=index.fingerprint)
    with H5Reader(ctx.path(artifacts.TSA_CACHE)) as reader:
        keys, values, cache_id = reader.dataset("keys"), reader.dataset("values"), reader.attrs.get("fingerprint")
    if cfg.hidden < len(keys):
        raise ParamsError(f"tsa_adapt.hidden {cfg.hidden} cannot hold the cache's {len(keys)} keys; raise it")
    if ctx.params.cams.vce or ctx.params.cams.rar:
        maps.require_splits({s: index.ids(s) for s in dict.fromkeys([index.meta["train_split"], index.meta["eval_split"]])},
                            "cams.vce" if ctx.params.cams.vce else "cams.rar")
    ctx.start_workers()  # inputs are good: the workers load torch and CLIP while this process does too

    import numpy as np
    import torch
    from safetensors.torch import save_file

    from pipeline import atomic
    from pipeline.models.clip import clip_patch_size
    from pipeline.store.patch_features import SHARD_IMAGES, StoredPatches
    from pipeline.tasks.clip_cams import CamTask, ClipCams, FeatureTask
    from pipeline.tasks.label_scores import cams_metric
    from pipeline.tsa.adapter import fit_adapter

    cams = ClipCams.from_params(ctx.params, index.class_names)
    train_split = index.meta["train_split"]
    train = index.ids(train_split)
    # the training set, stored per image (resumable; the adapter's own params never recompute it)
    features_stamp = ctx.stamp(exclude=("tsa_adapt",), inputs={"index": index.fingerprint, "round1": round1.fingerprint,
                                                              "texts": cams.words_digest}, clip_weights=cams.weights)
    task = FeatureTask(cams, str(index.path), str(ctx.path(artifacts.DIFFUSION)), str(ctx.path(artifacts.PSEUDO_LABELS)),
                       train_split)
    grid = cams.config.clip_size // clip_patch_size(cams.model)
    features, _ = ctx.images(task, ctx.path(artifacts.TSA_FEATURES), ids=train, specs=task.specs(grid, keys.shape[1]),
                             key=features_stamp["fingerprint"], attrs={**features_stamp, "grid": grid},
                             shard_images=SHARD_IMAGES, desc="tsa_adapt features")
    adapter, losses = fit_adapter(torch.from_numpy(keys), torch.from_numpy(values), StoredPatches(features), cfg)
    weights = ctx.path(artifacts.TSA_ADAPTER)
    state = {k: v.contiguous() for k, v in adapter.state_dict().items()}
    atomic.write_with(weights, lambda tmp: save_file(state, str(tmp)))

    splits = tuple(dict.fromkeys([index.meta["train_split"], index.meta["eval_split"]]))
    stamp = ctx.stamp(inputs={"index": index.fingerprint, "round1": round1.fingerprint, "tsa_cache": cache_id,
                              "texts": cams.words_digest}, clip_weights=cams.weights)
    round2 = CamTask(ClipCams.from_params(ctx.params, index.class_names, cache_weight=cfg.cache_weight), str(index.path),
                     splits, str(ctx.path(artifacts.DIFFUSION)), adapter=str(weights))
    attrs = {**round1.attrs, **stamp, "round": 2, "cache": {"adapter": str(weights), "weight": cfg.cache_weight}}
    attrs.pop("complete", None)
    store, _ = ctx.images(round2, ctx.path(artifacts.CAMS_ROUND2), ids=index.ids_of(splits), specs=round2.specs(maps),
                          files=round2.files(ctx.path(artifacts.PSEUDO_LABELS_ROUND2)), key=stamp["fingerprint"],
                          attrs=attrs, shard_images=ctx.params.cams.shard_images, desc="cams round 2")
    headline, detail = cams_metric(index, store, ctx.params.cams.eval_thresholds)
    adapter_losses = {"iterations": cfg.iterations, "loss_first_50": float(np.mean(losses[:50])),
                      "loss_last_50": float(np.mean(losses[-50:])), "train_images": len(train)}
    return ctx.write_metrics(artifacts.TSA_ADAPT_METRIC, artifacts.TSA_ADAPT_DETAIL,
                             {**headline, "loss_last_50": adapter_losses["loss_last_50"]},
                             {"adapter": adapter_losses, "round2": detail})


@click.command("tsa-adapt")
@artifact_options(SPEC)
def tsa_adapt_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Round 2 of the TSA cache (DiCLIP's dynamic cache, offline): train the key/value adapter alone on the
    round-1 pseudo-labels (`hidden`, `iterations`, `batch`, `lr`, `weight_decay`, `warmup`, `dropout`,
    `seed`), then remake every image's CAMs with minmax(`cache_weight` * ReLU(adapter) + text) and write
    round-2 pseudo-labels and their mIoU. Round-1 outputs are left as they are."""
    (metric, _), _ = run_stage(SPEC, body, params_path=params_path, paths=paths)
    click.echo(f"round 2: pseudo-label mIoU {metric['miou']:.3f}")

"""Stage `tsa_adapt` (DiCLIP's "dynamic" cache, offline; method.md C8): round-2 pseudo-labels.

DiCLIP co-trains a key/value adapter with its decoder on labels the adapter helps make. Here the
rounds are staged: the adapter (initialised from the TSA cache's keys and values) is trained alone on
the round-1 pseudo-labels of the train split, over the same patch features the cache's keys were made
of; then every image's CAMs are made again with minmax(cache_weight * ReLU(adapter) + text CAM) in
place of the static cache, through the cams stage's own task, into round-2 outputs:

```
artifacts/tsa_adapter.safetensors   key.weight (H, E), value.weight (C + 1, H)
artifacts/cams_round2.zarr          as artifacts/cams.zarr
artifacts/pseudo_labels_round2/     as artifacts/pseudo_labels/
artifacts/metrics/tsa_adapt.json    training losses (first/last 50 mean) and the round-2 metric of eval_cams
```
Round 1 stays as it was; a later stage chooses which labels to train on. Ground truth is read only
for the metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from pipeline import artifacts
from pipeline.skeleton import StageContext, StageSpec, run_stage
from stages.common import artifact_options

SPEC = StageSpec(
    name="tsa_adapt", module=__name__,
    params=("tsa_adapt", "cams", "models.clip", "models.device", "models.precision"),
    inputs=(artifacts.INDEX, artifacts.DIFFUSION, artifacts.TSA_CACHE, artifacts.CAMS, artifacts.PSEUDO_LABELS),
    outputs=(artifacts.TSA_ADAPTER, artifacts.CAMS_ROUND2, artifacts.PSEUDO_LABELS_ROUND2, artifacts.TSA_ADAPT_METRIC),
    worker_imports=("pipeline.models", "pipeline.cam.pseudo_labels", "pipeline.store.diffusion_maps", "pipeline.tsa.adapter"),
)


@dataclass(frozen=True)
class FeatureTask:
    """Runner item function: the patch features (the surgery tokens with R, as the cache's keys) of a chunk
    of train images, and their round-1 pseudo-labels at the CLIP input size (nearest)."""

    cams: object  # stages.cam_inputs.ClipCams
    index: str
    diffusion: str
    labels: str

    def __call__(self, ids: tuple[str, ...]):
        import numpy as np
        from PIL import Image

        fn, images, maps, present = _tools(self)
        size = self.cams.config.clip_size
        feats, labels = [], []
        for image_id in ids:
            [res] = fn.batch([images.load_image(image_id)], [present[image_id]],
                             [maps.correlation(image_id) if self.cams.config.vce else None], [None], features=True)
            feats.append(res["features"].astype(np.float16))
            label = Image.open(Path(self.labels) / f"{image_id}.png")
            labels.append(np.asarray(label.resize((size, size), Image.NEAREST), dtype=np.uint8))
        return np.stack(feats), np.stack(labels)


_TOOLS: dict = {}


def _tools(task: FeatureTask):
    if task not in _TOOLS:
        from pipeline.store.dataset_index import DatasetIndex
        from pipeline.store.diffusion_maps import DiffusionMaps

        clip, text = task.cams.load()
        index = DatasetIndex.load(task.index)
        split = index.meta["train_split"]
        present = dict(zip(index.ids(split), index.labels(split).astype(bool)))
        _TOOLS.clear()
        _TOOLS[task] = (task.cams.image_cams(clip, text), index.images([split]), DiffusionMaps.open(task.diffusion), present)
    return _TOOLS[task]


def body(ctx: StageContext) -> dict:
    """Train the adapter on round-1 labels, then make round-2 CAMs and labels and score them."""
    from pipeline.store.h5_store import H5Reader
    from pipeline.store.image_store import ArraySpec, FileSpec, ImageStore

    cfg = ctx.params.tsa_adapt
    index = ctx.index()
    round1 = ImageStore.open(ctx.path(artifacts.CAMS), stage="cams")
    ctx.start_workers()  # inputs are good: the workers load torch and CLIP while this process does too

    import numpy as np
    import torch
    from safetensors.torch import save_file

    from pipeline import atomic
    from pipeline.tsa.adapter import KVAdapter, train_adapter
    from stages.cam_inputs import ClipCams
    from stages.cams import CamTask
    from stages.eval_cams import score

    cams = ClipCams.from_params(ctx.params, index.class_names)
    train = index.ids(index.meta["train_split"])
    chunks = [tuple(train[i:i + 100]) for i in range(0, len(train), 100)]
    task = FeatureTask(cams, str(index.path), str(ctx.path(artifacts.DIFFUSION)), str(ctx.path(artifacts.PSEUDO_LABELS)))
    parts = ctx.runner.map(task, chunks, desc="tsa_adapt features", unit="img", weights=[len(c) for c in chunks])
    features = torch.from_numpy(np.concatenate([p[0] for p in parts])).float()
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    with H5Reader(ctx.path(artifacts.TSA_CACHE)) as reader:
        keys, values = reader.dataset("keys"), reader.dataset("values")
        cache_id = reader.attrs.get("fingerprint")
    if cfg.hidden < len(keys):
        from pipeline.params import ParamsError

        raise ParamsError(f"tsa_adapt.hidden {cfg.hidden} cannot hold the cache's {len(keys)} keys; raise it")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same weights on any machine and runner (the adapter is small)
    adapter = KVAdapter(torch.from_numpy(keys), torch.from_numpy(values), cfg.hidden, dropout=cfg.dropout, seed=cfg.seed)
    losses = train_adapter(adapter, features, labels, int(round(features.shape[1] ** 0.5)), iterations=cfg.iterations,
                           batch=cfg.batch, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup=cfg.warmup, seed=cfg.seed)
    torch.set_num_threads(threads)
    weights = ctx.path(artifacts.TSA_ADAPTER)
    state = {k: v.contiguous() for k, v in adapter.state_dict().items()}
    atomic.write_with(weights, lambda tmp: save_file(state, str(tmp)))

    splits = tuple(dict.fromkeys([index.meta["train_split"], index.meta["eval_split"]]))
    ids = list(dict.fromkeys(i for s in splits for i in index.ids(s)))
    stamp = ctx.stamp(inputs={"index": index.fingerprint, "round1": round1.fingerprint, "tsa_cache": cache_id,
                              "texts": cams.words_digest})
    attrs = {**round1.attrs, **stamp, "round": 2, "cache": {"adapter": str(weights), "weight": cfg.cache_weight}}
    attrs.pop("complete", None)
    cam_task = CamTask(cams, str(index.path), splits, str(ctx.path(artifacts.DIFFUSION)), None, cfg.cache_weight,
                       ctx.params.cams.batch_images, adapter=str(weights))
    C, side = len(index.class_names), int(round1.attrs["grid"])
    store, report = ctx.images(cam_task, ctx.path(artifacts.CAMS_ROUND2), ids=ids,
                               specs=[ArraySpec("cams", (C, side, side), "float16")],
                               files=[FileSpec("label", str(ctx.path(artifacts.PSEUDO_LABELS_ROUND2)))],
                               key=stamp["fingerprint"], attrs=attrs, shard_images=ctx.params.cams.shard_images,
                               desc="cams round 2")
    metric = {"adapter": {"iterations": cfg.iterations, "loss_first_50": float(np.mean(losses[:50])),
                          "loss_last_50": float(np.mean(losses[-50:])), "train_images": len(train)},
              "round2": score(index, store, ctx.params.cams)}
    ctx.write_metric(artifacts.TSA_ADAPT_METRIC, metric)
    return metric


@click.command("tsa-adapt")
@artifact_options(SPEC)
def tsa_adapt_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Round 2 of the TSA cache (DiCLIP's dynamic cache, offline): train the key/value adapter alone on the
    round-1 pseudo-labels (`hidden`, `iterations`, `batch`, `lr`, `weight_decay`, `warmup`, `dropout`,
    `seed`), then remake every image's CAMs with minmax(`cache_weight` * ReLU(adapter) + text) and write
    round-2 pseudo-labels and their mIoU. Round-1 outputs are left as they are."""
    run_stage(SPEC, body, params_path=params_path, paths=paths)

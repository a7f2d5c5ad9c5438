"""Stage `diffusion_attention`: SD self-attention + ACR clusters for every indexed image, and a metric.

Layout of `artifacts/diffusion.zarr` (an ImageStore: zarr v3, one image per chunk, `shard_images`
images per shard) over the images of the computed splits (train split first, then the eval split's
images not already there; an image id names the same image file in every split):

```
soft       (N, max_clusters, G, G) float16  soft cluster maps, zero after the image's k (sum 1 over k per pixel)
hard       (N, G, G) uint8                  hard cluster map (ids < k)
k          (N,) int32                       clusters of the image
attention  (N, g^2, g^2) float16            aggregated attention at the attention grid (rows sum to 1); only with store_attention
image_id, _done                             see pipeline.store.image_store
attrs      stage, params_hash, code_version, model, model_fingerprint, timestep, image_size, cluster_grid,
           attention_grid, max_clusters, splits {split: [ids...] count}, index_fingerprint, complete
```

G is `cluster_grid` (null: the finest self-attention grid), g is `attention_grid`. Readers use
:class:`DiffusionMaps`. The metric (best-match IoU of the clusters with the object masks, on the
eval split) goes to a JSON file, with an untrained-UNet and a colour k-means baseline beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.diffusion.acr import acr, pad_soft
from pipeline.diffusion.config import DiffusionAttentionParams
from pipeline.params import ParamsError, RunnerParams, to_plain
from pipeline.params.sections import ModelsParams
from pipeline.provenance import stamp
from pipeline.runner import Runner
from pipeline.store.dataset_index import DatasetIndex
from pipeline.store.image_store import ArraySpec, ImageStore, StoreError

log = logging.getLogger(__name__)

STAGE = "diffusion_attention"
# fields that only shape the metric: changing them never recomputes the store
_EVAL_FIELDS = ("eval_split", "eval_images", "eval_baselines")


# ---------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """Sizes that follow from the params and the model: image size, latent size, grids."""

    image_size: int
    latent_size: int
    cluster_grid: int
    attention_grid: int


def model_geometry(cfg: DiffusionAttentionParams, model: str) -> Geometry:
    """Resolve the null sizes of `cfg` from the UNet and VAE configs of `model` (no weights loaded)."""
    unet, vae = _read_config(model, "unet"), _read_config(model, "vae")
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    image_size = cfg.image_size or int(unet["sample_size"]) * factor
    if image_size % factor:
        raise ValueError(f"diffusion_attention.image_size {image_size} is not a multiple of the VAE factor {factor}")
    latent = image_size // factor
    return Geometry(image_size, latent, cfg.cluster_grid or latent, cfg.attention_grid)


def _read_config(model: str, component: str) -> dict[str, Any]:
    local = Path(model).expanduser()
    path = local / component / "config.json"
    if not local.exists():
        from huggingface_hub import try_to_load_from_cache

        from pipeline.models.hub import hf_hub_cache_dir

        cached = try_to_load_from_cache(model, f"{component}/config.json", cache_dir=str(hf_hub_cache_dir()))
        path = Path(cached) if isinstance(cached, str) else None
    if path is None or not path.is_file():
        from pipeline.models import load_stable_diffusion

        load_stable_diffusion(model, device="cpu")  # raises ModelUnavailableError naming the remedies (or downloads)
        return _read_config(model, component)
    return json.loads(path.read_text())


def model_fingerprint(model: str) -> str:
    """Identity of the weights behind `model`: file names, sizes and mtimes of a local directory, else the id."""
    local = Path(model).expanduser()
    if not local.is_dir():
        return str(model)
    h = hashlib.sha256()
    for p in sorted(local.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(local)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]


def code_digest() -> str:
    """sha256 over the source of the modules that decide the stored values (a code change recomputes)."""
    here = Path(__file__).resolve().parent
    files = [here / "acr.py", here / "capture.py", here / "config.py", here / "stage.py",
             here.parent / "models" / "diffusion.py", here.parent / "models" / "device.py"]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def array_specs(cfg: DiffusionAttentionParams, geo: Geometry) -> tuple[ArraySpec, ...]:
    G, g = geo.cluster_grid, geo.attention_grid
    specs = [
        ArraySpec("soft", (cfg.max_clusters, G, G), "float16"),
        ArraySpec("hard", (G, G), "uint8"),
        ArraySpec("k", (), "int32"),
    ]
    if cfg.store_attention:
        specs.append(ArraySpec("attention", (g * g, g * g), "float16"))
    return tuple(specs)


# ---------------------------------------------------------------------------------- per image
def load_pipeline(models: ModelsParams):
    from pipeline.models.from_params import stable_diffusion_from_params

    return stable_diffusion_from_params(models)


def untrained_unet(unet, seed: int = 0):
    """A UNet of the same config with fresh random weights (the untrained baseline)."""
    import torch
    from diffusers import UNet2DConditionModel

    param = next(unet.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = UNet2DConditionModel.from_config(unet.config)
    if param.dtype != torch.float32:
        fresh = fresh.to(dtype=param.dtype)
    return fresh.to(param.device).eval()


class ImageClusterer:
    """image (H, W, 3) uint8 + id -> stored arrays: capture, ACR, optional attention at the attention grid."""

    def __init__(self, cfg: DiffusionAttentionParams, geo: Geometry, pipe, *, unet=None) -> None:
        import torch

        from pipeline.diffusion.capture import ImageAttention

        self.cfg, self.geo = cfg, geo
        self.extract = ImageAttention(
            pipe, timestep=cfg.timestep, prompt=cfg.prompt, image_size=geo.image_size, grid=geo.cluster_grid,
            add_noise=cfg.add_noise, block_bytes=cfg.block_mb << 20, unet=unet,
        )
        self.threads = torch.get_num_threads()

    def __call__(self, image: np.ndarray, image_id: str) -> dict[str, np.ndarray]:
        from pipeline.diffusion.capture import image_noise_seed, resample_attention

        cfg, G = self.cfg, self.geo.cluster_grid
        attention = self.extract([image], [image_noise_seed(cfg.noise_seed, image_id)])  # (1, G^2, G^2)
        result = acr(
            attention[0].cpu().numpy(), G, anchor_grid=cfg.anchor_grid, merge_kl=cfg.merge_kl,
            merge_rounds=cfg.merge_rounds, max_clusters=cfg.max_clusters, kmeans_iters=cfg.kmeans_iters,
            threads=self.threads,
        )
        out = {
            "soft": pad_soft(result.soft, cfg.max_clusters).astype(np.float16),
            "hard": result.hard.astype(np.uint8),
            "k": np.int32(result.k),
        }
        if cfg.store_attention:
            g = self.geo.attention_grid
            out["attention"] = resample_attention(attention, (G, G), g)[0].cpu().numpy().astype(np.float16)
        return out


@dataclass(frozen=True)
class DiffusionTask:
    """Runner task: load SD and open the dataset splits once per worker, then cluster images by id."""

    cfg: DiffusionAttentionParams
    models: ModelsParams
    geo: Geometry
    kind: str
    root: str
    splits: tuple[str, ...]
    class_names_file: str | None = None

    def build(self):
        datasets = _open_splits(self.kind, self.root, self.splits, self.class_names_file)
        clusterer = ImageClusterer(self.cfg, self.geo, load_pipeline(self.models))

        def fn(image_id: str) -> dict[str, np.ndarray]:
            return clusterer(datasets.load_image(image_id), image_id)

        return fn


class _Splits:
    """Finds an id's image in whichever split lists it (an id names one image file in every split)."""

    def __init__(self, datasets: Sequence) -> None:
        self.by_id = {}
        for ds in datasets:
            for image_id in ds.ids:
                self.by_id.setdefault(image_id, ds)

    def load_image(self, image_id: str) -> np.ndarray:
        return self.by_id[image_id].load_image(image_id)

    def load_mask(self, image_id: str) -> np.ndarray:
        return self.by_id[image_id].load_mask(image_id)


def _open_splits(kind: str, root: str, splits: Sequence[str], class_names_file: str | None) -> _Splits:
    from pipeline.data.datasets import open_dataset

    return _Splits([open_dataset(kind, root, s, class_names_file=class_names_file) for s in splits])


# ---------------------------------------------------------------------------------- the stage
def run_diffusion_attention(
    cfg: DiffusionAttentionParams,
    *,
    models: ModelsParams,
    index_dir: str | Path,
    out: str | Path,
    metrics_path: str | Path | None,
    runner: RunnerParams,
    class_names_file: str | None = None,
) -> dict[str, Any]:
    """Compute (or resume) the store `out` for the splits of `cfg`, mark it complete, write the metric.

    The model is `models.sd.model` on `models.device` at `models.precision` (the shared section).

    A complete store written with the same params, model, index and code (the params hash covers
    all four) is kept as is and only the metric is recomputed: DVC reruns the stage when an
    eval-only param changes. Returns a summary with
    images computed now / found done, and the metric.
    """
    index = DatasetIndex.load(index_dir)
    splits = tuple(cfg.splits) or tuple(dict.fromkeys([index.meta["train_split"], index.meta["eval_split"]]))
    eval_split = cfg.eval_split or index.meta["eval_split"]
    if metrics_path is not None and cfg.eval_images and eval_split not in splits:
        raise ParamsError(
            f"diffusion_attention.eval_split {eval_split!r} is not among the computed splits {list(splits)} "
            "(add it to diffusion_attention.splits, or set eval_images: 0)"
        )
    split_ids = {s: index.ids(s) for s in splits}
    ids = list(dict.fromkeys(i for s in splits for i in split_ids[s]))
    model = models.sd.model
    geo = model_geometry(cfg, model)
    store_section = {k: v for k, v in to_plain(cfg).items() if k not in _EVAL_FIELDS}
    provenance = stamp(STAGE, {
        "diffusion_attention": store_section, "geometry": dataclasses.asdict(geo),
        "model": model, "device": models.device, "precision": models.precision,
        "model_fingerprint": model_fingerprint(model), "index_fingerprint": index.fingerprint,
        "code": code_digest(),
    })
    attrs = {
        **provenance, "model": model, "precision": models.precision, "model_fingerprint": model_fingerprint(model),
        "timestep": cfg.timestep, "prompt": cfg.prompt, **{k: v for k, v in dataclasses.asdict(geo).items()},
        "max_clusters": cfg.max_clusters, "splits": {s: len(v) for s, v in split_ids.items()},
        "index_fingerprint": index.fingerprint,
    }
    kind, root = index.meta["dataset_kind"], index.meta["dataset_root"]
    store = _reusable(out, provenance["params_hash"], ids)
    computed = already = 0
    if store is None:
        store = ImageStore.create_or_resume(out, ids=ids, specs=array_specs(cfg, geo), attrs=attrs, shard_images=cfg.shard_images)
        task = DiffusionTask(cfg, models, geo, kind, str(root), splits, class_names_file)
        with Runner(runner) as run:
            report = run.run(task, store, desc="diffusion attention")
        computed, already = report.computed, report.already_done
        store.mark_complete()
    else:
        log.info("%s: complete with the same params, model and index; recomputing the metric only", out)
        already = len(ids)
    summary: dict[str, Any] = {"computed": computed, "already_done": already, "images": len(ids)}
    if metrics_path is not None:
        metric = evaluate_clusters(
            cfg, models, geo, DiffusionMaps(store), _open_splits(kind, str(root), [eval_split], class_names_file),
            index.ids(eval_split)[: cfg.eval_images], split=eval_split,
        )
        path = Path(metrics_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(metric, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
        summary["metric"] = metric
    return summary


def _reusable(out: str | Path, params_hash: str, ids: list[str]) -> ImageStore | None:
    try:
        store = ImageStore.open(out, stage=STAGE)
    except StoreError:
        return None
    if store.attrs.get("params_hash") != params_hash or store.ids() != ids:
        return None
    return store


# ---------------------------------------------------------------------------------- metric
def upsample_labels(hard: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(G, G) hard cluster map -> (H, W) by nearest neighbour (pixel centres mapped onto the grid)."""
    hard = np.asarray(hard)
    rows = np.minimum(((np.arange(size[0]) + 0.5) * hard.shape[0] / size[0]).astype(int), hard.shape[0] - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * hard.shape[1] / size[1]).astype(int), hard.shape[1] - 1)
    return hard[rows[:, None], cols[None, :]]


def colour_kmeans(image: np.ndarray, k: int, *, seed: int = 0, max_fit: int = 20000) -> np.ndarray:
    """(H, W) cluster ids of k-means on pixel RGB (fit on at most max_fit pixels): the colour baseline."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    pixels = image.reshape(-1, 3).astype(np.float32) / 255.0
    rng = np.random.default_rng(seed)
    fit = pixels[rng.choice(len(pixels), max_fit, replace=False)] if len(pixels) > max_fit else pixels
    k = max(1, min(k, len(np.unique(fit, axis=0))))
    with threadpool_limits(limits=1):
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(fit)
        return km.predict(pixels).reshape(image.shape[:2])


def evaluate_clusters(
    cfg: DiffusionAttentionParams, models: ModelsParams, geo: Geometry, maps: "DiffusionMaps", dataset: _Splits,
    ids: Sequence[str], *, split: str,
) -> dict[str, Any]:
    """Best-match IoU of the stored hard cluster maps (nearest-upsampled to the mask) with the object
    masks of `ids` (pipeline.metrics.best_match_iou per image, mean over images with objects).

    Baselines (cfg.eval_baselines): the same capture + ACR with an untrained UNet of the model's
    config, and colour k-means on pixel RGB with the image's ACR cluster count (at least 2).
    """
    from pipeline.metrics import best_match_iou

    scores: dict[str, list[float]] = {"acr": [], "untrained_unet": [], "colour_kmeans": []}
    ks = []
    baseline = None
    if cfg.eval_baselines and ids:
        pipe = load_pipeline(models)
        baseline = ImageClusterer(dataclasses.replace(cfg, store_attention=False), geo, pipe, unet=untrained_unet(pipe.unet))
    for image_id in ids:
        mask = dataset.load_mask(image_id)
        soft, hard = maps.clusters(image_id)
        ks.append(len(soft))
        scores["acr"].append(best_match_iou(upsample_labels(hard, mask.shape), mask))
        if baseline is not None:
            image = dataset.load_image(image_id)
            untrained = baseline(image, image_id)
            scores["untrained_unet"].append(best_match_iou(upsample_labels(untrained["hard"], mask.shape), mask))
            scores["colour_kmeans"].append(best_match_iou(colour_kmeans(image, max(2, len(soft))), mask))
    mean = lambda v: float(np.nanmean(v)) if v and not np.all(np.isnan(v)) else None  # noqa: E731
    metric: dict[str, Any] = {
        "split": split,
        "images": len(ids),
        "images_with_objects": int(np.sum(~np.isnan(scores["acr"]))) if ids else 0,
        "acr_best_match_iou": mean(scores["acr"]),
        "mean_clusters": float(np.mean(ks)) if ks else None,
        "model": models.sd.model,
        "timestep": cfg.timestep,
        "cluster_grid": geo.cluster_grid,
    }
    if baseline is not None:
        metric["untrained_unet_best_match_iou"] = mean(scores["untrained_unet"])
        metric["colour_kmeans_best_match_iou"] = mean(scores["colour_kmeans"])
    return metric


# ---------------------------------------------------------------------------------- reading
class DiffusionMaps:
    """Read access to a finished `diffusion.zarr`: clusters, attention and correlations by image id."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store
        self.attrs = store.attrs
        self._rows = {image_id: i for i, image_id in enumerate(store.ids())}

    @classmethod
    def open(cls, path: str | Path = "artifacts/diffusion.zarr") -> "DiffusionMaps":
        return cls(ImageStore.open(path, stage=STAGE))

    @property
    def cluster_grid(self) -> int:
        return int(self.attrs["cluster_grid"])

    @property
    def attention_grid(self) -> int:
        return int(self.attrs["attention_grid"])

    @property
    def ids(self) -> list[str]:
        return list(self._rows)

    def row(self, image_id: str) -> int:
        try:
            return self._rows[image_id]
        except KeyError:
            raise StoreError(f"{self.store.path}: image {image_id!r} is not in the store (splits: {self.attrs['splits']})") from None

    def clusters(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(soft (k, G, G) float32, hard (G, G) int64) of one image."""
        i = self.row(image_id)
        k = int(self.store.read("k", i))
        return self.store.read("soft", i)[:k].astype(np.float32), self.store.read("hard", i).astype(np.int64)

    def attention(self, image_id: str) -> np.ndarray:
        """(g^2, g^2) float32 aggregated attention at the attention grid (rows sum to 1)."""
        if "attention" not in {s.name for s in self.store.specs}:
            raise StoreError(f"{self.store.path}: no attention stored (diffusion_attention.store_attention was false)")
        a = self.store.read("attention", self.row(image_id)).astype(np.float32)
        return a / np.maximum(a.sum(1, keepdims=True), 1e-12)

    def correlation(self, image_id: str, grid: int) -> np.ndarray:
        """(grid^2, grid^2) float32 patch correlation from the soft cluster maps (see correlation.py)."""
        from pipeline.diffusion.correlation import cluster_correlation

        soft, _ = self.clusters(image_id)
        return cluster_correlation(soft, grid)

"""Stage `diffusion_attention`: Stable Diffusion self-attention clusters for every indexed image."""

from __future__ import annotations

from pathlib import Path

import click

from stages.common import friendly_errors, params_option


@click.command("diffusion-attention")
@params_option
@click.option("--index", "index_dir", type=click.Path(file_okay=False, path_type=Path), default="artifacts/index",
              show_default=True, help="Dataset index written by `diclip prepare` (ids, splits, dataset root).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="artifacts/diffusion.zarr",
              show_default=True, help="Per-image zarr store to write (soft/hard cluster maps, k, attention).")
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path),
              default="artifacts/metrics/diffusion_attention.json", show_default=True,
              help="JSON metric file: cluster best-match IoU with the object masks, and baselines.")
@friendly_errors
def diffusion_attention_command(params_path: Path, index_dir: Path, out: Path, metrics_path: Path) -> None:
    """Capture SD self-attention and cluster it (ACR) for every image of the train and eval splits.

    Reads params sections `diffusion_attention`, `models` (sd.model, device, precision), `runner`
    and `dataset.class_names_file`. Per image: VAE latent of the image resized to `image_size`
    (null: the model's native size; the shapes preset uses 256), noise at `timestep` seeded by the
    image id, one UNet forward with the prompt; every self-attention layer's head-mean map is
    aggregated on the fly at the cluster grid (resolution-weighted, rows normalised); ACR merges anchor attention rows by
    symmetric KL and refines with k-means. Stores soft and hard cluster maps, the cluster count and
    (optionally) the aggregated attention at the CLIP patch grid. Resumable: a rerun after a kill
    computes only the missing images; a finished store with the same params is kept and only the
    metric is recomputed. The metric scores the clusters against the eval split's masks, beside an
    untrained-UNet and a colour k-means baseline.
    """
    from pipeline.diffusion.stage import run_diffusion_attention
    from pipeline.params import load_params

    params = load_params(params_path)
    summary = run_diffusion_attention(
        params.diffusion_attention, models=params.models, index_dir=index_dir, out=out, metrics_path=metrics_path,
        runner=params.runner, class_names_file=params.dataset.class_names_file,
    )
    click.echo(f"{out}: {summary['images']} images ({summary['computed']} computed now, {summary['already_done']} already done)")
    metric = summary.get("metric") or {}
    if metric.get("acr_best_match_iou") is not None:
        line = f"{metric['split']}: ACR best-match IoU {metric['acr_best_match_iou']:.3f} over {metric['images']} images"
        if metric.get("untrained_unet_best_match_iou") is not None:
            line += (f" (untrained UNet {metric['untrained_unet_best_match_iou']:.3f},"
                     f" colour k-means {metric['colour_kmeans_best_match_iou']:.3f})")
        click.echo(line)

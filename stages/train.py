"""Stage `train` (stage D): DiCLIP's decoder on a frozen CLIP, trained from the stored pseudo-labels.

Reads the train split's images and `artifacts/pseudo_labels/` only (ground truth is never opened; the
validation curve compares with the eval split's pseudo-labels). Writes

```
artifacts/segmenter/model.safetensors   the decoder's weights (layout: pipeline/store/segmenter.py)
artifacts/segmenter/config.json         architecture, sizes, the CLIP it reads, its normalisation, crop
artifacts/checkpoints/train/step_*.pt   checkpoints every `checkpoint_every` steps and on SIGTERM/SIGINT
artifacts/train_live/                   DVCLive: metrics.json (last values) and plots/metrics/*.tsv
```
A rerun resumes from the newest checkpoint of the same key (params, code, inputs); with a fixed seed on
the CPU it ends with the same weights as an uninterrupted run (the batches are a function of the step).
Under `torchrun --nproc_per_node N -m stages.cli train` the global batch is split over N DDP processes
(gloo on the CPU, NCCL on GPUs); rank 0 writes.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from pipeline import artifacts
from pipeline.command import artifact_options
from pipeline.skeleton import StageContext, StageSpec, run_stage

SPEC = StageSpec(
    name="train", module=__name__, command="train",
    params=("train", "cams.normalise", "models.clip", "models.device", "models.precision"),
    inputs=(artifacts.INDEX, artifacts.PSEUDO_LABELS),
    outputs=(artifacts.SEGMENTER, artifacts.TRAIN_CHECKPOINTS, artifacts.TRAIN_LIVE),
)
#: how often and where results are written (not what they are): left out of the checkpoint key
NOT_IN_KEY = ("train.checkpoint_every", "train.log_every", "train.val_every")


def body(ctx: StageContext) -> dict:
    from pipeline.errors import UserError
    from pipeline.models.clip import weights_fingerprint
    from pipeline.tasks.segmenter import files_digest, train_segmenter

    cfg, models = ctx.params.train, ctx.params.models
    index = ctx.index()
    train_ids = index.ids(index.meta["train_split"])
    val_ids = index.ids(index.meta["eval_split"])[:cfg.val_images]
    folder = ctx.path(artifacts.PSEUDO_LABELS)
    missing = [i for i in (*train_ids, *val_ids) if not (folder / f"{i}.png").is_file()]
    if missing:  # refused before torch is imported
        raise UserError(f"{folder}: no pseudo-label for image id {missing[0]!r} ({len(missing)} missing); "
                        "run `diclip cams` first")
    key = ctx.stamp(exclude=NOT_IN_KEY, inputs={"index": index.fingerprint, "labels": files_digest(folder, train_ids)},
                    world=int(os.environ.get("WORLD_SIZE", 1)),
                    clip_weights=weights_fingerprint(models.clip.model, models.clip.pretrained))["fingerprint"]
    return train_segmenter(index, folder, cfg, models, ctx.params.cams.normalise, key=key,
                           checkpoints=ctx.path(artifacts.TRAIN_CHECKPOINTS), live=ctx.path(artifacts.TRAIN_LIVE),
                           segmenter=ctx.path(artifacts.SEGMENTER))


@click.command("train")
@artifact_options(SPEC)
def train_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Train the segmenter (stage D): DiCLIP's decoder (`architecture`) on the frozen CLIP, from the stored
    pseudo-labels of the train split (never ground truth). Balanced CE + `affinity_weight` affinity loss;
    AdamW (`lr`, `weight_decay`) with `warmup` and poly decay over `iterations`; random rescale (`rescale`),
    `crop` and `flip`. Checkpoints every `checkpoint_every` steps and on Ctrl-C / SIGTERM; a rerun resumes.
    Several GPUs: `torchrun --nproc_per_node N -m stages.cli train` (DDP)."""
    metric, _ = run_stage(SPEC, body, params_path=params_path, paths=paths)
    if metric:
        click.echo(f"train: step {metric.get('step')}, loss {metric.get('train/loss', float('nan')):.3f}")

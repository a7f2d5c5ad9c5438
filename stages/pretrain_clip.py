"""`diclip shapes pretrain-clip`: train the tiny CLIP on the shapes world, evaluate it, write its weights."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

import click

from pipeline.command import friendly_errors

logger = logging.getLogger(__name__)


@click.command("pretrain-clip")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              show_default="pipeline/models/weights/diclip-tiny-clip of the installed package",
              help="Weights folder to write (open_clip_model.safetensors + manifest.json).")
@click.option("--model", "model_name", default="diclip-tiny-vit-p8-64", show_default=True,
              help="open_clip architecture to train (a registered tiny config).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Training seed: weight init, data order, captions and flips.")
@click.option("--world-seed", type=int, default=0, show_default=True,
              help="Shapes world seed of the training and held-out scenes (the demo dataset uses 0).")
@click.option("--steps", type=int, default=None,
              help="Optimiser steps (default 2000); the run is then exactly reproducible.")
@click.option("--minutes", type=float, default=None,
              help="Training time budget instead of --steps: the step count is fixed from the speed of "
                   "the first steps and recorded in the manifest (rerun with --steps for the same weights).")
@click.option("--num-images", type=int, default=None, help="Size of the pre-rendered training pool (default 50000).")
@click.option("--batch-size", type=int, default=None, help="Images per step (default 128).")
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads.")
@click.option("--n-tune", type=int, default=None,
              help="Held-out scenes for choosing the CAM threshold and surgery depth (default 500).")
@click.option("--n-test", type=int, default=None, help="Held-out scenes for the reported metrics (default 1000).")
@click.option("--eval-only", "eval_only", type=click.Path(exists=True, path_type=Path), default=None,
              help="Only evaluate this checkpoint (a .safetensors file or a weights folder); nothing is trained.")
@click.option("--metrics-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --eval-only: also write the metrics as JSON to this file.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@friendly_errors
def pretrain_clip_command(out: Path | None, model_name: str, seed: int, world_seed: int, steps: int | None,
                          minutes: float | None, num_images: int | None, batch_size: int | None, threads: int,
                          n_tune: int | None, n_test: int | None, eval_only: Path | None, metrics_out: Path | None,
                          progress: bool) -> None:
    """Train the tiny CLIP from scratch on shapes scenes and ship it with a manifest.

    Renders a pool of shapes-world scenes (split "clip_pretrain", never used by the demo dataset),
    captions them with the classes they contain, and trains the open_clip architecture contrastively
    on the CPU (AdamW, warmup + cosine, deterministic for a seed and thread count). The weights are
    saved in float16 safetensors, reloaded through load_clip and checked to be exactly the saved
    values, then evaluated on held-out scenes: zero-shot presence AUC per class, and the mIoU of plain
    surgery-CAM pseudo-labels (background threshold chosen on "clip_holdout_tune", reported on
    "clip_holdout_test"), beside all-background and random-init baselines. manifest.json records the
    command, seed, steps, wall time, data fingerprint, metrics and library versions.
    """
    import dataclasses

    import torch

    from pipeline.models import TINY_CLIP_DIR
    from pipeline.tiny.train_clip import ClipPretrainConfig, train_clip

    given_out, out = out, TINY_CLIP_DIR if out is None else out
    sizes = {k: v for k, v in {"n_tune": n_tune, "n_test": n_test}.items() if v is not None}
    if eval_only is not None:
        from pipeline.tiny.eval_clip import summary
        from pipeline.tiny.train_clip import evaluate_checkpoint

        click.echo(summary(evaluate_checkpoint(eval_only, model_name, world_seed, sizes, threads, metrics_out, progress)))
        return
    if steps is not None and minutes is not None:
        raise click.UsageError("give either --steps or --minutes, not both")
    overrides = {"steps": steps, "max_minutes": minutes, "num_images": num_images, "batch_size": batch_size}
    config = ClipPretrainConfig(model_name=model_name, seed=seed, world_seed=world_seed, threads=threads,
                                **{k: v for k, v in overrides.items() if v is not None})
    config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, world_seed=world_seed, **sizes))
    command = _command_line(out=given_out, model=model_name, seed=seed, world_seed=world_seed, steps=steps,
                            minutes=minutes, num_images=num_images, batch_size=batch_size, threads=threads,
                            n_tune=n_tune, n_test=n_test)
    logger.info("training %s for %s on %d thread(s) (torch %s)", model_name,
                f"{minutes} min" if minutes else f"{config.steps} steps", threads, torch.__version__)
    manifest = train_clip(config, out, progress=progress, command=command)
    click.echo(f"wrote {out} ({manifest['training']['steps']} steps, {manifest['training']['train_wall_time_s']:.0f} s)")
    if "metrics" in manifest:
        from pipeline.tiny.eval_clip import summary

        click.echo(summary(manifest["metrics"]))


def _command_line(**options) -> str:
    """The canonical command reproducing a run, whichever entry point started it (options left at None omitted)."""
    parts = ["diclip", "shapes", "pretrain-clip"]
    for name, value in options.items():
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def main() -> None:
    """``python -m stages.pretrain_clip``: the command with the CLI's logging set up."""
    from pipeline.command import setup_logging

    setup_logging(0)
    pretrain_clip_command()


if __name__ == "__main__":
    main()

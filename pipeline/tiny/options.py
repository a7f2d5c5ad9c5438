"""The command-line options of `diclip shapes pretrain-sd`, kept beside the config they fill
(pipeline.tiny.train_sd.SDPretrainConfig) so the command itself stays a short body."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

_DIR = click.Path(file_okay=False, path_type=Path)

PRETRAIN_SD_OPTIONS: tuple[Callable, ...] = (
    click.option("--out", type=_DIR, default=None,
                 show_default="pipeline/models/weights/diclip-tiny-sd of the installed package",
                 help="Pipeline directory to write (save_pretrained layout + manifest.json); replaced if it is one."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation, batches and noise."),
    click.option("--init", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
                 help="Fine-tune this pipeline directory (e.g. the shipped tiny SD): its VAE and latent scaling are "
                      "kept, its UNet and text encoder train on (no VAE steps; --minutes all go to the UNet)."),
    click.option("--image-size", "image_sizes", type=click.IntRange(min=16), multiple=True,
                 help="UNet training input size in px, repeatable: steps cycle through the sizes; scenes are resized "
                      "as stage A resizes them for SD (default: the scenes' own 64 px)."),
    click.option("--vae-steps", type=int, default=None, help="VAE steps (default: SDPretrainConfig.vae_steps)."),
    click.option("--unet-steps", type=int, default=None,
                 help="UNet + text encoder steps (default: SDPretrainConfig.unet_steps)."),
    click.option("--minutes", type=float, default=None,
                 help="Total training budget instead of steps: split VAE/UNet by --vae-share, turned into step "
                      "counts after timing the first steps (recorded in the manifest; pass them as --*-steps to "
                      "reproduce)."),
    click.option("--unet-batch", type=click.IntRange(min=1), default=None,
                 help="Scenes per UNet step (default: SDPretrainConfig.unet_batch)."),
    click.option("--unet-lr", type=float, default=None, help="UNet learning rate (default: SDPretrainConfig.unet_lr)."),
    click.option("--text-lr", type=float, default=None,
                 help="Text encoder learning rate (default: SDPretrainConfig.text_lr)."),
    click.option("--vae-share", type=float, default=0.2, show_default=True, help="Share of --minutes given to the VAE."),
    click.option("--scenes", type=int, default=None, help="Multi-object training scenes (default: SDPretrainConfig.n_scenes)."),
    click.option("--single-scenes", type=int, default=None,
                 help="Single-object training scenes (default: SDPretrainConfig.n_single_scenes)."),
    click.option("--tiny-config", "tiny_config", default=None,
                 help="Component sizes: a config name from pipeline/models/tiny_configs/sd "
                      "(default: SDPretrainConfig.tiny_config)."),
    click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads."),
    click.option("--checkpoints", type=_DIR, default=None, show_default="OUT.checkpoints beside --out",
                 help="Folder for the run's checkpoints: a killed or interrupted run rerun with the same arguments "
                      "continues from the newest one and writes the same weights; removed when OUT is written."),
    click.option("--checkpoint-every", type=click.IntRange(min=1), default=100, show_default=True,
                 help="Steps between checkpoints (also at the end of the VAE and on SIGTERM/SIGINT)."),
    click.option("--eval-only", "eval_only", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
                 help="Skip training: evaluate this pipeline directory and update its manifest's metrics."),
    click.option("--eval/--no-eval", "do_eval", default=True, show_default=True, help="Evaluate after training."),
    click.option("--eval-scenes", type=int, default=100, show_default=True, help="Held-out scenes for the attention metric."),
    click.option("--samples-per-class", type=int, default=16, show_default=True,
                 help="Samples per class for the CLIP metric."),
    click.option("--clip-dir", type=_DIR, default=None,
                 show_default="pipeline/models/weights/diclip-tiny-clip of the installed package",
                 help="Shipped tiny CLIP (manifest.json + checkpoint) that classifies the samples."),
    click.option("--clip-wait", type=float, default=0.0, show_default=True,
                 help="Minutes to wait for --clip-dir to appear before skipping the sample metric."),
)


def pretrain_sd_options(command: Callable) -> Callable:
    """Apply every pretrain-sd option to `command`, in the order --help lists them."""
    for option in reversed(PRETRAIN_SD_OPTIONS):
        command = option(command)
    return command

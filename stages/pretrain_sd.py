"""`diclip shapes pretrain-sd`: train, evaluate and ship the tiny Stable Diffusion of the shapes world.

Also runnable on its own: ``python -m stages.pretrain_sd --help``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import sys
from pathlib import Path

import click

from pipeline.tiny.options import pretrain_sd_options


@click.command("pretrain-sd")
@pretrain_sd_options
def pretrain_sd_command(out: Path | None, seed: int, init: Path | None, image_sizes: tuple[int, ...], vae_steps, unet_steps,
                        minutes, unet_batch, unet_lr, text_lr, vae_share: float, scenes, single_scenes,
                        tiny_config, threads: int, checkpoints: Path | None, checkpoint_every: int, eval_only,
                        do_eval: bool, eval_scenes: int, samples_per_class: int, clip_dir: Path | None,
                        clip_wait: float) -> None:
    """Train the tiny Stable Diffusion on shapes-world scenes and write a diffusers pipeline directory.

    The VAE is trained first (L1 + L2 + small KL on random crops), its latent scaling factor set to
    1/std, then the UNet and the CLIP text encoder jointly (epsilon prediction, DDIM training betas,
    min-SNR weighting, 10% empty captions for classifier-free guidance, EMA weights shipped). Training
    scenes come from the splits `sd_pretrain` (1-3 objects) and `sd_pretrain_single` (one object) of
    the demo world (seed 0); captions read "a photo of a disk and a star.".

    The directory (fp16 safetensors) loads with `load_stable_diffusion(OUT)` exactly like SD 2.1-base.
    Afterwards the pipeline is reloaded from OUT and evaluated on `sd_holdout` scenes: (a) k-means
    clusters of its aggregated self-attention vs object masks (best-match IoU per K and timestep;
    untrained UNet and colour k-means baselines), (b) zero-shot tiny-CLIP accuracy of
    "a photo of a {class}." samples (when the tiny CLIP is shipped). Everything lands in
    OUT/manifest.json with the command, seed, steps, wall times, data fingerprint and library versions.

    With --init DIR the run fine-tunes that pipeline instead (its VAE kept, no VAE steps), for example
    at the 128 px input stage A reads it at: `--init pipeline/models/weights/diclip-tiny-sd --image-size
    64 --image-size 128` alternates the scenes' own size (which the TSA cache generates at) with 128 px.

    Training checkpoints every --checkpoint-every steps into --checkpoints: a run that was killed,
    or stopped with Ctrl-C, continues from its newest checkpoint when the same command is run again.
    """
    import torch

    from pipeline.models import TINY_CLIP_DIR, TINY_SD_DIR
    from pipeline.tiny.eval_sd import evaluate_shipped
    from pipeline.tiny.manifest import manifest_path, read_manifest, write_manifest
    from pipeline.tiny.train_sd import SDPretrainConfig, TrainingInterrupted, reproduce_command, train_sd

    given_out, out = out, TINY_SD_DIR if out is None else out
    clip_dir = TINY_CLIP_DIR if clip_dir is None else clip_dir
    torch.set_num_threads(threads)
    logging.getLogger("pipeline").setLevel(logging.INFO)
    if eval_only is not None:
        record = read_manifest(eval_only) if manifest_path(eval_only).is_file() else {}
        record["metrics"] = evaluate_shipped(eval_only, eval_scenes, samples_per_class, clip_dir, clip_wait)
        write_manifest(eval_only, record)
        click.echo(json.dumps(record["metrics"]["summary"], indent=1))
        return

    overrides = {"seed": seed, "image_sizes": image_sizes}
    if init is not None:
        overrides["init"] = str(init)
    for name, value in (("vae_steps", vae_steps), ("unet_steps", unet_steps), ("unet_batch", unet_batch),
                        ("unet_lr", unet_lr), ("text_lr", text_lr)):
        if value is not None:
            overrides[name] = value
    if minutes is not None:
        if not 0.0 < vae_share < 1.0:
            raise click.BadParameter("must lie in (0, 1)", param_hint="--vae-share")
        fine_tune = init is not None  # a fine-tune trains no VAE: the whole budget goes to the UNet
        overrides.update(vae_minutes=None if fine_tune else minutes * vae_share,
                         unet_minutes=minutes if fine_tune else minutes * (1.0 - vae_share),
                         vae_steps=10**9, unet_steps=10**9)
    if tiny_config is not None:
        overrides["tiny_config"] = tiny_config
    if scenes is not None:
        overrides["n_scenes"] = scenes
    if single_scenes is not None:
        overrides["n_single_scenes"] = single_scenes
    try:
        config = dataclasses.replace(SDPretrainConfig(), **overrides)
    except ValueError as err:  # SDPretrainConfig validates every value (the config name included) up front
        raise click.UsageError(str(err)) from None
    checkpoints = out.with_name(out.name + ".checkpoints") if checkpoints is None else checkpoints
    try:
        record = train_sd(config, out, progress=True, checkpoints=checkpoints, checkpoint_every=checkpoint_every)
    except TrainingInterrupted as err:
        raise click.ClickException(str(err)) from None
    record["command"] = _command_line()
    record["reproduce"] = reproduce_command(record, config, out=given_out, scenes=scenes, single_scenes=single_scenes)
    record["torch_threads"] = threads
    if do_eval:
        record["metrics"] = evaluate_shipped(out, eval_scenes, samples_per_class, clip_dir, clip_wait)
    write_manifest(out, record)
    click.echo(f"wrote {out} (vae {record['vae']['steps']} steps, unet {record['unet']['steps']} steps, "
               f"{record['total_wall_s']:.0f}s)")
    if do_eval:
        click.echo(json.dumps(record["metrics"]["summary"], indent=1))


def _command_line() -> str:
    argv = sys.argv[1:]
    prog = "python -m stages.pretrain_sd" if sys.argv[0].endswith("pretrain_sd.py") else Path(sys.argv[0]).name
    return " ".join([prog, shlex.join(argv)]).strip()


if __name__ == "__main__":
    from pipeline.command import setup_logging

    setup_logging(0)
    pretrain_sd_command()

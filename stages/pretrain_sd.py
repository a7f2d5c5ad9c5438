"""`diclip shapes pretrain-sd`: train, evaluate and ship the tiny Stable Diffusion of the shapes world.

Also runnable on its own: ``python -m stages.pretrain_sd --help``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import click

logger = logging.getLogger(__name__)


@click.command("pretrain-sd")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              show_default="pipeline/models/weights/diclip-tiny-sd of the installed package",
              help="Pipeline directory to write (save_pretrained layout + manifest.json); replaced if it is one.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation, batches and noise.")
@click.option("--vae-steps", type=int, default=None, help="VAE steps (default: SDPretrainConfig.vae_steps).")
@click.option("--unet-steps", type=int, default=None, help="UNet + text encoder steps (default: SDPretrainConfig.unet_steps).")
@click.option("--minutes", type=float, default=None,
              help="Total training budget instead of steps: split VAE/UNet by --vae-share, turned into step "
                   "counts after timing the first steps (recorded in the manifest; pass them as --*-steps to reproduce).")
@click.option("--vae-share", type=float, default=0.2, show_default=True, help="Share of --minutes given to the VAE.")
@click.option("--scenes", type=int, default=None, help="Multi-object training scenes (default: SDPretrainConfig.n_scenes).")
@click.option("--single-scenes", type=int, default=None,
              help="Single-object training scenes (default: SDPretrainConfig.n_single_scenes).")
@click.option("--tiny-config", "tiny_config", default=None,
              help="Component sizes: a config name from pipeline/models/tiny_configs/sd (default: SDPretrainConfig.tiny_config).")
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads.")
@click.option("--eval-only", "eval_only", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Skip training: evaluate this pipeline directory and update its manifest's metrics.")
@click.option("--eval/--no-eval", "do_eval", default=True, show_default=True, help="Evaluate after training.")
@click.option("--eval-scenes", type=int, default=100, show_default=True, help="Held-out scenes for the attention metric.")
@click.option("--samples-per-class", type=int, default=16, show_default=True, help="Samples per class for the CLIP metric.")
@click.option("--clip-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              show_default="pipeline/models/weights/diclip-tiny-clip of the installed package",
              help="Shipped tiny CLIP (manifest.json + checkpoint) that classifies the samples.")
@click.option("--clip-wait", type=float, default=0.0, show_default=True,
              help="Minutes to wait for --clip-dir to appear before skipping the sample metric.")
def pretrain_sd_command(out: Path | None, seed: int, vae_steps, unet_steps, minutes, vae_share: float, scenes, single_scenes,
                        tiny_config, threads: int, eval_only, do_eval: bool, eval_scenes: int, samples_per_class: int,
                        clip_dir: Path | None, clip_wait: float) -> None:
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
    """
    import torch

    from pipeline.models import TINY_CLIP_DIR, TINY_SD_DIR
    from pipeline.tiny.manifest import manifest_path, read_manifest, write_manifest
    from pipeline.tiny.train_sd import SDPretrainConfig, train_sd

    given_out, out = out, TINY_SD_DIR if out is None else out
    clip_dir = TINY_CLIP_DIR if clip_dir is None else clip_dir
    torch.set_num_threads(threads)
    logging.getLogger("pipeline").setLevel(logging.INFO)
    if eval_only is not None:
        record = read_manifest(eval_only) if manifest_path(eval_only).is_file() else {}
        record["metrics"] = _evaluate(eval_only, eval_scenes, samples_per_class, clip_dir, clip_wait)
        write_manifest(eval_only, record)
        click.echo(json.dumps(record["metrics"]["summary"], indent=1))
        return

    overrides = {"seed": seed}
    if vae_steps is not None:
        overrides["vae_steps"] = vae_steps
    if unet_steps is not None:
        overrides["unet_steps"] = unet_steps
    if minutes is not None:
        if not 0.0 < vae_share < 1.0:
            raise click.BadParameter("must lie in (0, 1)", param_hint="--vae-share")
        overrides.update(vae_minutes=minutes * vae_share, unet_minutes=minutes * (1.0 - vae_share),
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
    record = train_sd(config, out, progress=True)
    record["command"] = _command_line()
    record["reproduce"] = shlex.join(["python", "-m", "stages.pretrain_sd"]  # no --out: the shipped directory
                                     + (["--out", str(given_out)] if given_out is not None else [])
                                     + ["--seed", str(seed), "--tiny-config", config.tiny_config,
                                        "--vae-steps", str(record["vae"]["steps"]),
                                        "--unet-steps", str(record["unet"]["steps"])]
                                     + (["--scenes", str(scenes)] if scenes is not None else [])
                                     + (["--single-scenes", str(single_scenes)] if single_scenes is not None else []))
    record["torch_threads"] = threads
    if do_eval:
        record["metrics"] = _evaluate(out, eval_scenes, samples_per_class, clip_dir, clip_wait)
    write_manifest(out, record)
    click.echo(f"wrote {out} (vae {record['vae']['steps']} steps, unet {record['unet']['steps']} steps, "
               f"{record['total_wall_s']:.0f}s)")
    if do_eval:
        click.echo(json.dumps(record["metrics"]["summary"], indent=1))


def _evaluate(path: Path, eval_scenes: int, samples_per_class: int, clip_dir: Path, clip_wait: float) -> dict:
    """Reload the pipeline from ``path`` (as every user will) and run the evaluation."""
    from pipeline.models import load_shipped_clip, load_stable_diffusion
    from pipeline.tiny.eval_sd import SDEvalConfig, evaluate_sd
    from pipeline.tiny.manifest import manifest_path

    pipe = load_stable_diffusion(path, device="cpu", precision="fp32")
    clip = None
    deadline = time.monotonic() + 60.0 * clip_wait
    while not manifest_path(clip_dir).is_file() and time.monotonic() < deadline:
        logger.info("waiting for the tiny CLIP at %s", clip_dir)
        time.sleep(min(120.0, max(1.0, deadline - time.monotonic())))
    if manifest_path(clip_dir).is_file():
        clip = load_shipped_clip(clip_dir)
    else:
        logger.warning("no tiny CLIP at %s: the sample metric is skipped", clip_dir)
    config = SDEvalConfig(n_scenes=eval_scenes, samples_per_class=samples_per_class)
    t0 = time.perf_counter()
    metrics = evaluate_sd(pipe, config, clip=clip, samples_png=path / "samples.png" if clip is not None else None)
    metrics["wall_s"] = round(time.perf_counter() - t0, 1)
    metrics["clip"] = None if clip is None else {"dir": str(clip_dir), "model": clip.model_name,
                                                 "checkpoint": clip.pretrained}
    attn = metrics["attention_clusters"]
    metrics["summary"] = {
        "attention_iou_trained": attn["best"]["trained"],
        "attention_iou_untrained": attn["best"].get("untrained"),
        "attention_iou_acr": attn.get("acr"),
        "colour_kmeans_best": max(attn["colour_kmeans"].values()) if "colour_kmeans" in attn else None,
        "sample_accuracy": None if clip is None else metrics["samples"]["mean"],
        "vae_l1_255": metrics["vae_l1_255"],
    }
    return metrics


def _command_line() -> str:
    argv = sys.argv[1:]
    prog = "python -m stages.pretrain_sd" if sys.argv[0].endswith("pretrain_sd.py") else Path(sys.argv[0]).name
    return " ".join([prog, shlex.join(argv)]).strip()


if __name__ == "__main__":
    from stages.common import setup_logging

    setup_logging(0)
    pretrain_sd_command()

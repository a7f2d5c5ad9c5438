"""The `diclip` command: one subcommand per DVC stage, plus utilities."""

from __future__ import annotations

import click

from stages.common import setup_logging
from stages.cams import cams_command
from stages.diffusion_attention import diffusion_attention_command
from stages.eval_cams import eval_cams_command
from stages.evaluate import evaluate_command, predict_command
from stages.report import report_command
from stages.train import train_command
from stages.tsa_adapt import tsa_adapt_command
from stages.tsa_cache import tsa_cache_command
from stages.params_cmd import params_group
from stages.prepare import prepare_command
from stages.pretrain_clip import pretrain_clip_command
from stages.pretrain_sd import pretrain_sd_command
from stages.shapes import shapes_group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More logging: debug messages, and dask's own logs at INFO.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
@click.version_option(package_name="diclip")
def main(verbose: int, quiet: bool) -> None:
    """diclip: DiCLIP weakly supervised segmentation as a reproducible DVC pipeline.

    Stages (run them all with `dvc repro`; each reads params.yaml): shapes generate (demo data),
    prepare (validate + index the dataset), diffusion-attention (SD self-attention -> clusters,
    refined correlation R, RAR transition P), tsa-cache (generated class images, keys, values), cams
    (CAMs + pseudo-labels), eval-cams (their mIoU), tsa-adapt (round-2 labels), train (the segmenter
    from the pseudo-labels), evaluate (its mIoU, predictions), report (artifacts/report/index.html).
    Tiny-model training (not a DVC stage; weights ship in the repo): shapes pretrain-clip,
    shapes pretrain-sd. Utilities: params (check, show, preset), predict (a split without masks,
    e.g. VOC test, in the evaluation server's layout).
    """
    setup_logging(-1 if quiet else verbose)


main.add_command(shapes_group)
shapes_group.add_command(pretrain_clip_command)
shapes_group.add_command(pretrain_sd_command)
main.add_command(prepare_command)
main.add_command(diffusion_attention_command)
main.add_command(tsa_cache_command)
main.add_command(cams_command)
main.add_command(eval_cams_command)
main.add_command(tsa_adapt_command)
main.add_command(train_command)
main.add_command(evaluate_command)
main.add_command(predict_command)
main.add_command(report_command)
main.add_command(params_group)

if __name__ == "__main__":
    main()

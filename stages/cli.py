"""The `diclip` command: one subcommand per DVC stage, plus utilities.

The command table: the one module in stages/ that imports the stage modules (no stage imports another;
tests/test_layers.py checks it). `STAGES` is the pipeline in order, from which dvc.yaml is generated.
"""

from __future__ import annotations

import click

from pipeline.command import setup_logging
from stages import (cams, diffusion_attention, eval_cams, evaluate, params_cmd, predict, prepare, pretrain_clip,
                    pretrain_sd, report, shapes, train, tsa_adapt, tsa_cache)

#: the DVC stages, in pipeline order
STAGES = (shapes, prepare, diffusion_attention, tsa_cache, cams, eval_cams, tsa_adapt, train, evaluate, report)


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
    e.g. VOC test, in the evaluation server's layout), dvcfile (dvc.yaml from the stages' declarations).
    """
    setup_logging(-1 if quiet else verbose)


main.add_command(shapes.shapes_group)
shapes.shapes_group.add_command(pretrain_clip.pretrain_clip_command)
shapes.shapes_group.add_command(pretrain_sd.pretrain_sd_command)
main.add_command(prepare.prepare_command)
main.add_command(diffusion_attention.diffusion_attention_command)
main.add_command(tsa_cache.tsa_cache_command)
main.add_command(cams.cams_command)
main.add_command(eval_cams.eval_cams_command)
main.add_command(tsa_adapt.tsa_adapt_command)
main.add_command(train.train_command)
main.add_command(evaluate.evaluate_command)
main.add_command(predict.predict_command)
main.add_command(report.report_command)
main.add_command(params_cmd.params_group)


@main.command("dvcfile")
@click.option("--write", is_flag=True, help="Rewrite the files instead of only checking them.")
def dvcfile_command(write: bool) -> None:
    """Check (or rewrite with --write) dvc.yaml and pipeline/params/defaults.yaml against the code: each
    stage's deps, params and outs come from its StageSpec, its algorithm code and its layouts. Exits 1
    when a file is stale. For developers, after adding a stage or changing a default."""
    from pipeline import dvcfile

    stale = dvcfile.stale([module.SPEC for module in STAGES], write=write)
    for path in stale:
        click.echo(f"{'wrote' if write else 'stale'}: {path.name}")
    if stale and not write:
        raise SystemExit(1)

if __name__ == "__main__":
    main()

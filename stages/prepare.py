"""Stage `prepare`: validate the dataset and write the index every later stage reads."""

from __future__ import annotations

from pathlib import Path

import click

from stages.common import friendly_errors, params_option


@click.command("prepare")
@params_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="artifacts/index", show_default=True,
              help="Index folder to write (index.json, <split>.txt, records/<split>.zarr).")
@friendly_errors
def prepare_command(params_path: Path, out: Path) -> None:
    """Validate every image of the train and eval splits and index them.

    Reads params sections `dataset`, `prepare` and `runner`. Each image is fully decoded and its
    mask checked (values within the class range or 255, same size as the image); image-level
    labels are the classes present in the mask. Bad images fail the stage with one message that
    lists them (or, with prepare.on_error=skip, are left out and listed in rejected.json).
    Resumable: a rerun after a kill validates only the images not yet recorded.
    """
    from pipeline.data.prepare import prepare_index
    from pipeline.params import load_params

    params = load_params(params_path)
    summary = prepare_index(params, out)
    for split, count in summary.items():
        click.echo(f"{split}: {count} images indexed")

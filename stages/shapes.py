"""`diclip shapes ...`: the synthetic shapes world (the demo dataset) and, later, its tiny models."""

from __future__ import annotations

from pathlib import Path

import click

from stages.common import friendly_errors, params_option


@click.group("shapes")
def shapes_group() -> None:
    """The shapes world: a synthetic VOC-layout dataset with exact masks, made from a seed."""


def _parse_split(ctx, param, values: tuple[str, ...]) -> dict[str, int] | None:
    if not values:
        return None
    out = {}
    for value in values:
        name, sep, count = value.partition("=")
        if not sep or not count.isdigit():
            raise click.BadParameter(f"expected NAME=COUNT such as train=2000, got {value!r}")
        out[name] = int(count)
    return out


@shapes_group.command("generate")
@params_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="artifacts/shapes", show_default=True,
              help="Dataset folder to write (VOC layout + class_names.txt + shapes_world.json).")
@click.option("--seed", type=int, default=None, help="World seed (default: shapes.seed in params).")
@click.option("--image-size", type=int, default=None, help="Image side in pixels (default: shapes.world.image_size).")
@click.option("--split", "splits", multiple=True, callback=_parse_split, metavar="NAME=COUNT",
              help="Split and image count, repeatable (default: shapes.splits), e.g. --split train=2000.")
@click.option("--workers", type=int, default=None, help="Generator processes (default: shapes.workers).")
@click.option("--overwrite/--no-overwrite", default=True, show_default=True,
              help="Replace an existing dataset folder at --out.")
@friendly_errors
def generate_command(params_path: Path, out: Path, seed, image_size, splits, workers, overwrite: bool) -> None:
    """Generate the shapes world deterministically (same seed and params -> byte-identical files).

    Options override the `shapes` section of the params file; without a params file the defaults
    apply. The folder appears only when complete (written beside it, then renamed).
    """
    import dataclasses

    from pipeline.data.shapes import generate_dataset
    from pipeline.params import Params, load_params

    params = load_params(params_path).shapes if params_path.exists() else Params().shapes
    world = dataclasses.replace(params.world, image_size=image_size) if image_size else params.world
    generate_dataset(
        out,
        splits=splits or params.splits,
        seed=params.seed if seed is None else seed,
        config=world,
        workers=workers or params.workers,
        overwrite=overwrite,
    )
    click.echo(f"wrote {out}")

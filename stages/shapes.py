"""Stage `shapes_world` (`diclip shapes generate`): the synthetic shapes world, the demo dataset.
The `shapes` group also holds the tiny models' training commands (added by stages.cli)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from pipeline import artifacts
from pipeline.skeleton import StageContext, StageSpec, run_stage
from pipeline.command import artifact_options

SPEC = StageSpec(name="shapes_world", module=__name__, command="shapes generate",
                 params=("shapes.seed", "shapes.splits", "shapes.world"), outputs=(artifacts.SHAPES,))


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


def generate(ctx: StageContext, *, seed: int | None = None, image_size: int | None = None,
             splits: dict[str, int] | None = None, overwrite: bool = True) -> Path:
    """Write the shapes world from the `shapes` params (each argument given overrides its param)."""
    from pipeline.data.shapes import generate_dataset

    p = ctx.params.shapes
    world = dataclasses.replace(p.world, image_size=image_size) if image_size else p.world
    splits = splits or p.splits
    out = ctx.path(artifacts.SHAPES)
    generate_dataset(out, splits=splits, seed=p.seed if seed is None else seed, config=world,
                     map_chunks=ctx.runner.map, overwrite=overwrite)
    ctx.summary.images = ctx.summary.computed = sum(splits.values())
    return out


@shapes_group.command("generate")
@artifact_options(SPEC)
@click.option("--seed", type=int, default=None, help="World seed (default: shapes.seed in params).")
@click.option("--image-size", type=int, default=None, help="Image side in pixels (default: shapes.world.image_size).")
@click.option("--split", "splits", multiple=True, callback=_parse_split, metavar="NAME=COUNT",
              help="Split and image count, repeatable (default: shapes.splits), e.g. --split train=2000.")
@click.option("--overwrite/--no-overwrite", default=True, show_default=True,
              help="Replace an existing dataset folder at --shapes.")
def generate_command(params_path: Path, paths: dict[str, Path], seed, image_size, splits, overwrite: bool) -> None:
    """Generate the shapes world deterministically (same seed and params -> byte-identical files).

    Options override the `shapes` section of the params file (a missing params file means the
    defaults). Scenes are rendered on the runner's workers (params section `runner`). The folder
    appears only when complete (written beside it, then renamed).
    """
    from pipeline.params import Params

    params = None if params_path.exists() else Params()
    run_stage(SPEC, lambda ctx: generate(ctx, seed=seed, image_size=image_size, splits=splits, overwrite=overwrite),
              params_path=params_path, paths=paths, params=params)

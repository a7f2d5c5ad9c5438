"""`diclip params ...`: check params.yaml, show it with defaults filled in, switch dataset presets."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.command import friendly_errors, params_option


@click.group("params")
def params_group() -> None:
    """Validate, show and switch the pipeline's params (params.yaml)."""


@params_group.command("check")
@params_option
@friendly_errors
def check_command(params_path: Path) -> None:
    """Validate the params file: unknown keys and bad values are reported by their dotted key."""
    from pipeline.params import load_params

    load_params(params_path)
    click.echo(f"{params_path}: ok")


@params_group.command("show")
@params_option
@friendly_errors
def show_command(params_path: Path) -> None:
    """Print every param, defaults included, as YAML."""
    import yaml

    from pipeline.params import load_params, to_plain

    click.echo(yaml.safe_dump(to_plain(load_params(params_path)), sort_keys=False), nl=False)


@params_group.command("preset")
@click.argument("name")
@params_option
@click.option("--root", default=None, help="Dataset root folder to set as dataset.root (VOC2012 or COCO folder).")
@friendly_errors
def preset_command(name: str, params_path: Path, root: str | None) -> None:
    """Switch params.yaml to preset NAME, keeping its comments and other keys.

    shapes: the demo world and tiny models. voc, coco: DiCLIP on that dataset with CLIP ViT-B/16 and
    SD 2.1-base (its own arithmetic: tests/test_diclip_parity.py). excel-voc, excel-coco: ExCEL's
    training-free path on the same data (tests/test_excel_parity.py), for running the two side by side
    with `dvc exp run`. Only the keys the preset names are replaced; review the result with
    `diclip params show`.
    """
    from pipeline.params.presets import apply_preset

    changed = apply_preset(params_path, name, root=root)
    for key, value in changed.items():
        click.echo(f"{key} = {value!r}")

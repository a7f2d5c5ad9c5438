"""What every stage command shares (click): the --params option, artifact path options taken from the
stage's declaration, logging, and turning user errors into one clear message (no traceback) with exit 1.

Nothing heavy is imported here: a refused run (a bad param, a missing file) answers in about the time
Python takes to start.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import click

if TYPE_CHECKING:
    from pipeline.skeleton import StageSpec

params_option = click.option(
    "--params", "params_path", type=click.Path(dir_okay=False, path_type=Path), default="params.yaml",
    show_default=True, help="The params file (validated before any work starts).",
)


def friendly_errors(fn: Callable) -> Callable:
    """Decorator: errors written for the user (pipeline.errors.UserError) become a click error (exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pipeline.errors import UserError

        try:
            return fn(*args, **kwargs)
        except (UserError, FileExistsError) as err:
            raise click.ClickException(str(err)) from None

    return wrapper


def artifact_options(spec: "StageSpec") -> Callable:
    """Decorator: `--params` plus one path option per input and output artifact of `spec`, defaults
    from pipeline.artifacts (the paths dvc.yaml lists); the command receives them as `paths`."""

    def decorate(fn: Callable) -> Callable:
        names = [a.name for a in (*spec.inputs, *spec.outputs)]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            paths = {name: kwargs.pop(name) for name in names}
            return fn(*args, paths=paths, **kwargs)

        for artifact in reversed((*spec.inputs, *spec.outputs)):
            role = "read" if artifact in spec.inputs else "written"
            wrapper = click.option(
                artifact.option, artifact.name, type=click.Path(path_type=Path), default=artifact.path,
                show_default=True, help=f"{artifact.what.capitalize()} ({role}).",
            )(wrapper)
        return params_option(friendly_errors(wrapper))

    return decorate


def setup_logging(verbosity: int) -> None:
    """-1 quiet (warnings), 0 normal (our INFO; every library, dask included, at WARNING), 1 verbose
    (our DEBUG, libraries at INFO)."""
    ours = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(level=logging.INFO if verbosity > 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("pipeline", "stages"):
        logging.getLogger(name).setLevel(ours)

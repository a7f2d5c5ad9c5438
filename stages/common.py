"""What every stage command shares: the --params option, logging, and turning known errors into
one clear message (no traceback) with a non-zero exit."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable

import click

params_option = click.option(
    "--params", "params_path", type=click.Path(dir_okay=False, path_type=Path), default="params.yaml",
    show_default=True, help="The params file (validated before any work starts).",
)


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions whose message is written for the user: shown as is, without a traceback."""
    from pipeline.data.datasets import DatasetError
    from pipeline.models.errors import ModelUnavailableError
    from pipeline.params import ParamsError
    from pipeline.runner import ImageFailures
    from pipeline.store.image_store import StoreError

    return (ParamsError, DatasetError, StoreError, ImageFailures, ModelUnavailableError, FileExistsError)


def friendly_errors(fn: Callable) -> Callable:
    """Decorator: known user-facing errors become a click error (exit 1) with their message."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except user_errors() as err:
            raise click.ClickException(str(err)) from None

    return wrapper


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # dask's cluster start/stop chatter is noise at INFO; its warnings still show
    for name in ("distributed", "dask"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))

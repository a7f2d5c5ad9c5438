"""Params: the validated contents of params.yaml, and presets for switching datasets."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Collection, get_type_hints

from pipeline.params.schema import ParamsError, build, convert, parse_yaml, read_params_text, to_plain, top_level
from pipeline.params.sections import (
    SECTIONS,
    DatasetParams,
    Params,
    PrepareParams,
    RunnerParams,
    ShapesParams,
)

__all__ = [
    "SECTIONS", "DatasetParams", "Params", "ParamsError", "PrepareParams", "RunnerParams",
    "ShapesParams", "load_params", "parse_params", "to_plain",
]

log = logging.getLogger(__name__)


def parse_params(data: Any, source: str = "params", *, sections: Collection[str] | None = None) -> Params:
    """Validate already-parsed params data; errors name `source` and the dotted key.

    Every section is validated. With `sections` (the sections a stage reads), a bad value in another
    section is logged as a warning and that section left at its defaults: a stage refuses only what
    it reads. Only None (an empty file) means all defaults: `false`, `0`, `[]` or a string is an error,
    and so is an unknown section.
    """
    top = top_level(data, source)
    try:
        build(Params, {k: None for k in top}, "")  # unknown or non-string section names, before any value
    except ParamsError as err:
        raise ParamsError(f"{source}: {err}") from None
    hints = get_type_hints(Params)
    values, errors = {}, {}
    for field in dataclasses.fields(Params):
        if field.name in top:
            try:
                values[field.name] = convert(hints[field.name], top[field.name], field.name)
            except ParamsError as err:
                errors[field.name] = err
    refused = [err for name, err in errors.items() if sections is None or name in sections]
    if refused:
        raise ParamsError(f"{source}: {refused[0]}")
    for name, err in errors.items():
        log.warning("%s: %s (left at its defaults here; the stages that read `%s` refuse it)", source, err, name)
    return Params(**values)


def load_params(path: str | Path = "params.yaml", *, sections: Collection[str] | None = None) -> Params:
    """Read and validate params.yaml (see `parse_params` for `sections`). A missing or undecodable
    file, bad YAML or a repeated key is a ParamsError naming the file (see schema.read_params_text
    and schema.parse_yaml)."""
    path = Path(path)
    return parse_params(parse_yaml(read_params_text(path), str(path)), str(path), sections=sections)

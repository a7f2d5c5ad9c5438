"""Params: the validated contents of params.yaml, and presets for switching datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.params.schema import ParamsError, build, parse_yaml, read_params_text, to_plain, top_level
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


def parse_params(data: Any, source: str = "params") -> Params:
    """Validate already-parsed params data; errors name `source` and the dotted key.

    Only None (an empty file) means all defaults: `false`, `0`, `[]` or a string is an error.
    """
    sections = top_level(data, source)
    try:
        return build(Params, sections, "")
    except ParamsError as err:
        raise ParamsError(f"{source}: {err}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml. A missing or undecodable file, bad YAML or a repeated key is a
    ParamsError naming the file (see schema.read_params_text and schema.parse_yaml)."""
    path = Path(path)
    return parse_params(parse_yaml(read_params_text(path), str(path)), str(path))

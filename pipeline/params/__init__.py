"""Params: the validated contents of params.yaml, and presets for switching datasets."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.params.schema import ParamsError, build, to_plain
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


def parse_params(data: dict | None, source: str = "params") -> Params:
    """Validate already-parsed params data; errors name `source` and the dotted key."""
    try:
        return build(Params, data or {}, "")
    except ParamsError as err:
        raise ParamsError(f"{source}: {err}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; a missing file or bad YAML is a ParamsError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found (run from the project root or pass --params)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return parse_params(data, str(path))

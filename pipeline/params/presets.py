"""Dataset presets: named sets of params overrides (presets/<name>.yaml) applied to params.yaml.

Applying a preset edits params.yaml in place (comments and key order kept) so that the file stays
the single source DVC tracks; the result is validated before it is written.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipeline.params.schema import ParamsError

PRESET_DIR = Path(__file__).with_name("presets")


def list_presets() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))


def load_preset(name: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise ParamsError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    return yaml.safe_load(path.read_text()) or {}


def apply_preset(params_path: str | Path, name: str, *, root: str | None = None) -> dict[str, Any]:
    """Write preset `name` (and `root` as dataset.root) into params_path; returns {dotted key: value}."""
    from ruamel.yaml import YAML

    from pipeline.params import parse_params

    overrides = load_preset(name)
    if root is not None:
        overrides.setdefault("dataset", {})["root"] = root
    params_path = Path(params_path)
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096  # long values (checkpoint paths) stay on their line
    # write None as `null`, as params.yaml spells it, not as an empty value
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    data = rt.load(params_path.read_text()) if params_path.exists() else {}
    data = data if data is not None else {}
    changed = _merge(data, overrides, "")
    parse_params(yaml.safe_load(_dump(rt, data)), f"{params_path} with preset {name!r}")
    params_path.write_text(_dump(rt, data))
    return changed


def _merge(target: Any, overrides: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    changed: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(target.get(key), Mapping):
            changed.update(_merge(target[key], value, dotted + "."))
        else:
            target[key] = value
            changed[dotted] = value
    return changed


def _dump(rt, data) -> str:
    buf = io.StringIO()
    rt.dump(data, buf)
    return buf.getvalue()

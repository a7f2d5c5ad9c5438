"""Presets: named sets of params overrides (presets/<name>.yaml) applied to params.yaml: a dataset with
its method (`voc`, `coco`: DiCLIP; `excel-voc`, `excel-coco`: ExCEL's path on the same data; `shapes`:
the demo). A preset may start from another (`extends: voc`) and override some of its keys.

Applying a preset edits params.yaml in place (comments and key order kept) so that the file stays
the single source DVC tracks; the result is validated before it is written. Files are read with the
same code as `load_params` (schema.read_params_text, schema.parse_yaml), so they fail the same way.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

from pipeline.params.schema import ParamsError, parse_yaml, read_params_text, top_level

PRESET_DIR = Path(__file__).with_name("presets")


def list_presets() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))


def load_preset(name: str, *, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The overrides of preset `name`, with those of the preset it extends underneath."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise ParamsError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    if name in _seen:
        raise ParamsError(f"{path}: presets extend each other in a circle ({' -> '.join((*_seen, name))})")
    data = dict(top_level(parse_yaml(read_params_text(path), str(path)), str(path)))
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ParamsError(f"{path}: extends must name one preset, got {base!r}")
    return _deep_merge(load_preset(base, _seen=(*_seen, name)), data)


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


def apply_preset(params_path: str | Path, name: str, *, root: str | None = None) -> dict[str, Any]:
    """Write preset `name` (and `root` as dataset.root) into params_path; returns {dotted key: value}.

    params_path is read like `load_params` reads it (UTF-8, or UTF-16/32 with a BOM; a repeated key or
    a top level that is not a mapping is a ParamsError before anything is merged), but it is always
    written back as UTF-8 without a BOM: simple, and what every tool in the pipeline reads.
    """
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
    text = read_params_text(params_path) if params_path.exists() else ""
    top_level(parse_yaml(text, str(params_path)), str(params_path))  # our errors, before ruamel's
    data = rt.load(text)
    data = data if data is not None else {}
    changed = _merge(data, overrides, "")
    source = f"{params_path} with preset {name!r}"
    parse_params(parse_yaml(_dump(rt, data), source), source)
    params_path.write_text(_dump(rt, data), encoding="utf-8")
    return changed


def _merge(target: Any, overrides: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    changed: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(target.get(key), Mapping):
            changed.update(_merge(target[key], value, dotted + "."))
        else:
            target[key] = _flow(value)
            changed[dotted] = value
    return changed


def _flow(value: Any) -> Any:
    """Lists are written inline (`heads: [1, 2]`), as params.yaml spells them."""
    if isinstance(value, list):
        from ruamel.yaml.comments import CommentedSeq

        seq = CommentedSeq(value)
        seq.fa.set_flow_style()
        return seq
    return value


def _dump(rt, data) -> str:
    buf = io.StringIO()
    rt.dump(data, buf)
    return buf.getvalue()

"""Turning plain YAML data into frozen, validated dataclasses, once, at the boundary.

Every params section is a frozen dataclass of defaults (params.yaml holds only overrides). Building
one from a mapping rejects unknown keys, checks each value against the field's type hint and runs the
dataclass' own `__post_init__` checks, so every error names the dotted key and what was expected.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ParamsError(ValueError):
    """A params value or key is wrong; the message names the dotted key and what was expected."""


def build(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys; `where` is the dotted key prefix."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ParamsError(f"{where or 'params'} must be a mapping of keys to values, got {type(data).__name__}: {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamsError(
            f"unknown key {_join(where, unknown[0])}"
            + (f" (and {', '.join(unknown[1:])})" if unknown[1:] else "")
            + f"; valid keys{' in ' + where if where else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _convert(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ParamsError:
        raise
    except (ValueError, TypeError) as err:
        raise ParamsError(f"{where}: {err}" if where else str(err)) from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def to_plain(obj: Any) -> Any:
    """Dataclasses, tuples and mappings back to plain YAML/JSON data (for hashing and recording)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin in (dict, typing.Mapping, Mapping):
        return f"a mapping of {_describe(get_args(tp)[0])} to {_describe(get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against type hint `tp` and convert lists to tuples, mappings to dataclasses."""
    origin = get_origin(tp)
    bad = ParamsError(f"{key} must be {_describe(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin is Literal:
        if value not in get_args(tp):
            raise bad
        return value
    if origin in (Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _convert(option, value, key)
            except ParamsError:
                continue
        raise bad
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp, *_rest) = get_args(tp)
        return tuple(_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, typing.Mapping, Mapping):
        if not isinstance(value, Mapping):
            raise bad
        key_tp, val_tp = get_args(tp)
        return {_convert(key_tp, k, key): _convert(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    if tp is type(None):
        if value is not None:
            raise bad
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if tp is Any:
        return value
    raise TypeError(f"{key}: unsupported type hint {tp!r} in a params dataclass")

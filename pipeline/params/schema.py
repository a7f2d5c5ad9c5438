"""Reading params.yaml and turning its data into frozen, validated dataclasses, once, at the boundary.

Every params section is a frozen dataclass of defaults (params.yaml holds only overrides). Building
one from a mapping rejects unknown keys, checks each value against the field's type hint and runs the
dataclass' own `__post_init__` checks, so every error names the dotted key and what was expected.
Reading the file (encoding by BOM, YAML with duplicate keys rejected) lives here too, so that
`load_params` and the presets read params.yaml with one piece of code and report the same errors.
"""

from __future__ import annotations

from pipeline.errors import ParamsError
import codecs
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


# BOM -> codec that drops it; UTF-32 LE before UTF-16 LE, whose BOM is a prefix of it
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)


def read_params_text(path: Path) -> str:
    """The text of a params file: decoded by its BOM (UTF-8, UTF-16, UTF-32; some Windows editors save
    UTF-16), else as UTF-8. A missing or undecodable file is a ParamsError naming the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found (run from the project root or pass --params)") from None
    encoding = next((enc for bom, enc in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        raise ParamsError(
            f"{path}: expected UTF-8 (or UTF-16 with a BOM) text, but byte {err.start} is not valid"
            f" {encoding.upper().removesuffix('-SIG')}"
            f" ({err.reason}; re-save the file as UTF-8)"
        ) from None


class _DuplicateKey(Exception):
    """Raised by UniqueKeyLoader; `parse_yaml` turns it into a ParamsError naming the file."""

    def __init__(self, key: str, first_line: int, second_line: int) -> None:
        super().__init__(key, first_line, second_line)
        self.key, self.first_line, self.second_line = key, first_line, second_line


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader whose mappings reject a repeated key (plain YAML silently keeps the last value).

    Before constructing, it notes each mapping node's dotted path and its explicit keys (merge keys,
    `<<: *anchor`, are left out: overriding what they merge is allowed), because PyYAML rewrites
    nodes in place when it flattens merges.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        self._explicit: dict[int, tuple[str, list[yaml.Node]]] = {}
        self._note_mappings(node, "", set())
        return super().construct_document(node)

    def _note_mappings(self, node: yaml.Node, path: str, seen: set[int]) -> None:
        if id(node) in seen:  # an alias of a node already noted (or a recursive one)
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys = [k for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"]
            self._explicit[id(node)] = (path, keys)
            for key_node, value_node in node.value:
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                self._note_mappings(value_node, _join(path, str(name)), seen)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._note_mappings(item, f"{path}[{i}]", seen)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        path, keys = self._explicit.pop(id(node), ("", []))
        first_line: dict[Any, int] = {}
        for key_node in keys:
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in first_line:
                    raise _DuplicateKey(_join(path, str(key)), first_line[key], line)
                first_line[key] = line
            except TypeError:  # an unhashable key: SafeLoader's own error reports it below
                continue
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """Parse params YAML with UniqueKeyLoader; bad YAML or a repeated key is a ParamsError naming `source`."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except _DuplicateKey as dup:
        raise ParamsError(
            f"{source}: duplicate key {dup.key} on lines {dup.first_line} and {dup.second_line}"
            " (YAML would silently keep the last one; keep one)"
        ) from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{source}: not valid YAML{_yaml_problem(err)}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line error as one line: " at line L, column C: problem (context at line L2)"."""
    if not isinstance(err, yaml.MarkedYAMLError) or err.problem_mark is None:
        return f": {' '.join(str(err).split())}"
    mark = err.problem_mark
    text = f" at line {mark.line + 1}, column {mark.column + 1}: {err.problem}"
    if err.context:
        at = f" at line {err.context_mark.line + 1}, column {err.context_mark.column + 1}" if err.context_mark else ""
        text += f" ({err.context}{at})"
    return text


def top_level(data: Any, source: str) -> Mapping[str, Any]:
    """The top level of a params file: only an empty file (YAML null) means all defaults; `false`, `0`,
    `[]` or a string is a mistake, not an empty file, so it is a ParamsError naming `source`."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ParamsError(
            f"{source}: expected a mapping of params sections (dataset:, runner:, ...) or an empty file,"
            f" got {_found(data)}"
        )
    return data


def build(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys; `where` is the dotted key prefix."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ParamsError(f"{where or 'params'} must be a mapping of keys to values, got {type(data).__name__}: {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    valid = f"valid keys{' in ' + where if where else ''}: {', '.join(sorted(fields))}"
    for key in data:
        _check_key(key, where, valid)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamsError(
            f"unknown key {_join(where, unknown[0])}"
            + (f" (and {', '.join(unknown[1:])})" if unknown[1:] else "")
            + f"; {valid}"
        )
    kwargs = {name: convert(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ParamsError:
        raise
    except (ValueError, TypeError) as err:
        raise ParamsError(_locate(str(err), where, {f.name for f in dataclasses.fields(cls)})) from None


def _check_key(key: Any, where: str, hint: str = "") -> None:
    """YAML keys may be numbers, booleans (`on:`, `yes:`) or null; params keys are always strings."""
    if not isinstance(key, str):
        place = f"in {where}" if where else "at the top level"
        quote = " (YAML reads unquoted yes/no/on/off as true/false: quote the key)" if isinstance(key, bool) else ""
        raise ParamsError(
            f"key {key!r} ({_describe(type(key))}) {place}: keys must be strings{quote}" + (f"; {hint}" if hint else "")
        )


# a message's first word: a field name followed by a space, '.', ':', '[' or the end
_FIRST_WORD = re.compile(r"(\w+)(?=[\s.:\[]|$)")


def _locate(message: str, where: str, field_names: set[str]) -> str:
    """Place a `__post_init__` message under `where`. By convention it starts with the field's name
    ("shard_images must be >= 1, got -3"), which then becomes the dotted key (prepare.shard_images ...);
    other messages are kept whole after the section name ("prepare: ...")."""
    if not where:
        return message
    word = _FIRST_WORD.match(message)
    if word and word.group(1) in field_names:
        return f"{where}.{message}"
    return f"{where}: {message}"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _found(value: Any) -> str:
    """What a wrong value is, for one-line messages: "a list: []", "a string: 'voc'", "false"."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]  # as YAML spells them
    kind = {int: "an integer", float: "a number", str: "a string", list: "a list"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind}: {text if len(text) <= 60 else text[:57] + '...'}"


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


def convert(tp: Any, value: Any, key: str) -> Any:
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
                return convert(option, value, key)
            except ParamsError:
                continue
        raise bad
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp, *_rest) = get_args(tp)
        return tuple(convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, typing.Mapping, Mapping):
        if not isinstance(value, Mapping):
            raise bad
        key_tp, val_tp = get_args(tp)
        if key_tp is str:
            for k in value:
                _check_key(k, key)
        return {convert(key_tp, k, key): convert(val_tp, v, f"{key}.{k}") for k, v in value.items()}
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

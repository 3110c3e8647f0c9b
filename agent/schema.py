"""Typed decoding of YAML nodes into frozen dataclasses, keeping file:line for every error.

Config sections are plain dataclasses; this module turns a composed YAML node tree into them
and collects *all* problems as `file:line: key.path: what is wrong: what is expected`.
A later feature adds a field to its section's dataclass instead of editing a parser.

Per-field hooks (dataclass field metadata):
- `parse`: a function `str -> value` for scalars; a `ValueError` becomes a config error.
- `where`: the field receives the `file:line` of the mapping it was decoded from.
A dataclass with a classmethod `from_scalar(text)` also accepts a scalar shorthand.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

_MISSING = object()


@dataclasses.dataclass(slots=True)
class Problem:
    """One config error with its position; sorts by file then line."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        key = f" {self.key}:" if self.key else ""
        return f"{self.file}:{self.line}:{key} {self.message}"


@dataclasses.dataclass(slots=True)
class Decoder:
    """Decoding context for one file: its label, base directory and collected problems."""

    label: str
    base_dir: Path
    problems: list[Problem]

    def error(self, node: yaml.Node | None, key: str, message: str) -> None:
        """Record a problem at `node`'s line (1-based)."""
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(Problem(self.label, line, key, message))

    def where(self, node: yaml.Node) -> str:
        """`file:line` of a node, as used in reasons and records."""
        return f"{self.label}:{node.start_mark.line + 1}"

    def decode(self, node: yaml.Node, hint: Any, key: str, meta: Any = None) -> Any:  # noqa: PLR0911  (a type dispatcher)
        """Decode `node` as type `hint`; returns `_MISSING` after recording an error."""
        parse = (meta or {}).get("parse")
        origin = typing.get_origin(hint)
        if origin in (types.UnionType, typing.Union):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if _is_null(node):
                return None
            return self.decode(node, args[0], key, meta)
        if origin is tuple:
            return self._sequence(node, typing.get_args(hint)[0], key, meta)
        if parse is not None:
            return self._scalar(node, key, parse, _expected(parse))
        if origin is dict:
            return self._mapping(node, typing.get_args(hint)[1], key)
        if dataclasses.is_dataclass(hint):
            return self.dataclass(node, typing.cast("type[Any]", hint), key)
        return self._plain(node, hint, key)

    def dataclass(self, node: yaml.Node, cls: type[T], key: str) -> T | Any:
        """Decode a mapping (or a scalar shorthand) into dataclass `cls`, rejecting unknown keys."""
        if isinstance(node, yaml.ScalarNode) and hasattr(cls, "from_scalar") and not _is_null(node):
            try:
                return cls.from_scalar(node.value, self.where(node))  # type: ignore[attr-defined]
            except ValueError as e:
                self.error(node, key, str(e))
                return _MISSING
        if _is_null(node):
            node = yaml.MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
        if not isinstance(node, yaml.MappingNode):
            self.error(node, key, f"expected a mapping, found {_kind(node)}")
            return _MISSING
        values = self._fields(node, cls, key)
        try:
            return cls(**values)
        except (TypeError, ValueError) as e:
            init_fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
            if len(values) == len(init_fields):
                self.error(node, key, str(e))
            return _MISSING

    def _fields(self, node: yaml.MappingNode, cls: type[Any], key: str) -> dict[str, Any]:
        """Decode each key of `node` into the matching field; report unknown and missing keys."""
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        seen: set[str] = set()
        for knode, vnode in node.value:
            name = str(knode.value)
            seen.add(name)
            sub = f"{key}.{name}" if key else name
            field = fields.get(name)
            if field is None or not _settable(field):
                known = ", ".join(sorted(n for n, f in fields.items() if _settable(f)))
                self.error(knode, sub, f"unknown key {name!r}: expected one of {known}")
                continue
            value = self.decode(vnode, hints[name], sub, field.metadata)
            if value is not _MISSING:
                values[name] = value
        for name, field in fields.items():
            if field.metadata.get("where"):
                values[name] = self.where(node)
            elif name not in seen and _required(field) and field.init:
                self.error(node, f"{key}.{name}" if key else name, "missing required key")
        return values

    def _sequence(self, node: yaml.Node, item: Any, key: str, meta: Any) -> tuple[Any, ...] | Any:
        if _is_null(node):
            return ()
        if isinstance(node, yaml.ScalarNode):
            node = yaml.SequenceNode(
                "tag:yaml.org,2002:seq", [node], node.start_mark, node.end_mark
            )
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, key, f"expected a list, found {_kind(node)}")
            return _MISSING
        out = [self.decode(n, item, f"{key}[{i}]", meta) for i, n in enumerate(node.value)]
        return tuple(v for v in out if v is not _MISSING)

    def _mapping(self, node: yaml.Node, item: Any, key: str) -> dict[str, Any] | Any:
        if _is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            self.error(node, key, f"expected a mapping of names, found {_kind(node)}")
            return _MISSING
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            name = str(knode.value)
            if name in out:
                self.error(knode, f"{key}.{name}", "defined twice in this mapping")
            value = self.decode(vnode, item, f"{key}.{name}")
            if value is not _MISSING:
                out[name] = value
        return out

    def _plain(self, node: yaml.Node, hint: Any, key: str) -> Any:
        if hint is bool:
            return self._scalar(node, key, _parse_bool, "true or false")
        if hint is int:
            return self._scalar(node, key, int, "a whole number")
        if hint is float:
            return self._scalar(node, key, float, "a number")
        if hint is Path:
            return self._scalar(node, key, self.path, "a file path")
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return self._scalar(node, key, _enum_parser(hint), _enum_expected(hint))
        return self._scalar(node, key, str, "a string")

    def path(self, text: str) -> Path:
        """Resolve a path relative to the config file's directory."""
        if not text:
            raise ValueError("empty path")
        return (self.base_dir / Path(text).expanduser()).resolve()

    def _scalar(self, node: yaml.Node, key: str, parse: Callable[[str], Any], expected: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, key, f"expected {expected}, found {_kind(node)}")
            return _MISSING
        try:
            return parse(node.value)
        except ValueError as e:
            detail = str(e) or "invalid value"
            self.error(node, key, f"{node.value!r}: {detail}")
            return _MISSING


def compose_file(path: Path, label: str) -> tuple[yaml.Node | None, list[Problem]]:
    """Compose a YAML file into a node tree; a syntax error becomes one Problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        return None, [Problem(label, 1, "", f"cannot read: {e.strerror or e}")]
    except UnicodeDecodeError as e:
        return None, [Problem(label, 1, "", f"not UTF-8 text: {e.reason}")]
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader), []
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        return None, [Problem(label, line, "", f"YAML syntax error: {e.problem or e}")]
    except yaml.YAMLError as e:
        return None, [Problem(label, 1, "", f"YAML error: {e}")]


def mapping_get(node: yaml.Node | None, name: str) -> yaml.Node | None:
    """The value node of key `name` in a mapping node, if present."""
    if isinstance(node, yaml.MappingNode):
        for knode, vnode in node.value:
            if knode.value == name:
                return typing.cast("yaml.Node", vnode)
    return None


def is_missing(value: object) -> bool:
    """True for the sentinel a failed decode returns."""
    return value is _MISSING


def _settable(field: dataclasses.Field[Any]) -> bool:
    return field.init and not field.metadata.get("where")


def _required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{node.value!r}"


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _enum_parser(cls: type[enum.Enum]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        for member in cls:
            if text.lower() in (str(member.value).lower(), member.name.lower()):
                return member
        raise ValueError(f"expected one of {_enum_expected(cls)}")

    return parse


def _enum_expected(cls: type[enum.Enum]) -> str:
    return ", ".join(m.name.lower() for m in cls)


def _expected(parse: Callable[[str], Any]) -> str:
    doc = (parse.__doc__ or "a value").strip().splitlines()[0]
    return (doc[:1].lower() + doc[1:]).rstrip(".")

"""Strict YAML loading into typed dataclasses, with errors that name the file and the field.

Roles and environments are declared as dataclasses whose fields carry a `help` text and, where
a field takes only some values, those values (`choices`, `minimum`/`maximum`, `pattern`); `parse`
checks a YAML mapping against one: unknown keys (with a did-you-mean), missing required keys,
wrong types and values outside the declared ones all become one KilnError such as
``images/web/role.yml: field 'ports[1]': expected an integer, got 'http'``. `json_schema` turns
the same declarations into a JSON Schema, so editors complete and check the files.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kiln.errors import KilnError

T = TypeVar("T")


@dataclass(frozen=True)
class Allowed:
    """The values a field (or each item of a list field, each value of a mapping field) may take."""

    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None  # exclusive minimum
    pattern: str | None = None  # a full match
    pattern_help: str = ""  # what the pattern means, for people

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed, or None."""
        if self.choices and value not in self.choices:
            close = difflib.get_close_matches(str(value), self.choices, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            return f"'{value}' is not one of {', '.join(self.choices)}{hint}"
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return f"'{value}' must be {self.pattern_help or f'like {self.pattern}'}"
        low, high = self.minimum, self.maximum
        if low is not None and high is not None and not low <= value <= high:
            return f"{value:g} is out of range: use {low:g} to {high:g}"
        if low is not None and value < low:
            return f"{value:g} is too small: use {low:g} or more"
        if high is not None and value > high:
            return f"{value:g} is too large: use {high:g} or less"
        if self.above is not None and value <= self.above:
            return f"{value:g} is too small: use more than {self.above:g}"
        return None

    def json_schema(self) -> dict:
        keywords = {
            "enum": list(self.choices) or None,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "exclusiveMinimum": self.above,
            "pattern": f"^(?:{self.pattern})$" if self.pattern else None,
        }
        return {k: v for k, v in keywords.items() if v is not None}


def spec(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    choices: tuple[str, ...] = (),
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    pattern: str | None = None,
    pattern_help: str = "",
) -> Any:
    """A described field; mutable defaults are copied per instance. The keyword arguments after
    `help` restrict its values (for a list: each item; for a mapping: each value)."""
    allowed = Allowed(tuple(choices), minimum, maximum, above, pattern, pattern_help)
    metadata = {"help": help, "allowed": allowed}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def load_yaml(path: Path, display: str) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        raise KilnError(f"{display}: cannot read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line, column, problem = yaml_problem(exc)
        where = f" line {line}, column {column}" if line else ""
        raise KilnError(f"{display}:{where}: malformed YAML: {problem}") from exc
    if not isinstance(data, dict):
        raise KilnError(f"{display}: expected a mapping of fields at the top, got {_kind(data)}")
    return data


def yaml_problem(exc: yaml.YAMLError) -> tuple[int | None, int | None, str]:
    """(line, column, problem) of a YAML error, 1-based; line and column None when unknown."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return (mark.line + 1, mark.column + 1, problem) if mark else (None, None, problem)


def parse(cls: type[T], data: Any, display: str, path: str = "") -> T:
    """Build `cls` from `data`, raising KilnError naming `display` (the file) and the field."""
    if not isinstance(data, dict):
        raise _field_error(display, path, f"expected a mapping, got {_kind(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(fields)}"
            raise _field_error(display, _join(path, str(key)), f"unknown field; {hint}")
    values = {}
    for name, f in fields.items():
        where = _join(path, name)
        if name in data:
            allowed = f.metadata.get("allowed") or Allowed()
            values[name] = _coerce(hints[name], data[name], display, where, allowed)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _field_error(display, where, f"required field is missing ({f.metadata['help']})")
    return cls(**values)


def _coerce(hint: Any, value: Any, display: str, where: str, allowed: Allowed = Allowed()) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, display, where, allowed)
    if dataclasses.is_dataclass(hint):
        return parse(hint, value, display, where)
    if origin is list:
        if not isinstance(value, list):
            raise _field_error(display, where, f"expected a list, got {_kind(value)}")
        return [_coerce(args[0], item, display, f"{where}[{i}]", allowed) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _field_error(display, where, f"expected a mapping, got {_kind(value)}")
        return {
            _coerce(args[0], k, display, f"{where}.{k}"): _coerce(
                args[1], v, display, f"{where}.{k}", allowed
            )
            for k, v in value.items()
        }
    scalar = _scalar(hint, value, display, where)
    problem = allowed.problem(scalar)
    if problem:
        raise _field_error(display, where, problem)
    return scalar


def _scalar(hint: Any, value: Any, display: str, where: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise _field_error(display, where, f"expected true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _field_error(display, where, f"expected an integer, got {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _field_error(display, where, f"expected a number, got {_kind(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _field_error(display, where, f"expected a string, got {_kind(value)}")
        return value
    raise TypeError(f"config.parse does not handle {hint!r}")  # a programming error, not input


JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def json_schema(cls: type, title: str) -> dict:
    """A JSON Schema (2020-12) of the files `parse(cls, ...)` reads, from the same declarations:
    every field with its help as description, its default, its type and its allowed values."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **_object_schema(cls)}


def _object_schema(cls: type) -> dict:
    hints = typing.get_type_hints(cls)
    properties, required = {}, []
    for f in dataclasses.fields(cls):
        prop = {
            "description": f.metadata.get("help", ""),
            **_type_schema(hints[f.name], f.metadata.get("allowed")),
        }
        if f.default is not dataclasses.MISSING:
            prop["default"] = (
                dataclasses.asdict(f.default) if dataclasses.is_dataclass(f.default) else f.default
            )
        elif f.default_factory is not dataclasses.MISSING:
            prop["default"] = f.default_factory()
        else:
            required.append(f.name)
        properties[f.name] = prop
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    return {**schema, "required": required} if required else schema


def _type_schema(hint: Any, allowed: Allowed | None) -> dict:
    allowed = allowed or Allowed()
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return {"anyOf": [_type_schema(inner, allowed), {"type": "null"}]}
    if dataclasses.is_dataclass(hint):
        return _object_schema(hint)
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0], allowed)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(args[1], allowed)}
    return {"type": JSON_TYPES[hint], **allowed.json_schema()}


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _field_error(display: str, where: str, message: str) -> KilnError:
    return KilnError(f"{display}: field '{where}': {message}")

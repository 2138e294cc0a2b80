"""Strict YAML loading into typed dataclasses, with errors that name the file and the field.

Roles and environments are declared as dataclasses whose fields carry a `help` text; `parse`
checks a YAML mapping against one: unknown keys (with a did-you-mean), missing required keys
and wrong types all become one KilnError such as
``images/web/role.yml: field 'ports[1]': expected an integer, got 'http'``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kiln.errors import KilnError

T = TypeVar("T")


def spec(default: Any = dataclasses.MISSING, *, help: str) -> Any:
    """A described field; mutable defaults are copied per instance."""
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


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
            values[name] = _coerce(hints[name], data[name], display, where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _field_error(display, where, f"required field is missing ({f.metadata['help']})")
    return cls(**values)


def describe(cls: type) -> list[tuple[str, str]]:
    """(field, help) pairs, for documentation."""
    return [(f.name, f.metadata.get("help", "")) for f in dataclasses.fields(cls)]


def _coerce(hint: Any, value: Any, display: str, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, display, where)
    if dataclasses.is_dataclass(hint):
        return parse(hint, value, display, where)
    if origin is list:
        if not isinstance(value, list):
            raise _field_error(display, where, f"expected a list, got {_kind(value)}")
        return [_coerce(args[0], item, display, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _field_error(display, where, f"expected a mapping, got {_kind(value)}")
        return {
            _coerce(args[0], k, display, f"{where}.{k}"): _coerce(args[1], v, display, f"{where}.{k}")
            for k, v in value.items()
        }
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

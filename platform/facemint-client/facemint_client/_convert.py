"""JSON to the models' dataclasses, driven by their type hints: ISO dates and datetimes are parsed, nested models
and lists of them built, members the client does not know yet ignored (a newer server may add some), and members
a model expects but the response lacks left at their default, or None."""

from __future__ import annotations

import dataclasses
import types
import typing
from datetime import date, datetime
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


_FIELDS: dict[type[Any], tuple[tuple[str, Any, Any], ...]] = {}


def _fields(cls: type[Any]) -> tuple[tuple[str, Any, Any], ...]:
    """(name, type hint, default) of a model's fields, worked out once per model."""
    if cls in _FIELDS:
        return _FIELDS[cls]
    hints = typing.get_type_hints(cls)
    found = []
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory
        else:
            default = None
        found.append((field.name, hints[field.name], default))
    _FIELDS[cls] = tuple(found)
    return _FIELDS[cls]


def from_json(cls: type[T], data: Any) -> T:
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    values: dict[str, Any] = {}
    for name, hint, default in _fields(cls):
        if name in data:
            values[name] = _convert(hint, data[name])
        else:
            values[name] = default() if callable(default) else default
    return cls(**values)


def _convert(hint: Any, value: Any) -> Any:
    if value is None or hint is Any:
        return value
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        options = [arg for arg in get_args(hint) if arg is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if origin is list:
        (item,) = get_args(hint)
        return [_convert(item, v) for v in value]
    if origin is dict:
        _, item = get_args(hint)
        return {k: _convert(item, v) for k, v in value.items()}
    if origin is Literal:
        return value
    if hint is datetime:
        return datetime.fromisoformat(value)
    if hint is date:
        return date.fromisoformat(value)
    if hint is float and isinstance(value, int):
        return float(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_json(hint, value)
    return value

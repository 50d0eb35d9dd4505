"""Typed dataclasses from plain dicts (JSON, YAML): unknown keys and wrong types fail loudly.

``from_dict(Config, data, error=ConfigError)`` builds nested dataclasses field by field from their
type hints (dataclasses, ``Optional``/unions, ``list``, ``dict``, ``Literal``, ``bool``, ``int``,
``float``, ``str``, ``Any``) and raises ``error`` with the dotted key of the first value that does not
fit: ``image_qformer.num_layers: expected an integer, got '2'``. The model config (``config.py``)
and the training config (``train/config.py``) share it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

__all__ = ["from_dict"]


def from_dict(tp: type, value: Any, *, error: type[Exception], where: str = "") -> Any:
    """``value`` converted to type ``tp``; ``error(message)`` on the first key or value that does not fit."""
    return _convert(tp, value, where, error)


def _convert(tp: Any, value: Any, where: str, error: type[Exception]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    label = where or "config"
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise error(f"{label}: expected a mapping, got {value!r}")
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        unknown = sorted(set(value) - set(names))
        if unknown:
            key = f"{where}.{unknown[0]}" if where else unknown[0]
            raise error(f"unknown key {key!r}; valid keys here: {', '.join(names)}")
        kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k, error) for k, v in value.items()}
        return tp(**kwargs)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, where, error)
            except error as err:
                errors.append(str(err))
        raise error(errors[0] if len(errors) == 1 else f"{label}: {value!r} matches none of {options}")
    if origin is Literal:
        if value not in args:
            raise error(f"{label}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and args and args[0] is str:
            value = [value]  # a single path is a one-item list
        if not isinstance(value, (list, tuple)):
            raise error(f"{label}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{where}.{i}", error) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise error(f"{label}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_convert(inner, v, f"{where}.{i}", error) for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise error(f"{label}: expected a mapping, got {value!r}")
        inner = args[1] if len(args) == 2 else Any
        return {str(k): _convert(inner, v, f"{where}.{k}", error) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise error(f"{label}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise error(f"{label}: expected an integer, got {value!r}")
    if tp is float:
        # PyYAML (YAML 1.1) reads ``1e-4`` as a string: accept numeric strings for floats.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise error(f"{label}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise error(f"{label}: expected a string, got {value!r}")
    if tp is Any:
        return value
    raise error(f"{label}: unsupported field type {tp!r}")

"""Decoded JSON arguments → the dataclasses a task's signature asks for.

A task declared as ``def area(shape: Rect) -> float`` receives a ``Rect``, not the dict the JSON decoder
produced. The converters are built once per task when the worker loads the app; a task whose hints contain
no dataclass gets no converter at all, so plain tasks pay nothing on the hot path.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Callable, Dict, List, Optional

from .schema import _DICT_ORIGINS, _KEY_QUALIFIERS, _LIST_ORIGINS, _UNION_ORIGINS, is_typeddict, resolve_hints

Converter = Callable[[Any], Any]

__all__ = ["build_args_converter"]


def build_args_converter(func: Callable[..., Any]) -> Optional[Callable[[Dict[str, Any]], Dict[str, Any]]]:
    """A function that converts a task's decoded ``args`` in place, or ``None`` when nothing needs it."""
    hints = resolve_hints(func)
    memo: Dict[Any, Optional[Converter]] = {}
    converters = {}
    for name in inspect.signature(func).parameters:
        converter = _converter(hints.get(name, Any), memo)
        if converter is not None:
            converters[name] = converter
    if not converters:
        return None

    def convert(args: Dict[str, Any]) -> Dict[str, Any]:
        for name, converter in converters.items():
            if name in args:
                args[name] = converter(args[name])
        return args

    return convert


class _DataclassConverter:
    __slots__ = ("cls", "fields")

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.fields: Dict[str, Converter] = {}

    def __call__(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"{self.cls.__name__} must be given as a JSON object, not {type(value).__name__}")
        kwargs = dict(value)
        for name, converter in self.fields.items():
            if name in kwargs:
                kwargs[name] = converter(kwargs[name])
        try:
            return self.cls(**kwargs)
        except TypeError as exc:
            message = str(exc)
            raise TypeError(message if self.cls.__name__ in message else f"{self.cls.__name__}: {message}") from None


def _converter(tp: Any, memo: Dict[Any, Optional[Converter]]) -> Optional[Converter]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is not None and (origin is typing.Annotated or origin in _KEY_QUALIFIERS):
        return _converter(args[0], memo)
    if hasattr(tp, "__supertype__"):
        return _converter(tp.__supertype__, memo)

    if origin in _UNION_ORIGINS:
        members = [c for c in (_converter(arg, memo) for arg in args) if c is not None]
        if not members:
            return None
        return _union_converter(members)
    if origin in _LIST_ORIGINS and args:
        item = _converter(args[0], memo)
        return None if item is None else _list_converter(item)
    if origin in _DICT_ORIGINS and len(args) == 2:
        item = _converter(args[1], memo)
        return None if item is None else _dict_converter(item)

    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if tp not in memo:
            converter = memo[tp] = _DataclassConverter(tp)
            hints = resolve_hints(tp)
            for field in dataclasses.fields(tp):
                if field.init:
                    field_converter = _converter(hints.get(field.name, Any), memo)
                    if field_converter is not None:
                        converter.fields[field.name] = field_converter
        return memo[tp]
    if is_typeddict(tp):
        if tp not in memo:
            memo[tp] = None  # a recursive reference to a TypedDict in progress converts nothing
            hints = resolve_hints(tp)
            fields = {k: c for k, c in ((k, _converter(h, memo)) for k, h in hints.items()) if c is not None}
            if fields:
                memo[tp] = _typeddict_converter(fields)
        return memo[tp]
    return None


def _list_converter(item: Converter) -> Converter:
    return lambda value: [item(x) for x in value] if isinstance(value, list) else value


def _dict_converter(item: Converter) -> Converter:
    return lambda value: {k: item(v) for k, v in value.items()} if isinstance(value, dict) else value


def _union_converter(members: List[Converter]) -> Converter:
    def convert(value: Any) -> Any:
        if value is None:
            return None
        error: Optional[Exception] = None
        for member in members:
            try:
                return member(value)
            except (TypeError, ValueError) as exc:
                error = exc
        if isinstance(value, dict) and error is not None:
            raise error
        return value

    return convert


def _typeddict_converter(fields: Dict[str, Converter]) -> Converter:
    def convert(value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        value = dict(value)
        for name, converter in fields.items():
            if name in value:
                value[name] = converter(value[name])
        return value

    return convert

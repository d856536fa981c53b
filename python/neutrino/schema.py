"""Type hints → JSON Schema (2020-12), in the subset the Swift gateway validates.

The gateway's validator understands exactly these keywords: ``type`` (a string or a list), ``properties``,
``required``, ``additionalProperties`` (a bool or a schema), ``items``, ``anyOf``, ``enum``, ``const`` and
``$ref`` (only ``#/components/schemas/<Name>``); ``default``, ``title`` and ``description`` are carried as
annotations. Every schema produced here stays inside that set.

Supported hints:

=====================================================  =====================================================
``int`` / ``float`` / ``str`` / ``bool`` / ``None``    ``integer`` / ``number`` / ``string`` / ``boolean`` /
                                                       ``null``
``Optional[T]``, ``T | None``, ``Union[A, B]``         ``anyOf``
``list[T]``, ``List[T]``, ``Sequence[T]``              ``array`` with ``items``
``dict[str, T]``, ``Dict[str, T]``, ``Mapping[str, T]`` ``object`` with ``additionalProperties``
``Literal["a", "b"]``                                  ``enum``
``Any``, ``object``, no annotation                     ``{}`` (anything)
a dataclass or a ``TypedDict``                         ``$ref`` to ``components.schemas.<Name>``
``Annotated[T, ...]``, ``NewType``                     the schema of ``T``
=====================================================  =====================================================

Anything else raises :class:`~neutrino.errors.DefinitionError` naming the hint and what to use instead.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import json
import types
import typing
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Union

from .errors import DefinitionError

__all__ = ["SchemaBuilder", "UnresolvedTypeHint", "resolve_hints", "is_typeddict", "type_name"]

JSONSchema = Dict[str, Any]

_PRIMITIVES: Dict[Any, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    type(None): "null",
}
_UNION_ORIGINS: Tuple[Any, ...] = (Union, types.UnionType) if hasattr(types, "UnionType") else (Union,)
_LIST_ORIGINS = (list, collections.abc.Sequence, collections.abc.MutableSequence)
_DICT_ORIGINS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
# typing.Required / NotRequired exist from 3.11; they only mark TypedDict keys.
_KEY_QUALIFIERS = tuple(q for q in (getattr(typing, "Required", None), getattr(typing, "NotRequired", None)) if q)
_ANNOTATED = getattr(typing, "Annotated", None)
_SUPPORTED = (
    "int, float, str, bool, None, Optional[T], list[T], dict[str, T], Literal[...], Any, a dataclass or a TypedDict"
)


class UnresolvedTypeHint(DefinitionError):
    """A type hint names something that is not defined (yet): a forward reference."""


def resolve_hints(obj: Any) -> Dict[str, Any]:
    """``typing.get_type_hints(obj, include_extras=True)``, with string annotations resolved.

    Raises :class:`UnresolvedTypeHint` when a hint names something not defined in the object's module,
    which is normal for ``from __future__ import annotations`` code that uses a class defined further down.
    """
    try:
        return typing.get_type_hints(obj, include_extras=True)
    except NameError as exc:
        raise UnresolvedTypeHint(
            f"cannot resolve the type hints of {type_name(obj)}: {exc}; define or import that name at module level"
        ) from exc
    except TypeError as exc:  # e.g. "int | None" evaluated on Python 3.9
        raise DefinitionError(
            f"cannot evaluate the type hints of {type_name(obj)}: {exc}; "
            "on Python < 3.10 write Optional[X] / Union[X, Y] instead of X | Y"
        ) from exc


def is_typeddict(tp: Any) -> bool:
    """True for a ``TypedDict`` class (works on Python 3.9, which lacks ``typing.is_typeddict``)."""
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__required_keys__")


def type_name(tp: Any) -> str:
    """A short readable name for a type or hint, for error messages."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__qualname__ if tp.__module__ in ("builtins", "typing") else f"{tp.__module__}.{tp.__qualname__}"
    if callable(tp) and hasattr(tp, "__qualname__"):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


def json_default(value: Any) -> Tuple[bool, Any]:
    """``(True, value_as_json)`` when ``value`` can be a JSON Schema ``default``, else ``(False, None)``."""
    try:
        return True, json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return False, None


class SchemaBuilder:
    """Builds JSON Schemas from type hints, collecting dataclasses and TypedDicts as named components.

    One builder serves one document: every ``$ref`` it emits points into :attr:`components`, which the
    caller places at ``components.schemas``. Two different classes with the same ``__name__`` get
    distinct component names (``Point``, ``Point_2``).
    """

    def __init__(self) -> None:
        self.components: Dict[str, JSONSchema] = {}
        self._component_names: Dict[Any, str] = {}

    # -- task-level schemas -------------------------------------------------------------------------

    def args_schema(self, func: Callable[..., Any]) -> JSONSchema:
        """The schema of a task's keyword arguments: one property per parameter.

        Parameters without a default are ``required``; JSON-serialisable defaults become ``default``.
        """
        hints = resolve_hints(func)
        properties: Dict[str, JSONSchema] = {}
        required: List[str] = []
        for param in inspect.signature(func).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
                raise DefinitionError(
                    f"parameter {param.name!r}: tasks take named JSON arguments only; "
                    "declare every parameter as a plain named parameter (no *args, **kwargs or '/')"
                )
            try:
                schema = self.schema(hints.get(param.name, Any))
            except DefinitionError as exc:
                raise type(exc)(f"parameter {param.name!r}: {exc}") from None
            if param.default is param.empty:
                required.append(param.name)
            else:
                ok, default = json_default(param.default)
                if ok:
                    schema["default"] = default
            properties[param.name] = schema
        return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}

    def result_schema(self, func: Callable[..., Any]) -> JSONSchema:
        """The schema of a task's return value (``{}`` when it has no return annotation)."""
        hints = resolve_hints(func)
        try:
            return self.schema(hints.get("return", Any))
        except DefinitionError as exc:
            raise type(exc)(f"return type: {exc}") from None

    # -- hints --------------------------------------------------------------------------------------

    def schema(self, tp: Any) -> JSONSchema:
        """The JSON Schema of one type hint. Always returns a fresh dict the caller may modify."""
        if tp is Any or tp is object or tp is inspect.Parameter.empty:
            return {}
        if tp is None or tp in _PRIMITIVES:
            return {"type": _PRIMITIVES[type(None) if tp is None else tp]}
        if hasattr(tp, "__supertype__"):  # typing.NewType
            return self.schema(tp.__supertype__)
        if isinstance(tp, (str, typing.ForwardRef)):
            raise UnresolvedTypeHint(f"cannot resolve the forward reference {tp!r}; define it at module level")

        origin = typing.get_origin(tp)
        args = typing.get_args(tp)

        if origin is not None and (origin is _ANNOTATED or origin in _KEY_QUALIFIERS):
            return self.schema(args[0])
        if origin in _UNION_ORIGINS:
            return {"anyOf": [self.schema(arg) for arg in args]}
        if origin is Literal:
            for value in args:
                if value is not None and type(value) not in (str, int, float, bool):
                    raise DefinitionError(
                        f"Literal value {value!r} is not a JSON scalar; use str, int, float, bool or None values"
                    )
            return {"enum": list(args)}
        if tp in _LIST_ORIGINS or origin in _LIST_ORIGINS:
            schema: JSONSchema = {"type": "array"}
            if args:
                schema["items"] = self.schema(args[0])
            return schema
        if tp in _DICT_ORIGINS or origin in _DICT_ORIGINS:
            schema = {"type": "object"}
            if args:
                key, value = args
                if key is not str:
                    raise DefinitionError(
                        f"cannot express {type_name(tp)}: JSON object keys are strings; use dict[str, ...]"
                    )
                schema["additionalProperties"] = self.schema(value)
            return schema
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self._component(tp, self._dataclass_schema)
        if is_typeddict(tp):
            return self._component(tp, self._typeddict_schema)

        hint = ""
        if tp in (tuple, set, frozenset) or origin in (tuple, set, frozenset):
            hint = " (JSON has arrays only: use list[T])"
        elif tp is bytes or tp is bytearray:
            hint = " (JSON has no bytes: pass a base64 str)"
        raise DefinitionError(f"cannot express the type {type_name(tp)} as JSON{hint}; supported: {_SUPPORTED}")

    # -- components ---------------------------------------------------------------------------------

    def _component(self, tp: type, build: Callable[[type], JSONSchema]) -> JSONSchema:
        name = self._component_names.get(tp)
        if name is None:
            name = tp.__name__
            suffix = 1
            while name in self.components:
                suffix += 1
                name = f"{tp.__name__}_{suffix}"
            self._component_names[tp] = name
            self.components[name] = {}  # placeholder: makes recursive types terminate
            try:
                self.components[name] = build(tp)
            except DefinitionError as exc:
                del self.components[name], self._component_names[tp]
                raise type(exc)(f"{tp.__qualname__}: {exc}") from None
        return {"$ref": f"#/components/schemas/{name}"}

    def _object_schema(self, tp: type, properties: Dict[str, JSONSchema], required: List[str]) -> JSONSchema:
        schema: JSONSchema = {"title": tp.__name__, "type": "object"}
        description = _own_docstring(tp)
        if description:
            schema["description"] = description
        schema.update(properties=properties, required=required, additionalProperties=False)
        return schema

    def _dataclass_schema(self, tp: type) -> JSONSchema:
        hints = resolve_hints(tp)
        properties: Dict[str, JSONSchema] = {}
        required: List[str] = []
        for field in dataclasses.fields(tp):
            if not field.init:
                continue
            schema = self._field_schema(field.name, hints.get(field.name, Any))
            if field.default is not dataclasses.MISSING:
                ok, default = json_default(field.default)
                if ok:
                    schema["default"] = default
            elif field.default_factory is not dataclasses.MISSING:
                if field.default_factory in (list, dict):
                    schema["default"] = field.default_factory()
            else:
                required.append(field.name)
            properties[field.name] = schema
        return self._object_schema(tp, properties, required)

    def _typeddict_schema(self, tp: type) -> JSONSchema:
        hints = resolve_hints(tp)
        properties = {key: self._field_schema(key, hint) for key, hint in hints.items()}
        required = [key for key, hint in hints.items() if _is_required_key(tp, key, hint)]
        return self._object_schema(tp, properties, required)

    def _field_schema(self, name: str, hint: Any) -> JSONSchema:
        try:
            return self.schema(hint)
        except DefinitionError as exc:
            raise type(exc)(f"field {name!r}: {exc}") from None


def _is_required_key(tp: type, key: str, hint: Any) -> bool:
    """Whether a TypedDict key is required. An explicit ``Required[...]`` / ``NotRequired[...]`` wins:
    with string annotations Python 3.11 cannot see them when it computes ``__required_keys__``."""
    origin = typing.get_origin(hint)
    if origin is not None and origin in _KEY_QUALIFIERS:
        return origin is getattr(typing, "Required", None)
    return key in tp.__required_keys__  # type: ignore[attr-defined]


def _own_docstring(tp: type) -> Optional[str]:
    """The class's own docstring, skipping the ``Name(field: type, ...)`` text dataclasses generate."""
    doc = tp.__dict__.get("__doc__")
    if not doc or (dataclasses.is_dataclass(tp) and doc.startswith(f"{tp.__name__}(")):
        return None
    return inspect.cleandoc(doc)

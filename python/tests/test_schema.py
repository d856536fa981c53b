"""Type hints → JSON Schema, for every supported hint."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Dict, List, Literal, Mapping, NewType, Optional, Sequence, Set, TypedDict, Union

import pytest

from neutrino import DefinitionError
from neutrino.schema import SchemaBuilder

if sys.version_info >= (3, 11):
    from typing import NotRequired, Required
else:  # pragma: no cover
    NotRequired = Required = None

try:
    from typing import Annotated
except ImportError:  # pragma: no cover
    Annotated = None

# Keywords the Swift gateway's validator understands (plus annotations).
ALLOWED_KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "anyOf",
    "enum",
    "const",
    "$ref",
    "default",
    "title",
    "description",
}


def keywords(schema: Any) -> set:
    """Every keyword used anywhere in ``schema`` (property names are not keywords)."""
    found: set = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            found.add(key)
            if key == "properties":
                for sub in value.values():
                    found |= keywords(sub)
            elif key in ("items", "additionalProperties"):
                found |= keywords(value)
            elif key == "anyOf":
                for sub in value:
                    found |= keywords(sub)
    return found


@pytest.fixture
def builder() -> SchemaBuilder:
    return SchemaBuilder()


@pytest.mark.parametrize(
    "hint, expected",
    [
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (str, {"type": "string"}),
        (bool, {"type": "boolean"}),
        (None, {"type": "null"}),
        (type(None), {"type": "null"}),
        (Any, {}),
        (object, {}),
        (Optional[int], {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
        (Union[int, str], {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
        (Union[int, str, None], {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]}),
        (list, {"type": "array"}),
        (List, {"type": "array"}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (List[str], {"type": "array", "items": {"type": "string"}}),
        (Sequence[float], {"type": "array", "items": {"type": "number"}}),
        (list[list[int]], {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}),
        (dict, {"type": "object"}),
        (Dict, {"type": "object"}),
        (dict[str, int], {"type": "object", "additionalProperties": {"type": "integer"}}),
        (Dict[str, Any], {"type": "object", "additionalProperties": {}}),
        (
            Mapping[str, List[bool]],
            {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "boolean"}}},
        ),
        (Literal["a", "b"], {"enum": ["a", "b"]}),
        (Literal[1, 2, None], {"enum": [1, 2, None]}),
        (Optional[Literal["x"]], {"anyOf": [{"enum": ["x"]}, {"type": "null"}]}),
        (NewType("UserId", int), {"type": "integer"}),
    ],
)
def test_hints(builder: SchemaBuilder, hint: Any, expected: dict) -> None:
    assert builder.schema(hint) == expected
    assert builder.components == {}


@pytest.mark.skipif(sys.version_info < (3, 10), reason="X | Y needs Python 3.10")
def test_pep604_union(builder: SchemaBuilder) -> None:
    assert builder.schema(eval("int | None")) == {"anyOf": [{"type": "integer"}, {"type": "null"}]}


def test_annotated_is_unwrapped(builder: SchemaBuilder) -> None:
    assert builder.schema(Annotated[int, "a note"]) == {"type": "integer"}


@pytest.mark.parametrize("hint", [tuple, tuple[int, int], set, Set[int], frozenset, bytes, complex, type])
def test_inexpressible(builder: SchemaBuilder, hint: Any) -> None:
    with pytest.raises(DefinitionError, match="cannot express"):
        builder.schema(hint)


def test_non_str_keys(builder: SchemaBuilder) -> None:
    with pytest.raises(DefinitionError, match="keys are strings"):
        builder.schema(dict[int, str])


def test_literal_of_non_scalar(builder: SchemaBuilder) -> None:
    import enum

    class Color(enum.Enum):
        RED = 1

    with pytest.raises(DefinitionError, match="not a JSON scalar"):
        builder.schema(Literal[Color.RED])


# -- dataclasses and TypedDicts ---------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    """A point in the plane."""

    x: float
    y: float = 0.0
    tags: List[str] = dataclasses.field(default_factory=list)
    hidden: int = dataclasses.field(default=0, init=False)


@dataclasses.dataclass
class Segment:
    start: Point
    end: Optional[Point] = None


@dataclasses.dataclass
class Tree:
    value: int
    children: List["Tree"] = dataclasses.field(default_factory=list)


class Movie(TypedDict):
    title: str
    year: int


class PartialMovie(TypedDict, total=False):
    title: str
    rating: float


def test_dataclass(builder: SchemaBuilder) -> None:
    assert builder.schema(Point) == {"$ref": "#/components/schemas/Point"}
    assert builder.components == {
        "Point": {
            "title": "Point",
            "type": "object",
            "description": "A point in the plane.",
            "properties": {
                "x": {"type": "number"},
                "y": {"type": "number", "default": 0.0},
                "tags": {"type": "array", "items": {"type": "string"}, "default": []},
            },
            "required": ["x"],
            "additionalProperties": False,
        }
    }


def test_nested_dataclass(builder: SchemaBuilder) -> None:
    assert builder.schema(List[Segment]) == {"type": "array", "items": {"$ref": "#/components/schemas/Segment"}}
    assert set(builder.components) == {"Segment", "Point"}
    segment = builder.components["Segment"]
    assert "description" not in segment  # the generated "Segment(start: ...)" docstring is skipped
    assert segment["properties"] == {
        "start": {"$ref": "#/components/schemas/Point"},
        "end": {"anyOf": [{"$ref": "#/components/schemas/Point"}, {"type": "null"}], "default": None},
    }
    assert segment["required"] == ["start"]


def test_recursive_dataclass(builder: SchemaBuilder) -> None:
    assert builder.schema(Tree) == {"$ref": "#/components/schemas/Tree"}
    assert builder.components["Tree"]["properties"]["children"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Tree"},
        "default": [],
    }


def test_typeddict_total_and_partial(builder: SchemaBuilder) -> None:
    builder.schema(Movie)
    builder.schema(PartialMovie)
    assert builder.components["Movie"] == {
        "title": "Movie",
        "type": "object",
        "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
        "required": ["title", "year"],
        "additionalProperties": False,
    }
    assert builder.components["PartialMovie"]["required"] == []


if Required is not None:

    class Job(TypedDict):
        id: str
        note: NotRequired[str]

    class Opts(TypedDict, total=False):
        must: Required[int]
        may: int


@pytest.mark.skipif(Required is None, reason="Required/NotRequired need Python 3.11")
def test_typeddict_required_markers(builder: SchemaBuilder) -> None:
    builder.schema(Job)
    builder.schema(Opts)
    assert builder.components["Job"]["required"] == ["id"]
    assert builder.components["Job"]["properties"]["note"] == {"type": "string"}
    assert builder.components["Opts"]["required"] == ["must"]


def test_same_class_name_twice(builder: SchemaBuilder) -> None:
    def make():
        @dataclasses.dataclass
        class Item:
            n: int

        return Item

    first, second = make(), make()
    assert builder.schema(first) == {"$ref": "#/components/schemas/Item"}
    assert builder.schema(second) == {"$ref": "#/components/schemas/Item_2"}
    assert builder.schema(first) == {"$ref": "#/components/schemas/Item"}


def test_bad_dataclass_field(builder: SchemaBuilder) -> None:
    @dataclasses.dataclass
    class Bad:
        blob: bytes

    with pytest.raises(DefinitionError, match="Bad.*field 'blob'"):
        builder.schema(Bad)
    assert builder.components == {}


# -- task argument schemas --------------------------------------------------------------------------


def test_args_schema(builder: SchemaBuilder) -> None:
    def task(x: int, label: str = "", opts: Optional[Dict[str, int]] = None, anything=None, *, flag: bool = True):
        pass

    assert builder.args_schema(task) == {
        "type": "object",
        "properties": {
            "x": {"type": "integer"},
            "label": {"type": "string", "default": ""},
            "opts": {
                "anyOf": [{"type": "object", "additionalProperties": {"type": "integer"}}, {"type": "null"}],
                "default": None,
            },
            "anything": {"default": None},
            "flag": {"type": "boolean", "default": True},
        },
        "required": ["x"],
        "additionalProperties": False,
    }


def test_non_json_default_is_omitted(builder: SchemaBuilder) -> None:
    def task(p: Point = Point(1.0), n: float = float("nan")):
        pass

    properties = builder.args_schema(task)["properties"]
    assert properties == {"p": {"$ref": "#/components/schemas/Point"}, "n": {"type": "number"}}


def test_result_schema(builder: SchemaBuilder) -> None:
    def no_annotation():
        pass

    def returns_none() -> None:
        pass

    def returns_movies() -> List[Movie]:
        return []

    assert builder.result_schema(no_annotation) == {}
    assert builder.result_schema(returns_none) == {"type": "null"}
    assert builder.result_schema(returns_movies) == {"type": "array", "items": {"$ref": "#/components/schemas/Movie"}}


def test_future_annotations_module(write_app) -> None:
    """String annotations (``from __future__ import annotations``), including a class defined after the task."""
    from neutrino._loader import load_app

    optional_list = "list[str] | None" if sys.version_info >= (3, 10) else "Optional[list[str]]"
    path = write_app(
        f"""
        from __future__ import annotations
        from dataclasses import dataclass
        from typing import Optional
        from neutrino import App

        app = App("future")

        @app.task()
        def place(p: Pin, note: Optional[str] = None, tags: {optional_list} = None) -> dict[str, Pin]:
            return {{"p": p}}

        @dataclass
        class Pin:
            lat: float
            lon: float
        """
    )
    app = load_app(str(path))
    builder = SchemaBuilder()
    func = app.tasks["place"].func
    assert builder.args_schema(func)["properties"] == {
        "p": {"$ref": "#/components/schemas/Pin"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "tags": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}], "default": None},
    }
    assert builder.result_schema(func) == {
        "type": "object",
        "additionalProperties": {"$ref": "#/components/schemas/Pin"},
    }
    assert builder.components["Pin"]["required"] == ["lat", "lon"]


def test_only_gateway_keywords(builder: SchemaBuilder) -> None:
    def task(a: Optional[List[Segment]], b: Dict[str, Movie], c: Literal["x", "y"] = "x", d: Tree = None):  # type: ignore[assignment]
        pass

    schemas = [builder.args_schema(task), *builder.components.values()]
    for schema in schemas:
        assert keywords(schema) <= ALLOWED_KEYWORDS
    for schema in builder.components.values():
        for value in schema["properties"].values():
            ref = value.get("$ref") or value.get("items", {}).get("$ref")
            assert ref is None or ref.startswith("#/components/schemas/")

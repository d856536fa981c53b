"""The OpenAPI manifest: shape, extensions, determinism, and validity."""

from __future__ import annotations

import dataclasses
import json
from typing import List, Optional, TypedDict

import pytest

from neutrino import App, DefinitionError
from neutrino.manifest import build_openapi

ERROR_STATUSES = ["400", "404", "413", "422", "500", "503", "504"]
# A sync task also documents 409: cancelled by DELETE /tasks/<id> while it ran.
SYNC_ERROR_STATUSES = ["400", "404", "409", "413", "422", "500", "503", "504"]


@dataclasses.dataclass
class Item:
    name: str
    quantity: int = 1


class Summary(TypedDict):
    total: int
    items: List[Item]


def make_app() -> App:
    app = App("shop", version="1.2.3")

    @app.task()
    def echo(x: int, label: str = "") -> dict:
        """Return the arguments.

        Useful for smoke tests.
        """
        return {"x": x, "label": label}

    @app.task(execution_mode="async", timeout_secs=120, retries=3)
    def summarize(items: List[Item], note: Optional[str] = None) -> Summary:
        return {"total": len(items), "items": items}

    @app.task(execution_mode="gpu", pool="a100")
    def train(data: str):
        pass

    return app


@pytest.fixture(scope="module")
def doc() -> dict:
    return build_openapi(make_app())


def test_top_level(doc: dict) -> None:
    assert doc["openapi"] == "3.1.0"
    assert doc["info"] == {"title": "shop", "version": "1.2.3"}
    assert doc["x-neutrino-app"] == "shop"
    assert list(doc["paths"]) == ["/api/echo", "/api/summarize", "/api/train"]
    assert all(list(item) == ["post"] for item in doc["paths"].values())


def test_sync_operation(doc: dict) -> None:
    op = doc["paths"]["/api/echo"]["post"]
    assert op["operationId"] == "echo"
    assert op["summary"] == "Return the arguments."
    assert op["description"] == "Return the arguments.\n\nUseful for smoke tests."
    assert (op["x-neutrino-mode"], op["x-neutrino-pool"], op["x-neutrino-timeout"], op["x-neutrino-retries"]) == (
        "sync",
        "fast",
        5000,
        0,
    )
    assert op["x-neutrino-coroutine"] is False
    body = op["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {
        "type": "object",
        "properties": {
            "args": {
                "type": "object",
                "properties": {"x": {"type": "integer"}, "label": {"type": "string", "default": ""}},
                "required": ["x"],
                "additionalProperties": False,
            }
        },
        "required": ["args"],
        "additionalProperties": False,
    }
    assert list(op["responses"]) == ["200", *SYNC_ERROR_STATUSES]
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["properties"]["result"] == {"type": "object"}
    assert ok["properties"]["status"] == {"const": "completed"}
    failed = op["responses"]["500"]["content"]["application/json"]["schema"]
    assert set(failed["properties"]["error"]["properties"]) == {"type", "message", "traceback"}
    cancelled = op["responses"]["409"]["content"]["application/json"]["schema"]
    assert cancelled["properties"]["status"] == {"const": "cancelled"}
    assert all(op["responses"][status]["description"] for status in SYNC_ERROR_STATUSES)


def test_async_and_gpu_operations(doc: dict) -> None:
    summarize = doc["paths"]["/api/summarize"]["post"]
    assert (summarize["x-neutrino-mode"], summarize["x-neutrino-pool"]) == ("async", "async")
    assert (summarize["x-neutrino-timeout"], summarize["x-neutrino-retries"]) == (120_000, 3)
    assert list(summarize["responses"]) == ["202", *ERROR_STATUSES]
    queued = summarize["responses"]["202"]["content"]["application/json"]["schema"]
    assert queued["required"] == ["task_id", "status", "poll_url"]
    assert summarize["summary"] == "summarize"  # no docstring: the name
    assert "description" not in summarize

    train = doc["paths"]["/api/train"]["post"]
    assert (train["x-neutrino-mode"], train["x-neutrino-pool"], train["x-neutrino-timeout"]) == ("gpu", "a100", 600_000)
    assert isinstance(train["x-neutrino-timeout"], int) and isinstance(train["x-neutrino-retries"], int)


def test_components(doc: dict) -> None:
    schemas = doc["components"]["schemas"]
    assert list(schemas) == ["Item", "Summary"]  # sorted
    assert schemas["Item"]["required"] == ["name"]
    assert schemas["Summary"]["properties"]["items"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Item"},
    }
    args = doc["paths"]["/api/summarize"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert args["properties"]["args"]["properties"]["items"]["items"] == {"$ref": "#/components/schemas/Item"}


def test_no_components_when_none_needed() -> None:
    app = App("tiny")

    @app.task()
    def ping() -> str:
        return "pong"

    assert "components" not in build_openapi(app)


def test_deterministic(doc: dict) -> None:
    again = build_openapi(make_app())
    assert json.dumps(again, sort_keys=False) == json.dumps(doc, sort_keys=False)


def test_json_serialisable(doc: dict) -> None:
    json.dumps(doc, allow_nan=False)


def test_unresolvable_forward_reference_fails_at_build_time() -> None:
    app = App("broken")

    @app.task()
    def f(x: "NotDefinedAnywhere") -> None:  # noqa: F821
        pass

    with pytest.raises(DefinitionError, match="task 'f'.*NotDefinedAnywhere"):
        build_openapi(app)


def test_valid_openapi(doc: dict) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(doc)


def test_an_async_def_task_is_marked_a_coroutine() -> None:
    """`x-neutrino-coroutine` tells the gateway which calls take a worker's Python threads (false) and which its
    coroutine slots (true)."""
    from neutrino import App

    app = App("kinds")

    @app.task()
    async def fetch(url: str) -> str:
        return url

    @app.task()
    def parse(text: str) -> int:
        return len(text)

    doc = build_openapi(app)
    assert doc["paths"]["/api/fetch"]["post"]["x-neutrino-coroutine"] is True
    assert doc["paths"]["/api/parse"]["post"]["x-neutrino-coroutine"] is False

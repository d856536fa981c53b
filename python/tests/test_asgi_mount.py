"""App.mount / App(asgi=...): the ASGI fallback's definition checks and what the manifest records."""

from __future__ import annotations

import asyncio

import pytest

from neutrino import App, DefinitionError
from neutrino._asgi import join_fields, split_fields
from neutrino.manifest import build_openapi

fastapi = pytest.importorskip("fastapi")
starlette_routing = pytest.importorskip("starlette.routing")


def make_api():
    api = fastapi.FastAPI(openapi_url="/app/openapi.json", docs_url=None, redoc_url=None)

    @api.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict:
        return {"item_id": item_id}

    @api.post("/items")
    async def create_item() -> dict:
        return {}

    @api.websocket("/ws")
    async def ws(websocket) -> None:  # pragma: no cover - never connected
        pass

    return api


def test_mount_records_pool_app_and_routes() -> None:
    app = App("shop")
    api = make_api()
    assert app.mount(api) is api
    assert app.asgi is not None and app.asgi.pool == "fast"
    doc = build_openapi(app)
    mount = doc["x-neutrino-asgi"]
    assert mount["pool"] == "fast"
    assert mount["app"] == "fastapi.applications.FastAPI"
    routes = {r["path"]: r for r in mount["routes"]}
    assert routes["/items/{item_id}"] == {"path": "/items/{item_id}", "kind": "route", "methods": ["GET"]}
    assert routes["/items"]["methods"] == ["POST"]
    assert routes["/ws"]["kind"] == "websocket" and "methods" not in routes["/ws"]
    assert routes["/app/openapi.json"]["methods"] == ["GET", "HEAD"]


def test_app_constructor_mounts_on_fast() -> None:
    api = make_api()
    app = App("shop", asgi=api)
    assert app.asgi is not None and app.asgi.app is api and app.asgi.pool == "fast"


def test_mount_pool_is_a_sync_pool_of_the_app() -> None:
    app = App("shop")
    app.mount(make_api(), pool="web")
    assert app.pools() == {"web": "sync"}
    doc = build_openapi(app)
    assert doc["paths"] == {}  # no task: the app alone
    assert doc["x-neutrino-asgi"]["pool"] == "web"

    @app.task()
    def echo(x: int) -> int:
        return x

    assert app.pools() == {"fast": "sync", "web": "sync"}


def test_mount_mounts_and_routes_of_starlette() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def hello(request):
        return PlainTextResponse("hi")

    inner = Starlette(routes=[Route("/hello", hello)])
    api = Starlette(routes=[Route("/", hello), Mount("/sub", app=inner)])
    app = App("s")
    app.mount(api)
    routes = build_openapi(app)["x-neutrino-asgi"]["routes"]
    assert {"path": "/sub", "kind": "mount"} in routes
    assert {"path": "/", "kind": "route", "methods": ["GET", "HEAD"]} in routes


def test_mount_refusals() -> None:
    app = App("shop")

    @app.task(execution_mode="async")
    def slow(x: int) -> int:
        return x

    with pytest.raises(DefinitionError, match="runs async tasks"):
        app.mount(make_api(), pool="async")
    with pytest.raises(DefinitionError, match=r"\[a-z0-9_\]"):
        app.mount(make_api(), pool="Web")
    with pytest.raises(DefinitionError, match="instance"):
        app.mount(fastapi.FastAPI)
    with pytest.raises(DefinitionError, match="instance"):
        app.mount("not an app")
    app.mount(make_api())
    with pytest.raises(DefinitionError, match="already mounts"):
        app.mount(make_api())


def test_async_task_on_the_mounted_pool_is_refused() -> None:
    app = App("shop")
    app.mount(make_api(), pool="web")
    with pytest.raises(DefinitionError, match="serves the mounted ASGI app"):

        @app.task(execution_mode="async", pool="web")
        def slow(x: int) -> int:
            return x


def test_no_mount_no_extension() -> None:
    app = App("plain")

    @app.task()
    def echo(x: int) -> int:
        return x

    assert "x-neutrino-asgi" not in build_openapi(app)
    assert app.asgi is None


def test_fields_round_trip() -> None:
    fields = [b"GET", b"/a%20b", b"", b"\x00\xff" * 300, b"x" * 70000]
    assert split_fields(join_fields(fields)) == fields
    assert split_fields(b"") == []


def test_lifespan_and_request_on_a_loop() -> None:
    """The ASGI server of neutrino._asgi against a real FastAPI app, with a recording bridge in place of the
    worker's (the worker's side is exercised end to end in tests/e2e/test_asgi.py)."""
    from neutrino import _asgi

    from contextlib import asynccontextmanager

    events = []
    started = []

    @asynccontextmanager
    async def lifespan(_api):
        started.append(True)
        yield
        started.append(False)

    api = fastapi.FastAPI(lifespan=lifespan)

    @api.get("/items/{item_id}")
    async def read_item(item_id: int, q: str = "") -> dict:
        return {"item_id": item_id, "q": q}

    def bridge(op, *args):
        events.append((op, *args))
        return False

    loop = asyncio.new_event_loop()
    try:
        server = _asgi.AsgiServer(api, loop, bridge)
        assert loop.run_until_complete(server.startup()) == (True, "")
        assert started == [True]
        head = join_fields([b"GET", b"/items/7", b"q=x", b"1.1", b"127.0.0.1", b"5000", b"127.0.0.1", b"8080",
                            b"http", b"host", b"localhost"])
        server.start(1, head, b"")
        loop.run_until_complete(asyncio.sleep(0.2))
        ops = [e[0] for e in events]
        assert ops == [_asgi.HEAD, _asgi.BODY, _asgi.END], events
        assert events[0][2] == 200 and events[0][4] == "/items/{item_id}"
        assert b'"item_id":7' in events[1][2] and b'"q":"x"' in events[1][2]
        assert events[2][2] is None
        assert loop.run_until_complete(server.shutdown()) == (True, "")
        assert started == [True, False]
    finally:
        loop.close()

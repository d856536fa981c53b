"""The comparison server: the benchmark's `echo` task as a plain Starlette endpoint.

    POST /api/echo      {"args": {"x": 42, "label": "bench"}}  ->  {"x": 42, "label": "bench"}
    POST /api/sleep_ms  {"args": {"ms": 10}}                   ->  10   (blocks a thread of Starlette's pool)

Same request bodies as Neutrino's gateway, same function bodies as bench/bench_app.py.
Served by uvicorn (bench/run.py starts it with --workers 1 and --workers 2, no access log).
"""
from __future__ import annotations

import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def echo(x: int, label: str = "") -> dict:
    return {"x": x, "label": label}


async def echo_endpoint(request: Request) -> JSONResponse:
    try:
        body = await request.json()
        args = body["args"]
        result = echo(int(args["x"]), str(args.get("label", "")))
    except (ValueError, KeyError, TypeError) as exc:
        return JSONResponse({"error": f"bad request: {exc!r}"}, status_code=400)
    return JSONResponse(result)


def sleep_ms(ms: int) -> int:
    time.sleep(ms / 1000)
    return ms


async def sleep_ms_endpoint(request: Request) -> JSONResponse:
    # A blocking function runs on Starlette's thread pool, as FastAPI runs a `def` endpoint.
    try:
        ms = int((await request.json())["args"]["ms"])
    except (ValueError, KeyError, TypeError) as exc:
        return JSONResponse({"error": f"bad request: {exc!r}"}, status_code=400)
    return JSONResponse(await run_in_threadpool(sleep_ms, ms))


app = Starlette(routes=[
    Route("/api/echo", echo_endpoint, methods=["POST"]),
    Route("/api/sleep_ms", sleep_ms_endpoint, methods=["POST"]),
])

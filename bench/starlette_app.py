"""The comparison server: the benchmark's `echo` task as a plain Starlette endpoint.

    POST /api/echo  {"args": {"x": 42, "label": "bench"}}  ->  {"x": 42, "label": "bench"}

Same request body as Neutrino's gateway, same function body as examples/app.py's `echo`.
Served by uvicorn (bench/run.py starts it with --workers 1 and --workers 2, no access log).
"""
from __future__ import annotations

from starlette.applications import Starlette
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


app = Starlette(routes=[Route("/api/echo", echo_endpoint, methods=["POST"])])

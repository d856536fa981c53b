"""A real FastAPI app mounted as the gateway's ASGI fallback (tests/e2e/test_asgi.py), with a task beside it.

Lifespan and stream events are appended to the file named by $NEUTRINO_E2E_ASGI_MARKS ("<event> <pid>" lines).
FastAPI's default /openapi.json and a /healthz route collide with Neutrino's routes on purpose: the gateway must
report them at start-up.
"""
from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from neutrino import App


def mark(event: str) -> None:
    path = os.environ.get("NEUTRINO_E2E_ASGI_MARKS")
    if path:
        with open(path, "a", encoding="utf-8") as file:
            file.write(f"{event} {os.getpid()}\n")


@asynccontextmanager
async def lifespan(api: FastAPI):
    mark("startup")
    api.state.greeting = "hello from lifespan"
    yield
    mark("shutdown")


api = FastAPI(lifespan=lifespan)
release = asyncio.Event()


class Order(BaseModel):
    item: str
    quantity: int = 1


async def current_user(x_user: Optional[str] = Header(default=None)) -> str:
    if not x_user:
        raise HTTPException(status_code=401, detail="X-User header required")
    return x_user


@api.get("/items/{item_id}")
async def read_item(item_id: int, q: Optional[str] = None) -> dict:
    return {"item_id": item_id, "q": q}


@api.post("/orders", status_code=201)
async def create_order(order: Order, user: str = Depends(current_user)) -> dict:
    await asyncio.sleep(0.01)
    return {"item": order.item, "quantity": order.quantity, "user": user}


@api.get("/missing")
async def missing() -> dict:
    raise HTTPException(status_code=404, detail="nothing here")


@api.get("/scope")
async def scope(request: Request) -> dict:
    s = request.scope
    return {
        "method": s["method"], "path": s["path"], "raw_path": s["raw_path"].decode(), "query": s["query_string"].decode(),
        "root_path": s["root_path"], "http_version": s["http_version"], "scheme": s["scheme"],
        "spec_version": s["asgi"].get("spec_version"), "client": list(s["client"] or []),
        "server": list(s["server"] or []), "headers": {k.decode(): v.decode() for k, v in s["headers"]},
        "greeting": request.app.state.greeting,
    }


@api.get("/stream")
async def stream() -> StreamingResponse:
    """'first', then waits for GET /release (at most 20 s), then 'last': proves chunks are relayed as they come."""
    release.clear()

    async def produce():
        yield b"first\n"
        try:
            await asyncio.wait_for(release.wait(), 20)
            yield b"last\n"
        except asyncio.TimeoutError:
            yield b"timeout\n"

    return StreamingResponse(produce(), media_type="text/plain")


@api.get("/visit/{tag}")
async def visit(tag: str) -> dict:
    """Marks 'visit-<tag>': proves a request reached the app (or did not)."""
    mark(f"visit-{tag}")
    return {"visited": tag}


@api.get("/release")
async def do_release() -> dict:
    release.set()
    return {"released": True}


@api.get("/forever")
async def forever() -> StreamingResponse:
    """A chunk every 50 ms until the client goes away (then 'stream-ended' is marked); at most 60 s."""
    async def produce():
        try:
            for i in range(1200):
                yield f"tick {i}\n".encode()
                await asyncio.sleep(0.05)
        finally:
            mark("stream-ended")

    return StreamingResponse(produce(), media_type="text/plain")


@api.get("/until-disconnect/{tag}")
async def until_disconnect(tag: str, request: Request) -> dict:
    """Marks 'waiting-<tag>', then reads the request's messages until `http.disconnect` (then marks 'disconnect-<tag>').
    Starlette's `request.is_disconnected()` rests on this; the worker's --asgi-head-timeout bounds the wait."""
    mark(f"waiting-{tag}")
    while (await request.receive())["type"] != "http.disconnect":
        pass
    mark(f"disconnect-{tag}")
    return {}


@api.get("/hang")
async def hang() -> dict:
    """Never answers by itself (the worker's --asgi-head-timeout cancels it); marks 'hang-cancelled' when it is."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        mark("hang-cancelled")
        raise
    return {}


@api.get("/big")
async def big(mb: int = 8) -> StreamingResponse:
    """`mb` MiB in 64 KiB chunks, each chunk filled with its index (mod 256): a stream larger than every buffer on the
    way, so the worker's and the gateway's back-pressure must hold it."""
    async def produce():
        for i in range(mb * 16):
            yield bytes([i % 256]) * 65536

    return StreamingResponse(produce(), media_type="application/octet-stream")


@api.get("/boom")
async def boom() -> dict:
    raise RuntimeError("the app failed on purpose")


@api.get("/healthz")
async def shadowed_health() -> dict:
    return {"from": "the app"}


app = App("asgi_e2e")
app.mount(api)


@app.task()
def double(x: int) -> int:
    """A sync task beside the mounted app."""
    return 2 * x


@app.task(execution_mode="async", timeout_secs=30)
async def later(x: int) -> int:
    """A queued task beside the mounted app (no worker of pool async is started by the tests that do not need one)."""
    await asyncio.sleep(0.01)
    return x

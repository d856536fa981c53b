"""A FastAPI app behind Neutrino's gateway, with two tasks beside it.

    neutrino up examples/fastapi_app.py          (fastapi installed where `neutrino` runs: `make venv` does it)

Neutrino's routes answer first (`POST /api/<task>`, `/tasks`, `/pools`, `/metrics`, the dashboard at `/_neutrino/`);
every other request goes to the FastAPI app, served by the fast pool's workers on their event loop:

    curl localhost:8080/                                  -> the FastAPI app's {"service": "shop", ...}
    curl localhost:8080/items/3?q=blue                    -> {"item_id": 3, "q": "blue"}
    curl -X POST localhost:8080/items -H 'content-type: application/json' -d '{"name": "pen", "price": 1.5}'
    curl -N localhost:8080/stream                         -> five lines, one every 0.2 s (a streaming response)
    curl -X POST localhost:8080/api/price -d '{"args": {"amount": 10, "currency": "EUR"}}'    (a sync task)
    curl -X POST localhost:8080/api/report -d '{"args": {"items": 3}}'                        (a queued task)
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from neutrino import App, report_progress


@asynccontextmanager
async def lifespan(api: FastAPI):
    # Runs once per worker before it takes requests (a database pool would be opened here), and once when it stops.
    api.state.catalogue = {1: "pen", 2: "ink", 3: "paper"}
    yield
    api.state.catalogue.clear()


# FastAPI's own OpenAPI document moves off /openapi.json, which is Neutrino's (the task manifest).
api = FastAPI(title="shop", lifespan=lifespan, openapi_url="/app/openapi.json", docs_url="/app/docs", redoc_url=None)


class Item(BaseModel):
    name: str
    price: float


async def currency() -> str:
    return "EUR"


@api.get("/")
async def index() -> dict:
    return {"service": "shop", "tasks": ["/api/price", "/api/report"], "dashboard": "/_neutrino/"}


@api.get("/items/{item_id}")
async def read_item(item_id: int, q: Optional[str] = None) -> dict:
    name = api.state.catalogue.get(item_id)
    if name is None:
        raise HTTPException(status_code=404, detail=f"no item {item_id}")
    return {"item_id": item_id, "name": name, "q": q}


@api.post("/items")
async def create_item(item: Item, unit: str = Depends(currency)) -> dict:
    await asyncio.sleep(0.01)  # an awaited call (a database, another service) does not hold a thread
    return {"name": item.name, "price": item.price, "currency": unit}


@api.get("/stream")
async def stream(lines: int = 5, every: float = 0.2) -> StreamingResponse:
    async def produce():
        for i in range(lines):
            yield f"line {i}\n"
            await asyncio.sleep(every)

    return StreamingResponse(produce(), media_type="text/plain")


app = App("shop")
app.mount(api)  # pool "fast": its HTTP workers serve the FastAPI app and the sync tasks


@app.task()
def price(amount: float, currency: str = "EUR") -> dict:
    """A sync task beside the app: answered in the response."""
    return {"amount": round(amount * 1.2, 2), "currency": currency, "tax_included": True}


@app.task(execution_mode="async", timeout_secs=60)
async def report(items: int) -> dict:
    """A queued task: the slow work moved out of the request path (poll GET /tasks/<id>)."""
    for i in range(items):
        await asyncio.sleep(0.1)
        report_progress((i + 1) / items, f"item {i + 1} of {items}")
    return {"items": items, "total": items * 1.2}

"""The ASGI fallback's benchmark app (bench/coro_bench.py): bench/fastapi_app.py's `nap` endpoint in a FastAPI app
mounted on Neutrino (`App.mount`), reached through the gateway at `POST /nap` (not a Neutrino route).

    POST /nap  {"args": {"x": 42, "seconds": 0.01}}  ->  {"x": 42}
"""
from __future__ import annotations

import asyncio

from fastapi import FastAPI
from pydantic import BaseModel

from neutrino import App

api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


class NapArgs(BaseModel):
    x: int
    seconds: float = 0.01


class NapBody(BaseModel):
    args: NapArgs


@api.post("/nap")
async def nap(body: NapBody) -> dict:
    await asyncio.sleep(body.args.seconds)
    return {"x": body.args.x}


app = App("bench_asgi")
app.mount(api)

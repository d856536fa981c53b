"""The comparison server for bench/coro_bench.py: bench/coro_app.py's `nap` as a FastAPI endpoint.

    POST /api/nap  {"args": {"x": 42, "seconds": 0.01}}  ->  {"x": 42}

Served by uvicorn with --workers 2, no access log.
"""
from __future__ import annotations

import asyncio

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class NapArgs(BaseModel):
    x: int
    seconds: float = 0.01


class NapBody(BaseModel):
    args: NapArgs


@app.post("/api/nap")
async def nap(body: NapBody) -> dict:
    await asyncio.sleep(body.args.seconds)
    return {"x": body.args.x}

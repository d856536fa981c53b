"""The `async def` benchmark task (bench/coro_bench.py): awaits asyncio.sleep, standing in for an I/O call.

    POST /api/nap  {"args": {"x": 42, "seconds": 0.01}}  ->  {"x": 42}

A sync-mode task served by the worker's event loop; bench/fastapi_app.py is the same endpoint on uvicorn+FastAPI.
"""
from __future__ import annotations

import asyncio

from neutrino import App

app = App("bench_coro")


@app.task()
async def nap(x: int, seconds: float = 0.01) -> dict:
    await asyncio.sleep(seconds)
    return {"x": x}

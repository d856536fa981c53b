"""`async def` tasks in every execution mode, for tests/e2e/test_async_def.py. Each reports progress, prints,
returns its own context, and can be told to sleep (awaiting), fail, or block the event loop (time.sleep)."""
from __future__ import annotations

import asyncio
import time

from neutrino import App, current_task, report_progress

app = App("e2e_coro")


async def _body(label: str, seconds: float, fail: bool) -> dict:
    ctx = current_task()
    assert ctx is not None
    report_progress(0.5, f"{label} half way")
    print(f"{label} running as {ctx.id}")
    await asyncio.sleep(seconds)
    if fail:
        raise ValueError(f"{label} failed on purpose")
    # Still this task's context after the await, with hundreds of others interleaved on the loop.
    assert current_task() == ctx
    return {"label": label, "task_id": ctx.id, "attempt": ctx.attempt, "pool": ctx.pool}


@app.task(timeout_ms=1500)
async def co_sync(seconds: float = 0.0, fail: bool = False) -> dict:
    return await _body("co_sync", seconds, fail)


@app.task(execution_mode="async", timeout_ms=4000)
async def co_async(seconds: float = 0.0, fail: bool = False) -> dict:
    return await _body("co_async", seconds, fail)


@app.task(execution_mode="gpu", timeout_ms=4000)
async def co_gpu(seconds: float = 0.0, fail: bool = False) -> dict:
    return await _body("co_gpu", seconds, fail)


@app.task(timeout_ms=5000)
async def nap(seconds: float = 0.5) -> float:
    await asyncio.sleep(seconds)
    return seconds


@app.task(timeout_ms=5000)
async def block_loop(seconds: float) -> str:
    """Wrong on purpose: time.sleep in an async def blocks the worker's event loop."""
    time.sleep(seconds)
    return "unblocked"


@app.task(timeout_ms=1000)
async def spin_loop(seconds: float) -> str:
    """Wrong on purpose: a pure-Python busy loop in an async def holds the event loop."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "spun"


@app.task()
def plain(x: int) -> int:
    """A thread task beside the coroutines."""
    return x


@app.task(timeout_ms=5000)
def nap_thread(seconds: float = 0.5) -> float:
    """A thread task that waits (time.sleep releases the GIL), beside the coroutines."""
    time.sleep(seconds)
    return seconds

"""Queued (async / gpu) tasks for the JetStream end-to-end tests.

The `journal` family appends one JSON line per step to a file named in the arguments: `start` when an attempt
begins and `end` when it returns, with the task id, the attempt and the worker's pid. A test reads the file to
prove how many times a task really ran (exactly once, never twice), independently of the task log.
"""
from __future__ import annotations

import json
import os
import time

from neutrino import App, current_task

app = App("e2e_queue")


def _note(path: str, what: str, **extra) -> dict:
    ctx = current_task()
    entry = {"event": what, "task_id": ctx.id if ctx else None, "attempt": ctx.attempt if ctx else None,
             "pool": ctx.pool if ctx else None, "pid": os.getpid(), "at": time.time(), **extra}
    # One write() of one short line with O_APPEND: lines from concurrent workers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)
    return entry


def _sleep(seconds: float) -> None:
    """Sleeps in 50 ms steps (an asynchronous exception lands between steps)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)


@app.task(execution_mode="async", timeout_secs=120)
def journal(path: str, seconds: float = 0.0, tag: str = "") -> dict:
    """Notes `start`, sleeps `seconds`, notes `end`."""
    start = _note(path, "start", tag=tag)
    _sleep(seconds)
    _note(path, "end", tag=tag)
    return {"task_id": start["task_id"], "attempt": start["attempt"], "pid": start["pid"], "tag": tag}


@app.task(execution_mode="gpu", pool="gpu", timeout_secs=120)
def gpu_journal(path: str, seconds: float = 0.0) -> dict:
    """`journal` on the gpu pool."""
    start = _note(path, "start")
    _sleep(seconds)
    _note(path, "end")
    return {"task_id": start["task_id"], "attempt": start["attempt"], "pid": start["pid"]}


@app.task(execution_mode="async", timeout_secs=1, retries=2)
def overrun(path: str, seconds: float = 30.0) -> dict:
    """Runs past its 1 s timeout (it has retries, which a timeout must not use)."""
    _note(path, "start")
    _sleep(seconds)
    _note(path, "end")
    return {"slept": seconds}


@app.task(timeout_ms=5000)
def hold_sync(path: str, seconds: float = 4.8) -> dict:
    """A sync (fast pool) `journal`: notes `start`, sleeps `seconds`, notes `end` (for sync cancel)."""
    start = _note(path, "start")
    _sleep(seconds)
    _note(path, "end")
    return {"task_id": start["task_id"]}


@app.task(execution_mode="async", timeout_secs=60)
def ping(n: int) -> dict:
    """The cheapest queued task."""
    return {"n": n}



@app.task(execution_mode="async", timeout_secs=60, retries=2)
def crash_worker_max(path: str) -> dict:
    """As crash_worker, with the pool's largest retries: every delivery JetStream allows ends its worker."""
    _note(path, "start")
    os._exit(9)

"""Tasks for `make soak` (tests/e2e/soak.py): cheap sync calls, a sync and a queued task that note every run in a
journal file (one JSON line per start and end), and one that always raises."""
from __future__ import annotations

import json
import os
import time

from neutrino import App, current_task

app = App("soak")


def _note(path: str, what: str) -> None:
    ctx = current_task()
    line = json.dumps({"event": what, "task_id": ctx.id if ctx else None, "attempt": ctx.attempt if ctx else None,
                       "pid": os.getpid(), "at": time.time()})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@app.task()
def echo(x: int, label: str = "") -> dict:
    return {"x": x, "label": label}


@app.task()
def boom(message: str = "boom") -> None:
    raise RuntimeError(message)


@app.task()
def journal_sync(path: str, seconds: float = 0.0) -> dict:
    _note(path, "start")
    time.sleep(seconds)
    _note(path, "end")
    return {"ok": True}


@app.task(execution_mode="async", timeout_secs=60, retries=1)
def journal(path: str, seconds: float = 0.0) -> dict:
    _note(path, "start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    _note(path, "end")
    return {"ok": True}

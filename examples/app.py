"""The example Neutrino app: `make up` serves it, the end-to-end tests and the benchmark drive it.

Sync tasks (pool "fast") answer in the HTTP response; async and gpu tasks go through NATS JetStream.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Optional

from neutrino import App, current_task, report_progress

app = App("demo")


@app.task()
def echo(x: int, label: str = "") -> dict:
    """Return the arguments: the cheapest possible task, used by the benchmark."""
    return {"x": x, "label": label}


@app.task()
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@dataclass
class Point:
    x: float
    y: float


@app.task()
def centroid(points: list[Point], weights: Optional[list[float]] = None) -> dict:
    """Weighted centroid of points (shows dataclass and Optional arguments in the schema)."""
    if not points:
        raise ValueError("points must not be empty")
    weights = weights or [1.0] * len(points)
    total = sum(weights)
    return {
        "x": sum(p.x * w for p, w in zip(points, weights)) / total,
        "y": sum(p.y * w for p, w in zip(points, weights)) / total,
    }


@app.task()
def boom(message: str = "boom") -> None:
    """Always fails: shows the error type, message and traceback in the response and the task log."""
    raise RuntimeError(message)


@app.task(timeout_ms=2000)
def sleepy(seconds: float) -> dict:
    """Sleeps; with seconds above 2 it times out."""
    time.sleep(seconds)
    return {"slept": seconds}


@app.task(timeout_ms=500)
def spin(iterations: int = 10**12) -> int:
    """A pure-Python loop that only the worker's timeout stops."""
    total = 0
    for i in range(iterations):
        total += i
    return total


@app.task()
def whoami() -> dict:
    """The task's own context: id, attempt, pool."""
    ctx = current_task()
    return {"task_id": ctx.id, "attempt": ctx.attempt, "pool": ctx.pool} if ctx else {}


@app.task(timeout_ms=2000)
async def lookup(key: str, delay_s: float = 0.05) -> dict:
    """An async def task: it awaits (here asyncio.sleep, standing in for an HTTP call or a database query) on the
    worker's event loop, so one worker holds hundreds of these in flight without a thread each."""
    report_progress(0.5, "waiting for the backend")
    await asyncio.sleep(delay_s)
    ctx = current_task()
    return {"key": key, "value": key.upper(), "task_id": ctx.id if ctx else None}


@app.task(execution_mode="async", timeout_secs=300, retries=3)
def generate_report(dataset: str) -> dict:
    """A long-running task for the async pool (JetStream path); reports its progress."""
    time.sleep(0.5)
    report_progress(0.5, f"read {dataset}")
    time.sleep(0.5)
    return {"dataset": dataset, "rows": len(dataset) * 1000}


@app.task(execution_mode="gpu", pool="gpu", timeout_secs=600)
def train_model(data: str, epochs: int = 1) -> dict:
    """A gpu-pool task; runs on CPU where no GPU is visible."""
    time.sleep(0.5 * epochs)
    return {"data": data, "epochs": epochs, "loss": 0.1}


@app.task(execution_mode="async", timeout_secs=60, retries=2)
def flaky(fail_times: int = 1) -> dict:
    """Fails its first `fail_times` attempts, then succeeds: shows retries with backoff (and the DLQ when
    `fail_times` exceeds `retries`)."""
    ctx = current_task()
    attempt = ctx.attempt if ctx else 1
    if attempt <= fail_times:
        raise RuntimeError(f"attempt {attempt} of flaky fails on purpose")
    return {"attempt": attempt}


@app.task(execution_mode="async", timeout_secs=120)
def crunch(seconds: float = 5.0) -> dict:
    """A long async task (sleeps in small steps), for cancellation and drain tests."""
    started = time.monotonic()
    deadline = started + seconds
    steps = 0
    while time.monotonic() < deadline:
        time.sleep(0.05)
        steps += 1
        if steps % 20 == 0:
            report_progress(min(1.0, (time.monotonic() - started) / seconds), f"{steps} steps")
    return {"seconds": seconds, "steps": steps}

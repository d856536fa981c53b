"""The comparison for the async benchmark: the same `echo` as a Celery 5 task, Redis as broker and result backend.

bench/async_bench.py starts `redis-server` on a free port, passes its URL in BENCH_REDIS_URL, and runs

    celery -A celery_app worker --pool prefork --concurrency 2 --loglevel WARNING --without-gossip --without-mingle

from this folder. Clients call `echo.delay(42, "bench")` and wait with `AsyncResult.get()`.
"""
from __future__ import annotations

import os

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")

app = Celery("bench", broker=f"{REDIS_URL}/0", backend=f"{REDIS_URL}/1")
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    # The benchmark submits from up to BENCH_ASYNC_THREADS threads: don't let the default producer pool
    # (10 connections) make them queue behind each other.
    broker_pool_limit=max(10, int(os.environ.get("BENCH_ASYNC_THREADS", "16"))),
    worker_send_task_events=False,
)


@app.task(name="echo")
def echo(x: int, label: str = "") -> dict:
    return {"x": x, "label": label}

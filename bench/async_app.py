"""The async side of the benchmark: the same `echo` as examples/app.py, as a queued (JetStream) task.

    POST /api/echo  {"args": {"x": 42, "label": "bench"}}  ->  202 {"task_id", "status": "queued", ...}

bench/async_bench.py serves it with nats-server, the gateway (`--nats`) and 2 `neutrino-worker --mode nats
--pool async` workers; bench/celery_app.py is the same function as a Celery task.
"""
from __future__ import annotations

from neutrino import App

app = App("bench_async")


@app.task(execution_mode="async", timeout_secs=60)
def echo(x: int, label: str = "") -> dict:
    return {"x": x, "label": label}

"""The benchmark's Neutrino app: the same functions as the peers' endpoints (bench/starlette_app.py).

    echo(x, label)   returns its arguments (examples/app.py's `echo`)
    sleep_ms(ms)     blocks its thread for `ms` milliseconds (time.sleep releases the GIL): an I/O-bound call
"""
from __future__ import annotations

import time

from neutrino import App

app = App("bench")


@app.task()
def echo(x: int, label: str = "") -> dict:
    return {"x": x, "label": label}


@app.task()
def sleep_ms(ms: int) -> int:
    time.sleep(ms / 1000)
    return ms

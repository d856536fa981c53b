"""Extra tasks for the end-to-end tests (things examples/app.py does not cover).

It also imports a sibling module (`e2e_helpers`), which only works if the worker and the manifest builder put
the app's own folder on sys.path, as the design says they do.
"""
from __future__ import annotations

import os
import time

from neutrino import App

from e2e_helpers import HELPER_TAG, wait_until_released

app = App("e2e_extra")


@app.task()
def returns_set() -> list:
    """Returns a value JSON cannot encode: must fail with ResultNotSerializable."""
    return {1, 2, 3}


@app.task()
def helper_tag() -> str:
    """Proves the sibling module was imported from the app's folder."""
    return HELPER_TAG


@app.task()
def hold(marker_dir: str, max_seconds: float = 4.5) -> dict:
    """Occupies a Python thread, mostly in time.sleep (like `sleepy`), until the test creates
    MARKER_DIR/release (or max_seconds pass). Writes MARKER_DIR/started-<pid>-<n> first so the test
    knows the thread is busy."""
    os.makedirs(marker_dir, exist_ok=True)
    marker = os.path.join(marker_dir, f"started-{os.getpid()}-{time.monotonic_ns()}")
    with open(marker, "w") as fh:
        fh.write("started")
    released = wait_until_released(os.path.join(marker_dir, "release"), max_seconds, busy=False)
    return {"released": released}


@app.task()
def burn(marker_dir: str, max_seconds: float = 4.5) -> dict:
    """Like `hold`, but a pure-Python loop that keeps the GIL busy between checks."""
    os.makedirs(marker_dir, exist_ok=True)
    marker = os.path.join(marker_dir, f"started-{os.getpid()}-{time.monotonic_ns()}")
    with open(marker, "w") as fh:
        fh.write("started")
    released = wait_until_released(os.path.join(marker_dir, "release"), max_seconds, busy=True)
    return {"released": released}

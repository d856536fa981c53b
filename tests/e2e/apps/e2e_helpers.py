"""A plain module beside extra_app.py; importable only if the app's folder is on sys.path."""
from __future__ import annotations

import os
import time

HELPER_TAG = "e2e-helpers-from-app-folder"


def wait_until_released(release_path: str, max_seconds: float, *, busy: bool) -> bool:
    """True once `release_path` exists; False if max_seconds pass first."""
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        if os.path.exists(release_path):
            return True
        if busy:
            total = 0
            for i in range(20_000):
                total += i
        else:
            time.sleep(0.02)
    return os.path.exists(release_path)

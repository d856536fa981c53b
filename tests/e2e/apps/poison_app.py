"""Tasks that try to take their worker down, for the fault-containment tests."""
from __future__ import annotations

import os
import signal
import time

from neutrino import App, current_task

app = App("e2e_poison")


@app.task()
def echo(x: int) -> int:
    return x


@app.task()
def die(code: int = 9) -> None:
    """Ends the worker process at once, as a segfaulting C extension or an OOM kill would."""
    os._exit(code)


@app.task(retries=1)
def die_once(marker_dir: str) -> dict:
    """Opted in to a re-run on crash: kills its worker on the first attempt, completes on the second."""
    attempt = current_task().attempt
    if attempt == 1:
        os._exit(9)
    return {"attempt": attempt, "pid": os.getpid()}


@app.task()
def alarm(seconds: int = 1) -> dict:
    """Arms SIGALRM, whose default action would end the process, and waits past it."""
    signal.alarm(seconds)
    time.sleep(seconds + 0.5)
    return {"survived": True}


@app.task()
def install_handler() -> str:
    """Python allows signal handlers only on the main thread: this fails as a task error."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return "installed"


@app.task(timeout_ms=1000)
def stubborn_sleep(seconds: float = 60.0) -> str:
    """Swallows the TimeoutError and goes back to sleep: only a hard limit gets its thread back."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(deadline - time.monotonic())
        except Exception:  # noqa: BLE001 - the point: it ignores the soft timeout
            pass
    return "woke"


@app.task(timeout_ms=1000)
def regex_bomb() -> bool:
    """A C loop that holds the GIL (catastrophic backtracking): no exception can be raised in it."""
    import re
    return re.match(r"(a+)+$", "a" * 40 + "b") is not None


@app.task(timeout_ms=4000)
def slow(seconds: float = 3.0) -> str:
    time.sleep(seconds)
    return "done"


@app.task()
def segfault() -> None:
    """Reads address 0 through ctypes: SIGSEGV, as a broken C extension would."""
    import ctypes
    ctypes.string_at(0)


@app.task()
def chatty(lines: int = 3) -> int:
    """Prints to stdout and stderr: both are kept with the task and logged with its id."""
    import sys
    for i in range(lines):
        print(f"line {i}")
    print("to stderr", file=sys.stderr)
    return lines


@app.task()
def boom_task(message: str = "boom") -> None:
    """An ordinary failure: the task raises."""
    raise RuntimeError(message)

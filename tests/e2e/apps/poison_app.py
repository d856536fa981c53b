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

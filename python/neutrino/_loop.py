"""The worker's event loop for ``async def`` tasks.

One asyncio loop per worker process, on a thread the worker starts (``py-loop``) when its app has any
``async def`` task. :func:`run` is that thread's whole life. The worker (Swift) never takes the GIL to hand work
over: it queues the job on its side and writes a byte to a pipe; the loop wakes on the pipe (``add_reader``) and
asks the worker for what is queued through ``bridge(TAKE)``:

* ``(START, job, name, payload, hard_deadline_s)``: prepare the arguments (as :func:`neutrino._runtime.invoke`
  does) and start the coroutine as an asyncio Task, with the task's context (``current_task()``,
  ``report_progress()``, output capture) in that Task's own ``contextvars`` context;
* ``(CANCEL, job, ...)``: ``Task.cancel()``: ``CancelledError`` inside the coroutine at its current ``await``.
  The worker sends it at the timeout and on ``DELETE /tasks/<id>``, after it has already answered the caller.

When a coroutine ends, ``bridge(DONE, job, ok, bytes, output)`` hands its result (or error payload) back.

Blocking detection: a callback re-armed every :data:`TICK_S` stamps the time; a watcher thread
(``neutrino-loop-watch``) sees the stamp go stale when a coroutine blocks the loop (``time.sleep``, a synchronous
client, a CPU loop) and logs the task's name and id, once when it passes :data:`BLOCK_WARN_S` and again with the
total when the loop is free. The worker's timeouts do not depend on the loop: they fire (and answer the caller)
while it is blocked. If the blocking task is still blocking past its own hard deadline (timeout + grace), the
watcher asks the worker to raise ``TimeoutError`` in the loop thread (``bridge(INTERRUPT)``), which stops a
pure-Python loop; if the loop is still blocked a grace later (a C call that never returns), the worker is told the
loop is lost (``bridge(LOST, reason)``) and recycles itself.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import traceback
from typing import Any, Callable, Dict, Optional

from . import _runtime
from ._output import worker_log

__all__ = ["run"]

# bridge() operations (the worker's side is Sources/NeutrinoPython/LoopBridge.swift).
TAKE, DONE, LOST, INTERRUPT = 0, 1, 2, 3
# Items from TAKE.
START, CANCEL = 0, 1
# Items from TAKE for the mounted ASGI app (neutrino._asgi): a request (job, head fields, body), the client went
# away, the worker has room for more of a response again, the lifespan shutdown, and a request given up on (no
# answer within the worker's --asgi-head-timeout: its coroutine is cancelled).
ASGI_REQUEST, ASGI_DISCONNECT, ASGI_RESUME, LIFESPAN_SHUTDOWN, ASGI_CANCEL = 2, 3, 4, 5, 6

def _warn_from_env() -> float:
    try:
        return max(0.01, float(os.environ.get("NEUTRINO_LOOP_BLOCK_WARN_MS", "100")) / 1000)
    except ValueError:
        return 0.1


#: After how long without a heartbeat the watcher calls the loop blocked (the worker's --loop-block-warn-ms, via
#: the environment; asyncio debug mode's slow-callback threshold is 0.1 s too), and how often the loop stamps it.
BLOCK_WARN_S = _warn_from_env()
TICK_S = min(0.02, BLOCK_WARN_S / 4)


class _Job:
    __slots__ = ("job", "name", "task_id", "hard_deadline", "task")

    def __init__(self, job: int, name: str, task_id: Optional[str], hard_deadline: float):
        self.job = job
        self.name = name
        self.task_id = task_id
        self.hard_deadline = hard_deadline
        self.task: Optional[asyncio.Task] = None

    def describe(self) -> str:
        return f"{self.name!r} (task {self.task_id})" if self.task_id else repr(self.name)


def _log(message: str) -> None:
    worker_log("neutrino-loop", message)


def run(bridge: Callable[..., Any], wake_fd: int, grace_s: float, serve_asgi: bool = False) -> None:
    """The loop thread's body: serve coroutine tasks (and, with ``serve_asgi``, the app's mounted ASGI app, its
    lifespan startup first, reported by ``bridge(LIFESPAN, 0, ok, message)``) until the process ends."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asgi = None
    if serve_asgi:
        from . import _asgi

        mounted = _runtime.mounted_asgi()
        if mounted is None:
            bridge(_asgi.LIFESPAN, 0, False, "the app mounts no ASGI app")
        else:
            asgi = _asgi.AsgiServer(mounted, loop, bridge)
            try:
                ok, message = loop.run_until_complete(asgi.startup())
            except BaseException as exc:
                ok, message = False, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            bridge(_asgi.LIFESPAN, 0, ok, message)
    jobs: Dict[int, _Job] = {}
    by_task: Dict[asyncio.Task, _Job] = {}
    stamp = [time.monotonic()]

    def tick() -> None:
        stamp[0] = time.monotonic()
        loop.call_later(TICK_S, tick)

    def drain() -> None:
        try:
            while _read(wake_fd):
                pass
        except BlockingIOError:
            pass
        for item in bridge(TAKE):
            op, job = item[0], item[1]
            if op == START:
                try:
                    _start(job, item[2], item[3], item[4])
                except BaseException as exc:  # never leave a job without an answer
                    payload = _runtime._error_payload(type(exc).__name__, f"the event loop could not start the task: {exc}")
                    bridge(DONE, job, False, payload, None)
            elif op == CANCEL:
                entry = jobs.get(job)
                if entry is not None and entry.task is not None:
                    entry.task.cancel()
            elif asgi is not None and op == ASGI_REQUEST:
                asgi.start(job, item[2], item[3])
            elif asgi is not None and op == ASGI_DISCONNECT:
                asgi.disconnect(job)
            elif asgi is not None and op == ASGI_RESUME:
                asgi.resume(job)
            elif asgi is not None and op == ASGI_CANCEL:
                asgi.cancel(job)
            elif asgi is not None and op == LIFESPAN_SHUTDOWN:
                loop.create_task(_shutdown_asgi(asgi))

    def _start(job: int, name: str, payload: bytes, hard_deadline_s: float) -> None:
        try:
            func, args, context = _runtime.prepare(name, payload)
        except _runtime.TaskError as exc:
            bridge(DONE, job, False, exc.payload, None)
            return
        entry = _Job(job, name, context[0], time.monotonic() + hard_deadline_s)
        jobs[job] = entry
        label = f"{name} [task {context[0]}]" if context[0] else name
        task = loop.create_task(_run(entry, func, args, context), name=label)
        entry.task = task
        by_task[task] = entry

    async def _run(entry: _Job, func: Callable[..., Any], args: Dict[str, Any], context: tuple) -> None:
        try:
            ok, data, output = await _runtime.await_task(func, args, context)
        finally:
            jobs.pop(entry.job, None)
            if entry.task is not None:
                by_task.pop(entry.task, None)
        bridge(DONE, entry.job, ok, data, output)

    async def _shutdown_asgi(server: Any) -> None:
        from . import _asgi

        try:
            ok, message = await server.shutdown()
        except BaseException as exc:
            ok, message = False, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        bridge(_asgi.LIFESPAN, 1, ok, message)

    _read = lambda fd: os.read(fd, 4096)  # noqa: E731
    os.set_blocking(wake_fd, False)
    loop.add_reader(wake_fd, drain)
    loop.call_soon(tick)
    watcher = threading.Thread(
        target=_watch, args=(loop, stamp, by_task, bridge, grace_s), name="neutrino-loop-watch", daemon=True
    )
    watcher.start()
    while True:
        try:
            loop.run_forever()
            return
        except BaseException as exc:  # an interrupt that landed in the loop's own code, not in a coroutine
            _log(f"the event loop was interrupted outside any task ({type(exc).__name__}: {exc}); it goes on")


def _watch(loop: asyncio.AbstractEventLoop, stamp: list, by_task: Dict[asyncio.Task, "_Job"],
           bridge: Callable[..., Any], grace_s: float) -> None:
    """The watcher thread: logs a blocked loop with the blocking task, and hard-stops it past its deadline."""
    blocked_by: Optional[str] = None
    warned = False
    interrupted_at: Optional[float] = None
    lost = False
    while True:
        time.sleep(BLOCK_WARN_S / 2)
        now = time.monotonic()
        age = now - stamp[0]
        if age < BLOCK_WARN_S:
            if warned:
                _log(f"the event loop is running again; {blocked_by} blocked it for about {now - since:.2f} s")
            blocked_by, warned, interrupted_at, lost = None, False, None, False
            continue
        try:
            task = asyncio.current_task(loop)
        except RuntimeError:
            task = None
        entry = by_task.get(task) if task is not None else None
        if not warned:
            since = stamp[0]
            blocked_by = f"async def task {entry.describe()}" if entry else (
                f"coroutine {task.get_name()!r}" if task is not None else "a callback outside any task")
            warned = True
            _log(
                f"{blocked_by} has blocked the event loop for {age:.2f} s (a blocking call such as time.sleep or a "
                "synchronous client in an async def stalls every coroutine of this worker; use await "
                "asyncio.sleep(), an async client or asyncio.to_thread())"
            )
        if entry is None:
            continue
        if interrupted_at is None and now >= entry.hard_deadline:
            _log(f"{blocked_by} is past its hard timeout and still blocks the loop: raising TimeoutError in it")
            interrupted_at = now
            bridge(INTERRUPT)
        elif interrupted_at is not None and not lost and now - interrupted_at >= grace_s:
            lost = True
            bridge(LOST, f"{blocked_by} has blocked the event loop for {age:.1f} s and did not stop when "
                         f"interrupted")

"""The current task, as seen from inside a running task function."""

from __future__ import annotations

import contextvars
import dataclasses
from typing import Optional

__all__ = ["TaskContext", "current_task", "report_progress"]

# The worker runtime stores a plain tuple here (cheap on the hot path); ``current_task`` builds the
# dataclass only when a task asks for it. A context variable, not a thread-local: a task on a worker thread sets
# it in that thread's context, an ``async def`` task in its own asyncio Task's context (so hundreds of coroutines
# on one event-loop thread each see their own), and ``asyncio.to_thread`` / ``contextvars.copy_context().run``
# carry it along.
_task: contextvars.ContextVar[Optional[tuple]] = contextvars.ContextVar("neutrino_task", default=None)


@dataclasses.dataclass(frozen=True)
class TaskContext:
    """Facts about the task invocation running on this thread."""

    #: The task id (UUIDv7, time-ordered), or ``None`` when the caller gave none.
    id: Optional[str]
    #: The task's name.
    name: str
    #: 1 for the first attempt, 2 for the first retry, and so on.
    attempt: int
    #: The pool running it, or ``None`` when the caller did not say.
    pool: Optional[str]
    #: The W3C ``traceparent`` of the worker's span running this task (``00-<trace id>-<span id>-<flags>``), or
    #: ``None`` when the task is not traced. With the ``opentelemetry-api`` package importable in the worker, the task
    #: also runs with this context attached, so spans the task starts nest under the worker's execution span.
    traceparent: Optional[str] = None

    @property
    def trace_id(self) -> Optional[str]:
        """The trace id (32 hex digits) of :attr:`traceparent`, or ``None``."""
        return self.traceparent[3:35] if self.traceparent else None


def current_task() -> Optional[TaskContext]:
    """The :class:`TaskContext` of the running task (this thread's, or this coroutine's), or ``None`` outside one.

    Only invocations through the worker runtime set it; calling a task function directly (``echo(3)``)
    runs it as a plain function, with no current task.
    """
    raw = _task.get()
    return None if raw is None else TaskContext(*raw)


# Set by the worker (``neutrino._runtime.set_progress_sink``): a callable taking
# (task_id, task_name, pool, attempt, fraction, message) that records a progress event in the task log.
_progress_sink = None


def report_progress(fraction: float, message: Optional[str] = None) -> None:
    """Record how far the running task has got: ``fraction`` from 0.0 to 1.0, and an optional message.

    Stored in the task log and returned by ``GET /tasks/<id>`` as ``progress`` / ``progress_message``. Outside a
    worker (a task function called directly) it does nothing, so tasks stay testable as plain functions.

    Raises:
        ValueError: ``fraction`` is not a number from 0 to 1.
    """
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"fraction must be a number from 0 to 1, not {fraction!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"fraction must be from 0 to 1, not {value}")
    raw = _task.get()
    sink = _progress_sink
    if raw is None or sink is None or raw[0] is None:
        return
    task_id, name, attempt, pool = raw[:4]
    sink(task_id, name, pool or "", int(attempt or 1), value, None if message is None else str(message))

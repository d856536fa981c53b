"""The current task, as seen from inside a running task function."""

from __future__ import annotations

import dataclasses
import threading
from typing import Optional

__all__ = ["TaskContext", "current_task"]

# The worker runtime stores a plain tuple here (cheap on the hot path); ``current_task`` builds the
# dataclass only when a task asks for it.
_local = threading.local()


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


def current_task() -> Optional[TaskContext]:
    """The :class:`TaskContext` of the task running on this thread, or ``None`` outside a task.

    Only invocations through the worker runtime set it; calling a task function directly (``echo(3)``)
    runs it as a plain function, with no current task.
    """
    raw = getattr(_local, "task", None)
    return None if raw is None else TaskContext(*raw)

"""Per-task capture of what a task prints (``print()``, ``sys.stdout``/``sys.stderr`` writes).

The worker installs :class:`TaskStreams` as ``sys.stdout`` and ``sys.stderr`` once. A write from a thread that runs
a task (``begin`` was called in its context: the thread's, or an ``async def`` task's asyncio Task) goes to that task's buffer — the last ``limit`` bytes are kept and stored with the
task — and, line by line, to the worker's own stream prefixed with the task id, so the worker log says which task
printed what. Writes from anywhere else (the app's import, background threads it started) pass through unchanged.
"""

from __future__ import annotations

import contextvars
import io
import os
import sys
from typing import Optional, TextIO

__all__ = ["TaskStreams", "begin", "end", "install", "set_limit"]

# A context variable, not a thread-local: coroutine tasks share the event-loop thread, each in its own context.
_capture: contextvars.ContextVar[Optional["_Capture"]] = contextvars.ContextVar("neutrino_capture", default=None)


def _limit_from_env() -> int:
    try:
        return max(0, int(os.environ.get("NEUTRINO_TASK_OUTPUT_BYTES", 64 * 1024)))
    except ValueError:
        return 64 * 1024


#: How many characters of a task's output are kept (the worker's --task-output-bytes, via the environment).
_limit = _limit_from_env()


class _Capture:
    __slots__ = ("prefix", "chunks", "size", "dropped", "pending")

    def __init__(self, task_id: Optional[str]):
        self.prefix = f"[task {task_id}] " if task_id else "[task] "
        self.chunks: list[str] = []
        self.size = 0
        self.dropped = 0
        self.pending = {}  # stream name -> the unterminated tail of its last write

    def add(self, text: str) -> None:
        self.chunks.append(text)
        self.size += len(text)
        # Keep the last `_limit` characters, dropping whole chunks from the front (cheap, amortised).
        while self.size > _limit and len(self.chunks) > 1:
            first = self.chunks.pop(0)
            self.size -= len(first)
            self.dropped += len(first)
        if self.size > _limit:
            only = self.chunks[0]
            cut = self.size - _limit
            self.chunks[0] = only[cut:]
            self.size -= cut
            self.dropped += cut

    def text(self) -> str:
        body = "".join(self.chunks)
        if self.dropped:
            return f"[... {self.dropped} earlier characters dropped]\n" + body
        return body


class TaskStreams(io.TextIOBase):
    """Stands in for ``sys.stdout`` or ``sys.stderr``; see the module docs."""

    def __init__(self, name: str, original: TextIO):
        self._name = name
        self._original = original

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._original, "encoding", "utf-8")

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._original.fileno()

    def write(self, text: str) -> int:
        capture = _capture.get()
        if capture is None:
            return self._original.write(text)
        capture.add(text)
        pending = capture.pending.get(self._name, "") + text
        lines = pending.split("\n")
        capture.pending[self._name] = lines.pop()
        if lines:
            self._original.write("".join(capture.prefix + line + "\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        self._original.flush()


def install() -> None:
    """Put the capturing streams in place (once per process; the worker calls it after importing the app)."""
    import sys

    if not isinstance(sys.stdout, TaskStreams):
        sys.stdout = TaskStreams("stdout", sys.stdout)
    if not isinstance(sys.stderr, TaskStreams):
        sys.stderr = TaskStreams("stderr", sys.stderr)


def set_limit(limit: int) -> None:
    """How many characters of a task's output are kept (the last ones)."""
    global _limit
    _limit = max(0, int(limit))


def begin(task_id: Optional[str]) -> None:
    _capture.set(_Capture(task_id))


def end() -> Optional[str]:
    """Stops capturing in this context; returns what the task printed (None when nothing)."""
    capture = _capture.get()
    _capture.set(None)
    if capture is None:
        return None
    import sys

    # A last line without a newline still reaches the worker log.
    for name, tail in capture.pending.items():
        if tail:
            stream = sys.stdout if name == "stdout" else sys.stderr
            original = getattr(stream, "_original", stream)
            original.write(capture.prefix + tail + "\n")
    if not capture.size and not capture.dropped:
        return None
    return capture.text()


def worker_log(source: str, message: str) -> None:
    """One line ``<source>: <message>`` on the worker's own stderr, never into a task's captured output (the
    event loop's and the ASGI server's diagnostics)."""
    stream = sys.stderr
    original = getattr(stream, "_original", stream)
    try:
        original.write(f"{source}: {message}\n")
        original.flush()
    except Exception:
        pass

"""The worker's side of the embedded interpreter. Swift calls these two functions through the C API.

* :func:`load` once per process, to import the app;
* :func:`invoke` once per task, on one of the worker's Python threads: bytes in, bytes out;
* an ``async def`` task instead runs on the worker's event loop (:mod:`neutrino._loop`), which uses
  :func:`prepare` and :func:`await_task`.

Errors leave :func:`invoke` as :class:`TaskError`, whose ``payload`` is the JSON the worker puts into the
task record's ``error`` field: ``{"type", "message", "traceback"}``. The types the runtime itself reports:

``UnknownTask``            no task of that name in the loaded app
``InvalidArguments``       payload not JSON, ``args`` not an object, or arguments that do not bind to the
                           function's signature (missing, unexpected) or to its dataclass parameters
``ResultNotSerializable``  the task returned something JSON cannot encode

Anything the task raises is reported under its own type (``ValueError``, ``myapp.QuotaExceeded``), with
the traceback starting at the task function's frame. That includes the ``TimeoutError`` (or cancel error)
the worker injects into a task thread with ``PyThreadState_SetAsyncExc``: the worker tells its own
injections apart. In the rare case that such an injected exception lands in this module's own code
rather than in the task, it escapes as itself rather than as ``TaskError``.

This module is on the hot path: keep :func:`invoke` free of allocations it does not need.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import threading
import traceback
from typing import Any, Callable, Dict, Optional, Tuple

from . import _context, _output
from ._context import _task as _task_var
from ._convert import build_args_converter
from ._loader import load_app

__all__ = [
    "TaskError", "CancelledByRequest", "load", "invoke", "asgi_pool", "mounted_asgi", "prepare", "await_task",
    "last_output", "set_progress_sink",
]

_ArgsConverter = Optional[Callable[[Dict[str, Any]], Dict[str, Any]]]

# What the last task on each worker thread printed, handed to the worker by last_output().
_local = threading.local()

# name -> (the undecorated function, its args converter or None); filled by load().
_tasks: Dict[str, Tuple[Callable[..., Any], _ArgsConverter]] = {}
# The mounted ASGI app and its pool (App.mount), or None; set by load().
_asgi: Optional[Tuple[Any, str]] = None


class TaskError(Exception):
    """A task invocation that did not produce a result. ``payload`` (= ``args[0]``) is JSON bytes
    ``{"type": str, "message": str, "traceback": str}``."""

    @property
    def payload(self) -> bytes:
        return self.args[0]


class CancelledByRequest(BaseException):
    """Raised inside a running task's thread when its cancellation was requested (``DELETE /tasks/<id>``).

    A ``BaseException``, like ``KeyboardInterrupt``, so that a task's ``except Exception`` does not swallow it;
    ``finally`` blocks and context managers still run. The worker injects it with ``PyThreadState_SetAsyncExc``."""


def set_progress_sink(sink: Callable[[str, str, str, int, float, Optional[str]], None]) -> None:
    """Called once by the worker with the function :func:`neutrino.report_progress` hands progress to."""
    _context._progress_sink = sink


def load(app_spec: str) -> bytes:
    """Import the app (``path/to/app.py``, ``module`` or ``module:attr``) and make its tasks invokable.

    Returns JSON bytes: ``[{"name", "execution_mode", "pool", "timeout_ms", "retries", "coroutine"}, ...]`` in
    definition order. Import errors and definition errors propagate as raised.
    """
    global _asgi
    app = load_app(app_spec)
    mount = getattr(app, "asgi", None)
    _asgi = None if mount is None else (mount.app, mount.pool)
    specs = list(app.tasks.values())
    tasks = {spec.name: (spec.func, build_args_converter(spec.func)) for spec in specs}
    _tasks.clear()
    _tasks.update(tasks)
    _output.install()
    # "coroutine": an async def task, run on the worker's event loop (neutrino._loop) instead of a thread.
    return json.dumps(
        [dict(spec.to_json(), coroutine=inspect.iscoroutinefunction(spec.func)) for spec in specs]
    ).encode()


def asgi_pool() -> Optional[str]:
    """The pool that serves the app's mounted ASGI app (:meth:`neutrino.App.mount`), or None."""
    return None if _asgi is None else _asgi[1]


def mounted_asgi() -> Any:
    """The mounted ASGI application, or None."""
    return None if _asgi is None else _asgi[0]


def _encode_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"Object of type {type(value).__qualname__} is not JSON serializable")


_decode = json.loads
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_encode_default).encode


def prepare(name: str, payload: bytes) -> Tuple[Callable[..., Any], Dict[str, Any], tuple]:
    """The function, its converted arguments and the task context tuple for one call of task ``name``.

    Raises:
        TaskError: no such task, or the payload or arguments are not acceptable (see the module docs).
    """
    entry = _tasks.get(name)
    if entry is None:
        known = ", ".join(sorted(_tasks)) or "none loaded"
        raise TaskError(_error_payload("UnknownTask", f"no task named {name!r} (tasks: {known})"))
    func, convert = entry

    try:
        request = _decode(payload)
    except (ValueError, TypeError) as exc:
        raise TaskError(_error_payload("InvalidArguments", f"the payload is not valid JSON: {exc}")) from None
    if type(request) is not dict:
        raise TaskError(_error_payload("InvalidArguments", 'the payload must be a JSON object {"args": {...}}'))
    args = request.get("args", {})
    if type(args) is not dict:
        raise TaskError(_error_payload("InvalidArguments", f"args must be a JSON object, not {_json_type(args)}"))
    if convert is not None:
        try:
            args = convert(args)
        except Exception as exc:
            raise TaskError(_error_payload("InvalidArguments", _message(exc))) from None
    traceparent = request.get("traceparent")
    return func, args, (
        request.get("task_id"),
        name,
        request.get("attempt", 1),
        request.get("pool"),
        traceparent if type(traceparent) is str else None,
    )


def invoke(name: str, payload: bytes) -> bytes:
    """Run task ``name`` with the arguments in ``payload`` and return its result as JSON bytes.

    ``payload`` is JSON ``{"args": {...}, "task_id": str, "attempt": int, "pool": str, "traceparent": str}``; only
    ``args`` is needed. While the task runs, :func:`neutrino.current_task` returns its context on this thread, and
    with a ``traceparent`` and OpenTelemetry importable, that trace context is the current OpenTelemetry context.

    Raises:
        TaskError: the task raised, or the call could not be made or answered (see the module docs).
    """
    func, args, context = prepare(name, payload)
    error: Optional[bytes] = None
    token = _task_var.set(context)
    otel = _attach_trace(context[4]) if context[4] else None
    _output.begin(context[0])
    try:
        result = func(**args)
    except BaseException as exc:  # the worker's injected TimeoutError included
        error = _describe(exc)
    finally:
        if otel is not None:
            _detach_trace(otel)
        _task_var.reset(token)
        _local.output = _output.end()
    if error is not None:
        raise TaskError(error)

    try:
        return _encode(result).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        message = f"task {name!r} returned a value that is not JSON-serialisable: {exc}"
        raise TaskError(_error_payload("ResultNotSerializable", message)) from None


async def await_task(func: Callable[..., Any], args: Dict[str, Any], context: tuple) -> Tuple[bool, bytes, Optional[bytes]]:
    """Await an ``async def`` task on the worker's event loop (:mod:`neutrino._loop`), in the asyncio Task's own
    context: ``(True, result JSON, output)`` or ``(False, error payload, output)``; never raises.

    ``CancelledError`` (the worker's timeout or cancel) ends up as an error payload like any other exception: the
    worker has answered the caller already and only needs to know the coroutine is done."""
    _task_var.set(context)
    if context[4]:
        # The asyncio Task's own context: attached for the coroutine's life, gone with it.
        _attach_trace(context[4])
    _output.begin(context[0])
    try:
        result = await func(**args)
    except BaseException as exc:  # CancelledError, and a TimeoutError raised in a coroutine blocking the loop
        return False, _describe(exc), _encoded(_output.end())
    output = _encoded(_output.end())
    try:
        return True, _encode(result).encode(), output
    except (TypeError, ValueError, RecursionError) as exc:
        message = f"task {context[1]!r} returned a value that is not JSON-serialisable: {exc}"
        return False, _error_payload("ResultNotSerializable", message), output


# OpenTelemetry, when the app's environment has it: None = not looked for yet, False = not importable.
_otel: Any = None


def _attach_trace(traceparent: str) -> Any:
    """Make ``traceparent`` the current OpenTelemetry context (a remote parent), if ``opentelemetry-api`` is importable;
    returns the token to detach it with, or None. OpenTelemetry is optional: without it nothing happens."""
    global _otel
    if _otel is None:
        try:
            from opentelemetry import context as otel_context
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except Exception:  # not installed, or broken: tasks run without it
            _otel = False
        else:
            _otel = (otel_context, TraceContextTextMapPropagator())
    if _otel is False:
        return None
    otel_context, propagator = _otel
    try:
        return otel_context.attach(propagator.extract({"traceparent": traceparent}))
    except Exception:
        return None


def _detach_trace(token: Any) -> None:
    try:
        _otel[0].detach(token)
    except Exception:
        pass


def _encoded(text: Optional[str]) -> Optional[bytes]:
    return None if text is None else text.encode("utf-8", "replace")


def last_output() -> Optional[bytes]:
    """What the last task on this thread printed (UTF-8), or None; the worker reads it right after :func:`invoke`."""
    text = getattr(_local, "output", None)
    _local.output = None
    return None if text is None else text.encode("utf-8", "replace")


def _describe(exc: BaseException) -> bytes:
    """The error payload for an exception caught around ``func(**args)`` in :func:`invoke`."""
    # exc.__traceback__ is invoke's (or await_task's) own frame; tb_next is the task function's frame, if the call
    # got there.
    tb = exc.__traceback__
    inner = tb.tb_next if tb is not None else None
    if inner is None and type(exc) is TypeError:
        # Raised by the call itself: the arguments do not bind to the signature.
        return _error_payload("InvalidArguments", _message(exc))
    text = "".join(traceback.format_exception(type(exc), exc, inner))
    return _error_payload(_type_name(type(exc)), _message(exc), text)


def _error_payload(error_type: str, message: str, traceback_text: str = "") -> bytes:
    return json.dumps({"type": error_type, "message": message, "traceback": traceback_text}).encode()


def _type_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__} object>"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )

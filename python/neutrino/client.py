"""HTTP clients for the Neutrino gateway (standard library only).

.. code-block:: python

    from neutrino import Client

    client = Client("http://127.0.0.1:8080", api_key="nt_...")   # or $NEUTRINO_API_KEY
    client.call("echo", x=3)                          # sync task: the result, or a typed error
    handle = client.submit("generate_report", dataset="q3")
    handle.wait(timeout=600)                          # async task: long-polls GET /tasks/<id>?wait=N

:class:`Client` blocks; :class:`neutrino.AsyncClient` (module :mod:`neutrino.aio`) has the same methods as
coroutines. Unsuccessful answers raise the subclasses of :class:`~neutrino.errors.RemoteError`; network
failures (gateway down, refused connection, a request over its timeout) raise the usual :class:`OSError`
subclasses (``socket.timeout`` for a timeout).

How the two clients share their logic: every operation (call, submit, wait, cancel, ...) is written once, here,
as a generator that yields the steps it needs — a :class:`_Request` to send or a :class:`_Pause` to wait — and
receives each :class:`_Response`. URL building, headers, the API key, error mapping, retrying on 429/503 and
long-polling therefore exist once; ``Client._run`` drives an operation with blocking sockets and
``AsyncClient._run`` with asyncio streams. Only the transport differs.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import http.client
import json
import math
import os
import random
import re
import threading
import time
from typing import Any, Dict, Generator, Mapping, NamedTuple, Optional, Set, TypeVar, Union
from urllib.parse import quote, urlencode, urlsplit

from ._version import __version__
from .errors import (
    BadRequest,
    Forbidden,
    InvalidArguments,
    NotSupported,
    PayloadTooLarge,
    RateLimited,
    RemoteError,
    ServiceUnavailable,
    TaskCancelled,
    TaskFailed,
    TaskTimedOut,
    Unauthorized,
    UnknownTask,
    WaitTimeout,
)

__all__ = ["Client", "TaskHandle", "TERMINAL_STATUSES", "DEFAULT_URL", "API_KEY_ENV"]

#: Where :class:`Client` connects when given no URL and ``$NEUTRINO_URL`` is unset.
DEFAULT_URL = "http://127.0.0.1:8080"
#: The environment variable an API key is read from when ``api_key`` is not given.
API_KEY_ENV = "NEUTRINO_API_KEY"
#: Statuses a task never leaves.
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "timed_out"})
#: The longest single long-poll (``GET /tasks/<id>?wait=N``) the client asks for, in seconds.
MAX_POLL_SECS = 30

_DROPPED_CONNECTION = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, http.client.BadStatusLine)
#: Answers that are refusals whatever was asked: raised by the shared exchange itself, after any retries.
_REFUSALS = frozenset({401, 403, 429, 503})
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization"})
_NO_BODY: Any = object()
_T = TypeVar("_T")


class _Response(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: Any  # decoded JSON, the text when it was not JSON, or None when empty


class _Request(NamedTuple):
    """One HTTP request, ready for either transport."""

    method: str
    target: str  # the path (with the base URL's prefix) and query
    headers: Mapping[str, str]
    body: Optional[bytes]
    timeout: float  # seconds for this request


class _Pause(NamedTuple):
    """Wait this long before the next step (a Retry-After backoff, or a pause between short polls)."""

    seconds: float


#: An operation: yields requests and pauses, is sent each request's response, returns its result.
_Op = Generator[Union[_Request, _Pause], Any, _T]


class _Secret(str):
    """A header value (``Bearer <key>``) that keeps out of reprs: tracebacks with locals, debuggers, logged dicts.

    It is still the real text for ``str()`` and encoding, which is what goes on the wire.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<redacted>'"


def _check_header(name: str, value: str) -> None:
    """Refuse what would corrupt the request (or be echoed by an encoder's error): messages never show the value."""
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid HTTP header name")
    if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
        raise ValueError(f"the value of header {name} must be text without line breaks")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"the value of header {name} must be Latin-1 text") from None


def _pause(seconds: float) -> None:
    time.sleep(seconds)


class _ClientBase:
    """Configuration and every operation of a gateway client, written once for :class:`Client` and
    :class:`~neutrino.aio.AsyncClient` (see the module docstring). Subclasses add a transport and ``_run``."""

    _handle_class: Any  # the handle type this client's operations return

    def __init__(
        self,
        base_url: Optional[str] = None,
        *,
        api_key: Optional[str] = None,
        timeout: float = 30.0,
        headers: Optional[Mapping[str, str]] = None,
        max_retries: int = 3,
    ) -> None:
        url = base_url or os.environ.get("NEUTRINO_URL") or DEFAULT_URL
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL like {DEFAULT_URL!r}, got {base_url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("base_url must not carry credentials: pass api_key= (or set $NEUTRINO_API_KEY)")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries!r}")
        self.base_url = url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        self._host_header = host if parts.port is None else f"{host}:{parts.port}"
        self._prefix = parts.path.rstrip("/")
        self._headers: Dict[str, str] = {"Accept": "application/json", "User-Agent": f"neutrino-python/{__version__}"}
        for name, value in (headers or {}).items():
            _check_header(name, value)
            self._headers[name] = _Secret(value) if name.lower() in _SECRET_HEADERS else value
        has_authorization = any(name.lower() == "authorization" for name in self._headers)
        if api_key is None and not has_authorization:
            api_key = os.environ.get(API_KEY_ENV)
        if api_key:  # an explicit "" sends no key, even with $NEUTRINO_API_KEY set
            api_key = api_key.strip()
            if not api_key or not api_key.isascii() or not api_key.isprintable() or " " in api_key:
                raise ValueError("api_key must be printable ASCII without spaces")
            for name in [name for name in self._headers if name.lower() == "authorization"]:
                del self._headers[name]
            self._headers["Authorization"] = _Secret(f"Bearer {api_key}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    # -- the shared exchange: one request, retried on 429 and on 503 + Retry-After -------------------

    def _request_for(
        self,
        method: str,
        path: str,
        payload: Any = _NO_BODY,
        *,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> _Request:
        all_headers = dict(self._headers)
        body = None
        if payload is not _NO_BODY:
            body = json.dumps(
                payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_encode_default
            ).encode()
            all_headers["Content-Type"] = "application/json"
        for name, value in (headers or {}).items():
            _check_header(name, value)
            all_headers[name] = value
        return _Request(method, self._prefix + path, all_headers, body, self.timeout if timeout is None else timeout)

    def _exchange(
        self,
        method: str,
        path: str,
        payload: Any = _NO_BODY,
        *,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        deadline: Optional[float] = None,
    ) -> _Op[_Response]:
        """Send one request; retry it while the gateway refuses with 429 (or 503 + ``Retry-After``).

        The very same request goes again (same body, same ``Idempotency-Key``): a 429 or such a 503 means the
        gateway took nothing in. At most ``max_retries`` retries, and only while the wait ends before
        ``deadline`` (default: this request's own timeout from now); then the refusal is raised as
        :class:`Unauthorized`, :class:`Forbidden`, :class:`RateLimited` or :class:`ServiceUnavailable`.
        Other answers are returned for the operation to interpret.
        """
        request = self._request_for(method, path, payload, headers=headers, timeout=timeout)
        if deadline is None:
            deadline = time.monotonic() + request.timeout
        retries = 0
        while True:
            response = yield request
            delay = self._retry_delay(response, retries, deadline)
            if delay is None:
                break
            retries += 1
            yield _Pause(delay)
        if response.status in _REFUSALS:
            raise _error_for(response, key_sent=any(name.lower() == "authorization" for name in request.headers))
        return response

    def _retry_delay(self, response: _Response, retries: int, deadline: float) -> Optional[float]:
        """Seconds to wait before sending the request again, or ``None`` to take this answer."""
        if retries >= self.max_retries or response.status not in (429, 503):
            return None
        delay = _retry_after(response)
        if delay is None:
            if response.status == 503:
                return None  # 503 without Retry-After: the gateway does not say that trying again helps
            delay = min(0.5 * 2**retries, 8.0) * random.uniform(0.5, 1.0)
        if time.monotonic() + delay >= deadline:
            return None  # the caller's timeout runs out first: raise now rather than sleep and fail
        return delay

    # -- operations ---------------------------------------------------------------------------------

    def _call_op(self, task: str, args: Dict[str, Any]) -> _Op[Any]:
        response = yield from self._exchange("POST", _task_path(task), {"args": args})
        body = response.body
        if response.status == 200 and isinstance(body, dict):
            return _outcome(body, response.status)
        if response.status == 202 and isinstance(body, dict):
            return (yield from self._handle_class(self, body["task_id"], record=body)._wait_op(None))
        raise _error_for(response)

    def _submit_op(self, path: str, payload: Any, headers: Optional[Mapping[str, str]] = None) -> _Op[Any]:
        """``POST /api/<task>`` (or ``POST /tasks/<id>/retry``): a handle for the accepted task."""
        response = yield from self._exchange("POST", path, payload, headers=headers)
        body = response.body
        accepted = response.status in (200, 202) or (isinstance(body, dict) and body.get("status") in TERMINAL_STATUSES)
        if accepted and isinstance(body, dict) and body.get("task_id"):
            return self._handle_class(self, body["task_id"], record=body)
        raise _error_for(response)

    def _submit_with_op(self, task: str, args: Optional[Mapping[str, Any]], idempotency_key: Optional[str]) -> _Op[Any]:
        headers = None if idempotency_key is None else {"Idempotency-Key": idempotency_key}
        return self._submit_op(_task_path(task), {"args": dict(args or {})}, headers)

    def _get_record_op(
        self, task_id: str, wait: Optional[int] = None, deadline: Optional[float] = None
    ) -> _Op[Dict[str, Any]]:
        path = f"/tasks/{quote(task_id, safe='')}"
        timeout = self.timeout
        if wait is not None:
            path += f"?wait={wait}"
            timeout += wait
        response = yield from self._exchange("GET", path, timeout=timeout, deadline=deadline)
        if response.status != 200 or not isinstance(response.body, dict):
            raise _error_for(response)
        return response.body

    def _list_tasks_op(self, query: Mapping[str, Any]) -> _Op[Dict[str, Any]]:
        query_string = urlencode({key: value for key, value in query.items() if value is not None})
        response = yield from self._exchange("GET", "/tasks" + (f"?{query_string}" if query_string else ""))
        if response.status != 200:
            raise _error_for(response)
        return response.body

    def _health_op(self) -> _Op[Dict[str, Any]]:
        response = yield from self._exchange("GET", "/healthz")
        if not 200 <= response.status < 300:
            raise _error_for(response)
        return response.body

    def _cancel_op(self, task_id: str) -> _Op[bool]:
        response = yield from self._exchange("DELETE", f"/tasks/{quote(task_id, safe='')}")
        if 200 <= response.status < 300:
            return True
        if response.status == 409:
            return False
        raise _error_for(response)


class _HandleBase:
    """The state and operations of a task handle, shared by :class:`TaskHandle` and ``AsyncTaskHandle``.

    Attributes:
        client: the client that made it.
        task_id: the task's id.
        record: the last task record the client saw (``None`` if none yet).
    """

    def __init__(self, client: Any, task_id: str, *, record: Optional[Dict[str, Any]] = None) -> None:
        self.client = client
        self.task_id = task_id
        self.record = record

    def __repr__(self) -> str:
        status = self.record.get("status") if self.record else None
        return f"<{type(self).__name__} {self.task_id} status={status}>"

    def _status_op(self) -> _Op[Dict[str, Any]]:
        self.record = yield from self.client._get_record_op(self.task_id)
        return self.record

    def _wait_op(self, timeout: Optional[float]) -> _Op[Any]:
        record = self.record
        if not record or record.get("status") not in TERMINAL_STATUSES:
            record = yield from self._poll_op(timeout)
        return _outcome(record, None)

    def _retry_op(self) -> _Op[Any]:
        return self.client._submit_op(f"/tasks/{quote(self.task_id, safe='')}/retry", _NO_BODY)

    def _poll_op(self, timeout: Optional[float]) -> _Op[Dict[str, Any]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = 0.05
        while True:
            if deadline is None:
                wait = MAX_POLL_SECS
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    status = self.record.get("status") if self.record else None
                    raise WaitTimeout(
                        f"task {self.task_id} did not finish within {timeout} s (last status: {status})",
                        task_id=self.task_id,
                        status=status,
                    )
                wait = min(MAX_POLL_SECS, math.floor(remaining))
            started = time.monotonic()
            self.record = yield from self.client._get_record_op(self.task_id, wait, deadline)
            if self.record.get("status") in TERMINAL_STATUSES:
                return self.record
            if time.monotonic() - started < wait * 0.9 or wait == 0:
                # Answered before the wait was up (an old gateway, or a wait under a second): back off.
                yield _Pause(backoff if deadline is None else min(backoff, max(0.0, deadline - time.monotonic())))
                backoff = min(backoff * 2, 1.0)


class Client(_ClientBase):
    """A blocking client for one gateway.

    Args:
        base_url: the gateway's URL, e.g. ``"http://127.0.0.1:8080"`` (a path prefix is kept). Default:
            ``$NEUTRINO_URL``, else ``http://127.0.0.1:8080``.
        api_key: sent as ``Authorization: Bearer <key>`` on every request. Default: ``$NEUTRINO_API_KEY``
            (unless ``headers`` has an ``Authorization``); ``""`` sends none. The key never appears in reprs
            or exception messages.
        timeout: seconds each request may take (socket timeout); long polls add their own wait to it. It also
            bounds the backoff: a retry whose wait would end past it is not made.
        headers: extra headers sent with every request.
        max_retries: how many times one request is sent again after a 429, or a 503 with ``Retry-After``,
            waiting as ``Retry-After`` says (both refusals mean the gateway took nothing in, so submits are
            retried too, with the same ``Idempotency-Key``). ``0`` turns retrying off.

    A client may be shared by threads: each thread gets its own keep-alive connection. Use it as a context
    manager, or call :meth:`close`, to close them.
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        *,
        api_key: Optional[str] = None,
        timeout: float = 30.0,
        headers: Optional[Mapping[str, str]] = None,
        max_retries: int = 3,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, headers=headers, max_retries=max_retries)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: Set[http.client.HTTPConnection] = set()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection this client opened, in all threads. The client stays usable."""
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            connection.close()

    # -- tasks --------------------------------------------------------------------------------------

    def call(self, task: str, /, **args: Any) -> Any:
        """Run ``task`` with keyword ``args`` and return its result.

        A sync task answers in the response. An async or gpu task is submitted and then waited for
        without a time limit; use :meth:`submit` and ``handle.wait(timeout)`` to bound the wait.

        Raises:
            TaskFailed: the task raised (``str(e)`` shows the remote type, message and traceback).
            TaskTimedOut, TaskCancelled: the task did not finish.
            Unauthorized, Forbidden: the API key is missing, unknown, or lacks the scope.
            RateLimited, ServiceUnavailable: refused, still, after the retries ``max_retries`` allows.
            UnknownTask, InvalidArguments, BadRequest, PayloadTooLarge, NotSupported, RemoteError: the
            gateway refused the call.
        """
        return self._run(self._call_op(task, args))

    def submit(self, task: str, /, **args: Any) -> "TaskHandle":
        """Start ``task`` with keyword ``args`` and return a :class:`TaskHandle` at once.

        For async and gpu tasks the gateway answers ``202`` as soon as the task is queued. A sync task
        runs inside the request; its handle comes back already finished (its failure, if any, is raised
        by :meth:`TaskHandle.wait`, not here).

        Raises:
            RemoteError: the gateway did not accept the task (see :meth:`call`).
        """
        return self._run(self._submit_with_op(task, args, None))

    def submit_with(
        self, task: str, args: Optional[Mapping[str, Any]] = None, *, idempotency_key: Optional[str] = None
    ) -> "TaskHandle":
        """:meth:`submit` with the arguments as a mapping, and options.

        Args:
            idempotency_key: sent as ``Idempotency-Key``. Within the gateway's window (2 minutes) a repeated
                submit of ``task`` with the same key answers with the task the first one created, so a submit
                whose answer was lost can be sent again safely.
        """
        return self._run(self._submit_with_op(task, args, idempotency_key))

    def get_task(self, task_id: str) -> Dict[str, Any]:
        """The task record: ``{"task_id", "function", "pool", "status", "worker_id", "duration_ms",
        "result", "error", ...}``. Raises :class:`UnknownTask` for an unknown id."""
        return self._run(self._get_record_op(task_id))

    def list_tasks(
        self,
        status: Optional[str] = None,
        function: Optional[str] = None,
        pool: Optional[str] = None,
        limit: Optional[int] = None,
        before: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Task records, newest first: ``{"tasks": [...], "next_before": cursor or None}``.

        Pass ``before=page["next_before"]`` to get the next page.
        """
        query = {"status": status, "function": function, "pool": pool, "limit": limit, "before": before}
        return self._run(self._list_tasks_op(query))

    def health(self) -> Dict[str, Any]:
        """The gateway's ``GET /healthz`` body. Raises :class:`RemoteError` unless it answers 2xx."""
        return self._run(self._health_op())

    # -- transport ----------------------------------------------------------------------------------

    def _run(self, op: _Op[_T]) -> _T:
        """Drive an operation: send its requests on this thread's connection, sleep its pauses."""
        try:
            step = next(op)
            while True:
                if isinstance(step, _Pause):
                    _pause(step.seconds)
                    step = op.send(None)
                else:
                    step = op.send(self._send(step))
        except StopIteration as stop:
            return stop.value
        finally:
            op.close()

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = cls(self._host, self._port, timeout=self.timeout)
            self._local.connection = connection
            with self._lock:
                self._connections.add(connection)
        return connection

    def _drop_connection(self, connection: http.client.HTTPConnection) -> None:
        connection.close()
        self._local.connection = None
        with self._lock:
            self._connections.discard(connection)

    def _send(self, request: _Request) -> _Response:
        for attempt in (1, 2):
            connection = self._connection()
            reused = connection.sock is not None
            connection.timeout = request.timeout
            if reused:
                connection.sock.settimeout(request.timeout)
            try:
                connection.request(request.method, request.target, body=request.body, headers=request.headers)
                response = connection.getresponse()
                raw = response.read()
            except _DROPPED_CONNECTION:
                self._drop_connection(connection)
                if reused and attempt == 1:
                    continue  # the server closed an idle keep-alive connection: reconnect once
                raise
            except BaseException:
                self._drop_connection(connection)
                raise
            if response.will_close:
                self._drop_connection(connection)
            return _Response(response.status, response.headers, _decode_body(raw))
        raise AssertionError("unreachable")


class TaskHandle(_HandleBase):
    """A submitted task: poll it, wait for it, cancel it, or run it again.

    Attributes:
        client: the :class:`Client` that made it.
        task_id: the task's id.
        record: the last task record the client saw (``None`` if none yet).
    """

    client: Client

    def __init__(self, client: Client, task_id: str, *, record: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(client, task_id, record=record)

    def status(self) -> Dict[str, Any]:
        """Fetch the task record (``GET /tasks/<id>``); its ``"status"`` says where the task is."""
        return self.client._run(self._status_op())

    def wait(self, timeout: Optional[float] = None) -> Any:
        """Wait until the task finishes and return its result.

        Long-polls ``GET /tasks/<id>?wait=N`` (N ≤ 30 s) until the status is terminal.

        Args:
            timeout: seconds to wait at most; ``None`` waits as long as it takes.

        Raises:
            WaitTimeout: ``timeout`` ran out first (the task goes on; call ``wait`` again or ``cancel``).
            TaskFailed, TaskTimedOut, TaskCancelled: the task finished without a result.
            RateLimited, ServiceUnavailable: a poll was still refused after the retries (see ``max_retries``).
        """
        return self.client._run(self._wait_op(timeout))

    def cancel(self) -> bool:
        """Cancel the task (``DELETE /tasks/<id>``): a queued task never runs, a running one is interrupted.

        Returns ``True`` when the gateway accepted the cancellation, ``False`` when the task had already
        finished (409).
        """
        return self.client._run(self.client._cancel_op(self.task_id))

    def retry(self) -> "TaskHandle":
        """Run a failed, timed-out or cancelled task again (``POST /tasks/<id>/retry``), as a new task with the
        same function and arguments; returns its handle. Raises :class:`RemoteError` (409) for a task that
        is still running or completed."""
        return self.client._run(self._retry_op())


Client._handle_class = TaskHandle


# -- answers → results and errors ------------------------------------------------------------------


def _task_path(task: str) -> str:
    return f"/api/{quote(task, safe='')}"


def _encode_default(value: Any) -> Any:
    """Arguments may be dataclass instances: they travel as JSON objects, as the task's schema expects."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"Object of type {type(value).__qualname__} is not JSON serializable")


def _decode_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def _outcome(record: Dict[str, Any], status_code: Optional[int]) -> Any:
    """The result of a finished task record, or the typed error it stands for."""
    status = record.get("status")
    if status == "completed" or (status is None and "result" in record):
        return record.get("result")
    raise _record_error(record, status_code)


def _record_error(record: Dict[str, Any], status_code: Optional[int]) -> RemoteError:
    status = record.get("status")
    task_id = record.get("task_id")
    error = record.get("error")
    if not isinstance(error, dict):
        error = {}
    common: Dict[str, Any] = dict(status_code=status_code, task_id=task_id, body=record)
    if status == "failed":
        return TaskFailed(
            str(error.get("type") or "Error"),
            str(error.get("message") or ""),
            str(error.get("traceback") or ""),
            **common,
        )
    if status == "timed_out":
        return TaskTimedOut(error.get("message") or f"task {task_id} timed out", **common)
    if status == "cancelled":
        return TaskCancelled(error.get("message") or f"task {task_id} was cancelled", **common)
    return RemoteError(f"task {task_id} has status {status!r}", **common)


def _error_for(response: _Response, *, key_sent: Optional[bool] = None) -> RemoteError:
    """The typed error for an unsuccessful (or unexpected) gateway answer.

    ``key_sent`` (whether the request carried an API key) only adds a hint to a 401's message.
    """
    status, body = response.status, response.body
    if (
        status not in _REFUSALS
        and isinstance(body, dict)
        and body.get("status") in ("failed", "timed_out", "cancelled")
    ):
        return _record_error(body, status)
    message = _error_message(body) or f"HTTP {status} {http.client.responses.get(status, '')}".rstrip()
    task_id = _error_field(body, "task_id")
    common: Dict[str, Any] = dict(status_code=status, task_id=task_id if isinstance(task_id, str) else None, body=body)
    if status == 400:
        return BadRequest(message, **common)
    if status == 401:
        if key_sent is False:
            message += f" (no API key was sent: pass api_key= or set ${API_KEY_ENV})"
        return Unauthorized(message, **common)
    if status == 403:
        return Forbidden(message, **common)
    if status == 404:
        return UnknownTask(message, **common)
    if status == 413:
        return PayloadTooLarge(message, **common)
    if status == 422:
        return InvalidArguments(message, details=_error_field(body, "details"), **common)
    if status == 429:
        return RateLimited(message, retry_after=_retry_after(response), limit=_error_field(body, "limit"), **common)
    if status == 501:
        return NotSupported(message, **common)
    if status == 503:
        return ServiceUnavailable(message, retry_after=_retry_after(response), **common)
    if status == 504:
        return TaskTimedOut(message, **common)
    return RemoteError(message, **common)


def _error_field(body: Any, key: str) -> Any:
    """``body["error"][key]``, else ``body[key]``, else ``None``."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict) and key in error:
        return error[key]
    return body.get(key)


def _error_message(body: Any) -> Optional[str]:
    if isinstance(body, str):
        return body.strip() or None
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, str):
        return error
    for value in (_error_field(body, "message"), _error_field(body, "reason"), _error_field(body, "detail")):
        if isinstance(value, str) and value:
            return value
    return None


def _retry_after(response: _Response) -> Optional[float]:
    """Seconds from ``Retry-After`` (delta-seconds or an HTTP date), else the body's ``retry_after``."""
    value = response.headers.get("Retry-After")
    if value is None:
        value = _error_field(response.body, "retry_after")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" dates parse naive; HTTP dates are always GMT
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None

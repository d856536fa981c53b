"""A small, thread-safe HTTP client for the Neutrino gateway (standard library only).

.. code-block:: python

    from neutrino import Client

    client = Client("http://127.0.0.1:8080")
    client.call("echo", x=3)                          # sync task: the result, or a typed error
    handle = client.submit("generate_report", dataset="q3")
    handle.wait(timeout=600)                          # async task: long-polls GET /tasks/<id>?wait=N

Each thread keeps one keep-alive connection. Unsuccessful answers raise the subclasses of
:class:`~neutrino.errors.RemoteError`; network failures (gateway down, refused connection) raise the
usual :class:`OSError` subclasses.
"""

from __future__ import annotations

import dataclasses
import email.utils
import http.client
import json
import math
import os
import threading
import time
from typing import Any, Dict, Mapping, NamedTuple, Optional, Set
from urllib.parse import quote, urlencode, urlsplit

from ._version import __version__
from .errors import (
    BadRequest,
    InvalidArguments,
    NotSupported,
    PayloadTooLarge,
    RemoteError,
    ServiceUnavailable,
    TaskCancelled,
    TaskFailed,
    TaskTimedOut,
    UnknownTask,
    WaitTimeout,
)

__all__ = ["Client", "TaskHandle", "TERMINAL_STATUSES", "DEFAULT_URL"]

#: Where :class:`Client` connects when given no URL and ``$NEUTRINO_URL`` is unset.
DEFAULT_URL = "http://127.0.0.1:8080"
#: Statuses a task never leaves.
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "timed_out"})
#: The longest single long-poll (``GET /tasks/<id>?wait=N``) the client asks for, in seconds.
MAX_POLL_SECS = 30

_DROPPED_CONNECTION = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, http.client.BadStatusLine)


class _Response(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: Any  # decoded JSON, the text when it was not JSON, or None when empty


class Client:
    """A client for one gateway.

    Args:
        base_url: the gateway's URL, e.g. ``"http://127.0.0.1:8080"`` (a path prefix is kept). Default:
            ``$NEUTRINO_URL``, else ``http://127.0.0.1:8080``.
        timeout: socket timeout in seconds for each request; long polls add their own wait to it.
        headers: extra headers sent with every request (e.g. ``Authorization``).

    A client may be shared by threads: each thread gets its own keep-alive connection. Use it as a context
    manager, or call :meth:`close`, to close them.
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        *,
        timeout: float = 30.0,
        headers: Optional[Mapping[str, str]] = None,
    ) -> None:
        url = base_url or os.environ.get("NEUTRINO_URL") or DEFAULT_URL
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL like {DEFAULT_URL!r}, got {base_url!r}")
        self.base_url = url.rstrip("/")
        self.timeout = timeout
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = {
            "Accept": "application/json",
            "User-Agent": f"neutrino-python/{__version__}",
            **(headers or {}),
        }
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: Set[http.client.HTTPConnection] = set()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

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
            UnknownTask, InvalidArguments, BadRequest, PayloadTooLarge, ServiceUnavailable, NotSupported,
            RemoteError: the gateway refused the call.
        """
        response = self._post_task(task, args)
        if response.status == 200 and isinstance(response.body, dict):
            return _outcome(response.body, response.status)
        if response.status == 202 and isinstance(response.body, dict):
            return TaskHandle(self, response.body["task_id"], record=response.body).wait()
        raise _error_for(response)

    def submit(self, task: str, /, **args: Any) -> "TaskHandle":
        """Start ``task`` with keyword ``args`` and return a :class:`TaskHandle` at once.

        For async and gpu tasks the gateway answers ``202`` as soon as the task is queued. A sync task
        runs inside the request; its handle comes back already finished (its failure, if any, is raised
        by :meth:`TaskHandle.wait`, not here).

        Raises:
            RemoteError: the gateway did not accept the task (see :meth:`call`).
        """
        response = self._post_task(task, args)
        body = response.body
        accepted = response.status in (200, 202) or (isinstance(body, dict) and body.get("status") in TERMINAL_STATUSES)
        if accepted and isinstance(body, dict) and body.get("task_id"):
            return TaskHandle(self, body["task_id"], record=body)
        raise _error_for(response)

    def get_task(self, task_id: str) -> Dict[str, Any]:
        """The task record: ``{"task_id", "function", "pool", "status", "worker_id", "duration_ms",
        "result", "error", ...}``. Raises :class:`UnknownTask` for an unknown id."""
        return self._get_record(task_id, wait=None)

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
        query_string = urlencode({key: value for key, value in query.items() if value is not None})
        response = self._request("GET", "/tasks" + (f"?{query_string}" if query_string else ""))
        if response.status != 200:
            raise _error_for(response)
        return response.body

    def health(self) -> Dict[str, Any]:
        """The gateway's ``GET /healthz`` body. Raises :class:`RemoteError` unless it answers 2xx."""
        response = self._request("GET", "/healthz")
        if not 200 <= response.status < 300:
            raise _error_for(response)
        return response.body

    # -- internals ----------------------------------------------------------------------------------

    def _post_task(self, task: str, args: Dict[str, Any]) -> _Response:
        return self._request("POST", f"/api/{quote(task, safe='')}", {"args": args})

    def _get_record(self, task_id: str, wait: Optional[int]) -> Dict[str, Any]:
        path = f"/tasks/{quote(task_id, safe='')}"
        timeout = self.timeout
        if wait is not None:
            path += f"?wait={wait}"
            timeout += wait
        response = self._request("GET", path, timeout=timeout)
        if response.status != 200 or not isinstance(response.body, dict):
            raise _error_for(response)
        return response.body

    def _cancel(self, task_id: str) -> bool:
        response = self._request("DELETE", f"/tasks/{quote(task_id, safe='')}")
        if 200 <= response.status < 300:
            return True
        if response.status == 409:
            return False
        raise _error_for(response)

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

    def _request(self, method: str, path: str, body: Any = None, *, timeout: Optional[float] = None) -> _Response:
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = json.dumps(
                body, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_encode_default
            ).encode()
            headers["Content-Type"] = "application/json"
        url = self._prefix + path
        for attempt in (1, 2):
            connection = self._connection()
            reused = connection.sock is not None
            connection.timeout = self.timeout if timeout is None else timeout
            if reused:
                connection.sock.settimeout(connection.timeout)
            try:
                connection.request(method, url, body=data, headers=headers)
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


class TaskHandle:
    """A submitted task: poll it, wait for it, or cancel it.

    Attributes:
        task_id: the task's id.
        record: the last task record the client saw (``None`` if none yet).
    """

    def __init__(self, client: Client, task_id: str, *, record: Optional[Dict[str, Any]] = None) -> None:
        self.client = client
        self.task_id = task_id
        self.record = record

    def __repr__(self) -> str:
        status = self.record.get("status") if self.record else None
        return f"<TaskHandle {self.task_id} status={status}>"

    def status(self) -> Dict[str, Any]:
        """Fetch the task record (``GET /tasks/<id>``); its ``"status"`` says where the task is."""
        self.record = self.client.get_task(self.task_id)
        return self.record

    def wait(self, timeout: Optional[float] = None) -> Any:
        """Wait until the task finishes and return its result.

        Long-polls ``GET /tasks/<id>?wait=N`` (N ≤ 30 s) until the status is terminal.

        Args:
            timeout: seconds to wait at most; ``None`` waits as long as it takes.

        Raises:
            WaitTimeout: ``timeout`` ran out first (the task goes on; call ``wait`` again or ``cancel``).
            TaskFailed, TaskTimedOut, TaskCancelled: the task finished without a result.
        """
        record = self.record
        if not record or record.get("status") not in TERMINAL_STATUSES:
            record = self._poll(timeout)
        return _outcome(record, None)

    def cancel(self) -> bool:
        """Cancel the task (``DELETE /tasks/<id>``): a queued task never runs, a running one is interrupted.

        Returns ``True`` when the gateway accepted the cancellation, ``False`` when the task had already
        finished (409).
        """
        return self.client._cancel(self.task_id)

    def _poll(self, timeout: Optional[float]) -> Dict[str, Any]:
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
            self.record = self.client._get_record(self.task_id, wait=wait)
            if self.record.get("status") in TERMINAL_STATUSES:
                return self.record
            if time.monotonic() - started < wait * 0.9 or wait == 0:
                # Answered before the wait was up (an old gateway, or a wait under a second): back off.
                pause = backoff if deadline is None else min(backoff, max(0.0, deadline - time.monotonic()))
                time.sleep(pause)
                backoff = min(backoff * 2, 1.0)


# -- answers → results and errors ------------------------------------------------------------------


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


def _error_for(response: _Response) -> RemoteError:
    """The typed error for an unsuccessful (or unexpected) gateway answer."""
    status, body = response.status, response.body
    if isinstance(body, dict) and body.get("status") in ("failed", "timed_out", "cancelled"):
        return _record_error(body, status)
    message = _error_message(body) or f"HTTP {status} {http.client.responses.get(status, '')}".rstrip()
    common: Dict[str, Any] = dict(
        status_code=status, task_id=body.get("task_id") if isinstance(body, dict) else None, body=body
    )
    if status == 400:
        return BadRequest(message, **common)
    if status == 404:
        return UnknownTask(message, **common)
    if status == 413:
        return PayloadTooLarge(message, **common)
    if status == 422:
        return InvalidArguments(message, details=_error_field(body, "details"), **common)
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
    value = response.headers.get("Retry-After")
    if value is None:
        fallback = _error_field(response.body, "retry_after")
        return float(fallback) if isinstance(fallback, (int, float)) and not isinstance(fallback, bool) else None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())

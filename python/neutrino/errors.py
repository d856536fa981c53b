"""The exceptions Neutrino raises, all rooted at :class:`NeutrinoError`.

Two families hang off the root:

* **Definition time** — :class:`DefinitionError` for a bad ``@app.task(...)`` and :class:`AppLoadError`
  when an app cannot be found. They are raised while your code is being imported, never at call time.
* **Call time** (the client) — :class:`RemoteError` and its subclasses, one per answer the gateway can give,
  plus :class:`WaitTimeout` when *your* wait ran out (the task itself may still finish).

``except neutrino.NeutrinoError`` catches everything Neutrino raises; ``except neutrino.RemoteError``
catches every unsuccessful answer from the gateway.
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = [
    "NeutrinoError",
    "DefinitionError",
    "AppLoadError",
    "RemoteError",
    "TaskFailed",
    "TaskTimedOut",
    "TaskCancelled",
    "UnknownTask",
    "InvalidArguments",
    "BadRequest",
    "PayloadTooLarge",
    "Unauthorized",
    "Forbidden",
    "RateLimited",
    "ServiceUnavailable",
    "NotSupported",
    "WaitTimeout",
]


class NeutrinoError(Exception):
    """Base class of every exception raised by Neutrino."""


# --------------------------------------------------------------------------------------------------
# Definition time


class DefinitionError(NeutrinoError, ValueError):
    """A task, pool or type hint that Neutrino cannot serve; the message says what to do instead."""


class AppLoadError(NeutrinoError):
    """The app spec (``path/to/app.py``, ``module`` or ``module:attr``) does not name exactly one ``App``."""


# --------------------------------------------------------------------------------------------------
# Call time


class RemoteError(NeutrinoError):
    """An unsuccessful answer from the gateway.

    Attributes:
        status_code: the HTTP status of the answer (``None`` when it did not come from one response).
        task_id: the task the answer is about, when the gateway assigned one.
        body: the decoded JSON body (or the raw text when it was not JSON).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: Optional[int] = None,
        task_id: Optional[str] = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.task_id = task_id
        self.body = body


class TaskFailed(RemoteError):
    """The task ran and raised an exception.

    ``str(error)`` shows the remote exception type, its message and the remote traceback, so an uncaught
    ``TaskFailed`` reads like the original error.

    Attributes:
        remote_type: the remote exception's type, e.g. ``"ValueError"`` or ``"myapp.QuotaExceeded"``.
        remote_message: ``str()`` of the remote exception.
        remote_traceback: the remote traceback text, starting at the task function's frame.
    """

    def __init__(
        self,
        remote_type: str,
        remote_message: str,
        remote_traceback: str = "",
        *,
        status_code: Optional[int] = None,
        task_id: Optional[str] = None,
        body: Any = None,
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        where = f"task {task_id}" if task_id else "task"
        message = f"{where} failed with {remote_type}: {remote_message}"
        if remote_traceback:
            message += "\n\nRemote traceback:\n" + remote_traceback.rstrip("\n")
        super().__init__(message, status_code=status_code, task_id=task_id, body=body)


class TaskTimedOut(RemoteError):
    """The task ran past its timeout and was interrupted."""


class TaskCancelled(RemoteError):
    """The task was cancelled before it finished."""


class UnknownTask(RemoteError):
    """404: no such task function, or no such task id."""


class InvalidArguments(RemoteError):
    """422: the arguments do not match the task's signature.

    Attributes:
        details: the validator's findings as the gateway sent them (often a list of
            ``{"path", "message"}`` objects), or ``None``.
    """

    def __init__(self, message: str, *, details: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.details = details


class BadRequest(RemoteError):
    """400: the request body was not valid JSON or not shaped like ``{"args": {...}}``."""


class PayloadTooLarge(RemoteError):
    """413: the request body is over the gateway's limit."""


class Unauthorized(RemoteError):
    """401: the request carried no API key, or one the gateway does not know.

    Pass ``api_key=`` to the client or set ``$NEUTRINO_API_KEY``. The key itself never appears in the message.
    """


class Forbidden(RemoteError):
    """403: the API key is valid but lacks the scope this call needs (``submit``, ``read`` or ``admin``, possibly
    limited to some tasks or pools)."""


class RateLimited(RemoteError):
    """429: the API key is over its rate limit or quota; the gateway refused the request before doing anything.

    The client has already retried as long as :attr:`retry_after` fitted in the call's timeout and
    ``max_retries`` allowed; this is what was left.

    Attributes:
        retry_after: seconds the gateway asks to wait (``Retry-After``, delta-seconds or an HTTP date), or ``None``.
        limit: the limit the gateway reported in its error body (``error.limit``: a number or an object such as
            ``{"requests": 100, "per_secs": 60}``), or ``None``.
    """

    def __init__(self, message: str, *, retry_after: Optional[float] = None, limit: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        self.limit = limit


class ServiceUnavailable(RemoteError):
    """503: no worker or queue could take the task right now; nothing was stored.

    Attributes:
        retry_after: seconds the gateway suggests waiting before retrying (``Retry-After``), or ``None``.
    """

    def __init__(self, message: str, *, retry_after: Optional[float] = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class NotSupported(RemoteError):
    """501: the gateway does not implement this (for example an execution mode it cannot route yet)."""


class WaitTimeout(NeutrinoError, TimeoutError):
    """The client stopped waiting for a task; the task itself may still be queued or running.

    Attributes:
        task_id: the task that was being waited for.
        status: its last status seen by the client.
    """

    def __init__(self, message: str, *, task_id: Optional[str] = None, status: Optional[str] = None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.status = status

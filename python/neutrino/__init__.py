"""Neutrino: run Python task functions behind one HTTP gateway.

.. code-block:: python

    from neutrino import App

    app = App("demo")

    @app.task()
    def echo(x: int, label: str = "") -> dict:
        return {"x": x, "label": label}

Serve it with ``neutrino up app.py``; call it with :class:`Client`, :class:`AsyncClient` (asyncio) or plain
HTTP (``curl -s -H 'Content-Type: application/json' localhost:8080/api/echo -d '{"args":{"x":3}}'``).
"""

from typing import TYPE_CHECKING, Any

from ._context import TaskContext, current_task, report_progress
from ._version import __version__
from .app import App, AsgiMount, Task, TaskSpec
from .client import Client, TaskHandle
from .errors import (
    AppLoadError,
    BadRequest,
    DefinitionError,
    Forbidden,
    InvalidArguments,
    NeutrinoError,
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

if TYPE_CHECKING:
    from .aio import AsyncClient, AsyncTaskHandle

__all__ = [
    "AsgiMount",
    "__version__",
    # defining tasks
    "App",
    "Task",
    "TaskSpec",
    # inside a task
    "current_task",
    "report_progress",
    "TaskContext",
    # calling tasks
    "Client",
    "TaskHandle",
    "AsyncClient",
    "AsyncTaskHandle",
    # errors
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


def __getattr__(name: str) -> Any:
    # The asyncio client is imported on first use: importing asyncio costs every worker and CLI start-up.
    if name in ("AsyncClient", "AsyncTaskHandle"):
        from . import aio

        return getattr(aio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Neutrino: run Python task functions behind one HTTP gateway.

.. code-block:: python

    from neutrino import App

    app = App("demo")

    @app.task()
    def echo(x: int, label: str = "") -> dict:
        return {"x": x, "label": label}

Serve it with ``neutrino up app.py``; call it with :class:`Client` or plain HTTP
(``curl -s localhost:8080/api/echo -d '{"args":{"x":3}}'``).
"""

from ._context import TaskContext, current_task, report_progress
from ._version import __version__
from .app import App, Task, TaskSpec
from .client import Client, TaskHandle
from .errors import (
    AppLoadError,
    BadRequest,
    DefinitionError,
    InvalidArguments,
    NeutrinoError,
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

__all__ = [
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
    "ServiceUnavailable",
    "NotSupported",
    "WaitTimeout",
]

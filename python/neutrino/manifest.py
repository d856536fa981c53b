"""The manifest: an OpenAPI 3.1 document describing an app's tasks, which the gateway routes by.

One ``POST /api/<task>`` operation per task, its request body schema derived from the type hints, and the
routing facts as extensions on the operation:

``x-neutrino-mode``     ``"sync"``, ``"async"`` or ``"gpu"``
``x-neutrino-pool``     the pool name
``x-neutrino-timeout``  the timeout in milliseconds (int)
``x-neutrino-retries``  retries after a failed attempt (int)
``x-neutrino-coroutine``  whether the task is an ``async def`` (bool): a worker runs it in its event loop's coroutine
                        slots, a plain function on one of its Python threads; the gateway keeps no more calls of the
                        second kind in flight to a worker than it says its threads take

plus ``x-neutrino-app`` (the app's name) at the top level, and, when the app mounts an ASGI app
(:meth:`neutrino.App.mount`), ``x-neutrino-asgi``: ``{"pool", "app", "routes": [{"path", "methods", "kind"}]}``
(the routes from Starlette/FastAPI's ``app.routes``), which the gateway forwards unmatched requests by and
checks against its own routes at start-up. The output is deterministic: tasks in definition
order, components sorted by name.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Dict

from .app import App, TaskSpec
from .errors import DefinitionError
from .schema import JSONSchema, SchemaBuilder

__all__ = ["build_openapi", "OPENAPI_VERSION"]

OPENAPI_VERSION = "3.1.0"

_TASK_ID = {"type": "string", "description": "The task id (UUIDv7, time-ordered)."}
_ERROR_OBJECT: JSONSchema = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "description": "The exception type, e.g. ValueError."},
        "message": {"type": "string"},
        "traceback": {"type": "string"},
    },
    "required": ["type", "message"],
}
_ERROR_RESPONSES: Dict[str, str] = {
    "400": 'Malformed JSON, or a body not shaped like {"args": {...}}.',
    "404": "Unknown task.",
    "409": "Cancelled by DELETE /tasks/<id> while it ran: status cancelled, error type Cancelled.",
    "413": "Request body over the gateway's limit.",
    "422": "The arguments do not match the task's schema.",
    "500": "The task raised; the body carries error {type, message, traceback}.",
    "503": "No worker or queue can take the task now (see Retry-After); nothing was stored.",
    "504": "The task ran past its timeout.",
}


def build_openapi(app: App) -> Dict[str, Any]:
    """The OpenAPI 3.1 manifest of ``app``, as a JSON-ready dict.

    Raises:
        DefinitionError: a type hint cannot be resolved or expressed (checked again here, since hints
            that referred to classes defined later in the module could not be checked at decoration time).
    """
    builder = SchemaBuilder()
    paths: Dict[str, Any] = {}
    for spec in app.tasks.values():
        try:
            operation = _operation(spec, builder)
        except DefinitionError as exc:
            raise type(exc)(f"task {spec.name!r}: {exc}") from None
        paths[f"/api/{spec.name}"] = {"post": operation}

    document: Dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": app.name, "version": app.version},
        "x-neutrino-app": app.name,
        "paths": paths,
    }
    if app.asgi is not None:
        cls = type(app.asgi.app)
        document["x-neutrino-asgi"] = {
            "pool": app.asgi.pool,
            "app": f"{cls.__module__}.{cls.__qualname__}",
            "routes": app.asgi.routes(),
        }
    if builder.components:
        document["components"] = {"schemas": dict(sorted(builder.components.items()))}
    return document


def _operation(spec: TaskSpec, builder: SchemaBuilder) -> Dict[str, Any]:
    args_schema = builder.args_schema(spec.func)
    result_schema = builder.result_schema(spec.func)
    summary = spec.description.splitlines()[0] if spec.description else spec.name

    operation: Dict[str, Any] = {"operationId": spec.name, "summary": summary}
    if spec.description and spec.description != summary:
        operation["description"] = spec.description
    operation["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"args": args_schema},
                    "required": ["args"],
                    "additionalProperties": False,
                }
            }
        },
    }

    responses: Dict[str, Any] = {}
    if spec.execution_mode == "sync":
        responses["200"] = _json_response("Completed: the task's return value is in result.", _completed(result_schema))
    else:
        responses["202"] = _json_response("Queued: poll poll_url (GET /tasks/<id>) for the result.", _queued())
    for status, description in _ERROR_RESPONSES.items():
        if status == "500":
            if spec.execution_mode == "sync":
                responses[status] = _json_response(description, _failed())
            else:
                responses[status] = {"description": "Internal error."}
        elif status == "409":
            if spec.execution_mode == "sync":
                responses[status] = _json_response(description, _failed("cancelled"))
        elif status == "504" and spec.execution_mode != "sync":
            responses[status] = {"description": "The queue did not acknowledge the task in time."}
        else:
            responses[status] = {"description": description}
    operation["responses"] = responses

    operation["x-neutrino-mode"] = spec.execution_mode
    operation["x-neutrino-pool"] = spec.pool
    operation["x-neutrino-timeout"] = spec.timeout_ms
    operation["x-neutrino-retries"] = spec.retries
    operation["x-neutrino-coroutine"] = inspect.iscoroutinefunction(spec.func)
    return operation


def _json_response(description: str, schema: JSONSchema) -> Dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _completed(result_schema: JSONSchema) -> JSONSchema:
    return {
        "type": "object",
        "properties": {
            "task_id": dict(_TASK_ID),
            "status": {"const": "completed"},
            "function": {"type": "string"},
            "pool": {"type": "string"},
            "worker_id": {"type": "string"},
            "duration_ms": {"type": "number"},
            "result": result_schema,
        },
        "required": ["task_id", "status", "result"],
    }


def _queued() -> JSONSchema:
    return {
        "type": "object",
        "properties": {
            "task_id": dict(_TASK_ID),
            "status": {"const": "queued"},
            "poll_url": {"type": "string"},
        },
        "required": ["task_id", "status", "poll_url"],
    }


def _failed(status: str = "failed") -> JSONSchema:
    return {
        "type": "object",
        "properties": {
            "task_id": dict(_TASK_ID),
            "status": {"const": status},
            "error": copy.deepcopy(_ERROR_OBJECT),
        },
        "required": ["task_id", "status", "error"],
    }

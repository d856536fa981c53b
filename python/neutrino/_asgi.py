"""The worker's ASGI server: the mounted app (:meth:`neutrino.App.mount`) served on the worker's event loop.

The worker (Swift) reads an HTTP request forwarded by the gateway, and hands it to the loop thread the same way as
an ``async def`` task (:mod:`neutrino._loop`): a queued item and a byte on the wake-up pipe. This module runs
``app(scope, receive, send)`` for it as one asyncio Task beside the task coroutines, and hands what the app sends
back through the loop bridge, which the worker streams to the gateway as it comes:

* ``bridge(HEAD, job, status, headers_blob, route)`` for ``http.response.start`` (``route``: the matched route's
  pattern, ``/items/{item_id}``, for the metrics; ``""`` when no route matched);
* ``bridge(BODY, job, data, more_body)`` for each ``http.response.body``; it returns True when the worker holds more
  than its high-water mark of unsent bytes, and ``send`` then waits until the worker says the client took them
  (``RESUME``), so a streaming app never runs ahead of a slow client;
* ``bridge(END, job, error_text)`` when the app's coroutine ends (``None`` when it returned normally).

The request body arrives whole (the worker reads it with its ``--max-body-bytes`` limit) as one ``http.request``;
the next ``receive()`` waits for ``http.disconnect``, which comes when the client goes away (``DISCONNECT`` from the
worker) or the response is complete. ``send`` after a disconnect raises :class:`ClientDisconnected` (an ``OSError``,
ASGI spec 2.4), which Starlette turns into ``ClientDisconnect``.

Lifespan: :meth:`AsgiServer.startup` runs once per worker before it takes requests, :meth:`AsgiServer.shutdown`
once when it stops; an app that does not speak the lifespan protocol (it raises before answering) runs without.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._output import worker_log

__all__ = ["AsgiServer", "ClientDisconnected", "split_fields", "join_fields"]

# bridge() operations this module uses (after neutrino._loop's TAKE, DONE, LOST, INTERRUPT).
HEAD, BODY, END, LIFESPAN = 4, 5, 6, 7

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}


class ClientDisconnected(OSError):
    """The client went away; raised by ``send`` (ASGI spec 2.4)."""


def split_fields(blob: bytes) -> List[bytes]:
    """The fields of a blob the worker wrote: each a 4-byte big-endian length and its bytes."""
    out: List[bytes] = []
    view = memoryview(blob)
    i, n = 0, len(blob)
    while i + 4 <= n:
        size = int.from_bytes(view[i:i + 4], "big")
        i += 4
        out.append(bytes(view[i:i + size]))
        i += size
    return out


def join_fields(fields: List[bytes]) -> bytes:
    """The inverse of :func:`split_fields`."""
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def _log(message: str) -> None:
    worker_log("neutrino-asgi", message)


def _route_pattern(scope: Dict[str, Any], root_path: str) -> str:
    """The pattern of the route Starlette/FastAPI matched (``scope["route"]``), prefixed with the mounts it went
    through; ``""`` when none did."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return ""
    mounted = scope.get("root_path", "")
    prefix = mounted[len(root_path):] if isinstance(mounted, str) and mounted.startswith(root_path) else ""
    return (prefix + path) or "/"


class _Exchange:
    __slots__ = ("job", "disconnected", "complete", "started", "resume", "task")

    def __init__(self, job: int) -> None:
        self.job = job
        self.disconnected = asyncio.Event()
        self.complete = False
        self.started = False
        self.resume: Optional[asyncio.Future] = None
        self.task: Optional[asyncio.Task] = None


class AsgiServer:
    """One mounted ASGI app on the worker's loop."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop, bridge: Callable[..., Any]) -> None:
        self.app = app
        self.loop = loop
        self.bridge = bridge
        self.exchanges: Dict[int, _Exchange] = {}
        self.state: Dict[str, Any] = {}
        self._lifespan_queue: Optional[asyncio.Queue] = None
        self._lifespan_task: Optional[asyncio.Task] = None
        self._startup: Optional[asyncio.Future] = None
        self._shutdown: Optional[asyncio.Future] = None
        self._lifespan_supported = False

    # -- lifespan ------------------------------------------------------------------------------------

    async def startup(self) -> Tuple[bool, str]:
        """Runs the app's lifespan startup: ``(True, "")``, or ``(False, the app's message or traceback)``."""
        queue: asyncio.Queue = asyncio.Queue()
        self._lifespan_queue = queue
        self._startup = self.loop.create_future()
        self._shutdown = self.loop.create_future()
        scope = {"type": "lifespan", "asgi": dict(ASGI_VERSION, spec_version="2.0"), "state": self.state}

        async def receive() -> Dict[str, Any]:
            return await queue.get()

        async def send(message: Dict[str, Any]) -> None:
            kind = message.get("type")
            if kind == "lifespan.startup.complete":
                _settle(self._startup, (True, ""))
            elif kind == "lifespan.startup.failed":
                _settle(self._startup, (False, str(message.get("message", "")) or "lifespan startup failed"))
            elif kind == "lifespan.shutdown.complete":
                _settle(self._shutdown, (True, ""))
            elif kind == "lifespan.shutdown.failed":
                _settle(self._shutdown, (False, str(message.get("message", "")) or "lifespan shutdown failed"))

        async def main() -> None:
            try:
                await self.app(scope, receive, send)
            except BaseException as exc:
                text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                if self._startup is not None and not self._startup.done():
                    # Raised before answering startup: an app without lifespan support runs without it (uvicorn's
                    # "auto"), unless it is a startup hook's failure reported this way.
                    _settle(self._startup, (None, text))
                elif self._shutdown is not None and not self._shutdown.done():
                    _settle(self._shutdown, (False, text))
            finally:
                _settle(self._startup, (None, "the app's lifespan coroutine returned"))
                _settle(self._shutdown, (True, ""))

        self._lifespan_task = self.loop.create_task(main(), name="asgi lifespan")
        await queue.put({"type": "lifespan.startup"})
        ok, message = await self._startup
        if ok is None:
            _log("the mounted app does not support the ASGI lifespan protocol; it runs without startup/shutdown "
                 f"({message.strip().splitlines()[-1] if message.strip() else 'no message'})")
            return True, ""
        self._lifespan_supported = bool(ok)
        return bool(ok), message

    async def shutdown(self) -> Tuple[bool, str]:
        """Runs the app's lifespan shutdown (once); ``(ok, message)``."""
        if not self._lifespan_supported or self._lifespan_queue is None or self._shutdown is None:
            return True, ""
        self._lifespan_supported = False
        await self._lifespan_queue.put({"type": "lifespan.shutdown"})
        return await self._shutdown

    # -- requests ------------------------------------------------------------------------------------

    def start(self, job: int, head: bytes, body: bytes) -> None:
        """Starts serving one request (on the loop)."""
        exchange = _Exchange(job)
        self.exchanges[job] = exchange
        exchange.task = self.loop.create_task(self._serve(exchange, head, body), name=f"asgi request {job}")

    def disconnect(self, job: int) -> None:
        exchange = self.exchanges.get(job)
        if exchange is not None:
            exchange.disconnected.set()
            self._wake(exchange)

    def cancel(self, job: int) -> None:
        """The worker gave up on the request (no answer in time): ``CancelledError`` in the app's coroutine."""
        exchange = self.exchanges.get(job)
        if exchange is not None:
            exchange.disconnected.set()
            self._wake(exchange)
            if exchange.task is not None:
                exchange.task.cancel()

    def resume(self, job: int) -> None:
        exchange = self.exchanges.get(job)
        if exchange is not None:
            self._wake(exchange)

    @staticmethod
    def _wake(exchange: _Exchange) -> None:
        if exchange.resume is not None and not exchange.resume.done():
            exchange.resume.set_result(None)

    async def _serve(self, exchange: _Exchange, head: bytes, body: bytes) -> None:
        job = exchange.job
        error: Optional[str] = None
        try:
            fields = split_fields(head)
            method, raw_path, query, http_version, client_host, client_port, server_host, server_port, scheme = (
                fields[:9]
            )
            headers = [(fields[i], fields[i + 1]) for i in range(9, len(fields) - 1, 2)]
            from urllib.parse import unquote

            root_path = ""
            scope: Dict[str, Any] = {
                "type": "http",
                "asgi": dict(ASGI_VERSION),
                "http_version": http_version.decode("latin-1") or "1.1",
                "method": method.decode("latin-1"),
                "scheme": scheme.decode("latin-1") or "http",
                "path": unquote(raw_path.decode("latin-1")),
                "raw_path": raw_path,
                "query_string": query,
                "root_path": root_path,
                "headers": headers,
                "client": (client_host.decode("latin-1"), int(client_port or b"0")) if client_host else None,
                "server": (server_host.decode("latin-1"), int(server_port or b"0")) if server_host else None,
                "state": dict(self.state),
            }
            body_sent = False

            async def receive() -> Dict[str, Any]:
                nonlocal body_sent
                if not body_sent:
                    body_sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                if not exchange.complete:
                    await exchange.disconnected.wait()
                return {"type": "http.disconnect"}

            async def send(message: Dict[str, Any]) -> None:
                if exchange.disconnected.is_set():
                    raise ClientDisconnected("the client disconnected")
                kind = message.get("type")
                if kind == "http.response.start":
                    if exchange.started:
                        raise RuntimeError("http.response.start sent twice")
                    exchange.started = True
                    blob = join_fields([b for pair in message.get("headers", ()) for b in (bytes(pair[0]), bytes(pair[1]))])
                    self.bridge(HEAD, job, int(message["status"]), blob, _route_pattern(scope, root_path))
                elif kind == "http.response.body":
                    if not exchange.started:
                        raise RuntimeError("http.response.body sent before http.response.start")
                    if exchange.complete:
                        return
                    more = bool(message.get("more_body", False))
                    if not more:
                        exchange.complete = True
                    paused = self.bridge(BODY, job, bytes(message.get("body", b"")), more)
                    if paused is True and more and not exchange.disconnected.is_set():
                        # The worker holds too many unsent bytes: wait until the client has taken them (RESUME).
                        exchange.resume = self.loop.create_future()
                        await exchange.resume
                        exchange.resume = None
                    if exchange.disconnected.is_set() and more:
                        raise ClientDisconnected("the client disconnected")
                elif kind in ("http.response.trailers", "http.response.pathsend", "http.response.zerocopysend"):
                    raise RuntimeError(f"{kind} is not supported by Neutrino's ASGI server")
                else:
                    raise RuntimeError(f"unexpected ASGI message {kind!r} for an http request")

            await self.app(scope, receive, send)
        except BaseException as exc:  # the app's own failure, or its cancellation at shutdown
            if isinstance(exc, ClientDisconnected) or (exchange.disconnected.is_set() and isinstance(exc, OSError)):
                error = None
            elif isinstance(exc, asyncio.CancelledError):
                error = "cancelled: the request did not start its answer within the worker's --asgi-head-timeout"
                _log(f"{scope_path(head)}: {error}")
            else:
                error = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                _log(f"exception in the ASGI application:\n{error.rstrip()}")
        finally:
            self.exchanges.pop(job, None)
        self.bridge(END, job, error)


def scope_path(head: bytes) -> str:
    """`METHOD path` of a request's head fields, for log lines."""
    fields = split_fields(head)
    return " ".join(f.decode("latin-1") for f in fields[:2]) if len(fields) >= 2 else "a request"


def _settle(future: Optional[asyncio.Future], value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)

"""A real HTTP server on 127.0.0.1 standing in for the gateway, and a blocking face for ``AsyncClient``.

``FakeGateway`` answers from a table of ``(METHOD, path) → reply`` (or a function of the request returning one)
and records every request with the number of the connection it came on. A reply is ``(status, body, headers)``
or a :class:`Reply`, whose ``framing`` picks how the body is delimited: ``"length"`` (Content-Length),
``"chunked"`` or ``"close"`` (no length: the body ends with the connection).

``AsyncClientView`` runs an :class:`~neutrino.aio.AsyncClient` on its own event loop behind blocking methods, so
one behavioural test drives both clients.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union
from urllib.parse import parse_qs, urlsplit

from neutrino import Client, TaskHandle
from neutrino.aio import AsyncClient, AsyncTaskHandle


class Reply(NamedTuple):
    status: int
    body: Any
    headers: Dict[str, str] = {}
    framing: str = "length"  # "length", "chunked" or "close"


Route = Union[Tuple[int, Any, Dict[str, str]], Reply, Callable[["Request"], Any]]


class Request:
    def __init__(self, method: str, path: str, query: Dict[str, List[str]], body: Any, headers: Any, connection: int):
        self.method, self.path, self.query, self.body, self.headers, self.connection = (
            method,
            path,
            query,
            body,
            headers,
            connection,
        )


class FakeGateway:
    """Answers from a table of (METHOD, path) → reply or function(request) → reply."""

    def __init__(self) -> None:
        self.routes: Dict[Tuple[str, str], Route] = {}
        self.requests: List[Request] = []
        self.close_after_response = False
        #: Once: a request arriving on a connection that already served one is read, then the connection is
        #: closed without an answer (an idle keep-alive connection the server timed out as the request came).
        self.drop_reused_once = False
        self.dropped = 0
        #: Set when the gateway stops: handlers that hold a request (``hold``) give up then.
        self.release = threading.Event()
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()
        gateway = self
        connections = iter(range(1, 1_000_000))

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = -1  # headers and body in one segment (no Nagle / delayed-ACK stalls)

            def setup(self) -> None:
                super().setup()
                self.connection_number = next(connections)
                self.served = 0

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                self.served += 1
                if gateway.drop_reused_once and self.served > 1:
                    gateway.drop_reused_once = False
                    gateway.dropped += 1
                    self.close_connection = True
                    return
                request = Request(
                    self.command, url.path, parse_qs(url.query), body, self.headers, self.connection_number
                )
                gateway.requests.append(request)
                route = gateway.routes.get((self.command, url.path))
                with gateway._lock:
                    gateway.in_flight += 1
                    gateway.peak_in_flight = max(gateway.peak_in_flight, gateway.in_flight)
                try:
                    answer = (
                        (404, {"error": {"message": "no route"}}, {})
                        if route is None
                        else (route(request) if callable(route) else route)
                    )
                finally:
                    with gateway._lock:
                        gateway.in_flight -= 1
                reply = Reply(*answer)
                data = reply.body.encode() if isinstance(reply.body, str) else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                if reply.framing == "length":
                    self.send_header("Content-Length", str(len(data)))
                elif reply.framing == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                    step = max(1, len(data) // 3)
                    pieces = [data[i : i + step] for i in range(0, len(data), step)]
                    data = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\nX-Trailer: 1\r\n\r\n"
                else:
                    self.close_connection = True
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
                if gateway.close_after_response:
                    self.close_connection = True  # close without saying so: a dropped keep-alive connection

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self.thread.start()

    def route(self, method: str, path: str, reply: Route) -> None:
        self.routes[(method, path)] = reply

    def sequence(self, method: str, path: str, *replies: Any) -> None:
        """Answer the requests to ``method path`` with ``replies`` in turn, the last one from then on."""
        answers = list(replies)
        self.route(method, path, lambda request: answers.pop(0) if len(answers) > 1 else answers[0])

    def hold(
        self, method: str, path: str, until: threading.Event, reply: Any, arrived: Optional[threading.Event] = None
    ) -> None:
        """Answer ``reply`` only once ``until`` is set (or the gateway stops); set ``arrived`` on each request."""

        def held(request: Request) -> Any:
            if arrived is not None:
                arrived.set()
            while not until.wait(0.01) and not self.release.is_set():
                pass
            return reply

        self.route(method, path, held)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def record(status: str, **extra: Any) -> Dict[str, Any]:
    return {"task_id": "t1", "function": "work", "pool": "fast", "status": status, **extra}


class AsyncHandleView:
    """An ``AsyncTaskHandle`` behind blocking methods."""

    def __init__(self, handle: AsyncTaskHandle, view: "AsyncClientView") -> None:
        self.wrapped = handle
        self._view = view

    def __repr__(self) -> str:
        return repr(self.wrapped)

    def __getattr__(self, name: str) -> Any:
        return self._view._blocking(getattr(self.wrapped, name))


class AsyncClientView:
    """An ``AsyncClient`` on its own event loop, behind blocking methods; handles come back as views too."""

    def __init__(self, client: AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
        self.wrapped = client
        self.loop = loop

    def __repr__(self) -> str:
        return repr(self.wrapped)

    def __enter__(self) -> "AsyncClientView":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        self.loop.run_until_complete(self.wrapped.aclose())

    def __getattr__(self, name: str) -> Any:
        return self._blocking(getattr(self.wrapped, name))

    def _blocking(self, attribute: Any) -> Any:
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        def run(*args: Any, **kwargs: Any) -> Any:
            result = self.loop.run_until_complete(attribute(*args, **kwargs))
            return AsyncHandleView(result, self) if isinstance(result, AsyncTaskHandle) else result

        return run


def handle_for(client: Any, task_id: str) -> Any:
    """A handle for ``task_id`` made by hand, as ``TaskHandle(client, id)`` / ``AsyncTaskHandle(client, id)``."""
    if isinstance(client, AsyncClientView):
        return AsyncHandleView(AsyncTaskHandle(client.wrapped, task_id), client)
    assert isinstance(client, Client)
    return TaskHandle(client, task_id)

"""An asyncio client for the Neutrino gateway (standard library only).

.. code-block:: python

    import asyncio
    from neutrino import AsyncClient

    async def main():
        async with AsyncClient("http://127.0.0.1:8080", api_key="nt_...") as client:
            print(await client.call("echo", x=3))
            handles = [await client.submit("generate_report", dataset=d) for d in ("q1", "q2", "q3")]
            print(await asyncio.gather(*(h.wait(timeout=600) for h in handles)))

    asyncio.run(main())

:class:`AsyncClient` has the methods, arguments, results and errors of :class:`neutrino.Client`, as coroutines:
every operation is the very same code (``neutrino.client``'s operations, see its module docstring); this module
only adds the transport — HTTP/1.1 over asyncio streams, keep-alive connections in a small pool, bodies
framed by ``Content-Length``, chunked or by the connection's end, and a timeout on each request.

Timeouts raise ``socket.timeout`` and network failures the usual :class:`OSError` subclasses, as the blocking
client does. Use one client from one event loop at a time; a client first used under an event loop that has
since ended (a second ``asyncio.run``) starts afresh with new connections.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import socket
import ssl
from collections import deque
from typing import Any, Deque, Dict, Mapping, NamedTuple, Optional, Tuple

from .client import (
    _DROPPED_CONNECTION,
    _T,
    _ClientBase,
    _decode_body,
    _HandleBase,
    _Op,
    _Pause,
    _Request,
    _Response,
)

__all__ = ["AsyncClient", "AsyncTaskHandle"]


async def _pause(seconds: float) -> None:
    await asyncio.sleep(seconds)


class AsyncClient(_ClientBase):
    """An asyncio client for one gateway: :class:`neutrino.Client`'s methods as coroutines.

    Args:
        base_url, api_key, timeout, headers, max_retries: as for :class:`neutrino.Client`.
        max_connections: the most connections open to the gateway at once; more concurrent requests wait
            for one to be free. Each connection is kept alive for the next request.

    Use it as an async context manager, or call :meth:`aclose`, to close its connections.
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        *,
        api_key: Optional[str] = None,
        timeout: float = 30.0,
        headers: Optional[Mapping[str, str]] = None,
        max_retries: int = 3,
        max_connections: int = 100,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, headers=headers, max_retries=max_retries)
        if max_connections < 1:
            raise ValueError(f"max_connections must be 1 or more, got {max_connections!r}")
        port = self._port or (443 if self._https else 80)
        self._pool = _ConnectionPool(self._host, port, self._https, self._host_header, max_connections)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close this client's connections (those in use close when their request ends). It stays usable."""
        await self._pool.aclose()

    # -- tasks (documented on neutrino.Client) ------------------------------------------------------

    async def call(self, task: str, /, **args: Any) -> Any:
        """Run ``task`` with keyword ``args`` and return its result (see :meth:`neutrino.Client.call`)."""
        return await self._run(self._call_op(task, args))

    async def submit(self, task: str, /, **args: Any) -> "AsyncTaskHandle":
        """Start ``task`` and return an :class:`AsyncTaskHandle` at once (see :meth:`neutrino.Client.submit`)."""
        return await self._run(self._submit_with_op(task, args, None))

    async def submit_with(
        self, task: str, args: Optional[Mapping[str, Any]] = None, *, idempotency_key: Optional[str] = None
    ) -> "AsyncTaskHandle":
        """:meth:`submit` with the arguments as a mapping, and options (see :meth:`neutrino.Client.submit_with`)."""
        return await self._run(self._submit_with_op(task, args, idempotency_key))

    async def get_task(self, task_id: str) -> Dict[str, Any]:
        """The task record (see :meth:`neutrino.Client.get_task`)."""
        return await self._run(self._get_record_op(task_id))

    async def list_tasks(
        self,
        status: Optional[str] = None,
        function: Optional[str] = None,
        pool: Optional[str] = None,
        limit: Optional[int] = None,
        before: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Task records, newest first (see :meth:`neutrino.Client.list_tasks`)."""
        query = {"status": status, "function": function, "pool": pool, "limit": limit, "before": before}
        return await self._run(self._list_tasks_op(query))

    async def health(self) -> Dict[str, Any]:
        """The gateway's ``GET /healthz`` body (see :meth:`neutrino.Client.health`)."""
        return await self._run(self._health_op())

    async def _run(self, op: _Op[_T]) -> _T:
        """Drive an operation: send its requests through the pool, sleep its pauses."""
        try:
            step = next(op)
            while True:
                if isinstance(step, _Pause):
                    await _pause(step.seconds)
                    step = op.send(None)
                else:
                    step = op.send(await self._pool.send(step))
        except StopIteration as stop:
            return stop.value
        finally:
            op.close()


class AsyncTaskHandle(_HandleBase):
    """A submitted task, for asyncio: :class:`neutrino.TaskHandle`'s methods as coroutines.

    Attributes:
        client: the :class:`AsyncClient` that made it.
        task_id: the task's id.
        record: the last task record the client saw (``None`` if none yet).
    """

    client: AsyncClient

    def __init__(self, client: AsyncClient, task_id: str, *, record: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(client, task_id, record=record)

    async def status(self) -> Dict[str, Any]:
        """Fetch the task record (see :meth:`neutrino.TaskHandle.status`)."""
        return await self.client._run(self._status_op())

    async def wait(self, timeout: Optional[float] = None) -> Any:
        """Wait until the task finishes and return its result (see :meth:`neutrino.TaskHandle.wait`)."""
        return await self.client._run(self._wait_op(timeout))

    async def cancel(self) -> bool:
        """Cancel the task (see :meth:`neutrino.TaskHandle.cancel`)."""
        return await self.client._run(self.client._cancel_op(self.task_id))

    async def retry(self) -> "AsyncTaskHandle":
        """Run a finished, unsuccessful task again as a new task (see :meth:`neutrino.TaskHandle.retry`)."""
        return await self.client._run(self._retry_op())


AsyncClient._handle_class = AsyncTaskHandle


# -- transport --------------------------------------------------------------------------------------


class _Connection(NamedTuple):
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    generation: int  # the pool's generation when it was opened; an older one is not reused

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()


class _ConnectionPool:
    """Keep-alive HTTP/1.1 connections to one host: at most ``size`` open, idle ones reused newest first."""

    def __init__(self, host: str, port: int, https: bool, host_header: str, size: int) -> None:
        self._host = host
        self._port = port
        self._ssl: Optional[ssl.SSLContext] = ssl.create_default_context() if https else None
        self._host_header = host_header
        self._size = size
        self._idle: Deque[_Connection] = deque()
        self._generation = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._slots: Optional[asyncio.Semaphore] = None

    async def send(self, request: _Request) -> _Response:
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._slots is None:
            # First use, or a new event loop: an earlier loop's connections can be neither used nor closed here.
            self._loop, self._slots = loop, asyncio.Semaphore(self._size)
            self._idle.clear()
        async with self._slots:
            try:
                return await asyncio.wait_for(self._exchange(request), request.timeout)
            except asyncio.TimeoutError:
                raise socket.timeout("timed out") from None

    async def aclose(self) -> None:
        self._generation += 1
        idle, self._idle = self._idle, deque()
        if self._loop is not asyncio.get_running_loop():
            return
        for connection in idle:
            connection.writer.close()
        for connection in idle:
            try:
                await connection.writer.wait_closed()
            except OSError:
                pass

    async def _exchange(self, request: _Request) -> _Response:
        head = _request_head(request, self._host_header)
        for attempt in (1, 2):
            connection, reused = await self._acquire()
            try:
                connection.writer.write(head + request.body if request.body else head)
                await connection.writer.drain()
                status, headers, raw, keep_alive = await _read_response(connection.reader, request.method)
            except _DROPPED_CONNECTION:
                connection.writer.close()
                if reused and attempt == 1:
                    continue  # the server closed an idle keep-alive connection: reconnect once
                raise
            except BaseException:  # a timeout or cancellation mid-exchange leaves the connection unusable
                connection.writer.close()
                raise
            if keep_alive and connection.generation == self._generation and len(self._idle) < self._size:
                self._idle.append(connection)
            else:
                connection.writer.close()
            return _Response(status, headers, _decode_body(raw))
        raise AssertionError("unreachable")

    async def _acquire(self) -> Tuple[_Connection, bool]:
        """An idle connection (``reused`` True) or a new one."""
        while self._idle:
            connection = self._idle.pop()
            if connection.usable():
                return connection, True
            connection.writer.close()
        if self._ssl is not None:
            reader, writer = await asyncio.open_connection(
                self._host, self._port, ssl=self._ssl, server_hostname=self._host
            )
        else:
            reader, writer = await asyncio.open_connection(self._host, self._port)
        return _Connection(reader, writer, self._generation), False


def _request_head(request: _Request, host_header: str) -> bytes:
    lines = [f"{request.method} {request.target} HTTP/1.1", f"Host: {host_header}", "Accept-Encoding: identity"]
    lines.extend(f"{name}: {value}" for name, value in request.headers.items())
    if request.body is not None or request.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(request.body or b'')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_response(reader: asyncio.StreamReader, method: str) -> Tuple[int, http.client.HTTPMessage, bytes, bool]:
    """Status, headers, body and whether the connection may carry another request.

    Errors are those ``http.client`` raises for the same faults, so both clients fail alike.
    """
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as error:
            if not error.partial:
                raise http.client.RemoteDisconnected("Remote end closed connection without response") from None
            raise http.client.BadStatusLine(repr(error.partial[:100])) from None
        except asyncio.LimitOverrunError:
            raise http.client.LineTooLong("headers") from None
        status_line, _, block = head.partition(b"\r\n")
        version, _, rest = status_line.decode("iso-8859-1").partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit():
            raise http.client.BadStatusLine(status_line.decode("iso-8859-1"))
        status = int(code)
        headers = http.client.parse_headers(io.BytesIO(block))
        if not 100 <= status < 200:
            break  # an interim 1xx answer is followed by the real one
    tokens = {token.strip().lower() for token in headers.get("Connection", "").split(",")}
    keep_alive = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
    length = headers.get("Content-Length")
    if method == "HEAD" or status in (204, 304):
        raw = b""
    elif "chunked" in headers.get("Transfer-Encoding", "").lower():
        raw = await _read_chunked(reader)
    elif length is not None:
        try:
            size = int(length)
        except ValueError:
            raise http.client.HTTPException(f"bad Content-Length {length!r}") from None
        raw = await _read_exactly(reader, size)
    else:
        raw = await reader.read()  # framed by the end of the connection
        keep_alive = False
    return status, headers, raw, keep_alive


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        line = await _read_line(reader, b"".join(chunks))
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise http.client.IncompleteRead(b"".join(chunks)) from None
        if size == 0:
            break
        chunks.append(await _read_exactly(reader, size))
        await _read_exactly(reader, 2)  # the CRLF after each chunk
    while (await _read_line(reader, b"".join(chunks))).strip():
        pass  # trailer fields, up to the empty line
    return b"".join(chunks)


async def _read_line(reader: asyncio.StreamReader, partial: bytes) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        raise http.client.IncompleteRead(partial) from None
    except asyncio.LimitOverrunError:
        raise http.client.LineTooLong("chunk size") from None


async def _read_exactly(reader: asyncio.StreamReader, size: int) -> bytes:
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as error:
        raise http.client.IncompleteRead(error.partial, size - len(error.partial)) from None

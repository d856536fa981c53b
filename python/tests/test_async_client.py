"""What only ``AsyncClient`` has: concurrency on one event loop, its connection pool, cancellation, event loops.

Its behaviour as a client (answers, errors, retries, API keys, framing, timeouts) is tested together with
``Client``'s in ``test_client.py``, where every test runs against both.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import threading
from typing import Any

import pytest
from fake_gateway import FakeGateway, record

from neutrino import AsyncClient, AsyncTaskHandle, Client, TaskHandle


@pytest.fixture
def gateway():
    server = FakeGateway()
    yield server
    server.stop()


def completed(result: Any) -> Any:
    return (200, record("completed", result=result), {})


def test_same_methods_and_arguments_as_the_blocking_client() -> None:
    for blocking, awaiting in ((Client, AsyncClient), (TaskHandle, AsyncTaskHandle)):
        public = {name for name in dir(blocking) if not name.startswith("_")} - {"close"}
        assert public <= {name for name in dir(awaiting) if not name.startswith("_")}
        for name in public:
            method = getattr(blocking, name)
            if not callable(method):
                continue
            assert inspect.iscoroutinefunction(getattr(awaiting, name)), name
            assert list(inspect.signature(method).parameters) == list(
                inspect.signature(getattr(awaiting, name)).parameters
            ), name
    assert list(inspect.signature(Client).parameters) == list(inspect.signature(AsyncClient).parameters)[:-1]


def test_concurrent_calls_share_a_pool_of_keep_alive_connections(gateway: FakeGateway) -> None:
    together = threading.Barrier(3, timeout=5)

    def echo(request: Any) -> Any:
        if request.body["args"]["x"] < 3:
            together.wait()  # the first three are answered only once all three are in: three connections
        return completed(request.body["args"]["x"])

    gateway.route("POST", "/api/echo", echo)

    async def main() -> None:
        async with AsyncClient(gateway.url, timeout=5) as client:
            assert await asyncio.gather(*(client.call("echo", x=x) for x in range(3))) == [0, 1, 2]
            for x in range(3, 9):
                assert await client.call("echo", x=x) == x

    asyncio.run(main())
    assert len(gateway.requests) == 9
    assert len({r.connection for r in gateway.requests[:3]}) == 3
    assert {r.connection for r in gateway.requests[3:]} <= {r.connection for r in gateway.requests[:3]}


def test_max_connections_bounds_concurrent_requests(gateway: FakeGateway) -> None:
    pairs = threading.Barrier(2, timeout=5)

    def echo(request: Any) -> Any:
        pairs.wait()  # answered two by two: proves two run at once, and max_connections=2 allows no third
        return completed(request.body["args"]["x"])

    gateway.route("POST", "/api/echo", echo)

    async def main() -> None:
        async with AsyncClient(gateway.url, timeout=5, max_connections=2) as client:
            assert await asyncio.gather(*(client.call("echo", x=x) for x in range(6))) == list(range(6))

    asyncio.run(main())
    assert gateway.peak_in_flight == 2
    assert len({r.connection for r in gateway.requests}) == 2


def test_many_waits_at_once(gateway: FakeGateway) -> None:
    release = threading.Event()
    polls = []

    def poll(request: Any) -> Any:
        polls.append(request.path)
        if len(polls) == 5:
            release.set()
        release.wait(5)  # every long poll is held until all five are in
        return (200, record("completed", task_id=request.path.rsplit("/", 1)[1], result=request.path), {})

    for n in range(5):
        gateway.route("GET", f"/tasks/t{n}", poll)

    async def main() -> None:
        async with AsyncClient(gateway.url, timeout=5) as client:
            handles = [AsyncTaskHandle(client, f"t{n}") for n in range(5)]
            return await asyncio.gather(*(h.wait(timeout=10) for h in handles))

    assert asyncio.run(main()) == [f"/tasks/t{n}" for n in range(5)]
    assert len(polls) == 5  # one long poll each, all open at once


def test_cancelled_wait_closes_its_connection(gateway: FakeGateway) -> None:
    arrived, never = threading.Event(), threading.Event()
    gateway.hold("GET", "/tasks/t1", never, (200, record("completed"), {}), arrived=arrived)
    gateway.route("GET", "/healthz", (200, {"status": "ok"}, {}))

    async def main() -> None:
        async with AsyncClient(gateway.url, timeout=5) as client:
            waiting = asyncio.ensure_future(AsyncTaskHandle(client, "t1").wait())
            while not arrived.is_set():
                await asyncio.sleep(0.01)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert await client.health() == {"status": "ok"}
            assert client._pool._idle and all(c.usable() for c in client._pool._idle)

    asyncio.run(main())
    assert len(gateway.requests) == 2
    assert gateway.requests[0].connection != gateway.requests[1].connection  # the cancelled one was not reused


def test_aclose_closes_idle_connections_and_the_client_stays_usable(gateway: FakeGateway) -> None:
    gateway.route("GET", "/healthz", (200, {"status": "ok"}, {}))

    async def main() -> None:
        client = AsyncClient(gateway.url, timeout=5)
        async with client:
            await client.health()
            idle = list(client._pool._idle)
            assert len(idle) == 1
        assert not client._pool._idle and idle[0].writer.is_closing()
        assert await client.health() == {"status": "ok"}
        await client.aclose()

    asyncio.run(main())
    assert len({r.connection for r in gateway.requests}) == 2


def test_one_client_across_event_loops(gateway: FakeGateway) -> None:
    """A second ``asyncio.run`` gets fresh connections instead of the ended loop's."""
    gateway.route("GET", "/healthz", (200, {"status": "ok"}, {}))
    client = AsyncClient(gateway.url, timeout=5)
    for _ in range(2):
        assert asyncio.run(client.health()) == {"status": "ok"}
    asyncio.run(client.aclose())
    assert len({r.connection for r in gateway.requests}) == 2


def test_importing_neutrino_does_not_import_asyncio() -> None:
    """Workers and the CLI import ``neutrino``; only ``AsyncClient``'s users pay for asyncio."""
    code = (
        "import sys, neutrino; assert 'asyncio' not in sys.modules;"
        "neutrino.AsyncClient; assert 'asyncio' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

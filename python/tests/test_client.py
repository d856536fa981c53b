"""``Client`` and ``TaskHandle`` against a tiny in-process HTTP server standing in for the gateway."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Tuple, Union
from urllib.parse import parse_qs, urlsplit

import pytest

from neutrino import (
    BadRequest,
    Client,
    InvalidArguments,
    NeutrinoError,
    NotSupported,
    PayloadTooLarge,
    RemoteError,
    ServiceUnavailable,
    TaskCancelled,
    TaskFailed,
    TaskHandle,
    TaskTimedOut,
    UnknownTask,
    WaitTimeout,
)

Reply = Tuple[int, Any, Dict[str, str]]
Route = Union[Reply, Callable[["Request"], Reply]]


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
        gateway = self
        connections = iter(range(1, 1_000_000))

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = -1  # headers and body in one segment (no Nagle / delayed-ACK stalls)

            def setup(self) -> None:
                super().setup()
                self.connection_number = next(connections)

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                request = Request(
                    self.command, url.path, parse_qs(url.query), body, self.headers, self.connection_number
                )
                gateway.requests.append(request)
                route = gateway.routes.get((self.command, url.path))
                status, reply, headers = (
                    (404, {"error": {"message": "no route"}}, {})
                    if route is None
                    else (route(request) if callable(route) else route)
                )
                data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
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

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway():
    server = FakeGateway()
    yield server
    server.stop()


@pytest.fixture
def client(gateway: FakeGateway):
    with Client(gateway.url, timeout=5) as c:
        yield c


def record(status: str, **extra: Any) -> Dict[str, Any]:
    return {"task_id": "t1", "function": "work", "pool": "fast", "status": status, **extra}


FAILED = record(
    "failed",
    error={
        "type": "ValueError",
        "message": "bad input",
        "traceback": 'Traceback (most recent call last):\n  File "app.py", line 9, in work\nValueError: bad input\n',
    },
)


# -- call -------------------------------------------------------------------------------------------


def test_call_sync(gateway: FakeGateway, client: Client) -> None:
    gateway.route("POST", "/api/echo", (200, record("completed", result={"x": 3}, duration_ms=1.2), {}))
    assert client.call("echo", x=3) == {"x": 3}
    request = gateway.requests[0]
    assert request.body == {"args": {"x": 3}}
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("neutrino-python/")


def test_dataclass_arguments_are_sent_as_objects(gateway: FakeGateway, client: Client) -> None:
    @dataclasses.dataclass
    class Rect:
        w: float
        h: float

    gateway.route("POST", "/api/area", (200, record("completed", result=6), {}))
    assert client.call("area", rect=Rect(2, 3)) == 6
    assert gateway.requests[0].body == {"args": {"rect": {"w": 2, "h": 3}}}
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        client.call("area", rect={1, 2})


def test_call_accepts_argument_named_task(gateway: FakeGateway, client: Client) -> None:
    gateway.route("POST", "/api/echo", (200, record("completed", result=None), {}))
    assert client.call("echo", task="t") is None
    assert gateway.requests[0].body == {"args": {"task": "t"}}


def test_call_async_polls_until_done(gateway: FakeGateway, client: Client) -> None:
    gateway.route("POST", "/api/report", (202, {"task_id": "t9", "status": "queued", "poll_url": "/tasks/t9"}, {}))
    answers = iter([record("running", task_id="t9"), record("completed", task_id="t9", result=[1, 2])])
    gateway.route("GET", "/tasks/t9", lambda request: (200, next(answers), {}))
    assert client.call("report", dataset="q3") == [1, 2]
    polls = [r for r in gateway.requests if r.method == "GET"]
    assert len(polls) == 2 and all(r.query["wait"] == ["30"] for r in polls)


def test_task_failed(gateway: FakeGateway, client: Client) -> None:
    gateway.route("POST", "/api/work", (500, FAILED, {}))
    with pytest.raises(TaskFailed) as info:
        client.call("work")
    error = info.value
    assert (error.remote_type, error.remote_message) == ("ValueError", "bad input")
    assert "line 9, in work" in error.remote_traceback
    assert (error.status_code, error.task_id, error.body) == (500, "t1", FAILED)
    text = str(error)
    assert "ValueError" in text and "bad input" in text and 'File "app.py", line 9, in work' in text
    assert isinstance(error, RemoteError) and isinstance(error, NeutrinoError)


@pytest.mark.parametrize(
    "status, body, headers, error_type",
    [
        (504, record("timed_out", error={"type": "TimeoutError", "message": "over 5000 ms"}), {}, TaskTimedOut),
        (504, {"error": {"message": "timed out"}}, {}, TaskTimedOut),
        (409, record("cancelled"), {}, TaskCancelled),
        (400, {"error": {"type": "BadRequest", "message": "malformed JSON"}}, {}, BadRequest),
        (404, {"error": {"message": "unknown task 'nope'"}}, {}, UnknownTask),
        (413, {"error": "body too large"}, {}, PayloadTooLarge),
        (501, {"message": "gpu pools not routed"}, {}, NotSupported),
        (503, {"error": {"message": "no fast worker"}}, {"Retry-After": "2"}, ServiceUnavailable),
        (418, "I'm a teapot", {}, RemoteError),
        (500, {"error": {"message": "internal"}}, {}, RemoteError),
    ],
)
def test_error_mapping(
    gateway: FakeGateway, client: Client, status: int, body: Any, headers: Dict[str, str], error_type: type
) -> None:
    gateway.route("POST", "/api/work", (status, body, headers))
    with pytest.raises(error_type) as info:
        client.call("work")
    assert info.value.status_code == status
    assert info.value.body == body
    if error_type is RemoteError:
        assert type(info.value) is RemoteError
    assert str(info.value)


def test_error_messages(gateway: FakeGateway, client: Client) -> None:
    gateway.route("POST", "/api/work", (404, {"error": {"message": "unknown task 'work'"}}, {}))
    with pytest.raises(UnknownTask, match="unknown task 'work'"):
        client.call("work")


def test_invalid_arguments_details(gateway: FakeGateway, client: Client) -> None:
    details = [{"path": "/args/x", "message": "expected integer"}]
    gateway.route("POST", "/api/work", (422, {"error": {"message": "invalid arguments", "details": details}}, {}))
    with pytest.raises(InvalidArguments) as info:
        client.call("work", x="three")
    assert info.value.details == details
    assert "invalid arguments" in str(info.value)


def test_service_unavailable_retry_after(gateway: FakeGateway, client: Client) -> None:
    gateway.route("POST", "/api/work", (503, {"error": {"message": "NATS unreachable"}}, {"Retry-After": "1.5"}))
    with pytest.raises(ServiceUnavailable) as info:
        client.call("work")
    assert info.value.retry_after == 1.5
    gateway.route("POST", "/api/work", (503, {}, {}))
    with pytest.raises(ServiceUnavailable) as info:
        client.call("work")
    assert info.value.retry_after is None


# -- submit and handles -----------------------------------------------------------------------------


def test_submit_async(gateway: FakeGateway, client: Client) -> None:
    gateway.route("POST", "/api/report", (202, {"task_id": "t2", "status": "queued", "poll_url": "/tasks/t2"}, {}))
    handle = client.submit("report", dataset="q3")
    assert isinstance(handle, TaskHandle) and handle.task_id == "t2"
    assert handle.record["status"] == "queued"
    gateway.route("GET", "/tasks/t2", (200, record("running", task_id="t2"), {}))
    assert handle.status()["status"] == "running"
    assert "t2" in repr(handle)


def test_submit_sync_gives_a_finished_handle(gateway: FakeGateway, client: Client) -> None:
    gateway.route("POST", "/api/echo", (200, record("completed", result=7), {}))
    handle = client.submit("echo", x=7)
    assert handle.wait() == 7
    assert len(gateway.requests) == 1  # no polling needed


def test_submit_sync_failure_raises_on_wait(gateway: FakeGateway, client: Client) -> None:
    gateway.route("POST", "/api/work", (500, FAILED, {}))
    handle = client.submit("work")
    with pytest.raises(TaskFailed, match="bad input"):
        handle.wait()


def test_submit_refused(gateway: FakeGateway, client: Client) -> None:
    gateway.route("POST", "/api/work", (503, {"error": {"message": "queue down"}}, {"Retry-After": "5"}))
    with pytest.raises(ServiceUnavailable):
        client.submit("work")


@pytest.mark.parametrize(
    "final, error_type",
    [(FAILED, TaskFailed), (record("timed_out"), TaskTimedOut), (record("cancelled"), TaskCancelled)],
)
def test_wait_raises_for_unsuccessful_tasks(
    gateway: FakeGateway, client: Client, final: dict, error_type: type
) -> None:
    gateway.route("GET", "/tasks/t1", (200, final, {}))
    with pytest.raises(error_type) as info:
        TaskHandle(client, "t1").wait(timeout=5)
    assert info.value.task_id == "t1"


def test_wait_timeout(gateway: FakeGateway, client: Client) -> None:
    gateway.route("GET", "/tasks/t1", (200, record("running"), {}))  # answers at once, never finishes
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        TaskHandle(client, "t1").wait(timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 2
    assert (info.value.task_id, info.value.status) == ("t1", "running")
    assert isinstance(info.value, TimeoutError)
    assert not isinstance(info.value, RemoteError)
    assert all(int(r.query["wait"][0]) <= 30 for r in gateway.requests)


def test_wait_uses_bounded_long_polls(gateway: FakeGateway, client: Client) -> None:
    answers = iter([record("queued"), record("running"), record("completed", result="ok")])
    gateway.route("GET", "/tasks/t1", lambda request: (200, next(answers), {}))
    assert TaskHandle(client, "t1").wait(timeout=3.5) == "ok"
    waits = [int(r.query["wait"][0]) for r in gateway.requests]
    assert waits[0] == 3 and all(0 <= w <= 3 for w in waits)


def test_cancel(gateway: FakeGateway, client: Client) -> None:
    gateway.route("DELETE", "/tasks/t1", (200, record("cancelled"), {}))
    assert TaskHandle(client, "t1").cancel() is True
    gateway.route("DELETE", "/tasks/t1", (409, {"error": {"message": "already completed"}}, {}))
    assert TaskHandle(client, "t1").cancel() is False
    gateway.route("DELETE", "/tasks/t1", (404, {"error": {"message": "unknown task id"}}, {}))
    with pytest.raises(UnknownTask):
        TaskHandle(client, "t1").cancel()


# -- the rest of the API ----------------------------------------------------------------------------


def test_get_task_and_unknown_id(gateway: FakeGateway, client: Client) -> None:
    gateway.route("GET", "/tasks/t1", (200, record("completed", result=1), {}))
    assert client.get_task("t1")["result"] == 1
    with pytest.raises(UnknownTask):
        client.get_task("missing")


def test_list_tasks(gateway: FakeGateway, client: Client) -> None:
    page = {"tasks": [record("failed")], "next_before": "t0"}
    gateway.route("GET", "/tasks", (200, page, {}))
    assert client.list_tasks(status="failed", function="boom", limit=10) == page
    assert gateway.requests[-1].query == {"status": ["failed"], "function": ["boom"], "limit": ["10"]}
    client.list_tasks()
    assert gateway.requests[-1].query == {}
    client.list_tasks(pool="fast", before="t5")
    assert gateway.requests[-1].query == {"pool": ["fast"], "before": ["t5"]}


def test_health(gateway: FakeGateway, client: Client) -> None:
    gateway.route("GET", "/healthz", (200, {"status": "ok"}, {}))
    assert client.health() == {"status": "ok"}


def test_base_path_prefix(gateway: FakeGateway) -> None:
    gateway.route("GET", "/neutrino/healthz", (200, {"status": "ok"}, {}))
    with Client(gateway.url + "/neutrino/") as prefixed:
        assert prefixed.health() == {"status": "ok"}


def test_default_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUTRINO_URL", "http://gateway.internal:9000")
    assert Client().base_url == "http://gateway.internal:9000"
    monkeypatch.delenv("NEUTRINO_URL")
    assert Client().base_url == "http://127.0.0.1:8080"
    assert Client("localhost:8081").base_url == "http://localhost:8081"
    with pytest.raises(ValueError):
        Client("ftp://example.com")


# -- connections ------------------------------------------------------------------------------------


def test_keep_alive_connection_is_reused(gateway: FakeGateway, client: Client) -> None:
    gateway.route("GET", "/healthz", (200, {"status": "ok"}, {}))
    for _ in range(5):
        client.health()
    assert len({r.connection for r in gateway.requests}) == 1


def test_reconnects_once_when_keep_alive_connection_dropped(gateway: FakeGateway, client: Client) -> None:
    gateway.route("POST", "/api/echo", (200, record("completed", result=1), {}))
    gateway.close_after_response = True
    for _ in range(3):
        assert client.call("echo") == 1
    assert len({r.connection for r in gateway.requests}) == 3
    assert len(gateway.requests) == 3  # each request reached the server exactly once


def test_one_connection_per_thread(gateway: FakeGateway, client: Client) -> None:
    gateway.route("GET", "/healthz", (200, {"status": "ok"}, {}))
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        for _ in range(3):
            client.health()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r.connection for r in gateway.requests}) == 4
    client.close()
    client.health()  # still usable after close


def test_connection_refused_is_an_os_error() -> None:
    server = FakeGateway()
    url = server.url
    server.stop()
    with pytest.raises(OSError):
        Client(url, timeout=2).health()

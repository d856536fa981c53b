"""``Client`` and ``AsyncClient`` against a real HTTP server on 127.0.0.1 standing in for the gateway.

Every behavioural test runs twice, once per client (the ``client`` and ``make_client`` fixtures); tests of what
only one client has (threads, the event loop) live in ``test_async_client.py`` or say so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import logging
import socket
import threading
import time
import traceback
from typing import Any, Callable, Dict, List

import pytest
from fake_gateway import AsyncClientView, FakeGateway, Reply, handle_for, record

import neutrino.aio
import neutrino.client
from neutrino import (
    AsyncClient,
    AsyncTaskHandle,
    BadRequest,
    Client,
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
    TaskHandle,
    TaskTimedOut,
    Unauthorized,
    UnknownTask,
    WaitTimeout,
)


@pytest.fixture
def gateway():
    server = FakeGateway()
    yield server
    server.stop()


@pytest.fixture(params=["sync", "async"])
def make_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """``make_client(url, **options)``: a ``Client``, or an ``AsyncClient`` behind blocking methods."""
    monkeypatch.delenv("NEUTRINO_API_KEY", raising=False)
    loop = asyncio.new_event_loop() if request.param == "async" else None
    made: List[Any] = []

    def make(*args: Any, **kwargs: Any) -> Any:
        client = Client(*args, **kwargs) if loop is None else AsyncClientView(AsyncClient(*args, **kwargs), loop)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
    if loop is not None:
        loop.close()


@pytest.fixture
def client(gateway: FakeGateway, make_client: Callable[..., Any]):
    return make_client(gateway.url, timeout=5)


@pytest.fixture(autouse=True)
def pauses(monkeypatch: pytest.MonkeyPatch) -> List[float]:
    """Every pause a client takes (Retry-After backoff, short-poll backoff), in seconds; each lasts 50 ms at most."""
    seen: List[float] = []

    def pause(seconds: float) -> None:
        seen.append(seconds)
        time.sleep(min(seconds, 0.05))

    async def async_pause(seconds: float) -> None:
        seen.append(seconds)
        await asyncio.sleep(min(seconds, 0.05))

    monkeypatch.setattr(neutrino.client, "_pause", pause)
    monkeypatch.setattr(neutrino.aio, "_pause", async_pause)
    return seen


FAILED = record(
    "failed",
    error={
        "type": "ValueError",
        "message": "bad input",
        "traceback": 'Traceback (most recent call last):\n  File "app.py", line 9, in work\nValueError: bad input\n',
    },
)


# -- call -------------------------------------------------------------------------------------------


def test_call_sync(gateway: FakeGateway, client: Any) -> None:
    gateway.route("POST", "/api/echo", (200, record("completed", result={"x": 3}, duration_ms=1.2), {}))
    assert client.call("echo", x=3) == {"x": 3}
    request = gateway.requests[0]
    assert request.body == {"args": {"x": 3}}
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("neutrino-python/")


def test_dataclass_arguments_are_sent_as_objects(gateway: FakeGateway, client: Any) -> None:
    @dataclasses.dataclass
    class Rect:
        w: float
        h: float

    gateway.route("POST", "/api/area", (200, record("completed", result=6), {}))
    assert client.call("area", rect=Rect(2, 3)) == 6
    assert gateway.requests[0].body == {"args": {"rect": {"w": 2, "h": 3}}}
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        client.call("area", rect={1, 2})


def test_call_accepts_argument_named_task(gateway: FakeGateway, client: Any) -> None:
    gateway.route("POST", "/api/echo", (200, record("completed", result=None), {}))
    assert client.call("echo", task="t") is None
    assert gateway.requests[0].body == {"args": {"task": "t"}}


def test_call_async_polls_until_done(gateway: FakeGateway, client: Any) -> None:
    gateway.route("POST", "/api/report", (202, {"task_id": "t9", "status": "queued", "poll_url": "/tasks/t9"}, {}))
    answers = iter([record("running", task_id="t9"), record("completed", task_id="t9", result=[1, 2])])
    gateway.route("GET", "/tasks/t9", lambda request: (200, next(answers), {}))
    assert client.call("report", dataset="q3") == [1, 2]
    polls = [r for r in gateway.requests if r.method == "GET"]
    assert len(polls) == 2 and all(r.query["wait"] == ["30"] for r in polls)


def test_task_failed(gateway: FakeGateway, client: Any) -> None:
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
    gateway: FakeGateway, client: Any, status: int, body: Any, headers: Dict[str, str], error_type: type
) -> None:
    gateway.route("POST", "/api/work", (status, body, headers))
    with pytest.raises(error_type) as info:
        client.call("work")
    assert info.value.status_code == status
    assert info.value.body == body
    if error_type is RemoteError:
        assert type(info.value) is RemoteError
    assert str(info.value)


def test_error_messages(gateway: FakeGateway, client: Any) -> None:
    gateway.route("POST", "/api/work", (404, {"error": {"message": "unknown task 'work'"}}, {}))
    with pytest.raises(UnknownTask, match="unknown task 'work'"):
        client.call("work")


def test_invalid_arguments_details(gateway: FakeGateway, client: Any) -> None:
    details = [{"path": "/args/x", "message": "expected integer"}]
    gateway.route("POST", "/api/work", (422, {"error": {"message": "invalid arguments", "details": details}}, {}))
    with pytest.raises(InvalidArguments) as info:
        client.call("work", x="three")
    assert info.value.details == details
    assert "invalid arguments" in str(info.value)


def test_service_unavailable_retry_after(gateway: FakeGateway, client: Any) -> None:
    gateway.route("POST", "/api/work", (503, {"error": {"message": "NATS unreachable"}}, {"Retry-After": "1.5"}))
    with pytest.raises(ServiceUnavailable) as info:
        client.call("work")
    assert info.value.retry_after == 1.5
    gateway.route("POST", "/api/work", (503, {}, {}))
    with pytest.raises(ServiceUnavailable) as info:
        client.call("work")
    assert info.value.retry_after is None


# -- submit and handles -----------------------------------------------------------------------------


def test_submit_async(gateway: FakeGateway, client: Any) -> None:
    gateway.route("POST", "/api/report", (202, {"task_id": "t2", "status": "queued", "poll_url": "/tasks/t2"}, {}))
    handle = client.submit("report", dataset="q3")
    assert isinstance(getattr(handle, "wrapped", handle), (TaskHandle, AsyncTaskHandle)) and handle.task_id == "t2"
    assert handle.record["status"] == "queued"
    gateway.route("GET", "/tasks/t2", (200, record("running", task_id="t2"), {}))
    assert handle.status()["status"] == "running"
    assert "t2" in repr(handle)


def test_submit_sync_gives_a_finished_handle(gateway: FakeGateway, client: Any) -> None:
    gateway.route("POST", "/api/echo", (200, record("completed", result=7), {}))
    handle = client.submit("echo", x=7)
    assert handle.wait() == 7
    assert len(gateway.requests) == 1  # no polling needed


def test_submit_sync_failure_raises_on_wait(gateway: FakeGateway, client: Any) -> None:
    gateway.route("POST", "/api/work", (500, FAILED, {}))
    handle = client.submit("work")
    with pytest.raises(TaskFailed, match="bad input"):
        handle.wait()


def test_submit_refused(gateway: FakeGateway, client: Any) -> None:
    gateway.route("POST", "/api/work", (503, {"error": {"message": "queue down"}}, {"Retry-After": "5"}))
    with pytest.raises(ServiceUnavailable):
        client.submit("work")


@pytest.mark.parametrize(
    "final, error_type",
    [(FAILED, TaskFailed), (record("timed_out"), TaskTimedOut), (record("cancelled"), TaskCancelled)],
)
def test_wait_raises_for_unsuccessful_tasks(gateway: FakeGateway, client: Any, final: dict, error_type: type) -> None:
    gateway.route("GET", "/tasks/t1", (200, final, {}))
    with pytest.raises(error_type) as info:
        handle_for(client, "t1").wait(timeout=5)
    assert info.value.task_id == "t1"


def test_wait_timeout(gateway: FakeGateway, client: Any) -> None:
    gateway.route("GET", "/tasks/t1", (200, record("running"), {}))  # answers at once, never finishes
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        handle_for(client, "t1").wait(timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 2
    assert (info.value.task_id, info.value.status) == ("t1", "running")
    assert isinstance(info.value, TimeoutError)
    assert not isinstance(info.value, RemoteError)
    assert all(int(r.query["wait"][0]) <= 30 for r in gateway.requests)


def test_wait_uses_bounded_long_polls(gateway: FakeGateway, client: Any) -> None:
    answers = iter([record("queued"), record("running"), record("completed", result="ok")])
    gateway.route("GET", "/tasks/t1", lambda request: (200, next(answers), {}))
    assert handle_for(client, "t1").wait(timeout=3.5) == "ok"
    waits = [int(r.query["wait"][0]) for r in gateway.requests]
    assert waits[0] == 3 and all(0 <= w <= 3 for w in waits)


def test_cancel(gateway: FakeGateway, client: Any) -> None:
    gateway.route("DELETE", "/tasks/t1", (200, record("cancelled"), {}))
    assert handle_for(client, "t1").cancel() is True
    gateway.route("DELETE", "/tasks/t1", (409, {"error": {"message": "already completed"}}, {}))
    assert handle_for(client, "t1").cancel() is False
    gateway.route("DELETE", "/tasks/t1", (404, {"error": {"message": "unknown task id"}}, {}))
    with pytest.raises(UnknownTask):
        handle_for(client, "t1").cancel()


# -- the rest of the API ----------------------------------------------------------------------------


def test_get_task_and_unknown_id(gateway: FakeGateway, client: Any) -> None:
    gateway.route("GET", "/tasks/t1", (200, record("completed", result=1), {}))
    assert client.get_task("t1")["result"] == 1
    with pytest.raises(UnknownTask):
        client.get_task("missing")


def test_list_tasks(gateway: FakeGateway, client: Any) -> None:
    page = {"tasks": [record("failed")], "next_before": "t0"}
    gateway.route("GET", "/tasks", (200, page, {}))
    assert client.list_tasks(status="failed", function="boom", limit=10) == page
    assert gateway.requests[-1].query == {"status": ["failed"], "function": ["boom"], "limit": ["10"]}
    client.list_tasks()
    assert gateway.requests[-1].query == {}
    client.list_tasks(pool="fast", before="t5")
    assert gateway.requests[-1].query == {"pool": ["fast"], "before": ["t5"]}


def test_health(gateway: FakeGateway, client: Any) -> None:
    gateway.route("GET", "/healthz", (200, {"status": "ok"}, {}))
    assert client.health() == {"status": "ok"}


def test_base_path_prefix(gateway: FakeGateway, make_client: Callable[..., Any]) -> None:
    gateway.route("GET", "/neutrino/healthz", (200, {"status": "ok"}, {}))
    with make_client(gateway.url + "/neutrino/") as prefixed:
        assert prefixed.health() == {"status": "ok"}


@pytest.mark.parametrize("client_class", [Client, AsyncClient])
def test_default_url_from_environment(monkeypatch: pytest.MonkeyPatch, client_class: type) -> None:
    monkeypatch.setenv("NEUTRINO_URL", "http://gateway.internal:9000")
    assert client_class().base_url == "http://gateway.internal:9000"
    monkeypatch.delenv("NEUTRINO_URL")
    assert client_class().base_url == "http://127.0.0.1:8080"
    assert client_class("localhost:8081").base_url == "http://localhost:8081"
    with pytest.raises(ValueError):
        client_class("ftp://example.com")
    with pytest.raises(ValueError, match="api_key") as info:
        client_class("http://user:hunter2@example.com")
    assert "hunter2" not in str(info.value)


# -- connections ------------------------------------------------------------------------------------


def test_keep_alive_connection_is_reused(gateway: FakeGateway, client: Any) -> None:
    gateway.route("GET", "/healthz", (200, {"status": "ok"}, {}))
    for _ in range(5):
        client.health()
    assert len({r.connection for r in gateway.requests}) == 1


def test_reconnects_once_when_keep_alive_connection_dropped(gateway: FakeGateway, client: Any) -> None:
    gateway.route("POST", "/api/echo", (200, record("completed", result=1), {}))
    gateway.close_after_response = True
    for _ in range(3):
        assert client.call("echo") == 1
    assert len({r.connection for r in gateway.requests}) == 3
    assert len(gateway.requests) == 3  # each request reached the server exactly once


def test_resends_once_when_an_idle_connection_was_closed_as_the_request_came(gateway: FakeGateway, client: Any) -> None:
    gateway.route("GET", "/tasks/t1", (200, record("running"), {}))
    assert client.get_task("t1")["status"] == "running"
    gateway.drop_reused_once = True
    assert client.get_task("t1")["status"] == "running"
    assert gateway.dropped == 1
    assert len(gateway.requests) == 2 and gateway.requests[0].connection != gateway.requests[1].connection


def test_one_connection_per_thread(gateway: FakeGateway) -> None:
    """Sync only: a ``Client`` shared by threads gives each its own connection."""
    client = Client(gateway.url, timeout=5)
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
    client.close()


def test_connection_refused_is_an_os_error(make_client: Callable[..., Any]) -> None:
    server = FakeGateway()
    url = server.url
    server.stop()
    with pytest.raises(OSError):
        make_client(url, timeout=2).health()


def test_dropped_mid_body_is_not_resent(gateway: FakeGateway, client: Any) -> None:
    """A body cut short (Content-Length promised more) raises, and the request is not sent again."""
    gateway.route("GET", "/healthz", Reply(200, '{"status": "o', {"Content-Length": "100"}, "close"))
    with pytest.raises(Exception) as info:  # http.client.IncompleteRead, from either client
        client.health()
    assert type(info.value).__name__ == "IncompleteRead"
    assert len(gateway.requests) == 1


# -- response framing and timeouts ------------------------------------------------------------------


def test_chunked_response_body(gateway: FakeGateway, client: Any) -> None:
    result = {"rows": list(range(200)), "label": "é" * 50}
    gateway.route("POST", "/api/report", Reply(200, record("completed", result=result), {}, "chunked"))
    assert client.call("report") == result
    assert client.call("report") == result
    assert len({r.connection for r in gateway.requests}) == 1  # the connection stays usable after a chunked body


def test_body_delimited_by_connection_close(gateway: FakeGateway, client: Any) -> None:
    gateway.route("GET", "/tasks/t1", Reply(200, record("completed", result="end"), {}, "close"))
    assert client.get_task("t1")["result"] == "end"
    assert client.get_task("t1")["result"] == "end"
    assert len({r.connection for r in gateway.requests}) == 2  # no reuse of a connection the server ended
    assert len(gateway.requests) == 2


def test_request_timeout(gateway: FakeGateway, make_client: Callable[..., Any]) -> None:
    never = threading.Event()
    gateway.hold("POST", "/api/slow", never, (200, record("completed", result=1), {}))
    gateway.route("GET", "/healthz", (200, {"status": "ok"}, {}))
    client = make_client(gateway.url, timeout=0.2)
    with pytest.raises(socket.timeout) as info:
        client.call("slow")
    assert isinstance(info.value, OSError) and not isinstance(info.value, NeutrinoError)
    assert client.health() == {"status": "ok"}  # on a new connection: the timed-out one is not reused
    assert gateway.requests[-1].connection != gateway.requests[0].connection


def test_long_poll_answers_when_the_task_finishes(gateway: FakeGateway, client: Any) -> None:
    """wait() sends one ``GET /tasks/<id>?wait=N`` and the answer arrives when the gateway releases it."""
    arrived, finished = threading.Event(), threading.Event()
    gateway.hold("GET", "/tasks/t1", finished, (200, record("completed", result="done"), {}), arrived=arrived)

    def finish_when_polled() -> None:
        if arrived.wait(5):
            finished.set()

    helper = threading.Thread(target=finish_when_polled)
    helper.start()
    assert handle_for(client, "t1").wait() == "done"
    helper.join()
    assert [r.query["wait"] for r in gateway.requests] == [["30"]]


# -- API keys ---------------------------------------------------------------------------------------

SECRET = "nt_live_7f3a9c1e5b"


def test_api_key_is_sent_as_bearer_on_every_request(gateway: FakeGateway, make_client: Callable[..., Any]) -> None:
    gateway.route("POST", "/api/report", (202, {"task_id": "t1", "status": "queued"}, {}))
    gateway.sequence("GET", "/tasks/t1", (200, record("running"), {}), (200, record("completed", result=1), {}))
    gateway.route("GET", "/tasks", (200, {"tasks": [], "next_before": None}, {}))
    gateway.route("DELETE", "/tasks/t1", (409, {"error": {"message": "already completed"}}, {}))
    gateway.route("GET", "/healthz", (200, {"status": "ok"}, {}))
    client = make_client(gateway.url, api_key=SECRET)
    handle = client.submit("report")
    assert handle.wait(timeout=5) == 1
    client.list_tasks()
    assert handle.cancel() is False
    client.health()
    assert len(gateway.requests) == 6
    assert {r.headers["Authorization"] for r in gateway.requests} == {f"Bearer {SECRET}"}


def test_api_key_from_environment_explicit_argument_wins(
    gateway: FakeGateway, make_client: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway.route("GET", "/healthz", (200, {"status": "ok"}, {}))

    def authorization(**options: Any) -> Any:
        make_client(gateway.url, **options).health()
        return gateway.requests[-1].headers.get("Authorization")

    assert authorization() is None
    monkeypatch.setenv("NEUTRINO_API_KEY", "from-env")
    assert authorization() == "Bearer from-env"
    assert authorization(api_key="from-arg") == "Bearer from-arg"
    assert authorization(api_key="") is None  # explicitly none
    assert authorization(headers={"Authorization": "Basic dTpw"}) == "Basic dTpw"  # the caller's own header
    assert authorization(api_key="from-arg", headers={"authorization": "Basic dTpw"}) == "Bearer from-arg"


def test_api_key_never_shown(
    gateway: FakeGateway, make_client: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway.route("POST", "/api/a", (401, {"error": {"type": "Unauthorized", "message": "unknown API key"}}, {}))
    gateway.route("POST", "/api/b", (403, {"error": {"type": "Forbidden", "message": "scope submit missing"}}, {}))
    gateway.route(
        "POST", "/api/c", (429, {"error": {"type": "RateLimited", "message": "slow down"}}, {"Retry-After": "99"})
    )
    gateway.route("POST", "/api/d", (202, {"task_id": "t1", "status": "queued"}, {}))
    client = make_client(gateway.url, api_key=SECRET, timeout=5)
    shown = [repr(client), str(vars(client)), str(vars(getattr(client, "wrapped", client))), repr(client.submit("d"))]
    for task in ("a", "b", "c"):
        with pytest.raises(RemoteError) as info:
            client.call(task)
        shown += [str(info.value), repr(info.value), "".join(traceback.format_exception(info.value))]
    for bad in (SECRET + "\r\nX-Injected: 1", SECRET + " x", SECRET + "é"):
        with pytest.raises(ValueError) as info:
            make_client(gateway.url, api_key=bad)
        shown.append("".join(traceback.format_exception(type(info.value), info.value, info.value.__traceback__)))
    shown.append(caplog.text)
    assert all(SECRET not in text for text in shown)
    assert {r.headers["Authorization"] for r in gateway.requests} == {f"Bearer {SECRET}"}


def _traceback_with_locals(error: BaseException) -> str:
    """The traceback as a debugging tool shows it: every frame's local variables included."""
    return "".join(traceback.TracebackException.from_exception(error, capture_locals=True).format())


def test_unauthorized_and_forbidden(gateway: FakeGateway, make_client: Callable[..., Any]) -> None:
    gateway.route("POST", "/api/work", (401, {"error": {"type": "Unauthorized", "message": "missing API key"}}, {}))
    with pytest.raises(Unauthorized) as info:
        make_client(gateway.url).call("work")
    assert info.value.status_code == 401 and isinstance(info.value, RemoteError)
    assert "missing API key" in str(info.value) and "NEUTRINO_API_KEY" in str(info.value)  # says how to send one
    with pytest.raises(Unauthorized) as info:
        make_client(gateway.url, api_key="revoked").call("work")
    assert str(info.value) == "missing API key"
    gateway.route("GET", "/tasks", (403, {"error": {"type": "Forbidden", "message": "the key lacks scope read"}}, {}))
    with pytest.raises(Forbidden, match="lacks scope read") as info:
        make_client(gateway.url, api_key="submit-only").list_tasks()
    assert info.value.status_code == 403
    assert len(gateway.requests) == 3  # refusals of the key are not retried


def test_invalid_headers_are_refused(make_client: Callable[..., Any]) -> None:
    with pytest.raises(ValueError, match="X-Trace"):
        make_client("http://127.0.0.1:1", headers={"X-Trace": "a\r\nInjected: yes"})
    with pytest.raises(ValueError):
        make_client("http://127.0.0.1:1", headers={"Bad Name": "x"})


# -- 429 and 503 backoff ----------------------------------------------------------------------------

RATE_LIMITED = {"error": {"type": "RateLimited", "message": "over quota", "limit": {"requests": 10, "per_secs": 60}}}


def test_rate_limited_call_is_retried_after_retry_after(gateway: FakeGateway, client: Any, pauses: List[float]) -> None:
    gateway.sequence(
        "POST", "/api/echo", (429, RATE_LIMITED, {"Retry-After": "2"}), (200, record("completed", result=5), {})
    )
    assert client.call("echo", x=5) == 5
    assert pauses == [2.0]
    assert [r.body for r in gateway.requests] == [{"args": {"x": 5}}] * 2
    assert len({r.connection for r in gateway.requests}) == 1  # over the same keep-alive connection


def test_retry_after_as_http_date(gateway: FakeGateway, client: Any, pauses: List[float]) -> None:
    later = email.utils.formatdate(time.time() + 3, usegmt=True)
    earlier = email.utils.formatdate(time.time() - 60, usegmt=True)
    gateway.sequence(
        "GET",
        "/tasks/t1",
        (429, RATE_LIMITED, {"Retry-After": later}),
        (429, RATE_LIMITED, {"Retry-After": earlier}),
        (200, record("completed"), {}),
    )
    assert client.get_task("t1")["status"] == "completed"
    assert len(pauses) == 2 and 1.0 < pauses[0] <= 3.0 and pauses[1] == 0.0


def test_rate_limited_after_the_retries(
    gateway: FakeGateway, make_client: Callable[..., Any], pauses: List[float]
) -> None:
    gateway.route("POST", "/api/echo", (429, RATE_LIMITED, {"Retry-After": "1"}))
    with pytest.raises(RateLimited) as info:
        make_client(gateway.url, timeout=5, max_retries=2).call("echo")
    error = info.value
    assert (error.status_code, error.retry_after, error.limit) == (429, 1.0, {"requests": 10, "per_secs": 60})
    assert "over quota" in str(error) and isinstance(error, RemoteError)
    assert pauses == [1.0, 1.0] and len(gateway.requests) == 3


def test_no_retry_when_the_wait_outlasts_the_timeout(
    gateway: FakeGateway, make_client: Callable[..., Any], pauses: List[float]
) -> None:
    gateway.route("POST", "/api/echo", (429, RATE_LIMITED, {"Retry-After": "60"}))
    with pytest.raises(RateLimited) as info:
        make_client(gateway.url, timeout=5).call("echo")
    assert info.value.retry_after == 60.0
    assert pauses == [] and len(gateway.requests) == 1


def test_max_retries_zero_turns_retrying_off(
    gateway: FakeGateway, make_client: Callable[..., Any], pauses: List[float]
) -> None:
    gateway.route("POST", "/api/echo", (429, RATE_LIMITED, {"Retry-After": "1"}))
    with pytest.raises(RateLimited):
        make_client(gateway.url, max_retries=0).call("echo")
    assert pauses == [] and len(gateway.requests) == 1


def test_rate_limited_without_retry_after_backs_off(gateway: FakeGateway, client: Any, pauses: List[float]) -> None:
    gateway.route("GET", "/tasks", (429, {"error": {"message": "slow down"}}, {}))
    with pytest.raises(RateLimited) as info:
        client.list_tasks()
    assert info.value.retry_after is None and info.value.limit is None
    assert len(pauses) == 3 and 0.25 <= pauses[0] <= 0.5 and 0.5 <= pauses[1] <= 1 and 1 <= pauses[2] <= 2


def test_submit_retried_after_503_with_the_same_idempotency_key(
    gateway: FakeGateway, client: Any, pauses: List[float]
) -> None:
    """NATS unreachable: the gateway answers 503 + Retry-After and stored nothing, so the submit goes again."""
    refused = {"error": {"type": "QueueUnavailable", "message": "queue down", "task_id": "t0", "status": "failed"}}
    queued = {"task_id": "t3", "status": "queued", "poll_url": "/tasks/t3"}
    gateway.sequence("POST", "/api/report", *[(503, refused, {"Retry-After": "2"})] * 2, (202, queued, {}))
    handle = client.submit_with("report", {"dataset": "q3"}, idempotency_key="order-7")
    assert handle.task_id == "t3" and pauses == [2.0, 2.0]
    assert [r.headers["Idempotency-Key"] for r in gateway.requests] == ["order-7"] * 3
    assert [r.body for r in gateway.requests] == [{"args": {"dataset": "q3"}}] * 3
    gateway.route("POST", "/api/report", (202, queued, {}))
    client.submit("report", dataset="q4")
    assert "Idempotency-Key" not in gateway.requests[-1].headers


def test_503_refusal_of_a_submit_is_service_unavailable(gateway: FakeGateway, make_client: Callable[..., Any]) -> None:
    """The gateway's 503 body names the task it recorded as failed; that is a refusal, not a task failure."""
    refused = {"error": {"type": "QueueUnavailable", "message": "queue down", "task_id": "t0", "status": "failed"}}
    gateway.route("POST", "/api/report", (503, refused, {"Retry-After": "2"}))
    client = make_client(gateway.url, max_retries=0)
    for submit in (lambda: client.submit("report"), lambda: client.call("report")):
        with pytest.raises(ServiceUnavailable) as info:
            submit()
        assert (info.value.retry_after, info.value.task_id) == (2.0, "t0")


def test_503_without_retry_after_is_not_retried(gateway: FakeGateway, client: Any, pauses: List[float]) -> None:
    gateway.route("GET", "/tasks/t1", (503, {"error": {"type": "TaskLogUnavailable", "message": "disk"}}, {}))
    with pytest.raises(ServiceUnavailable):
        client.get_task("t1")
    assert pauses == [] and len(gateway.requests) == 1


def test_wait_rides_out_a_rate_limited_poll(gateway: FakeGateway, client: Any, pauses: List[float]) -> None:
    gateway.sequence(
        "GET", "/tasks/t1", (429, RATE_LIMITED, {"Retry-After": "1"}), (200, record("completed", result="ok"), {})
    )
    assert handle_for(client, "t1").wait(timeout=5) == "ok"
    assert pauses == [1.0] and len(gateway.requests) == 2


# -- retry ------------------------------------------------------------------------------------------


def test_retry_a_failed_task(gateway: FakeGateway, client: Any) -> None:
    again = {"task_id": "t2", "retry_of": "t1", "function": "work", "status": "queued", "poll_url": "/tasks/t2"}
    gateway.route("POST", "/tasks/t1/retry", (202, again, {"X-Neutrino-Retry-Of": "t1"}))
    handle = handle_for(client, "t1").retry()
    assert (handle.task_id, handle.record["retry_of"]) == ("t2", "t1")
    assert gateway.requests[0].method == "POST" and gateway.requests[0].body is None
    conflict = {"error": {"type": "NotRetryable", "message": "task t1 is completed", "task_id": "t1"}}
    gateway.route("POST", "/tasks/t1/retry", (409, conflict, {}))
    with pytest.raises(RemoteError, match="task t1 is completed") as info:
        handle_for(client, "t1").retry()
    assert (info.value.status_code, info.value.task_id) == (409, "t1")

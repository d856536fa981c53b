"""The ASGI fallback (issue 15 part 2): a real FastAPI app from PyPI mounted with `App.mount`, served by an HTTP worker
of the fast pool on its event loop, reached through the gateway for every path that is not a Neutrino route.

Runs in both task-log modes (the gateway and worker use the session's NEUTRINO_E2E_TASK_LOG)."""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import (APPS_DIR, BIN_DIR, GATEWAY_BIN, NATS_SERVER_BIN, NATS_TASK_LOG, PYTHON_SDK, REPO_ROOT, _server_env,
                      assert_error_body, build_manifest, http_request, post_task, scrape, wait_for)

pytest.importorskip("fastapi", reason="fastapi is not installed (make venv installs the test extras)")

ASGI_APP = APPS_DIR / "asgi_app.py"


def _venv() -> str:
    """The venv the tests run in: the worker imports fastapi from it (VIRTUAL_ENV)."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("the e2e tests must run from a virtualenv with fastapi (make venv)")
    return sys.prefix


def _asgi_stack(launcher, queue_stack, marks: Path, name: str, worker_args=(), gateway_args=()):
    """nats-server, one HTTP worker of pool fast serving the app (its marks in `marks`), and a gateway with it as a
    static member."""
    stack = queue_stack(app=ASGI_APP, name=name, gateway=False)
    worker = launcher.worker(
        ASGI_APP, stack.db_path, log_dir=stack.dir, worker_id=f"{name}-w1", concurrency=2, nats_url=stack.nats.url,
        task_log=stack.task_log, extra_args=worker_args,
        env_extra={"VIRTUAL_ENV": _venv(), "NEUTRINO_E2E_ASGI_MARKS": str(marks)})
    stack.workers.append(worker)
    stack.start_gateway(http_pools={"fast": [worker.url]}, extra_args=gateway_args)
    stack.marks = marks
    stack.asgi_worker = worker
    return stack


@pytest.fixture
def asgi_stack(launcher, queue_stack, tmp_path):
    return _asgi_stack(launcher, queue_stack, tmp_path / "marks.txt", "asgi")


def _get(stack, path: str, **kw):
    return http_request("GET", f"{stack.url}{path}", **kw)


def _marks(stack) -> str:
    """The app's marks so far ("" before the first)."""
    return stack.marks.read_text() if stack.marks.exists() else ""


def _send_get(base_url: str, path: str) -> socket.socket:
    """A raw `GET <base path><path>` sent on a new connection, its answer left unread: the test hangs up by closing it."""
    parts = urlsplit(base_url)
    s = socket.create_connection((parts.hostname, parts.port), timeout=30)
    s.sendall(f"GET {parts.path}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return s


def test_requests_reach_the_app(asgi_stack):
    s = asgi_stack
    # Path and query parameters.
    r = _get(s, "/items/42?q=blue%20ink")
    assert r.status == 200, r
    assert r.json() == {"item_id": 42, "q": "blue ink"}
    # FastAPI's own validation error (422) comes back as the app made it.
    r = _get(s, "/items/not-a-number")
    assert r.status == 422 and r.json()["detail"][0]["loc"] == ["path", "item_id"], r
    # A JSON body and an async endpoint with a dependency (a header it requires).
    r = http_request("POST", f"{s.url}/orders", json_body={"item": "pen", "quantity": 3}, headers={"X-User": "ada"})
    assert r.status == 201, r
    assert r.json() == {"item": "pen", "quantity": 3, "user": "ada"}
    r = http_request("POST", f"{s.url}/orders", json_body={"item": "pen"})
    assert r.status == 401 and r.json() == {"detail": "X-User header required"}, r
    # A 404 the app itself answered (its body, not Neutrino's error shape), and a path no route of the app has.
    r = _get(s, "/missing")
    assert r.status == 404 and r.json() == {"detail": "nothing here"}, r
    r = _get(s, "/no/such/path")
    assert r.status == 404 and r.json() == {"detail": "Not Found"}, r
    # The task beside it is Neutrino's.
    r = post_task(s.url, "double", {"x": 21})
    assert r.status == 200 and r.json()["result"] == 42, r


def test_scope_and_lifespan_state(asgi_stack):
    s = asgi_stack
    r = _get(s, "/scope?a=1&b=%2F", headers={"X-Custom": "yes"})
    assert r.status == 200, r
    scope = r.json()
    assert scope["method"] == "GET" and scope["path"] == "/scope" and scope["raw_path"] == "/scope", scope
    assert scope["query"] == "a=1&b=%2F" and scope["root_path"] == "" and scope["scheme"] == "http", scope
    assert scope["http_version"] == "1.1" and scope["spec_version"] == "2.4", scope
    assert scope["client"][0] == "127.0.0.1" and scope["client"][1] > 0, scope
    gateway_port = urlsplit(s.url).port
    assert scope["headers"]["host"] == f"127.0.0.1:{gateway_port}", scope
    assert scope["headers"]["x-custom"] == "yes", scope
    assert not any(k.startswith("x-neutrino-") for k in scope["headers"]), scope
    assert "connection" not in scope["headers"], scope  # hop-by-hop headers are not forwarded
    assert scope["greeting"] == "hello from lifespan", scope  # lifespan state reaches requests


def test_streaming_response_is_relayed_as_it_comes(asgi_stack):
    s = asgi_stack
    parts = urlsplit(s.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", "/stream")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Transfer-Encoding") == "chunked"
        # The first chunk arrives while the app is still waiting for /release: nothing buffers the stream whole.
        assert resp.readline() == b"first\n"
        r = _get(s, "/release")
        assert r.status == 200, r
        assert resp.read() == b"last\n"
    finally:
        conn.close()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def test_a_large_stream_read_slowly_arrives_whole(asgi_stack):
    """64 MiB streamed through both hops to a client that stops for 2 s after the first chunk, then reads in small
    steps: back-pressure holds it (neither the gateway nor the worker buffers the stream: their memory stays far
    below its size while the client waits), reading resumes, and every byte arrives in order."""
    s = asgi_stack
    parts = urlsplit(s.url)
    gateway_before, worker_before = _rss_mb(s.gateway.pid), _rss_mb(s.asgi_worker.pid)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("GET", "/big?mb=64")
        resp = conn.getresponse()
        assert resp.status == 200
        received = bytearray(resp.read(65536))
        time.sleep(2)  # the client stops reading: the app must stop producing
        grown = (_rss_mb(s.gateway.pid) - gateway_before, _rss_mb(s.asgi_worker.pid) - worker_before)
        assert grown[0] < 32 and grown[1] < 32, f"RSS grew by {grown} MiB while the client paused"
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            received += chunk
            if len(received) < 8 << 20:
                time.sleep(0.01)  # a slow client for the first 8 MiB
    finally:
        conn.close()
    assert len(received) == 64 << 20
    for i in range(64 * 16):
        assert received[i * 65536] == i % 256 and received[i * 65536 + 65535] == i % 256, i


def test_many_requests_wait_for_few_slots(launcher, queue_stack, tmp_path):
    """200 requests at once on a worker with 4 coroutine slots: they wait their turn, and all are answered."""
    stack = _asgi_stack(launcher, queue_stack, tmp_path / "marks.txt", "asgi-slots", worker_args=["--max-coroutines", "4"])
    from concurrent.futures import ThreadPoolExecutor

    def order(i: int) -> tuple:
        r = http_request("POST", f"{stack.url}/orders", json_body={"item": f"i{i}", "quantity": i},
                         headers={"X-User": "u"}, timeout=120)
        return r.status, r.json()

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(order, range(200)))
    assert all(status == 201 for status, _ in results), [r for r in results if r[0] != 201][:3]
    assert [body["quantity"] for _, body in results] == list(range(200))


def test_client_disconnect_reaches_the_app(asgi_stack):
    s = asgi_stack
    parts = urlsplit(s.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("GET", "/forever")
    resp = conn.getresponse()
    assert resp.readline() == b"tick 0\n"
    conn.sock.close()  # the client goes away mid-stream
    conn.close()
    wait_for(lambda: "stream-ended" in _marks(s), timeout=30,
             message="the app's generator to see the client's disconnect")
    # The worker serves on.
    assert _get(s, "/items/1").status == 200


def test_a_request_whose_client_leaves_while_it_waits_for_room_is_not_forwarded(launcher, queue_stack, tmp_path):
    """--worker-connections 1: while a streamed answer holds the only connection to the worker, the next request
    waits in the gateway's line; its client hangs up. The request leaves the line and never reaches the app, and
    the next one does."""
    stack = _asgi_stack(launcher, queue_stack, tmp_path / "marks.txt", "asgi-left", gateway_args=["--worker-connections", "1"])
    gateway, worker = stack.gateway, stack.asgi_worker
    parts = urlsplit(stack.url)
    holder = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        holder.request("GET", "/stream")
        held = holder.getresponse()
        assert held.readline() == b"first\n"
        s = _send_get(stack.url, "/visit/left")

        def waiting() -> int:
            pools = http_request("GET", f"{stack.url}/pools").json()["pools"]
            return next(p for p in pools if p["name"] == "fast")["waiting_calls"]
        wait_for(lambda: waiting() == 1, timeout=30, interval=0.05, message="the request to wait for room")
        s.close()
        wait_for(lambda: "a request for the mounted app was given up: its client left" in gateway.output, timeout=30,
                 message="the gateway to drop the request whose client left")
        # /pools is a snapshot taken about once a second.
        wait_for(lambda: waiting() == 0, timeout=30, interval=0.1, message="the line to be empty")
        # Released on the worker directly: the gateway's only connection is the stream's.
        assert http_request("GET", f"{worker.url}/_neutrino_asgi/release").status == 200
        assert held.read() == b"last\n"
    finally:
        holder.close()
    assert _get(stack, "/visit/after").json() == {"visited": "after"}
    seen = stack.marks.read_text()
    assert "visit-after" in seen and "visit-left" not in seen, seen


@pytest.mark.parametrize("route", ["gateway", "direct"])
def test_a_client_that_leaves_before_the_answer_is_told_to_the_app(asgi_stack, route: str):
    """The app awaits `receive()` before it answers; its client hangs up. Through the gateway (which then closes its
    connection to the worker, as nginx does) or on the worker directly, the app gets `http.disconnect` at once rather
    than at --asgi-head-timeout, and the worker is not taken for a crashed one."""
    s = asgi_stack
    base = s.url if route == "gateway" else f"{s.asgi_worker.url}/_neutrino_asgi"
    client = _send_get(base, f"/until-disconnect/{route}")
    wait_for(lambda: f"waiting-{route}" in _marks(s), timeout=30, message="the app to be awaiting receive()")
    client.close()
    wait_for(lambda: f"disconnect-{route}" in _marks(s), timeout=20, message="the app to be told its client left")
    if route == "gateway":
        wait_for(lambda: "a request for the mounted app was given up: its client left" in s.gateway.output, timeout=10,
                 message="the gateway to log the request it gave up")
        assert "dropped the connection while serving" not in s.gateway.output
    # Both serve on, and the gateway still sends to the worker (its circuit stayed closed).
    for _ in range(3):
        assert _get(s, "/items/1").status == 200


def test_a_forwarded_request_whose_client_leaves_while_it_waits_for_a_slot_is_not_started(launcher, queue_stack, tmp_path):
    """One coroutine slot, held by a request that waits for its client to leave; a second request reaches the worker
    and waits there for the slot; its client hangs up. The gateway closes that request's connection to the worker,
    the worker drops it from its queue, and the app never sees it; once the slot is free the next request runs."""
    stack = _asgi_stack(launcher, queue_stack, tmp_path / "marks.txt", "asgi-slot-left", worker_args=["--max-coroutines", "1"])
    queued = lambda: scrape(stack.asgi_worker.url).value("neutrino_worker_tasks_queued", pool="fast")  # noqa: E731
    holder = _send_get(stack.url, "/until-disconnect/holder")
    try:
        wait_for(lambda: "waiting-holder" in _marks(stack), timeout=30, message="the slot to be taken")
        left = _send_get(stack.url, "/visit/left")
        wait_for(lambda: queued() == 1, timeout=30, interval=0.05, message="the request to wait in the worker for the slot")
        left.close()
        wait_for(lambda: "was not started: its client left while it waited for a slot" in stack.asgi_worker.output,
                 timeout=30, message="the worker to drop the request whose client left")
        assert queued() == 0
        wait_for(lambda: "a request for the mounted app was given up: its client left" in stack.gateway.output,
                 timeout=10, message="the gateway to log the request it gave up")
    finally:
        holder.close()
    wait_for(lambda: "disconnect-holder" in _marks(stack), timeout=30, message="the slot's holder to be told")
    assert _get(stack, "/visit/after").json() == {"visited": "after"}
    seen = _marks(stack)
    assert "visit-after" in seen and "visit-left" not in seen, seen


def test_app_exception_and_websocket(asgi_stack):
    s = asgi_stack
    r = _get(s, "/boom")
    assert r.status == 500, r
    wait_for(lambda: "the app failed on purpose" in s.asgi_worker.output, timeout=30,
             message="the app's traceback in the worker's log")
    r = _get(s, "/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    body = assert_error_body(r, 501, "NotSupported")
    assert "WebSocket" in body["error"]["message"], body


def test_neutrino_routes_win_and_conflicts_are_reported(asgi_stack):
    s = asgi_stack
    # The app's /healthz and FastAPI's /openapi.json are shadowed: Neutrino answers, and said so at start-up.
    assert _get(s, "/healthz").json() == {"status": "ok"}
    manifest = _get(s, "/openapi.json").json()
    assert "x-neutrino-asgi" in manifest and "/api/double" in manifest["paths"]
    out = s.gateway.output
    assert re.search(r"GET /healthz is shadowed by Neutrino's GET /healthz", out), out[-3000:]
    assert re.search(r"GET /openapi.json is shadowed by Neutrino's GET /openapi.json", out), out[-3000:]
    # A Neutrino path with another method stays Neutrino's (405), never the app's.
    r = http_request("PUT", f"{s.url}/tasks", json_body={})
    assert_error_body(r, 405, "MethodNotAllowed")


def test_metrics_per_route(asgi_stack):
    s = asgi_stack
    assert _get(s, "/items/7").status == 200
    assert _get(s, "/missing").status == 404
    assert _get(s, "/nowhere").status == 404
    text = _get(s, "/metrics").body.decode()
    assert 'neutrino_asgi_requests_total{route="/items/{item_id}",method="GET",code="200"}' in text, text[-2000:]
    assert 'neutrino_asgi_requests_total{route="/missing",method="GET",code="404"}' in text
    assert 'neutrino_asgi_requests_total{route="unmatched",method="GET",code="404"}' in text
    assert 'neutrino_asgi_request_duration_seconds_count{route="/items/{item_id}",method="GET"}' in text


def test_lifespan_once_per_worker(asgi_stack):
    s = asgi_stack
    worker = s.asgi_worker
    assert _get(s, "/items/1").status == 200
    pid = worker.pid
    assert s.marks.read_text().splitlines() == [f"startup {pid}"]
    worker.stop()
    assert worker.proc.returncode == 0, worker.output[-2000:]
    lines = s.marks.read_text().splitlines()
    assert lines == [f"startup {pid}", f"shutdown {pid}"], lines


def test_failing_startup_stops_the_worker(launcher, tmp_path):
    """A lifespan startup that raises stops the worker before it listens, with the app's traceback."""
    app = tmp_path / "bad_startup.py"
    app.write_text(
        "from contextlib import asynccontextmanager\n"
        "from fastapi import FastAPI\n"
        "from neutrino import App\n"
        "@asynccontextmanager\n"
        "async def lifespan(api):\n"
        "    raise ConnectionError('database unreachable at start-up')\n"
        "    yield\n"
        "app = App('bad')\n"
        "app.mount(FastAPI(lifespan=lifespan))\n")
    d = launcher.new_dir("asgi-bad")
    worker = launcher.worker(app, d / "tasks.sqlite", log_dir=d, worker_id="asgi-bad", wait=False,
                             task_log="sqlite", env_extra={"VIRTUAL_ENV": _venv()})
    code = worker.wait_exit()
    assert code != 0
    assert "lifespan startup failed" in worker.output, worker.output[-3000:]
    assert "database unreachable at start-up" in worker.output and "Traceback" in worker.output
    assert "listening on" not in worker.output


def test_an_app_that_never_answers_is_cancelled(launcher, tmp_path):
    """The worker's --asgi-head-timeout: a request without an answer is cancelled (CancelledError in the app), answered
    504, and its coroutine slot comes back."""
    marks = tmp_path / "marks.txt"
    d = launcher.new_dir("asgi-hang")
    worker = launcher.worker(ASGI_APP, d / "tasks.sqlite", log_dir=d, worker_id="asgi-hang", task_log="sqlite",
                             extra_args=["--asgi-head-timeout", "1", "--max-coroutines", "1"],
                             env_extra={"VIRTUAL_ENV": _venv(), "NEUTRINO_E2E_ASGI_MARKS": str(marks)})
    try:
        r = http_request("GET", f"{worker.url}/_neutrino_asgi/hang", timeout=60)
        assert_error_body(r, 504, "TimeoutError")
        wait_for(lambda: "hang-cancelled" in (marks.read_text() if marks.exists() else ""), timeout=30,
                 message="CancelledError in the app's coroutine")
        # The only slot is free again.
        assert http_request("GET", f"{worker.url}/_neutrino_asgi/items/5", timeout=60).json()["item_id"] == 5
    finally:
        worker.stop()


def test_sigterm_cuts_an_endless_stream_short_after_the_grace(launcher, tmp_path):
    """A stopping worker gives the app's requests --drain-grace, then cuts an endless stream short (CancelledError in
    the app), so it exits promptly and still runs the lifespan shutdown."""
    marks = tmp_path / "marks.txt"
    d = launcher.new_dir("asgi-drain")
    worker = launcher.worker(ASGI_APP, d / "tasks.sqlite", log_dir=d, worker_id="asgi-drain", task_log="sqlite",
                             extra_args=["--drain-grace", "1", "--stop-delay", "0.1"],
                             env_extra={"VIRTUAL_ENV": _venv(), "NEUTRINO_E2E_ASGI_MARKS": str(marks)})
    parts = urlsplit(worker.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("GET", "/_neutrino_asgi/forever")
        resp = conn.getresponse()
        assert resp.readline() == b"tick 0\n"
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.wait_exit(timeout=30) == 0, worker.output[-3000:]
        with pytest.raises(http.client.IncompleteRead):
            resp.read()  # cut short: no last chunk
    finally:
        conn.close()
    lines = marks.read_text().split("\n")
    assert any(line.startswith("stream-ended") for line in lines) and any(line.startswith("shutdown") for line in lines)
    assert "cut short at shutdown" in worker.output


def test_dashboard_moves_under_prefix(asgi_stack):
    s = asgi_stack
    r = _get(s, "/_neutrino")
    assert r.status == 301 and r.headers["location"] == "/_neutrino/", r
    # `/` is the app's (FastAPI has no route there: its 404).
    r = _get(s, "/")
    assert r.status == 404 and r.json() == {"detail": "Not Found"}, r


def test_body_over_the_limit(asgi_stack):
    s = asgi_stack
    big = json.dumps({"item": "x" * (2 << 20)}).encode()
    r = http_request("POST", f"{s.url}/orders", body=big, headers={"X-User": "ada"})
    assert_error_body(r, 413, "PayloadTooLarge")


def test_worker_direct_has_no_asgi_without_mount(launcher, tmp_path):
    """A worker of another pool than the app's does not serve it (its prefix is an unknown route there)."""
    d = launcher.new_dir("asgi-other-pool")
    worker = launcher.worker(ASGI_APP, d / "tasks.sqlite", log_dir=d, worker_id="asgi-other", pool="other",
                             task_log="sqlite", env_extra={"VIRTUAL_ENV": _venv()})
    try:
        r = http_request("GET", f"{worker.url}/_neutrino_asgi/items/1")
        assert r.status == 404, r
    finally:
        worker.stop()


@pytest.mark.skipif(NATS_TASK_LOG, reason="one task-log mode is enough for access control")
def test_api_keys_apply_to_forwarded_requests(launcher, tmp_path):
    """With --api-keys a forwarded request needs a key like Neutrino's routes: `read` for GET, `submit` for POST; the
    dashboard's files stay open."""
    d = launcher.new_dir("asgi-keys")
    keys = d / "keys.json"

    def create(name: str, scopes: str) -> str:
        out = subprocess.run([sys.executable, "-m", "neutrino.cli", "keys", "create", "--name", name, "--scopes", scopes,
                              "--file", str(keys)], check=True, capture_output=True, text=True,
                             env={**_server_env(), "PYTHONPATH": str(PYTHON_SDK)})
        return out.stdout.strip()

    reader, submitter = create("dash", "read"), create("ci", "submit,read")
    manifest = build_manifest(ASGI_APP, d / "openapi.json")
    db = d / "tasks.sqlite"
    worker = launcher.worker(ASGI_APP, db, log_dir=d, worker_id="asgi-keys-w", task_log="sqlite",
                             env_extra={"VIRTUAL_ENV": _venv()})
    argv = [str(GATEWAY_BIN), "--manifest", str(manifest), "--http-pool", f"fast={worker.url}",
            "--task-log", f"sqlite:{db}", "--host", "127.0.0.1", "--port", "0", "--api-keys", str(keys)]
    url = launcher.spawn("gateway-asgi-keys", argv, env=_server_env(), log_dir=d).wait_listening()

    def auth(key: str) -> dict:
        return {"Authorization": f"Bearer {key}"}

    assert_error_body(http_request("GET", f"{url}/items/1"), 401, "Unauthorized")
    assert http_request("GET", f"{url}/items/1", headers=auth(reader)).status == 200
    order = {"item": "pen"}
    assert_error_body(http_request("POST", f"{url}/orders", json_body=order, headers={**auth(reader), "X-User": "a"}),
                      403, "Forbidden")
    r = http_request("POST", f"{url}/orders", json_body=order, headers={**auth(submitter), "X-User": "a"})
    assert r.status == 201, r
    # The dashboard's redirect is not the app's and needs no key.
    assert http_request("GET", f"{url}/_neutrino").status == 301


@pytest.mark.skipif(NATS_TASK_LOG, reason="neutrino up picks its own task log; one session mode is enough")
def test_neutrino_up_runs_the_fastapi_example(tmp_path):
    """`neutrino up examples/fastapi_app.py` from the test venv: the FastAPI app, its sync task and its queued
    task through one gateway, the dashboard under /_neutrino/, and a clean stop (lifespan shutdown) on Ctrl-C."""
    if not (os.path.isfile(NATS_SERVER_BIN) and os.access(NATS_SERVER_BIN, os.X_OK)):
        pytest.skip("nats-server is not installed (Debian package nats-server)")
    _venv()
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    log = open(tmp_path / "up.log", "w+", encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "neutrino", "up", str(REPO_ROOT / "examples" / "fastapi_app.py"), "--bin-dir",
         str(BIN_DIR), "--state-dir", str(tmp_path / "state"), "--host", "127.0.0.1", "--port", str(ports[0]),
         "--nats-port", str(ports[1]), "--fast-workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(tmp_path),
        env=_server_env({"PYTHONPATH": str(PYTHON_SDK), "PYTHONUNBUFFERED": "1"}))
    url = f"http://127.0.0.1:{ports[0]}"

    def output() -> str:
        return (tmp_path / "up.log").read_text(errors="replace")

    try:
        wait_for(lambda: "is up" in output() or proc.poll() is not None, timeout=120,
                 message=lambda: f"neutrino up's banner:\n{output()[-4000:]}")
        assert proc.poll() is None, output()[-4000:]
        assert "/_neutrino/" in output() and "fastapi.applications.FastAPI on pool fast" in output()
        r = http_request("GET", f"{url}/items/3?q=blue")
        assert r.status == 200 and r.json() == {"item_id": 3, "name": "paper", "q": "blue"}, r
        r = post_task(url, "price", {"amount": 10})
        assert r.status == 200 and r.json()["result"]["amount"] == 12.0, r
        r = post_task(url, "report", {"items": 2})
        assert r.status == 202, r
        done = http_request("GET", f"{url}/tasks/{r.json()['task_id']}?wait=30", timeout=60).json()
        assert done["status"] == "completed" and done["result"] == {"items": 2, "total": 2.4}, done
        page = http_request("GET", f"{url}/_neutrino/")
        assert page.status == 200 and b"<html" in page.body.lower(), page
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        code = proc.wait(90)
        log.close()
    assert code == 0, output()[-4000:]
    assert "lifespan shutdown is complete" in output(), output()[-4000:]

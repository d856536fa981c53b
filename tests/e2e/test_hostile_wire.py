"""The hostile wire-level suite: raw sockets against a real gateway (and a real worker) started with small limits.

Every case asserts the status (and error type) the gateway answers with: slowloris heads and bodies (408), a
connection that never speaks (408), Content-Length with Transfer-Encoding and broken chunking (400), huge and too many
headers (431), deep JSON nesting, invalid UTF-8 and NUL bytes in bodies, paths, queries and headers (400), and the
bounded resources: connections, long-poll waiters, live-feed streams (503 + Retry-After), the worker connection pool,
the worker answer size (502), the /tasks page size. The counters in /metrics must show the refusals. The number of
cases is reported at the end of the run.

Nothing asserts on speed: every wait is bounded by a socket timeout or a bounded loop, and fails there."""
from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import pytest

from conftest import (
    EXAMPLE_APP,
    GATEWAY_BIN,
    Launcher,
    _server_env,
    assert_error_body,
    http_request,
    scrape,
    uuid7,
    wait_for,
)

# Its gateways use their own SQLite task log in both task-log modes: one run is enough.
pytestmark = pytest.mark.sqlite_task_log_only("the hostile suite does not depend on the task-log mode")

HEADER_TIMEOUT_S = 1
BODY_TIMEOUT_S = 2
SOCKET_BOUND_S = 60  # no answer within this is a failure, not a measurement

CASES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _report_cases(request):
    yield
    line = f"\nhostile wire suite: {len(CASES)} cases checked"
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(line)
    else:
        print(line)


class Hostile:
    """A gateway (small limits) in front of one worker, on its own task log."""

    def __init__(self, launcher: Launcher, manifest: Path, extra: list[str]):
        self.dir = launcher.new_dir("hostile")
        self.db = self.dir / "tasks.sqlite"
        self.worker = launcher.worker(EXAMPLE_APP, self.db, log_dir=self.dir, worker_id="hostile-w1", concurrency=2,
                                      task_log="sqlite")
        argv = [str(GATEWAY_BIN), "--manifest", str(manifest), "--http-pool", f"fast={self.worker.url}",
                "--task-log", f"sqlite:{self.db}", "--host", "127.0.0.1", "--port", "0", *extra]
        self.gateway = launcher.spawn(f"gateway-hostile-{self.dir.name}", argv, env=_server_env(), log_dir=self.dir)
        self.url = self.gateway.wait_listening()
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname, parts.port

    def connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=SOCKET_BOUND_S)

    def stop(self) -> None:
        self.gateway.stop()
        self.worker.stop()


def exchange(h: Hostile, data: bytes, *, trickle: list[bytes] = (), pause: float = 0.3) -> bytes:
    """Sends `data` (then `trickle`, a piece per `pause`), reads until the server closes; returns what it sent."""
    s = h.connect()
    try:
        if data:
            s.sendall(data)
        for piece in trickle:
            time.sleep(pause)
            try:
                s.sendall(piece)
            except OSError:
                break
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    assert raw.startswith(b"HTTP/1."), f"no HTTP response: {raw[:200]!r}"
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return status, headers, body


def expect(case: str, raw: bytes, status: int, error_type: Optional[str] = None) -> dict[str, str]:
    import json

    got, headers, body = parse(raw)
    assert got == status, f"{case}: expected {status}, got {got}: {raw[:400]!r}"
    if error_type is not None:
        err = json.loads(body)["error"]
        assert err["type"] == error_type and err["message"], f"{case}: {body!r}"
    CASES.append(case)
    return headers


@pytest.fixture(scope="module")
def hostile(launcher: Launcher, example_manifest) -> Hostile:
    h = Hostile(launcher, example_manifest, [
        "--header-timeout", str(HEADER_TIMEOUT_S), "--body-timeout", str(BODY_TIMEOUT_S), "--max-header-bytes", "8192",
        "--max-body-bytes", "65536", "--max-long-poll-waiters", "2", "--max-sse-subscribers", "2",
        "--max-worker-answer-bytes", "4096", "--max-list-bytes", "8192", "--worker-connections", "1",
        "--max-waiting-calls", "1"])
    yield h
    h.stop()


# ------------------------------------------------------------------------------------------------ slow clients

def test_connection_that_never_speaks_gets_408(hostile: Hostile):
    expect("silent connection", exchange(hostile, b""), 408, "RequestTimeout")


def test_slowloris_head_gets_408(hostile: Hostile):
    raw = exchange(hostile, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", trickle=[b"X-Slow: 1\r\n"] * 40)
    expect("slowloris head", raw, 408, "RequestTimeout")


def test_slowloris_second_request_on_a_kept_alive_connection(hostile: Hostile):
    raw = exchange(hostile, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", trickle=[b"G", b"ET /he", b"al"] + [b"x"] * 40)
    first, _, rest = raw.partition(b'{"status":"ok"}')
    assert parse(first + b'{"status":"ok"}')[0] == 200
    expect("slowloris second request", rest, 408, "RequestTimeout")


def test_slow_body_gets_408(hostile: Hostile):
    raw = exchange(hostile, b'POST /api/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{"args":',
                   trickle=[b" "] * 30)
    headers = expect("slow body", raw, 408, "RequestTimeout")
    assert headers.get("connection") == "close"


def test_request_pipelined_behind_a_running_call_sends_its_body_slowly(launcher: Launcher, example_manifest):
    """A request pipelined behind a sync call that runs longer than --body-timeout, whose body arrives in two pieces
    while the call runs, is read as it arrives: no 408 for a body that only a paused read kept waiting, and both
    requests are answered, in order."""
    h = Hostile(launcher, example_manifest, ["--body-timeout", "1"])
    s = h.connect()
    try:
        first, second = b'{"args":{"seconds":1.6}}', b'{"args":{"a":2,"b":3}}'
        head = "POST /api/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n"
        s.sendall(head.format("sleepy", len(first)).encode() + first)
        time.sleep(0.1)
        s.sendall(head.format("add", len(second)).encode() + second[:6])
        time.sleep(0.3)
        s.sendall(second[6:])
        answers, buf = [], b""
        while len(answers) < 2:
            chunk = s.recv(65536)
            assert chunk, f"connection closed after {len(answers)} answers: {buf[:300]!r}"
            buf += chunk
            while b"\r\n\r\n" in buf:
                status, headers, _ = parse(buf)
                end = buf.index(b"\r\n\r\n") + 4 + int(headers["content-length"])
                if len(buf) < end:
                    break
                answers.append((status, json.loads(buf[buf.index(b"\r\n\r\n") + 4:end])))
                buf = buf[end:]
    finally:
        s.close()
        h.stop()
    assert answers[0][0] == 200 and answers[0][1]["result"] == {"slept": 1.6}, answers[0]
    assert answers[1][0] == 200 and answers[1][1]["result"] == 5, answers[1]


# --------------------------------------------------------------------------------------- malformed framing

@pytest.mark.parametrize("case,data,status,error_type", [
    ("CL+TE", b"POST /api/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     400, "BadRequest"),
    ("bad chunk size", b"POST /api/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
     400, "BadRequest"),
    ("chunk longer than declared", b"POST /api/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"2\r\nabcdef\r\n0\r\n\r\n", 400, "BadRequest"),
    ("two Content-Lengths", b"POST /api/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
     400, "BadRequest"),
    ("garbage request line", b"BLAH\r\n\r\n", 400, "BadRequest"),
    ("huge header", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431, "HeadersTooLarge"),
    ("too many headers", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(300)) + b"\r\n",
     431, "HeadersTooLarge"),
    ("huge URL", b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 431, "HeadersTooLarge"),
    ("NUL in a header value", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-N: a\x00b\r\n\r\n", 400, "BadRequest"),
    ("NUL in the path", b"GET /healthz\x00 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, "BadRequest"),
    ("raw non-UTF-8 path", b"GET /tasks/\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, "BadRequest"),
    ("escaped NUL in the query", b"GET /tasks?function=echo%00boom HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
     400, "BadRequest"),
    ("escaped non-UTF-8 in the query", b"GET /tasks?pool=%ff HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
     400, "BadRequest"),
    ("body over the limit", b"POST /api/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 70000\r\nConnection: close\r\n\r\n",
     413, "PayloadTooLarge"),
])
def test_malformed_requests(hostile: Hostile, case: str, data: bytes, status: int, error_type: str):
    expect(case, exchange(hostile, data), status, error_type)


def _post(hostile: Hostile, body: bytes) -> bytes:
    head = (f"POST /api/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    return exchange(hostile, head + body)


@pytest.mark.parametrize("case,body,status,error_type", [
    ("deep nesting", b'{"args":{"x":1,"label":' + b"[" * 10_000 + b"]" * 10_000 + b"}}", 400, "MalformedJSON"),
    ("invalid UTF-8 in a string", b'{"args":{"x":1,"label":"\xc3\x28"}}', 400, "MalformedJSON"),
    ("overlong UTF-8", b'{"args":{"x":1,"label":"\xc0\xaf"}}', 400, "MalformedJSON"),
    ("UTF-8 surrogate", b'{"args":{"x":1,"label":"\xed\xa0\x80"}}', 400, "MalformedJSON"),
    ("raw NUL in a string", b'{"args":{"x":1,"label":"a\x00b"}}', 400, "MalformedJSON"),
    ("lone surrogate escape", b'{"args":{"x":1,"label":"\\ud800"}}', 400, "MalformedJSON"),
    ("infinite float", b'{"args":{"x":1e999}}', 422, "InvalidArguments"),
    ("integer beyond 64 bits", b'{"args":{"x":' + b"9" * 4000 + b"}}", 422, "InvalidArguments"),
    ("escaped NUL is data", b'{"args":{"x":1,"label":"a\\u0000b"}}', 200, None),
])
def test_hostile_bodies(hostile: Hostile, case: str, body: bytes, status: int, error_type: Optional[str]):
    expect(case, _post(hostile, body), status, error_type)


# ------------------------------------------------------------------------------------------ bounded resources

def _insert_running(db: Path, task_id: str) -> None:
    with sqlite3.connect(db, timeout=30) as conn:
        conn.execute("INSERT INTO tasks (id, function_name, status, created_at, pool, execution_mode, attempts)"
                     " VALUES (?, 'echo', 'running', '2026-01-01T00:00:00.000Z', 'fast', 'sync', 1)", (task_id,))


def _complete(db: Path, task_id: str) -> None:
    with sqlite3.connect(db, timeout=30) as conn:
        conn.execute("UPDATE tasks SET status = 'completed', result = '1' WHERE id = ?", (task_id,))


def test_long_poll_waiters_are_bounded(hostile: Hostile):
    task_id = uuid7()
    _insert_running(hostile.db, task_id)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(http_request("GET", f"{hostile.url}/tasks/{task_id}?wait=60")))
               for _ in range(2)]
    try:
        for t in threads:
            t.start()
            time.sleep(0.5)  # one at a time, so a probe below cannot take a slot before both are parked
        # Once both are parked, another waiter is refused. The probe waits briefly itself: until both are parked it
        # is let in, and comes back with the record after its own short wait.
        def refused():
            r = http_request("GET", f"{hostile.url}/tasks/{task_id}?wait=0.2", timeout=SOCKET_BOUND_S)
            assert r.status in (200, 503), r
            return r if r.status == 503 else None
        r = wait_for(refused, timeout=60, interval=0.05, message=lambda: f"a third long poll to be refused (parked: {results})")
        assert_error_body(r, 503, "Overloaded")
        assert r.headers.get("retry-after"), r.headers
        CASES.append("long-poll waiters")
        # A plain read still works.
        assert http_request("GET", f"{hostile.url}/tasks/{task_id}").status == 200
    finally:
        _complete(hostile.db, task_id)
        for t in threads:
            t.join(SOCKET_BOUND_S)
    assert [r.status for r in results] == [200, 200], results


def test_sse_subscribers_are_bounded(hostile: Hostile):
    streams = []
    try:
        for _ in range(2):
            s = hostile.connect()
            s.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert s.recv(1000).startswith(b"HTTP/1.1 200"), "a stream within the limit opens"
            streams.append(s)
        raw = exchange(hostile, b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        headers = expect("SSE subscribers", raw, 503, "Overloaded")
        assert headers.get("retry-after"), headers
    finally:
        for s in streams:
            s.close()
    # Their places are given back once they leave.
    def opens():
        s = hostile.connect()
        try:
            s.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            return s.recv(1000).startswith(b"HTTP/1.1 200")
        finally:
            s.close()
    wait_for(opens, timeout=60, interval=0.1, message="a stream to open once the others left")


def test_worker_answer_size_is_bounded(hostile: Hostile):
    """A worker answer over --max-worker-answer-bytes: 502 with the task id; the outcome is in the task log."""
    import json

    raw = _post(hostile, json.dumps({"args": {"x": 1, "label": "L" * 6000}}).encode())
    expect("worker answer size", raw, 502, "WorkerAnswerTooLarge")
    task_id = json.loads(parse(raw)[2])["error"]["task_id"]
    record = wait_for(lambda: (r := http_request("GET", f"{hostile.url}/tasks/{task_id}").json())["status"] == "completed" and r,
                      timeout=60, message="the task's outcome in the task log")
    assert record["result"]["label"] == "L" * 6000


def test_worker_connection_pool_is_bounded(hostile: Hostile):
    """With --worker-connections 1, one worker and --max-waiting-calls 1: while a call holds the only connection, the
    next call waits in line and runs once it is given back (200); one more finds the line full and is refused at once
    (503 Overloaded with Retry-After, nothing ran, recorded failed). The worker is not marked broken."""
    import json

    # Both calls must arrive while the holder runs, which depends on scheduling: a bounded number of tries; every
    # answer must be 200 or that 503, and a try that saw both must see exactly one of each.
    refused = None
    for _ in range(6):
        holder = threading.Thread(target=lambda: http_request("POST", f"{hostile.url}/api/sleepy",
                                                              json_body={"args": {"seconds": 1.5}}))
        holder.start()
        try:
            def running():
                page = http_request("GET", f"{hostile.url}/tasks?function=sleepy&status=running").json()
                return page["tasks"]
            wait_for(running, timeout=60, interval=0.02, message="the holding call to be running")
            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(lambda x: http_request("POST", f"{hostile.url}/api/echo", json_body={"args": {"x": x}}),
                                        (1, 2)))
        finally:
            holder.join(SOCKET_BOUND_S)
        statuses = sorted(r.status for r in answers)
        assert statuses in ([200, 200], [200, 503]), answers
        if statuses == [200, 503]:
            refused = next(r for r in answers if r.status == 503)
            served = next(r for r in answers if r.status == 200)
            assert served.json()["status"] == "completed", served
            break
    assert refused is not None, "no call was refused while one waited for the only worker connection"
    body = assert_error_body(refused, 503, "Overloaded")
    assert "at capacity" in body["error"]["message"] and "--max-waiting-calls 1" in body["error"]["message"], body
    assert refused.headers.get("retry-after") == "1", refused.headers
    record = http_request("GET", f"{hostile.url}/tasks/{body['error']['task_id']}").json()
    assert record["status"] == "failed" and record["error"]["type"] == "Overloaded", record
    CASES.append("worker connection pool")
    assert http_request("POST", f"{hostile.url}/api/echo", json_body={"args": {"x": 2}}).status == 200
    assert json.loads(http_request("GET", f"{hostile.url}/readyz").body)["status"] == "ready"


def test_task_list_size_is_bounded(hostile: Hostile):
    """--max-list-bytes 8192: a page of big records is cut short (truncated, next_before) and the walk still visits
    every task once."""
    made = []
    for i in range(12):
        r = http_request("POST", f"{hostile.url}/api/echo", json_body={"args": {"x": i, "label": "P" * 1500}})
        assert r.status == 200, r
        made.append(r.json()["task_id"])
    first = http_request("GET", f"{hostile.url}/tasks?function=echo&limit=500&fields=args,result").json()
    assert first.get("truncated") is True and first["next_before"], {k: v for k, v in first.items() if k != "tasks"}
    CASES.append("task list size")
    seen = []
    before = None
    for _ in range(200):
        page = http_request("GET", f"{hostile.url}/tasks?function=echo&limit=500&fields=args,result"
                            + (f"&before={before}" if before else "")).json()
        seen += [t["task_id"] for t in page["tasks"]]
        before = page["next_before"]
        if before is None:
            break
    assert len(seen) == len(set(seen)) and set(made) <= set(seen)


def test_connections_are_bounded(launcher: Launcher, example_manifest):
    h = Hostile(launcher, example_manifest, ["--max-connections", "4", "--header-timeout", "30"])
    kept = []
    try:
        for _ in range(4):
            s = h.connect()
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert s.recv(1000).startswith(b"HTTP/1.1 200")
            kept.append(s)
        headers = expect("connections", exchange(h, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), 503, "Overloaded")
        assert headers.get("retry-after"), headers
        kept.pop().close()
        wait_for(lambda: parse(exchange(h, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"))[0] == 200,
                 timeout=60, interval=0.1, message="a connection to be served once one left")
        # The connection that just answered (Connection: close) may still count for a moment on the server side.
        text = wait_for(lambda: scrape(h.url), timeout=30, interval=0.1, message="GET /metrics served").text
        assert 'neutrino_http_rejected_total{reason="connections"}' in text, text
    finally:
        for s in kept:
            s.close()
        h.stop()


def test_http10_without_keep_alive_is_closed_after_the_response(hostile: Hostile):
    raw = exchange(hostile, b"GET /healthz HTTP/1.0\r\n\r\n")  # returns only when the server closes
    expect("HTTP/1.0 close", raw, 200)


def test_refusals_are_counted(hostile: Hostile):
    text = scrape(hostile.url).text
    for reason in ("header_timeout", "body_timeout", "headers_too_large", "bad_request", "bad_target",
                   "long_poll_waiters", "sse_subscribers", "worker_connections", "body_too_large"):
        assert f'neutrino_http_rejected_total{{reason="{reason}"}}' in text, reason
    assert http_request("GET", f"{hostile.url}/healthz").status == 200
    assert hostile.gateway.alive() and hostile.worker.alive()

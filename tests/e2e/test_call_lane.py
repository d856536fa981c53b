"""The worker's call lane: the gateway's sync calls to its own workers, framed without HTTP (docs/architecture.md,
"the call lane"). The gateway learns the lane from a worker's answer and takes it for the calls that follow; what a
client sees and what the task log holds are the same as over HTTP. The lane itself is spoken here by a second,
independent implementation of the frame format, and fed what an attacker would send."""
from __future__ import annotations

import json
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import NATS_TASK_LOG, EXAMPLE_APP, Launcher, TaskLog, http_request, post_task, uuid7, wait_for

PREFACE = b"NTRNCL01"


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def request_frame(call_id: int, task: str, fields: list[tuple[str, str]], body: bytes) -> bytes:
    rest = struct.pack(">I", call_id) + _string(task) + struct.pack(">H", len(fields))
    for name, value in fields:
        rest += _string(name) + _string(value)
    rest += body
    return struct.pack(">I", len(rest)) + rest


def _read_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError(f"connection closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def read_answer(s: socket.socket) -> tuple[int, int, dict[str, str], bytes]:
    (length,) = struct.unpack(">I", _read_exactly(s, 4))
    frame = _read_exactly(s, length)
    call_id, status, count = struct.unpack(">IHH", frame[:8])
    at = 8
    fields = {}
    for _ in range(count):
        (n,) = struct.unpack(">H", frame[at:at + 2])
        name = frame[at + 2:at + 2 + n].decode()
        at += 2 + n
        (n,) = struct.unpack(">H", frame[at:at + 2])
        fields[name.lower()] = frame[at + 2:at + 2 + n].decode()
        at += 2 + n
    return call_id, status, fields, frame[at:]


def closed_by_peer(s: socket.socket, timeout: float = 10) -> bool:
    """True once the worker has closed the connection (EOF or reset), reading and dropping what it sent first."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def lane_of(worker) -> dict:
    health = http_request("GET", f"{worker.url}/healthz").json()
    assert health["call_lane"], health
    return health["call_lane"]


def protocol_rejections(worker) -> float:
    """neutrino_http_rejected_total{reason="lane_protocol"} on the worker's /metrics (0 before the first)."""
    for line in http_request("GET", f"{worker.url}/metrics").body.decode().splitlines():
        if line.startswith('neutrino_http_rejected_total{reason="lane_protocol"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def lane_socket(worker) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", lane_of(worker)["port"]), timeout=30)
    s.sendall(PREFACE)
    assert _read_exactly(s, len(PREFACE)) == PREFACE
    return s


@pytest.fixture(scope="module")
def lane_stack(launcher: Launcher, example_manifest):
    d = launcher.new_dir("lane")
    db = d / "tasks.sqlite"
    w = launcher.worker(EXAMPLE_APP, db, log_dir=d, worker_id="lane-w1", concurrency=4,
                        extra_args=["--max-body-bytes", "65536"])
    gw = launcher.gateway(example_manifest, {"fast": [w.url]}, db, log_dir=d)
    yield w, gw, TaskLog(db)
    gw.stop()
    w.stop()


def test_the_gateway_takes_the_lane_after_the_first_answer_and_clients_see_no_difference(lane_stack):
    w, gw, log = lane_stack
    assert lane_of(w)["port"] > 0
    first = post_task(gw.url, "echo", {"x": 1, "label": "first"})
    assert first.status == 200, first
    # The first answer (over HTTP) announced the lane; the calls that follow open lane connections.
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: post_task(gw.url, "echo", {"x": i, "label": "é✓"}), range(40)))
    for i, resp in enumerate(answers):
        assert resp.status == 200, resp
        body = resp.json()
        assert body["result"] == {"x": i, "label": "é✓"}, body
        assert body["worker_id"] == "lane-w1" and body["status"] == "completed", body
        assert resp.headers.get("x-neutrino-task-id") == body["task_id"], resp.headers
    assert wait_for(lambda: lane_of(w)["connections"] >= 1, timeout=10), lane_of(w)
    # Every call is in the task log, complete, as over HTTP.
    for resp in answers[:5]:
        row = log.wait_terminal(resp.json()["task_id"], final_event="completed")
        assert row["status"] == "completed" and row["worker_id"] == "lane-w1", row

    # Failures, timeouts and refusals come back over the lane with their own statuses and error bodies.
    boom = post_task(gw.url, "boom", {"message": "over the lane"})
    assert boom.status == 500 and boom.json()["error"]["message"] == "over the lane", boom
    slow = post_task(gw.url, "sleepy", {"seconds": 3})
    assert slow.status == 504, slow
    assert log.wait_terminal(slow.json()["task_id"])["status"] == "timed_out"


@pytest.mark.sqlite_task_log_only("reads the SQLite file a worker called without a gateway writes itself")
def test_a_client_speaking_the_frame_format_runs_a_call(lane_stack):
    """An independent implementation of the format: the worker answers with the call's status, fields and body."""
    w, _, log = lane_stack
    task_id = uuid7()
    with lane_socket(w) as s:
        body = json.dumps({"args": {"a": 2, "b": 40}}).encode()
        s.sendall(request_frame(7, "add", [("X-Neutrino-Task-Id", task_id)], body))
        call_id, status, fields, answer = read_answer(s)
        assert (call_id, status) == (7, 200), (call_id, status, answer)
        assert fields["x-neutrino-status"] == "completed" and fields["x-neutrino-worker"] == "lane-w1", fields
        payload = json.loads(answer)
        assert payload["result"] == 42 and payload["task_id"] == task_id, payload
        # The same connection serves the next call; an unknown task is a 404, not a dropped connection.
        s.sendall(request_frame(8, "no_such_task", [], body))
        call_id, status, _, answer = read_answer(s)
        assert (call_id, status) == (8, 404) and json.loads(answer)["error"]["type"], answer
        s.sendall(request_frame(9, "add", [], b"not json"))
        call_id, status, _, answer = read_answer(s)
        assert (call_id, status) == (9, 400), answer
    assert log.wait_terminal(task_id, final_event="completed")["status"] == "completed"


@pytest.mark.parametrize("attack", [
    "http-request",
    "frame-longer-than-the-limit",
    "length-running-past-the-frame",
    "too-many-fields",
    "name-not-utf8",
    "second-request-before-the-answer",
    "partial-frame-then-silence",
])
def test_a_lane_client_that_breaks_the_format_loses_its_connection_and_nothing_else(lane_stack, attack):
    w, gw, log = lane_stack
    port = lane_of(w)["port"]
    rejected_before = protocol_rejections(w)
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        if attack == "http-request":
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: w\r\n\r\n")
        else:
            s.sendall(PREFACE)
            assert _read_exactly(s, len(PREFACE)) == PREFACE
            if attack == "frame-longer-than-the-limit":
                s.sendall(struct.pack(">I", 0xFFFFFFFF) + b"\0" * 64)
            elif attack == "length-running-past-the-frame":
                rest = struct.pack(">I", 1) + struct.pack(">H", 60000) + b"echo"
                s.sendall(struct.pack(">I", len(rest)) + rest)
            elif attack == "too-many-fields":
                rest = struct.pack(">I", 1) + _string("echo") + struct.pack(">H", 65535) + b"\0" * 32
                s.sendall(struct.pack(">I", len(rest)) + rest)
            elif attack == "name-not-utf8":
                rest = struct.pack(">I", 1) + struct.pack(">H", 2) + b"\xff\xfe" + struct.pack(">H", 0) + b"{}"
                s.sendall(struct.pack(">I", len(rest)) + rest)
            elif attack == "second-request-before-the-answer":
                tid = uuid7()
                body = json.dumps({"args": {"seconds": 0.5}}).encode()
                s.sendall(request_frame(1, "sleepy", [("X-Neutrino-Task-Id", tid)], body)
                          + request_frame(2, "sleepy", [], body))
            elif attack == "partial-frame-then-silence":
                s.sendall(struct.pack(">I", 100) + b"\0" * 10)
        if attack == "partial-frame-then-silence":
            # A frame that stops arriving holds the connection until the read times out (60 s): the worker serves
            # everyone else meanwhile.
            pass
        else:
            assert closed_by_peer(s), attack
            # Counted on the worker's /metrics (and logged at debug only).
            assert wait_for(lambda: protocol_rejections(w) == rejected_before + 1, timeout=10), protocol_rejections(w)
        if attack == "second-request-before-the-answer" and not NATS_TASK_LOG:
            # The call that was taken still runs to its end in the task log (the worker's own SQLite writes).
            assert log.wait_terminal(tid, final_event="completed")["status"] == "completed"
    finally:
        s.close()
    resp = post_task(gw.url, "add", {"a": 1, "b": 2})
    assert resp.status == 200 and resp.json()["result"] == 3, resp
    assert http_request("GET", f"{w.url}/healthz").status == 200


def test_without_a_lane_the_gateway_calls_over_http(launcher: Launcher, example_manifest):
    d = launcher.new_dir("nolane")
    db = d / "tasks.sqlite"
    w = launcher.worker(EXAMPLE_APP, db, log_dir=d, worker_id="nolane-w1", extra_args=["--call-lane-port", "-1"])
    gw = launcher.gateway(example_manifest, {"fast": [w.url]}, db, log_dir=d)
    try:
        assert http_request("GET", f"{w.url}/healthz").json()["call_lane"] is None
        for i in range(5):
            resp = post_task(gw.url, "echo", {"x": i})
            assert resp.status == 200 and resp.json()["result"]["x"] == i, resp
    finally:
        gw.stop()
        w.stop()


def test_a_worker_that_restarts_behind_its_gateway_is_reached_again(launcher: Launcher, example_manifest):
    """The lane a gateway learnt goes away with its worker; the calls after the restart are answered (the new
    worker listens on the same HTTP port, with a new lane port that its first answer announces)."""
    d = launcher.new_dir("lanerestart")
    db = d / "tasks.sqlite"
    w = launcher.worker(EXAMPLE_APP, db, log_dir=d, worker_id="restart-w1")
    port = w.url.rsplit(":", 1)[1]
    gw = launcher.gateway(example_manifest, {"fast": [w.url]}, db, log_dir=d)
    try:
        for i in range(3):
            assert post_task(gw.url, "echo", {"x": i}).status == 200
        old_lane = lane_of(w)["port"]
        w.stop()
        w2 = None
        for _ in range(50):  # the port was just released; take it again
            try:
                w2 = launcher.worker(EXAMPLE_APP, db, log_dir=d, worker_id="restart-w2",
                                     extra_args=["--port", port])
                break
            except Exception:
                time.sleep(0.2)
        assert w2 is not None and w2.url == w.url
        try:
            # The first call finds the old lane closed before sending anything, and goes over HTTP.
            for i in range(5):
                resp = post_task(gw.url, "echo", {"x": i})
                assert resp.status == 200 and resp.json()["worker_id"] == "restart-w2", resp
            assert lane_of(w2)["port"] != old_lane
            assert wait_for(lambda: lane_of(w2)["connections"] >= 1, timeout=10), lane_of(w2)
        finally:
            w2.stop()
    finally:
        gw.stop()


@pytest.mark.sqlite_task_log_only("reads the SQLite file a worker called without a gateway writes itself")
def test_a_request_on_an_open_lane_during_shutdown_is_refused_with_503_not_dropped(launcher: Launcher):
    """SIGTERM while a call runs: the call finishes and is answered; a request sent meanwhile on another lane
    connection gets 503 (nothing ran, so a gateway may send it elsewhere) instead of a connection cut off unread."""
    d = launcher.new_dir("lanestop")
    db = d / "tasks.sqlite"
    w = launcher.worker(EXAMPLE_APP, db, log_dir=d, worker_id="stop-w1")
    running = lane_socket(w)
    idle = lane_socket(w)
    try:
        tid = uuid7()
        running.sendall(request_frame(1, "sleepy", [("X-Neutrino-Task-Id", tid)],
                                      json.dumps({"args": {"seconds": 1.5}}).encode()))
        assert wait_for(lambda: TaskLog(db).task(tid) is not None, timeout=10)
        w.proc.send_signal(15)
        time.sleep(0.5)
        idle.sendall(request_frame(5, "echo", [], json.dumps({"args": {"x": 1}}).encode()))
        call_id, status, fields, body = read_answer(idle)
        assert (call_id, status) == (5, 503), (call_id, status, body)
        assert json.loads(body)["error"]["type"] == "WorkerUnavailable" and fields.get("retry-after") == "1", body
        assert closed_by_peer(idle)
        call_id, status, _, body = read_answer(running)
        assert (call_id, status) == (1, 200), body
        assert w.wait_exit() == 0, w.output[-3000:]
    finally:
        running.close()
        idle.close()
        w.stop()
    assert TaskLog(db).wait_terminal(tid)["status"] == "completed"


def test_bodies_over_the_limit_get_413_and_large_ones_under_it_run(lane_stack):
    """The worker's --max-body-bytes (65,536 here) holds on the lane as over HTTP; a body bigger than the reader's
    64 KiB buffer but under the limit arrives whole."""
    w, _, _ = lane_stack
    with lane_socket(w) as s:
        big = json.dumps({"args": {"x": 1, "label": "y" * 65_000}}).encode()
        assert len(big) <= 65_536
        s.sendall(request_frame(1, "echo", [], big))
        call_id, status, _, body = read_answer(s)
        assert (call_id, status) == (1, 200) and json.loads(body)["result"]["label"] == "y" * 65_000, body[:200]
        too_big = json.dumps({"args": {"x": 1, "label": "y" * 70_000}}).encode()
        s.sendall(request_frame(2, "echo", [], too_big))
        call_id, status, _, body = read_answer(s)
        assert (call_id, status) == (2, 413) and json.loads(body)["error"]["type"] == "PayloadTooLarge", body
        s.sendall(request_frame(3, "add", [], json.dumps({"args": {"a": 1, "b": 1}}).encode()))
        call_id, status, _, body = read_answer(s)
        assert (call_id, status) == (3, 200) and json.loads(body)["result"] == 2, body


class _FakeWorker:
    """An HTTP server that answers sync calls as a worker would and announces `lane_port` as its call lane, which
    is a plain listener behaving as `lane` says: "silent" (accepts, never writes) or "not-a-lane" (answers HTTP)."""

    def __init__(self, lane: str):
        import http.server
        import threading

        self.lane_listener = socket.create_server(("127.0.0.1", 0))
        self.lane_port = self.lane_listener.getsockname()[1]
        self.lane_connections = 0
        self.prefaces: list[bytes] = []
        self.calls = 0
        fake = self

        def serve_lane():
            held = []
            while True:
                try:
                    conn, _ = self.lane_listener.accept()
                except OSError:
                    return
                fake.lane_connections += 1
                conn.settimeout(5)
                try:
                    fake.prefaces.append(conn.recv(8))
                except OSError:
                    pass
                if lane == "not-a-lane":
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                held.append(conn)  # "silent": kept open, never written to

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                args = json.loads(self.rfile.read(length))["args"]
                fake.calls += 1
                task_id = self.headers.get("X-Neutrino-Task-Id", "")
                prefix = json.dumps({"task_id": task_id, "function": "echo", "pool": "fast", "status": "completed",
                                     "worker_id": "fake", "attempt": 1, "duration_ms": 0.1})[:-1] + ',"result":'
                body = (prefix + json.dumps(args) + "}").encode()
                self.send_response(200)
                for name, value in (("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                    ("X-Neutrino-Status", "completed"), ("X-Neutrino-Worker", "fake"),
                                    ("X-Neutrino-Duration-Ms", "0.1"),
                                    ("X-Neutrino-Started-At", str(int(time.time() * 1000))),
                                    ("X-Neutrino-Outcome-Offset", str(len(prefix.encode()))),
                                    ("X-Neutrino-Lane", str(fake.lane_port))):
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        threading.Thread(target=serve_lane, daemon=True).start()

    def close(self):
        self.http.shutdown()
        self.http.server_close()
        self.lane_listener.close()


@pytest.mark.parametrize("lane", ["silent", "not-a-lane"])
def test_an_announced_lane_that_does_not_greet_costs_nothing_but_a_fallback_to_http(launcher: Launcher,
                                                                                    example_manifest, lane):
    """Whatever answers on an announced lane port without the worker's greeting (the port reused after the worker
    went away, a proxy in between), the gateway's calls still go through, over HTTP, and it does not keep trying."""
    d = launcher.new_dir("fakelane")
    fake = _FakeWorker(lane)
    gw = launcher.gateway(example_manifest, {"fast": [fake.url]}, d / "tasks.sqlite", log_dir=d)
    try:
        for i in range(6):
            resp = post_task(gw.url, "echo", {"x": i, "label": lane})
            assert resp.status == 200 and resp.json()["result"] == {"x": i, "label": lane}, resp
        assert fake.calls == 6  # every call reached the worker over HTTP
        # The gateway tried the lane (with the client's preface) once, then let it rest.
        assert fake.lane_connections == 1 and fake.prefaces == [PREFACE], (fake.lane_connections, fake.prefaces)
    finally:
        gw.stop()
        fake.close()


def test_a_worker_gets_no_more_calls_at_once_than_it_says_it_takes(launcher: Launcher, extra_manifest, tmp_path):
    """A worker's answers say how many calls it takes at once (X-Neutrino-Max-Calls: its Python threads, a quarter
    more rounded up, and its coroutine slots when it runs async def tasks): 2 for one thread. The gateway, its
    --worker-connections left at 128, keeps no more in flight to it and lines the rest up: six calls at once hold
    two lane connections, not six, and all complete once released."""
    from conftest import EXTRA_APP, GATEWAY_BIN, _server_env

    d = launcher.new_dir("maxcalls")
    db = d / "tasks.sqlite"
    w = launcher.worker(EXTRA_APP, db, log_dir=d, worker_id="maxcalls-w1", concurrency=1)
    argv = [str(GATEWAY_BIN), "--manifest", str(extra_manifest), "--http-pool", f"fast={w.url}",
            "--task-log", f"sqlite:{db}", "--host", "127.0.0.1", "--port", "0"]
    gw = launcher.spawn("gateway-maxcalls", argv, env=_server_env(), log_dir=d)
    gw.wait_listening()
    markers = tmp_path / "held"
    try:
        direct = post_task(w.url, "helper_tag")
        assert direct.status == 200 and direct.headers.get("x-neutrino-max-calls") == "2", direct
        # The gateway's first call learns it, and the lane.
        assert post_task(gw.url, "helper_tag").status == 200

        def waiting_calls() -> int:
            pools = http_request("GET", f"{gw.url}/pools").json()["pools"]
            return next(p for p in pools if p["name"] == "fast")["waiting_calls"] or 0

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post_task, gw.url, "hold", {"marker_dir": str(markers), "max_seconds": 4.5})
                       for _ in range(6)]
            # One runs, one waits in the worker for its only thread, four wait in the gateway's line (/pools shows a
            # snapshot taken every second; the hold lasts up to 4.5 s).
            assert wait_for(lambda: waiting_calls() == 4, timeout=4, message=lambda: f"{waiting_calls()} waiting")
            health = http_request("GET", f"{w.url}/healthz").json()
            assert (health["busy"], health["queued"]) == (1, 1), health
            assert len(list(markers.glob("started-*"))) == 1
            assert lane_of(w)["connections"] == 2, lane_of(w)
            (markers / "release").touch()
            answers = [f.result() for f in futures]
        assert all(r.status == 200 for r in answers), [r for r in answers if r.status != 200][:2]
        assert len(list(markers.glob("started-*"))) == 6
        assert lane_of(w)["connections"] <= 2, lane_of(w)
    finally:
        gw.stop()
        w.stop()


def test_idle_http_connections_from_before_the_lane_give_way_to_lane_ones(launcher: Launcher, example_manifest):
    """--worker-connections bounds a gateway's connections to a worker, HTTP and lane together: the HTTP ones it
    opened before it knew the lane do not keep the lane from opening its own."""
    from conftest import GATEWAY_BIN, _server_env

    d = launcher.new_dir("lanecap")
    db = d / "tasks.sqlite"
    w = launcher.worker(EXAMPLE_APP, db, log_dir=d, worker_id="cap-w1", concurrency=4)
    argv = [str(GATEWAY_BIN), "--manifest", str(example_manifest), "--http-pool", f"fast={w.url}",
            "--task-log", f"sqlite:{db}", "--host", "127.0.0.1", "--port", "0", "--worker-connections", "2"]
    gw = launcher.spawn("gateway-lanecap", argv, env=_server_env(), log_dir=d)
    gw.wait_listening()
    try:
        def two_at_once():
            with ThreadPoolExecutor(2) as pool:
                return list(pool.map(lambda _: post_task(gw.url, "sleepy", {"seconds": 0.5}), range(2)))

        # Both start before either answer announces the lane: two HTTP connections, idle afterwards.
        assert all(r.status == 200 for r in two_at_once())
        assert lane_of(w)["connections"] == 0
        # Now two calls at once over the lane need two lane connections, with the limit already reached.
        answers = two_at_once()
        assert all(r.status == 200 for r in answers), answers
        assert wait_for(lambda: lane_of(w)["connections"] == 2, timeout=10), lane_of(w)
    finally:
        gw.stop()
        w.stop()

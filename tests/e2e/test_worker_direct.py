"""The worker on its own (no gateway): /healthz stays responsive while every Python thread is busy, the
gateway's task id given in X-Neutrino-Task-Id is the id the task sees and the id logged, and the calls the worker
serves outside its router keep HTTP/1.1's semantics (pipelining order, Connection: close, body limits, metrics)."""
from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import EXAMPLE_APP, EXTRA_APP, Launcher, TaskLog, http_request, post_task, uuid7, wait_for

CONCURRENCY = 2


@pytest.fixture(scope="module")
def busy_worker(launcher: Launcher):
    d = launcher.new_dir("busy")
    w = launcher.worker(EXTRA_APP, d / "tasks.sqlite", log_dir=d, worker_id="busy-w1", concurrency=CONCURRENCY)
    yield w, d
    w.stop()


ROUNDS = 3


def _busy_round(worker, task: str, markers: Path) -> tuple:
    """One round: CONCURRENCY `task` calls running, then GET /healthz. Returns (health response, seconds /healthz
    took, which calls were still running when it answered, the calls' responses)."""
    markers.mkdir()
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        futures = [pool.submit(post_task, worker.url, task, {"marker_dir": str(markers)})
                   for _ in range(CONCURRENCY)]
        try:
            wait_for(lambda: len(list(markers.glob("started-*"))) >= CONCURRENCY, timeout=60,
                     message=f"{CONCURRENCY} {task} tasks to be running")
            asked = time.monotonic()
            health = http_request("GET", f"{worker.url}/healthz", timeout=30)
            took = time.monotonic() - asked
            still_busy = [not f.done() for f in futures]
        finally:
            (markers / "release").write_text("go")
        results = [f.result(timeout=120) for f in futures]
    return health, took, still_busy, results


@pytest.mark.parametrize("task", ["hold", "burn"], ids=["sleeping-threads", "gil-bound-threads"])
def test_healthz_answers_while_all_python_threads_are_busy(busy_worker, task: str, tmp_path: Path):
    """With all --concurrency threads inside a task (sleeping, or looping in pure Python), GET /healthz
    still answers 200 before any of those tasks has finished; then the tasks are released and complete.

    A sync task may run 5 s at most, so on a starved machine the first task can reach its own limit before the
    last one has started; such a round proves nothing either way and is run again (ROUNDS at most)."""
    worker, _ = busy_worker
    rounds = []
    for n in range(ROUNDS):
        health, took, still_busy, results = _busy_round(worker, task, tmp_path / f"markers-{n}")
        assert health.status == 200, health
        assert health.json().get("status") == "ok", health
        for r in results:
            assert r.status == 200, r
        rounds.append((took, still_busy, [r.json()["result"] for r in results]))
        if all(still_busy):
            assert all(r.json()["result"] == {"released": True} for r in results), rounds
            return
    pytest.fail("in every round a busy task ended before /healthz answered, so the check proved nothing; "
                f"(seconds /healthz took, calls still running, results) per round: {rounds}")


@pytest.mark.sqlite_task_log_only("reads the SQLite file a worker without a gateway writes itself")
def test_worker_uses_the_given_task_id(launcher: Launcher):
    """POST to the worker with X-Neutrino-Task-Id: the answer, the task's context and the log all use that id."""
    d = launcher.new_dir("direct")
    db = d / "tasks.sqlite"
    w = launcher.worker(EXAMPLE_APP, db, log_dir=d, worker_id="direct-w1", concurrency=1)
    try:
        assert http_request("GET", f"{w.url}/healthz").status == 200
        task_id = uuid7()
        resp = post_task(w.url, "whoami", {}, headers={"X-Neutrino-Task-Id": task_id})
        assert resp.status == 200, resp
        body = resp.json()
        assert body["task_id"] == task_id, body
        assert body["worker_id"] == "direct-w1", body
        assert body["result"]["task_id"] == task_id, body
        assert body["result"]["pool"] == "fast", body
        row = TaskLog(db).wait_terminal(task_id, final_event="completed")
        assert row["status"] == "completed" and row["worker_id"] == "direct-w1", row

        # Without the header the worker makes its own id.
        resp = post_task(w.url, "whoami", {})
        assert resp.status == 200, resp
        body = resp.json()
        assert body["task_id"] and body["task_id"] != task_id, body
        assert body["result"]["task_id"] == body["task_id"], body

        # A task of another pool (async) is not served by a fast-pool worker.
        resp = post_task(w.url, "generate_report", {"dataset": "d"})
        assert resp.status == 404, resp
        assert resp.json()["error"]["type"], resp
    finally:
        w.stop()
    # SIGTERM is a graceful shutdown: exit status 0, and the port is released.
    assert w.proc.returncode == 0, f"worker exited {w.proc.returncode} on SIGTERM:\n{w.output[-3000:]}"
    with pytest.raises(OSError):
        http_request("GET", f"{w.url}/healthz", timeout=10)


# --- The worker's own handling of sync calls on the wire (SyncCallHandler): HTTP/1.1 semantics the router had ------

WIRE_BODY_LIMIT = 4096


@pytest.fixture(scope="module")
def wire_worker(launcher: Launcher):
    d = launcher.new_dir("wire")
    w = launcher.worker(EXAMPLE_APP, d / "tasks.sqlite", log_dir=d, worker_id="wire-w1", concurrency=2,
                        extra_args=["--max-body-bytes", str(WIRE_BODY_LIMIT)])
    yield w, d
    w.stop()


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def _call(path: str, args: dict, extra: str = "") -> bytes:
    body = json.dumps({"args": args}).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


def _read_responses(s: socket.socket, n: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Reads `n` responses with Content-Length bodies, in order, from `s`."""
    buf = b""
    out = []
    while len(out) < n:
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, f"connection closed after {len(out)} of {n} responses: {buf[:300]!r}"
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = s.recv(65536)
            assert chunk, "connection closed inside a body"
            rest += chunk
        out.append((int(lines[0].split()[1]), headers, rest[:length]))
        buf = rest[length:]
    return out


def test_pipelined_calls_and_router_requests_answer_in_order(wire_worker):
    """Calls and other requests sent back to back on one connection (HTTP/1.1 pipelining) are answered in the order
    they were sent, each with its own answer, whichever of them the worker serves itself."""
    w, _ = wire_worker
    s = _connect(w.url)
    try:
        requests = [
            _call("/api/echo", {"x": 1, "label": "first"}),
            b"GET /healthz HTTP/1.1\r\nHost: w\r\n\r\n",
            _call("/api/echo", {"x": 2, "label": "after-healthz"}),
            _call("/api/add", {"a": 1, "b": 2}),
            b"GET /readyz HTTP/1.1\r\nHost: w\r\n\r\n",
            _call("/api/echo?trace=1", {"x": 3, "label": "query"}),
            _call("/api/nope", {}),
            _call("/api/echo", {"x": 4, "label": "last"}),
        ]
        s.sendall(b"".join(requests))
        got = _read_responses(s, len(requests))
    finally:
        s.close()
    statuses = [g[0] for g in got]
    assert statuses == [200, 200, 200, 200, 200, 200, 404, 200], got
    bodies = [json.loads(g[2]) for g in got]
    assert bodies[0]["result"] == {"x": 1, "label": "first"}, bodies[0]
    assert bodies[1]["status"] == "ok", bodies[1]
    assert bodies[2]["result"] == {"x": 2, "label": "after-healthz"}, bodies[2]
    assert bodies[3]["result"] == 3, bodies[3]
    assert bodies[5]["result"] == {"x": 3, "label": "query"}, bodies[5]
    assert bodies[6]["error"]["type"], bodies[6]
    assert bodies[7]["result"] == {"x": 4, "label": "last"}, bodies[7]
    for status, headers, _ in got:
        assert headers["content-type"].startswith("application/json"), headers
        assert headers.get("server") == "neutrino-worker" and headers.get("date", "").endswith(" GMT"), headers


def test_requests_pipelined_while_a_call_runs_are_answered_in_order(wire_worker):
    """Requests that arrive while the worker runs a call (the worker reads on while it waits) are held until that
    call is answered, then answered in order: a trickle of single requests, one split across two writes, and a
    burst of 1,500 calls larger than one read (sent from a thread, since the worker stops reading once it holds
    some)."""
    w, _ = wire_worker
    s = _connect(w.url)
    burst = [_call("/api/echo", {"x": i}) for i in range(1_500)]
    try:
        s.sendall(_call("/api/sleepy", {"seconds": 0.4}))
        time.sleep(0.1)
        s.sendall(_call("/api/echo", {"x": "trickle-1"}))
        time.sleep(0.05)
        split = _call("/api/add", {"a": 2, "b": 3})
        s.sendall(split[:20])
        time.sleep(0.05)
        s.sendall(split[20:] + b"GET /healthz HTTP/1.1\r\nHost: w\r\n\r\n")
        with ThreadPoolExecutor(1) as pool:
            sent = pool.submit(s.sendall, b"".join(burst))
            got = _read_responses(s, 4 + len(burst))
            sent.result(timeout=30)
    finally:
        s.close()
    assert [g[0] for g in got] == [200] * len(got), [g for g in got if g[0] != 200][:3]
    bodies = [json.loads(g[2]) for g in got]
    assert bodies[0]["result"] == {"slept": 0.4}, bodies[0]
    assert bodies[1]["result"]["x"] == "trickle-1", bodies[1]
    assert bodies[2]["result"] == 5, bodies[2]
    assert bodies[3]["status"] == "ok", bodies[3]
    assert [b["result"]["x"] for b in bodies[4:]] == list(range(len(burst)))


def test_call_with_connection_close_is_answered_then_closed(wire_worker):
    w, _ = wire_worker
    s = _connect(w.url)
    try:
        s.sendall(_call("/api/echo", {"x": 5}, extra="Connection: close\r\n"))
        [(status, headers, body)] = _read_responses(s, 1)
        assert status == 200 and json.loads(body)["result"]["x"] == 5, body
        assert headers.get("connection", "").lower() == "close", headers
        assert s.recv(1024) == b"", "the worker kept the connection open after Connection: close"
    finally:
        s.close()


def test_call_bodies_over_the_limit_get_413_and_the_connection_goes_on(wire_worker):
    """A declared Content-Length over --max-body-bytes is refused before the body is read; a chunked body that
    grows past it is refused too; the body is read and dropped, so the next call on the connection works."""
    w, _ = wire_worker
    s = _connect(w.url)
    try:
        big = b'{"args":{"x":1,"label":"' + b"a" * (WIRE_BODY_LIMIT + 10) + b'"}}'
        s.sendall(b"POST /api/echo HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(big)}\r\n\r\n".encode())
        [(status, _, body)] = _read_responses(s, 1)
        assert status == 413, (status, body)
        assert json.loads(body)["error"]["type"], body
        s.sendall(big)
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(big[i:i + 1000]), big[i:i + 1000]) for i in range(0, len(big), 1000))
        s.sendall(b"POST /api/echo HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n" + _call("/api/echo", {"x": 6}))
        (status, _, body), (status2, _, body2) = _read_responses(s, 2)
        assert status == 413, (status, body)
        assert status2 == 200 and json.loads(body2)["result"]["x"] == 6, body2
    finally:
        s.close()


def test_call_that_expects_100_continue_still_runs(wire_worker):
    w, _ = wire_worker
    s = _connect(w.url)
    try:
        s.sendall(_call("/api/echo", {"x": 7}, extra="Expect: 100-continue\r\n"))
        responses = _read_responses(s, 1)
        if responses[0][0] == 100:
            responses = _read_responses(s, 1)
        [(status, _, body)] = responses
        assert status == 200 and json.loads(body)["result"]["x"] == 7, body
    finally:
        s.close()


@pytest.mark.sqlite_task_log_only("reads the SQLite file a worker without a gateway writes itself")
def test_call_whose_client_left_still_ends_in_the_log_and_the_worker_goes_on(wire_worker):
    """The client hangs up while its call runs: the call completes and is logged, and the worker serves on."""
    w, d = wire_worker
    task_id = uuid7()
    s = _connect(w.url)
    s.sendall(_call("/api/sleepy", {"seconds": 0.5}, extra=f"X-Neutrino-Task-Id: {task_id}\r\n"))
    time.sleep(0.1)
    s.close()
    row = TaskLog(d / "tasks.sqlite").wait_terminal(task_id, final_event="completed")
    assert row["status"] == "completed", row
    resp = post_task(w.url, "echo", {"x": 8})
    assert resp.status == 200 and resp.json()["result"]["x"] == 8, resp


def test_calls_served_by_the_worker_are_counted_in_metrics(wire_worker):
    w, _ = wire_worker
    assert post_task(w.url, "echo", {"x": 9}).status == 200
    text = http_request("GET", f"{w.url}/metrics").body.decode()
    counted = [line for line in text.splitlines()
               if line.startswith("neutrino_http_requests_total") and 'route="/api/{task}"' in line and 'code="200"' in line]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 1, text[:2000]


@pytest.mark.sqlite_task_log_only("reads the SQLite file a worker without a gateway writes itself")
def test_shutdown_waits_for_a_call_whose_client_left(launcher: Launcher):
    """SIGTERM while a call runs whose client has hung up: no connection holds the server's drain open for it, yet
    the worker waits for it, records its outcome, and exits 0."""
    d = launcher.new_dir("leftcall")
    db = d / "tasks.sqlite"
    w = launcher.worker(EXAMPLE_APP, db, log_dir=d, worker_id="left-w1", concurrency=1)
    task_id = uuid7()
    s = _connect(w.url)
    s.sendall(_call("/api/sleepy", {"seconds": 1.0}, extra=f"X-Neutrino-Task-Id: {task_id}\r\n"))
    wait_for(lambda: TaskLog(db).task(task_id) is not None, timeout=30, message="the call to be running")
    s.close()
    w.stop()
    assert w.proc.returncode == 0, f"worker exited {w.proc.returncode}:\n{w.output[-3000:]}"
    row = TaskLog(db).wait_terminal(task_id, final_event="completed")
    assert row["status"] == "completed", row
    assert "event dropped" not in w.output, w.output[-3000:]


class _OneBusySlot:
    """A worker with one Python thread and one coroutine slot, the slot of `kind` held by a 1.5 s call of `task`;
    `quick` are the arguments of a call of the same task that returns at once."""

    def __init__(self, launcher: Launcher, kind: str, name: str):
        self.dir = launcher.new_dir(name)
        self.db = self.dir / "tasks.sqlite"
        self.worker = launcher.worker(EXAMPLE_APP, self.db, log_dir=self.dir, worker_id=f"{name}-{kind}", concurrency=1,
                                      extra_args=["--max-coroutines", "1"])
        self.task, hold, self.quick = (("sleepy", {"seconds": 1.5}, {"seconds": 0}) if kind == "thread"
                                       else ("lookup", {"key": "a", "delay_s": 1.5}, {"key": "b", "delay_s": 0}))
        self.holder = threading.Thread(target=lambda: post_task(self.worker.url, self.task, hold))
        self.holder.start()
        wait_for(lambda: "1" == _busy_threads(self.worker), timeout=60, interval=0.02,
                 message="the only slot to be busy")

    def __enter__(self) -> "_OneBusySlot":
        return self

    def __exit__(self, *exc) -> None:
        self.holder.join(60)
        self.worker.stop()


@pytest.mark.parametrize("kind", ["thread", "coroutine"])
def test_a_queued_call_whose_caller_stopped_waiting_is_not_run(launcher: Launcher, kind: str):
    """X-Neutrino-Caller-Waits-Ms (the gateway sends what is left of its deadline): a call that is still queued
    behind a busy thread (or the one coroutine slot) when that time has passed is answered 503 without running, and
    the worker says so; one whose caller still waits runs."""
    with _OneBusySlot(launcher, kind, "gone") as busy:
        w = busy.worker
        gone = post_task(w.url, busy.task, busy.quick, headers={"X-Neutrino-Caller-Waits-Ms": "50"})
        waited = post_task(w.url, busy.task, busy.quick, headers={"X-Neutrino-Caller-Waits-Ms": "60000"})
        busy.holder.join(60)
        assert gone.status == 503, gone
        assert "stopped waiting" in gone.json()["error"]["message"], gone
        assert waited.status == 200, waited
        wait_for(lambda: "a queued call was not run" in w.output, timeout=10, message="the worker's warning")


@pytest.mark.sqlite_task_log_only("reads the SQLite file a worker without a gateway writes itself")
@pytest.mark.parametrize("kind", ["thread", "coroutine"])
def test_a_queued_call_whose_client_hangs_up_is_not_run(launcher: Launcher, kind: str):
    """A call waiting for the only busy thread (or coroutine slot) whose client closes its connection is not started
    once the slot frees: nothing is recorded for it, the worker says why, and the next call runs."""
    with _OneBusySlot(launcher, kind, "hangup") as busy:
        w = busy.worker
        left_id = uuid7()
        s = _connect(w.url)
        s.sendall(_call(f"/api/{busy.task}", busy.quick, extra=f"X-Neutrino-Task-Id: {left_id}\r\n"))
        wait_for(lambda: http_request("GET", f"{w.url}/healthz").json()["queued"] == 1, timeout=30, interval=0.02,
                 message="the call to be queued")
        s.close()
        busy.holder.join(60)
        wait_for(lambda: "its caller closed the connection first" in w.output, timeout=10,
                 message="the worker's note that it did not run the call")
        answer = post_task(w.url, busy.task, busy.quick)
        assert answer.status == 200, answer
        TaskLog(busy.db).wait_terminal(answer.json()["task_id"], final_event="completed")
        assert TaskLog(busy.db).task(left_id) is None, TaskLog(busy.db).events(left_id)


def _busy_threads(w) -> str:
    """The worker's busy Python threads, from its /metrics."""
    for line in http_request("GET", f"{w.url}/metrics").body.decode().splitlines():
        if line.startswith("neutrino_worker_tasks_in_flight"):
            return line.rsplit(" ", 1)[-1].split(".")[0]
    return ""

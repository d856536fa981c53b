"""Sync calls through the gateway: success, task exceptions, the task's own context, and what the task log
keeps of each (the HTTP record and the SQLite rows)."""
from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from conftest import (
    EXAMPLE_APP, SETTLE_TIMEOUT_S, TASK_LOG_MODE, Cluster, Launcher, TaskLog, assert_error_body, loads_json_column,
    http_request, parse_time, post_task, wait_for,
)

from neutrino.errors import TaskFailed

RECORD_KEYS = {
    "task_id", "function", "status", "pool", "execution_mode", "worker_id", "created_at", "started_at",
    "completed_at", "duration_ms", "attempts", "args", "result", "error", "events",
}
EVENT_KEYS = {"event", "at", "worker_id", "attempt"}


def _assert_event_order(events: list[dict], expected: list[str], where: str) -> None:
    """Exactly the expected lifecycle events, once each, with non-decreasing timestamps in lifecycle order."""
    names = sorted(e["event"] for e in events)
    assert names == sorted(expected), f"{where}: expected events {expected}, got {[e['event'] for e in events]}"
    by_name = {e["event"]: e for e in events}
    times = [parse_time(by_name[name]["at"]) for name in expected]
    assert times == sorted(times), f"{where}: event times out of lifecycle order: {list(zip(expected, times))}"


def _check_record_and_row(cluster: Cluster, task_id: str, *, function: str, status: str, args: dict,
                          worker_id: str, expected_events: list[str]) -> tuple[dict, dict]:
    """GET /tasks/<id> right after the call, then the SQLite row and events; returns (record, row)."""
    resp = cluster.get(f"/tasks/{task_id}")
    assert resp.status == 200, resp
    rec = resp.json()
    missing = RECORD_KEYS - rec.keys()
    assert not missing, f"task record lacks {sorted(missing)}: {rec}"
    assert rec["task_id"] == task_id
    assert rec["function"] == function
    assert rec["status"] == status, f"GET /tasks/{task_id} right after the call returned: {rec}"
    assert rec["pool"] == "fast"
    assert rec["execution_mode"] == "sync"
    assert rec["worker_id"] == worker_id
    assert rec["args"] == args
    assert rec["attempts"] == 1, rec
    assert isinstance(rec["duration_ms"], (int, float)) and rec["duration_ms"] >= 0, rec
    for key in ("created_at", "started_at", "completed_at"):
        assert rec[key], f"{key} empty in {rec}"
    assert parse_time(rec["created_at"]) <= parse_time(rec["started_at"]) <= parse_time(rec["completed_at"]), rec
    assert isinstance(rec["events"], list)
    for ev in rec["events"]:
        assert EVENT_KEYS <= ev.keys(), f"event lacks {sorted(EVENT_KEYS - ev.keys())}: {ev}"
    assert [e["event"] for e in rec["events"]] == expected_events, f"API events not in order: {rec['events']}"
    _assert_event_order(rec["events"], expected_events, "GET /tasks events")

    log = cluster.log
    row = log.wait_terminal(task_id, events=expected_events, columns=("args",))
    assert row["id"] == task_id
    assert row["function_name"] == function
    assert row["status"] == status
    assert row["worker_id"] == worker_id
    assert row["pool"] == "fast"
    assert row["execution_mode"] == "sync"
    assert loads_json_column(row["args"]) == args
    assert row["duration_ms"] is not None and row["duration_ms"] >= 0, row
    assert row["attempts"] == 1, row
    for key in ("created_at", "started_at", "completed_at"):
        assert row[key] is not None, f"tasks.{key} is NULL: {row}"
    events = log.events(task_id)
    _assert_event_order(events, expected_events, "task_events rows")
    by_name = {e["event"]: e for e in events}
    for name in expected_events[1:]:  # running and the terminal event come from the worker
        assert by_name[name]["worker_id"] == worker_id, f"{name} event: {by_name[name]}"
        assert by_name[name]["attempt"] == 1, f"{name} event: {by_name[name]}"
    return rec, row


# --------------------------------------------------------------------------------------------- success

def test_gateway_health_and_manifest(cluster: Cluster, example_manifest):
    """The gateway answers /healthz and serves back the manifest it was started with."""
    health = cluster.get("/healthz")
    assert health.status == 200, health
    served = cluster.get("/openapi.json")
    assert served.status == 200, served
    doc = served.json()
    assert set(json.loads(example_manifest.read_text())["paths"]) == set(doc["paths"])
    assert "/api/echo" in doc["paths"]


def test_success_raw_http(cluster: Cluster):
    """POST /api/echo answers 200 with the full completed body; the record and the SQLite row agree."""
    args = {"x": 7, "label": "raw"}
    resp = cluster.post("echo", args)
    assert resp.status == 200, resp
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert body["status"] == "completed", body
    assert body["function"] == "echo"
    assert body["pool"] == "fast"
    assert body["result"] == {"x": 7, "label": "raw"}
    assert body["worker_id"] in cluster.worker_ids, body
    assert isinstance(body["duration_ms"], (int, float)) and body["duration_ms"] >= 0, body
    assert isinstance(body["task_id"], str) and body["task_id"], body

    rec, row = _check_record_and_row(cluster, body["task_id"], function="echo", status="completed", args=args,
                                     worker_id=body["worker_id"],
                                     expected_events=["pending", "running", "completed"])
    assert rec["result"] == {"x": 7, "label": "raw"}
    assert rec["error"] is None
    assert loads_json_column(row["result"]) == {"x": 7, "label": "raw"}
    assert row["error"] is None


def test_success_python_client(cluster: Cluster):
    """Client.call returns the task's result; the SQLite row is completed; Client.get_task returns the record."""
    client = cluster.client()
    assert client.call("echo", x=41, label="client-e2e") == {"x": 41, "label": "client-e2e"}
    assert client.call("add", a=1.5, b=2.25) == pytest.approx(3.75)
    assert client.call("add", a=1, b=2) == pytest.approx(3)  # integers are valid numbers

    log = cluster.log

    def mine():
        return [r for r in log.query("SELECT * FROM tasks WHERE function_name = 'echo' AND args IS NOT NULL")
                if loads_json_column(r["args"]) == {"x": 41, "label": "client-e2e"}]

    found = wait_for(mine, timeout=SETTLE_TIMEOUT_S, message="the client's echo task in the task log")
    assert len(found) == 1, found
    row = log.wait_terminal(found[0]["id"], events=["pending", "running", "completed"])
    assert row["status"] == "completed"
    assert row["worker_id"] in cluster.worker_ids
    assert loads_json_column(row["result"]) == {"x": 41, "label": "client-e2e"}

    record = client.get_task(row["id"])
    assert record["task_id"] == row["id"]
    assert record["status"] == "completed"
    assert record["result"] == {"x": 41, "label": "client-e2e"}


def test_centroid_with_dataclass_points(cluster: Cluster):
    """A list of dataclass points and an Optional list of weights pass validation and reach the task."""
    resp = cluster.post("centroid", {"points": [{"x": 0, "y": 0}, {"x": 4, "y": 0}], "weights": [3, 1]})
    assert resp.status == 200, resp
    assert resp.json()["result"] == {"x": pytest.approx(1.0), "y": pytest.approx(0.0)}


# ------------------------------------------------------------------------------------------- task raised

def test_task_exception_raw_http(cluster: Cluster):
    """A task that raises answers 500 failed with type, message and a traceback showing the task's line."""
    args = {"message": "kaboom-e2e-raw"}
    resp = cluster.post("boom", args)
    body = assert_error_body(resp, 500, "RuntimeError")
    assert body["status"] == "failed", body
    assert body["task_id"], body
    assert body["function"] == "boom" and body["pool"] == "fast", body
    assert body["worker_id"] in cluster.worker_ids, body
    err = body["error"]
    assert err["message"] == "kaboom-e2e-raw"
    assert "raise RuntimeError(message)" in err["traceback"], err["traceback"]
    assert "RuntimeError" in err["traceback"]

    rec, row = _check_record_and_row(cluster, body["task_id"], function="boom", status="failed", args=args,
                                     worker_id=body["worker_id"],
                                     expected_events=["pending", "running", "failed"])
    assert rec["error"]["type"] == "RuntimeError"
    assert rec["error"]["message"] == "kaboom-e2e-raw"
    assert rec["result"] is None
    stored = loads_json_column(row["error"])
    assert stored["type"] == "RuntimeError"
    assert stored["message"] == "kaboom-e2e-raw"
    assert "raise RuntimeError(message)" in stored["traceback"]
    assert row["result"] is None


def test_task_exception_python_client(cluster: Cluster):
    """Client.call raises TaskFailed carrying the remote type, message and traceback."""
    client = cluster.client()
    with pytest.raises(TaskFailed) as info:
        client.call("boom", message="kaboom-e2e-client")
    exc = info.value
    assert exc.remote_type == "RuntimeError"
    assert exc.remote_message == "kaboom-e2e-client"
    assert "raise RuntimeError(message)" in exc.remote_traceback
    assert "kaboom-e2e-client" in str(exc)


def test_task_value_error_from_validation_inside_task(cluster: Cluster):
    """centroid's own check (empty points) surfaces as a failed task of type ValueError."""
    body = assert_error_body(cluster.post("centroid", {"points": []}), 500, "ValueError")
    assert body["status"] == "failed"
    assert body["error"]["message"] == "points must not be empty"


# ------------------------------------------------------------------------------------------- task context

def test_whoami_sees_its_own_task_id(cluster: Cluster):
    """The task's context (current_task) carries the same id the gateway answered with, and pool fast."""
    resp = cluster.post("whoami", {})
    assert resp.status == 200, resp
    body = resp.json()
    result = body["result"]
    assert result["task_id"] == body["task_id"], body
    assert result["pool"] == "fast", body
    assert result["attempt"] == 1, body


def test_whoami_through_client(cluster: Cluster):
    """Through the Client: a fresh id per call, pool fast."""
    client = cluster.client()
    first = client.call("whoami")
    second = client.call("whoami")
    assert first["pool"] == second["pool"] == "fast"
    assert first["task_id"] and second["task_id"] and first["task_id"] != second["task_id"]
    rec = cluster.get(f"/tasks/{first['task_id']}").json()
    assert rec["function"] == "whoami" and rec["status"] == "completed"
    assert rec["result"]["task_id"] == first["task_id"]


def test_long_sync_call_is_visible_while_it_runs(cluster: Cluster):
    """The gateway records a sync call's lifecycle when the answer comes back; a call that runs past the worker's
    --running-visible-after-ms (250 ms) shows up as `running` meanwhile, and ends with each event once."""
    import threading

    answer: dict = {}

    def call() -> None:
        answer["resp"] = cluster.post("sleepy", {"seconds": 1.5})

    caller = threading.Thread(target=call)
    caller.start()
    try:
        seen = wait_for(
            lambda: [t for t in cluster.get("/tasks?function=sleepy&status=running").json()["tasks"]],
            timeout=10, interval=0.05, message="a running sleepy call listed while it runs")
    finally:
        caller.join(timeout=30)
    resp = answer["resp"]
    assert resp.status == 200, resp
    task_id = resp.headers["x-neutrino-task-id"]
    assert task_id in {t["task_id"] for t in seen}, (task_id, seen)
    rec = cluster.get(f"/tasks/{task_id}").json()
    assert rec["status"] == "completed", rec
    assert [e["event"] for e in rec["events"]] == ["pending", "running", "completed"], rec["events"]
    cluster.log.wait_terminal(task_id, events=["pending", "running", "completed"])


def _worker_tasklog_writes(url: str) -> float:
    """Transactions the worker's own SQLite writer committed so far (0 before its first)."""
    import urllib.request

    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("neutrino_tasklog_write_seconds_count"))


@pytest.mark.skipif(TASK_LOG_MODE != "sqlite", reason="the worker's SQLite writer exists in the sqlite mode only")
def test_short_sync_calls_cost_the_worker_no_task_log_write(cluster: Cluster):
    """One writer per call: the gateway records what it relays, so a short call is not written twice."""
    urls = [w.url for w in cluster.workers]
    before = [_worker_tasklog_writes(u) for u in urls]
    ids = []
    for i in range(20):
        resp = cluster.post("echo", {"x": i})
        assert resp.status == 200, resp
        ids.append(resp.headers["x-neutrino-task-id"])
    for task_id in ids:
        rec = cluster.get(f"/tasks/{task_id}").json()
        assert rec["status"] == "completed" and rec["result"]["x"] == ids.index(task_id), rec
        assert [e["event"] for e in rec["events"]] == ["pending", "running", "completed"], rec["events"]
    after = [_worker_tasklog_writes(u) for u in urls]
    assert after == before, f"the workers wrote to the task log for calls the gateway records: {before} -> {after}"


@pytest.mark.sqlite_task_log_only("reads the SQLite file the gateway writes")
def test_gateway_shutdown_records_a_call_whose_client_left(launcher: Launcher, example_manifest):
    """SIGTERM to the gateway while it forwards a short call whose client has hung up: the gateway waits for the
    worker's answer and records it (completed, not cut short as a worker failure), then exits 0."""
    d = launcher.new_dir("gwleft")
    db = d / "tasks.sqlite"
    w = launcher.worker(EXAMPLE_APP, db, log_dir=d, worker_id="gwleft-w1", concurrency=1)
    gw = launcher.gateway(example_manifest, {"fast": [w.url]}, db, log_dir=d)
    try:
        parts = urlsplit(gw.url)
        body = json.dumps({"args": {"seconds": 0.2}}).encode()
        s = socket.create_connection((parts.hostname, parts.port), timeout=30)
        s.sendall(b"POST /api/sleepy HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.05)
        s.close()
        gw.stop()
        assert gw.proc.returncode == 0, f"gateway exited {gw.proc.returncode}:\n{gw.output[-3000:]}"
        rows = TaskLog(db).query("SELECT id, status FROM tasks WHERE function_name = 'sleepy'")
        assert len(rows) == 1, rows
        assert rows[0]["status"] == "completed", rows
    finally:
        w.stop()


def test_a_burst_beyond_the_pools_connections_waits_its_turn_instead_of_failing(launcher: Launcher, example_manifest):
    """Every worker busy is not an error: with --worker-connections 2 to each of two workers (4 calls in flight at
    most), 40 calls at once all complete, the others after waiting for room in the gateway; /pools shows them
    waiting meanwhile, and every call is recorded once, completed."""
    c = launcher.cluster(app=EXAMPLE_APP, manifest=example_manifest, workers=2, concurrency=2, name="burst",
                         gateway_args=["--worker-connections", "2"])
    try:
        with ThreadPoolExecutor(40) as pool:
            # 40 × 0.2 s over 4 connections: the last call waits about 1.8 s of its 2 s timeout + 2 s grace.
            futures = [pool.submit(post_task, c.gateway.url, "sleepy", {"seconds": 0.2}) for _ in range(40)]
            most_waiting = 0
            for _ in range(400):  # bounded: the burst takes about 2 s
                if all(f.done() for f in futures):
                    break
                fast = next(p for p in c.get("/pools").json()["pools"] if p["name"] == "fast")
                most_waiting = max(most_waiting, fast["waiting_calls"] or 0)
                time.sleep(0.02)
            answers = [f.result() for f in futures]
        assert all(r.status == 200 for r in answers), [r for r in answers if r.status != 200][:3]
        ids = {r.json()["task_id"] for r in answers}
        assert len(ids) == 40
        assert most_waiting > 0, "/pools never showed a call waiting for room"
        for task_id in ids:
            assert c.get(f"/tasks/{task_id}").json()["status"] == "completed"
    finally:
        c.stop()


@pytest.mark.skipif(TASK_LOG_MODE != "sqlite", reason="its own gateway and worker on one SQLite file; the line does not "
                    "depend on the task-log mode")
@pytest.mark.parametrize("path", ["call handler", "router"])
def test_a_call_whose_client_leaves_while_it_waits_for_room_is_not_run(launcher: Launcher, example_manifest, path: str):
    """One worker behind --worker-connections 1: while a call holds the connection, a second call waits in the
    gateway's line; its client hangs up. The call leaves the line: recorded `cancelled` (it never reached the worker),
    and it does not run later for nobody, ahead of the calls still waited for. The same for a call the router serves
    (one with an `Origin` header, which the Origin guard and CORS see)."""
    def _get(base: str, path: str):
        return http_request("GET", f"{base}{path}").json()

    d = launcher.new_dir("left")
    db = d / "tasks.sqlite"
    w = launcher.worker(EXAMPLE_APP, db, log_dir=d, worker_id="left-w1", concurrency=1)
    gw = launcher.gateway(example_manifest, {"fast": [w.url]}, db, log_dir=d, extra_args=["--worker-connections", "1"])
    try:
        holder = threading.Thread(target=lambda: post_task(gw.url, "sleepy", {"seconds": 1.5}))
        holder.start()
        wait_for(lambda: _get(gw.url, "/tasks?function=sleepy&status=running")["tasks"], timeout=60,
                 interval=0.02, message="the holding call to be running")
        parts = urlsplit(gw.url)
        body = json.dumps({"args": {"x": 7}}).encode()
        s = socket.create_connection((parts.hostname, parts.port), timeout=30)
        origin = f"Origin: http://{parts.netloc}\r\n" if path == "router" else ""  # same-origin: allowed
        s.sendall(f"POST /api/echo HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n{origin}"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_for(lambda: next(p for p in _get(gw.url, "/pools")["pools"] if p["name"] == "fast")["waiting_calls"],
                 timeout=30, interval=0.05, message="the call to wait for room")
        s.close()
        tasks = wait_for(lambda: _get(gw.url, "/tasks?function=echo")["tasks"], timeout=30, interval=0.05,
                         message="the abandoned call recorded")
        assert len(tasks) == 1 and tasks[0]["status"] == "cancelled", tasks
        record = _get(gw.url, f"/tasks/{tasks[0]['task_id']}")
        assert record["error"]["type"] == "Cancelled" and "not run" in record["error"]["message"], record
        assert record["worker_id"] is None and [e["event"] for e in record["events"]] == ["pending", "cancelled"], record
        holder.join(60)
        # Nothing left ahead of a new call: it runs, and echo ran on the worker once, for it.
        assert post_task(gw.url, "echo", {"x": 8}).status == 200
        done = _get(gw.url, "/tasks?function=echo&status=completed")["tasks"]
        assert len(done) == 1 and done[0]["task_id"] != tasks[0]["task_id"], done
    finally:
        gw.stop()
        w.stop()

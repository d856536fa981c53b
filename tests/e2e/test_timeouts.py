"""Task timeouts: a pure-Python loop (`spin`, 500 ms) and a task blocked in C (`sleepy`, 2000 ms) both answer
504 timed_out, and the worker's only Python thread is free again for the next call.

The cluster here has one worker with --concurrency 1, so a call after a timeout can only succeed if the
timed-out thread was interrupted (or released) rather than left spinning."""
from __future__ import annotations

import pytest

from conftest import EXAMPLE_APP, Cluster, Launcher, assert_error_body, loads_json_column, post_task

from neutrino.errors import TaskTimedOut


@pytest.fixture(scope="module")
def single(launcher: Launcher, example_manifest) -> Cluster:
    c = launcher.cluster(app=EXAMPLE_APP, manifest=example_manifest, workers=1, concurrency=1, name="timeouts")
    yield c
    c.stop()


def _assert_timed_out(c: Cluster, resp, function: str) -> str:
    body = assert_error_body(resp, 504)
    assert body["status"] == "timed_out", body
    assert body["task_id"], body
    task_id = body["task_id"]
    rec = c.get(f"/tasks/{task_id}")
    assert rec.status == 200, rec
    rec = rec.json()
    assert rec["status"] == "timed_out", f"GET /tasks/{task_id} right after the 504 returned: {rec}"
    assert rec["function"] == function
    row = c.log.wait_terminal(task_id, final_event="timed_out")
    assert row["status"] == "timed_out", row
    assert row["completed_at"] is not None, row
    return task_id


def _echo_ok(c: Cluster, x: int) -> None:
    resp = c.post("echo", {"x": x, "label": "after-timeout"})
    assert resp.status == 200, resp
    assert resp.json()["result"] == {"x": x, "label": "after-timeout"}


def test_spin_times_out_and_worker_recovers(single: Cluster):
    """spin (pure-Python loop, 500 ms) -> 504 timed_out; the single-thread worker then serves echo, twice over."""
    for round_no in range(2):
        task_id = _assert_timed_out(single, single.post("spin", {}), "spin")
        _echo_ok(single, round_no)
        row = single.log.task(task_id)
        assert row["status"] == "timed_out", f"a terminal status changed after the fact: {row}"
    assert single.workers[0].alive()


def test_spin_times_out_directly_on_worker(single: Cluster):
    """The worker itself answers 504 for spin and then serves echo (no gateway in between)."""
    worker_url = single.workers[0].url
    body = assert_error_body(post_task(worker_url, "spin", {}), 504)
    assert body["status"] == "timed_out", body
    resp = post_task(worker_url, "echo", {"x": 5, "label": "direct"})
    assert resp.status == 200, resp
    assert resp.json()["result"] == {"x": 5, "label": "direct"}


def test_sleepy_over_its_timeout(single: Cluster):
    """sleepy(seconds=3) with a 2000 ms timeout -> 504; its late finish never turns timed_out into completed."""
    task_id = _assert_timed_out(single, single.post("sleepy", {"seconds": 3}), "sleepy")
    # The only Python thread may still be inside time.sleep; the next call waits for it, then succeeds.
    _echo_ok(single, 99)
    # By now sleepy's thread has come back from time.sleep: its result must not have been recorded.
    rec = single.get(f"/tasks/{task_id}").json()
    assert rec["status"] == "timed_out", rec
    row = single.log.task(task_id)
    assert row["status"] == "timed_out", row
    events = [e["event"] for e in single.log.events(task_id)]
    assert "completed" not in events, events
    assert events.count("timed_out") == 1, events


def test_sleepy_within_its_timeout(single: Cluster):
    """sleepy(seconds=0.2) completes normally."""
    resp = single.post("sleepy", {"seconds": 0.2})
    assert resp.status == 200, resp
    assert resp.json()["result"] == {"slept": 0.2}


def test_timeout_python_client(single: Cluster):
    """Client.call raises TaskTimedOut for spin; the stored error describes the timeout."""
    client = single.client()
    with pytest.raises(TaskTimedOut):
        client.call("spin")
    # the newest spin row is the one just made
    rows = single.log.query("SELECT * FROM tasks WHERE function_name = 'spin' ORDER BY id DESC LIMIT 1")
    assert rows, "no spin task stored"
    row = single.log.wait_terminal(rows[0]["id"], final_event="timed_out")
    assert row["status"] == "timed_out"
    if row["error"] is not None:
        err = loads_json_column(row["error"])
        assert err.get("type") and err.get("message"), err
    assert client.call("echo", x=1, label="") == {"x": 1, "label": ""}

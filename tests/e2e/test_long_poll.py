"""GET /tasks/<id>?wait=N: returns as soon as the task is terminal, or after N seconds with the current record.

The sync path has no task that stays open for long, so a row is put in `running` directly in the SQLite file
(as another process would) and finished from the test, the way a worker's commit would finish it."""
from __future__ import annotations

import sqlite3
import threading
import time

from conftest import Cluster, assert_error_body, uuid7


def _insert_running(cluster: Cluster, task_id: str) -> None:
    with sqlite3.connect(cluster.db_path, timeout=30) as db:
        db.execute(
            "INSERT INTO tasks (id, function_name, status, created_at, pool, execution_mode, attempts)"
            " VALUES (?, 'echo', 'running', '2026-01-01T00:00:00.000Z', 'fast', 'sync', 1)",
            (task_id,),
        )


def _complete(cluster: Cluster, task_id: str) -> None:
    with sqlite3.connect(cluster.db_path, timeout=30) as db:
        db.execute("UPDATE tasks SET status = 'completed', result = '42' WHERE id = ?", (task_id,))


def test_wait_returns_when_the_task_finishes(cluster: Cluster):
    task_id = uuid7()
    _insert_running(cluster, task_id)
    timer = threading.Timer(1.0, _complete, args=(cluster, task_id))
    timer.start()
    try:
        started = time.monotonic()
        resp = cluster.get(f"/tasks/{task_id}?wait=30")
        elapsed = time.monotonic() - started
    finally:
        timer.join()
    assert resp.status == 200, resp
    assert resp.json()["status"] == "completed"
    assert resp.json()["result"] == 42
    # Not a timing assertion on speed: only that it did not sit out the whole 30 s wait.
    assert elapsed < 25, f"long-poll held {elapsed:.1f} s after the task finished"


def test_wait_gives_up_with_the_current_record(cluster: Cluster):
    task_id = uuid7()
    _insert_running(cluster, task_id)
    resp = cluster.get(f"/tasks/{task_id}?wait=1")
    assert resp.status == 200, resp
    assert resp.json()["status"] == "running"


def test_wait_on_a_finished_task_returns_it(cluster: Cluster):
    done = cluster.post("echo", {"x": 7}).json()
    resp = cluster.get(f"/tasks/{done['task_id']}?wait=30")
    assert resp.status == 200 and resp.json()["status"] == "completed"


def test_many_waiters_on_one_task(cluster: Cluster):
    task_id = uuid7()
    _insert_running(cluster, task_id)
    results: list = []

    def poll():
        results.append(cluster.get(f"/tasks/{task_id}?wait=30"))

    threads = [threading.Thread(target=poll) for _ in range(20)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    _complete(cluster, task_id)
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 20
    assert all(r.status == 200 and r.json()["status"] == "completed" for r in results)


def test_bad_wait_is_400(cluster: Cluster):
    done = cluster.post("echo", {"x": 1}).json()
    assert_error_body(cluster.get(f"/tasks/{done['task_id']}?wait=soon"), 400, "BadRequest")

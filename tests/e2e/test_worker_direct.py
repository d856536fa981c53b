"""The worker on its own (no gateway): /healthz stays responsive while every Python thread is busy, and the
gateway's task id given in X-Neutrino-Task-Id is the id the task sees and the id logged."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import EXAMPLE_APP, EXTRA_APP, Launcher, TaskLog, http_request, post_task, uuid7, wait_for

CONCURRENCY = 2


@pytest.fixture(scope="module")
def busy_worker(launcher: Launcher):
    d = launcher.new_dir("busy")
    w = launcher.worker(EXTRA_APP, d / "tasks.sqlite", log_dir=d, worker_id="busy-w1", concurrency=CONCURRENCY)
    yield w, d
    w.stop()


@pytest.mark.parametrize("task", ["hold", "burn"], ids=["sleeping-threads", "gil-bound-threads"])
def test_healthz_answers_while_all_python_threads_are_busy(busy_worker, task: str, tmp_path: Path):
    """With all --concurrency threads inside a task (sleeping, or looping in pure Python), GET /healthz
    still answers 200 before any of those tasks has finished; then the tasks are released and complete."""
    worker, _ = busy_worker
    markers = tmp_path / "markers"
    markers.mkdir()
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        futures = [pool.submit(post_task, worker.url, task, {"marker_dir": str(markers)})
                   for _ in range(CONCURRENCY)]
        try:
            wait_for(lambda: len(list(markers.glob("started-*"))) >= CONCURRENCY, timeout=60,
                     message=f"{CONCURRENCY} {task} tasks to be running")
            health = http_request("GET", f"{worker.url}/healthz", timeout=30)
            still_busy = [not f.done() for f in futures]
        finally:
            (markers / "release").write_text("go")
        results = [f.result(timeout=120) for f in futures]

    assert health.status == 200, health
    assert health.json().get("status") == "ok", health
    assert all(still_busy), "the busy tasks finished before /healthz answered; the check proved nothing"
    for r in results:
        assert r.status == 200, r
        assert r.json()["result"] == {"released": True}, r


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

"""DELETE /tasks/<id> on queued tasks: a queued task is cancelled and never runs, a running one is interrupted by
its worker, a finished one answers 409."""
from __future__ import annotations

import time

from conftest import EXAMPLE_APP, QUEUE_APP, assert_error_body, event_names, read_journal, wait_for


def test_cancel_queued_task_never_runs(queue_stack, tmp_path):
    stack = queue_stack(app=QUEUE_APP, name="cancelq")  # no gpu worker yet: the gpu task stays queued
    journal = tmp_path / "journal.jsonl"
    task_id = stack.submit("gpu_journal", {"path": str(journal)})
    keep = stack.submit("gpu_journal", {"path": str(journal)})  # queued behind it, not cancelled
    assert stack.record(task_id)["status"] == "queued"

    resp = stack.delete(task_id)
    assert resp.status == 200, resp
    assert resp.json() == {"task_id": task_id, "status": "cancelled"}, resp
    record = stack.record(task_id)
    assert record["status"] == "cancelled", record
    assert record["error"]["type"] == "Cancelled", record
    assert event_names(record) == ["queued", "cancelled"], record
    assert stack.nats.queue_depth("gpu")[0] == 2, stack.nats.consumer("pool_gpu")

    gpu = stack.worker("gpu", concurrency=1)
    done = stack.wait_task(keep)
    assert done["status"] == "completed" and done["worker_id"] == gpu.worker_id, done
    # The worker took the cancelled message off the queue without running it.
    wait_for(lambda: stack.nats.queue_depth("gpu") == (0, 0), timeout=30,
             message=lambda: f"pool_gpu empty (jsz: {stack.nats.consumer('pool_gpu')})")
    time.sleep(1.0)
    record = stack.record(task_id)
    assert record["status"] == "cancelled", record
    assert "running" not in event_names(record), record
    assert record["started_at"] is None and record["attempts"] == 0, record
    ran = {e["task_id"] for e in read_journal(journal)}
    assert ran == {keep}, read_journal(journal)
    row = stack.log.task(task_id)
    assert row["status"] == "cancelled" and row["started_at"] is None, row


def test_cancel_running_task_interrupts_it(queue_stack):
    stack = queue_stack(app=EXAMPLE_APP, name="cancelr")
    worker = stack.worker("async", concurrency=1)
    task_id = stack.submit("crunch", {"seconds": 20.0})
    stack.wait_status(task_id, "running")

    asked = time.monotonic()
    resp = stack.delete(task_id)
    assert resp.status == 202, resp
    assert resp.json() == {"task_id": task_id, "status": "cancelling"}, resp
    record = stack.wait_task(task_id, timeout=60)
    waited = time.monotonic() - asked
    assert record["status"] == "cancelled", record
    assert record["error"]["type"] == "Cancelled" and record["result"] is None, record
    assert record["attempts"] == 1 and record["worker_id"] == worker.worker_id, record
    assert event_names(record) == ["queued", "running", "cancelled"], record
    # Interrupted, not run to its end (20 s): generous bound, only "it did not run to completion".
    assert waited < 15.0, f"cancel took {waited:.1f}s for a 20 s task: {record}"
    assert record["duration_ms"] is not None and record["duration_ms"] < 19_000, record
    # Not redelivered afterwards; the worker takes the next task.
    wait_for(lambda: stack.nats.queue_depth("async") == (0, 0), timeout=30,
             message=lambda: f"pool_async empty (jsz: {stack.nats.consumer('pool_async')})")
    nxt = stack.submit("crunch", {"seconds": 0.1})
    assert stack.wait_task(nxt)["status"] == "completed"
    assert stack.record(task_id)["status"] == "cancelled"


def test_cancel_finished_task_is_409(queue_stack):
    stack = queue_stack(app=EXAMPLE_APP, name="cancelf")
    stack.worker("async", concurrency=1)
    task_id = stack.submit("crunch", {"seconds": 0.1})
    assert stack.wait_task(task_id)["status"] == "completed"

    resp = stack.delete(task_id)
    body = assert_error_body(resp, 409, "TaskFinished")
    assert body["error"].get("status") == "completed", body
    assert stack.record(task_id)["status"] == "completed"
    # A cancelled task is finished too (a gpu task: this stack has no gpu worker, so it is still queued).
    queued = stack.submit("train_model", {"data": "x"})
    assert stack.delete(queued).status == 200
    body = assert_error_body(stack.delete(queued), 409, "TaskFinished")
    assert body["error"].get("status") == "cancelled", body
    # Unknown ids.
    assert_error_body(stack.delete("01890000-0000-7000-8000-000000000000"), 404)

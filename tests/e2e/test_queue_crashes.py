"""A queued task whose worker dies on every delivery still ends: each crash counts as an attempt (JetStream redelivers
after AckWait), and when the deliveries run out the gateway's janitor records it failed/WorkerCrashed, copies it to the
dead-letter stream and removes it from the queue. Other tasks of the pool are not harmed."""
from __future__ import annotations

import json

from conftest import QUEUE_APP, read_journal, wait_for


def test_a_task_that_kills_every_worker_ends_failed_worker_crashed(queue_stack, tmp_path):
    stack = queue_stack(app=QUEUE_APP, name="crashes", ack_wait=1.5)
    journal = tmp_path / "journal.jsonl"
    victims = []
    task_id = stack.submit("crash_worker", {"path": str(journal)})
    # retries=1: two deliveries, each ending its worker.
    for attempt in (1, 2):
        w = stack.worker("async", concurrency=1)
        victims.append(w)
        w.ended_by_test = True
        code = w.wait_exit(timeout=30)
        assert code == 9, (attempt, code, w.output[-2000:])
    assert [e["attempt"] for e in read_journal(journal)] == [1, 2]
    # The third delivery (the pool allows more for its other tasks) finds both attempts used: it ends the task
    # failed/WorkerCrashed without running it.
    survivor = stack.worker("async", concurrency=1)
    ok = stack.submit("ping", {"n": 1})
    record = stack.wait_task(task_id)
    assert record["status"] == "failed", record
    error = json.loads(record["error"]) if isinstance(record["error"], str) else record["error"]
    assert error["type"] == "WorkerCrashed", error
    assert stack.wait_task(ok)["status"] == "completed"
    wait_for(lambda: (stack.nats.stream("NEUTRINO_DLQ") or {}).get("state", {}).get("messages") == 1, timeout=20,
             message=lambda: f"the DLQ to hold the crashed task: {stack.nats.stream('NEUTRINO_DLQ')}")
    wait_for(lambda: (stack.nats.stream("NEUTRINO_TASKS") or {}).get("state", {}).get("messages") == 0, timeout=20,
             message=lambda: f"the work queue to be empty: {stack.nats.stream('NEUTRINO_TASKS')}")
    assert survivor.alive()
    assert len(read_journal(journal)) == 2, read_journal(journal)


def test_a_task_with_the_pools_largest_retries_crashing_every_attempt_ends(queue_stack, tmp_path):
    """With the pool's largest retries (2) all three attempts end their worker; the spare delivery the pool consumer
    keeps (MaxDeliver = retries + 2) ends the task without running it. (Should that one die too, JetStream announces
    the exhausted deliveries and the gateway's janitor, DeliveryJanitor, ends the task the same way.)"""
    stack = queue_stack(app=QUEUE_APP, name="janitor", ack_wait=1.5)
    journal = tmp_path / "journal.jsonl"
    task_id = stack.submit("crash_worker_max", {"path": str(journal)})
    for _ in range(3):
        w = stack.worker("async", concurrency=1)
        w.ended_by_test = True
        assert w.wait_exit(timeout=30) == 9, w.output[-2000:]
    survivor = stack.worker("async", concurrency=1)
    record = stack.wait_task(task_id)
    assert record["status"] == "failed", record
    error = json.loads(record["error"]) if isinstance(record["error"], str) else record["error"]
    assert error["type"] == "WorkerCrashed" and "3 attempt(s)" in error["message"], error
    wait_for(lambda: (stack.nats.stream("NEUTRINO_TASKS") or {}).get("state", {}).get("messages") == 0, timeout=20,
             message=lambda: f"the work queue to be empty: {stack.nats.stream('NEUTRINO_TASKS')}")
    assert len(read_journal(journal)) == 3
    assert survivor.alive()

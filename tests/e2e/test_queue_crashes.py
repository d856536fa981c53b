"""A queued task whose worker dies on every delivery still ends. Each crash counts as a delivery (JetStream
redelivers after AckWait, the next worker runs it as the next attempt); when the pool consumer's deliveries
(MaxDeliver = the pool's largest retries + 2) are used up, JetStream announces it and the gateway's janitor
(DeliveryJanitor) records the task failed/WorkerCrashed, copies it to the dead-letter stream and removes it from the
queue. Other tasks of the pool are not harmed."""
from __future__ import annotations

import json

from conftest import QUEUE_APP, read_journal, wait_for


def test_a_task_that_kills_every_worker_ends_failed_worker_crashed(queue_stack, tmp_path):
    stack = queue_stack(app=QUEUE_APP, name="crashes", ack_wait=1.5)
    journal = tmp_path / "journal.jsonl"
    task_id = stack.submit("crash_worker_max", {"path": str(journal)})
    # The queue app's largest retries is 2: MaxDeliver 4, every delivery ends its worker.
    for delivery in range(1, 5):
        w = stack.worker("async", concurrency=1)
        w.ended_by_test = True
        code = w.wait_exit(timeout=30)
        assert code == 9, (delivery, code, w.output[-2000:])
    assert [e["attempt"] for e in read_journal(journal)] == [1, 2, 3, 4]
    # A healthy worker's pull request makes JetStream announce the exhausted deliveries (the advisory is lazy).
    survivor = stack.worker("async", concurrency=1)
    ok = stack.submit("ping", {"n": 1})
    record = stack.wait_task(task_id)
    assert record["status"] == "failed", record
    error = json.loads(record["error"]) if isinstance(record["error"], str) else record["error"]
    assert error["type"] == "WorkerCrashed" and "delivered 4 time" in error["message"], error
    assert stack.wait_task(ok)["status"] == "completed"
    wait_for(lambda: (stack.nats.stream("NEUTRINO_DLQ") or {}).get("state", {}).get("messages") == 1, timeout=20,
             message=lambda: f"the DLQ to hold the crashed task: {stack.nats.stream('NEUTRINO_DLQ')}")
    wait_for(lambda: (stack.nats.stream("NEUTRINO_TASKS") or {}).get("state", {}).get("messages") == 0, timeout=20,
             message=lambda: f"the work queue to be empty: {stack.nats.stream('NEUTRINO_TASKS')}")
    assert survivor.alive()
    assert len(read_journal(journal)) == 4

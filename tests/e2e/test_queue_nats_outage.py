"""nats-server goes away and comes back (same port, same store) under a running gateway and worker.

While it is down a submit answers 503 with Retry-After and its task is `failed` (never left `queued`, never run
later). Once it is back, submits succeed again without restarting anything, and the tasks queued before the stop
(and the one running through it) complete, each exactly once.
"""
from __future__ import annotations

import time

import pytest

from conftest import QUEUE_APP, assert_error_body, count_events, event_names, read_journal, wait_for

ACK_WAIT_S = 2.0


@pytest.mark.sqlite_task_log_only("a worker's outcome reaches the task log only through NATS in the NATS mode")
def test_nats_down_then_back(queue_stack, tmp_path):
    from neutrino import ServiceUnavailable

    stack = queue_stack(app=QUEUE_APP, ack_wait=ACK_WAIT_S, name="outage")
    worker = stack.worker("async", concurrency=1)
    journal = tmp_path / "journal.jsonl"

    # One task running and two queued behind it when NATS stops; the running one finishes while NATS is down.
    before = [stack.submit("journal", {"path": str(journal), "seconds": 2.0, "tag": f"before-{i}"}) for i in range(3)]
    stack.wait_status(before[0], "running")
    assert stack.get("/readyz").status == 200
    stack.nats.stop()

    resp = stack.post("journal", {"path": str(journal), "tag": "down"})
    body = assert_error_body(resp, 503, "QueueUnavailable")
    assert resp.headers.get("retry-after"), f"503 without Retry-After: {resp.headers}"
    refused = [body["error"]["task_id"]]
    assert body["error"].get("status") == "failed", body
    record = stack.record(refused[0])
    assert record["status"] == "failed", record
    assert record["error"]["type"] == "QueueUnavailable", record
    assert event_names(record) == ["queued", "failed"], record

    with stack.client() as client:
        with pytest.raises(ServiceUnavailable) as info:
            client.submit("journal", path=str(journal), tag="down-client")
        assert info.value.retry_after is not None and info.value.retry_after > 0
        if info.value.task_id:
            refused.append(info.value.task_id)
    wait_for(lambda: stack.get("/readyz").status == 503, timeout=30, message="/readyz to report NATS down")

    # The running task ends while NATS is down: its outcome reaches the task log, its ack cannot reach JetStream.
    stack.log.wait_terminal(before[0], final_event="completed", timeout=60)
    time.sleep(1.0)  # the gateway and the worker keep running without NATS for a while
    assert stack.gateway.alive() and worker.alive(), "a process died while NATS was down"
    assert stack.record(before[1])["status"] == "queued" and stack.record(before[2])["status"] == "queued"
    stack.nats.start()  # same port, same store

    # Submits succeed again (the gateway reconnects by itself); every refusal meanwhile is a clean 503.
    def submit_again():
        r = stack.post("journal", {"path": str(journal), "tag": "after"})
        if r.status == 202:
            return r.json()["task_id"]
        b = assert_error_body(r, 503, "QueueUnavailable")
        assert r.headers.get("retry-after"), r.headers
        refused.append(b["error"]["task_id"])
        return None

    after = wait_for(submit_again, timeout=90, interval=0.5, message="a submit to be accepted after NATS restarted")
    wait_for(lambda: stack.get("/readyz").status == 200, timeout=30, message="/readyz 200 after NATS restarted")

    for task_id in [*before, after]:
        record = stack.wait_task(task_id, timeout=120)
        assert record["status"] == "completed", record
    for task_id in [*before, after]:
        stack.log.wait_terminal(task_id, final_event="completed")
        assert count_events(stack.log, task_id, "completed") == 1, stack.log.events(task_id)

    # Each ran exactly once (the one running through the outage included: its ack was lost with the server,
    # so JetStream redelivers it, and the worker must not run a finished task again).
    wait_for(lambda: stack.nats.queue_depth("async") == (0, 0), timeout=60,
             message=lambda: f"pool_async empty (jsz: {stack.nats.consumer('pool_async')})")
    time.sleep(ACK_WAIT_S + 1)
    lines = read_journal(journal)
    for task_id in [*before, after]:
        mine = [(e["event"], e["attempt"]) for e in lines if e["task_id"] == task_id]
        assert [ev for ev, _ in mine] == ["start", "end"], (task_id, lines)
        assert stack.record(task_id)["status"] == "completed"

    # Refused tasks stay failed and never run, even if a publish was buffered across the reconnect.
    ran = {e["task_id"] for e in lines}
    for task_id in refused:
        record = stack.record(task_id)
        assert record["status"] == "failed" and "running" not in event_names(record), record
        assert task_id not in ran
    assert not stack.log.query("SELECT id FROM tasks WHERE status IN ('queued', 'running')"), \
        stack.log.query("SELECT id, status FROM tasks")
    assert worker.alive() and stack.gateway.alive()

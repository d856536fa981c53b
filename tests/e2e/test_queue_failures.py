"""What goes wrong on the JetStream path, and what must happen then: a worker killed mid-task (redelivery after
AckWait to another worker), failed attempts (retries with backoff, then the dead-letter stream), a task longer than
AckWait (heartbeats: no redelivery), and a timeout (terminal, never retried).

Tasks of tests/e2e/apps/queue_app.py write a journal file (`start`/`end` per attempt) that proves how often a
task really ran, independently of the task log.
"""
from __future__ import annotations

import json
import time

from conftest import (
    EXAMPLE_APP,
    QUEUE_APP,
    TERMINAL_STATUSES,
    event_names,
    parse_time,
    read_journal,
    wait_for,
)

ACK_WAIT_S = 2.0


def _terminal_events(stack, task_id: str) -> list[dict]:
    return [e for e in stack.log.events(task_id) if e["event"] in TERMINAL_STATUSES]


def test_worker_killed_mid_task_is_redelivered_to_another_worker(queue_stack, tmp_path):
    stack = queue_stack(app=QUEUE_APP, ack_wait=ACK_WAIT_S, name="kill")
    w1 = stack.worker("async", concurrency=2)
    w2 = stack.worker("async", concurrency=2)
    by_id = {w1.worker_id: w1, w2.worker_id: w2}
    journal = tmp_path / "journal.jsonl"

    task_id = stack.submit("journal", {"path": str(journal), "seconds": 6.0})
    running = stack.wait_status(task_id, "running")
    victim = by_id[running["worker_id"]]
    survivor = w2 if victim is w1 else w1
    wait_for(lambda: len(read_journal(journal)) >= 1, timeout=30, message="the first attempt to start")
    time.sleep(1.0)  # mid-task
    victim.kill()  # SIGKILL: no drain, no nak; JetStream redelivers after AckWait

    record = stack.wait_task(task_id)
    assert record["status"] == "completed", record
    assert record["attempts"] == 2, record
    assert record["worker_id"] == survivor.worker_id, record
    assert record["result"]["attempt"] == 2 and record["result"]["task_id"] == task_id, record

    lines = read_journal(journal)
    starts = [(e["attempt"], e["pid"]) for e in lines if e["event"] == "start"]
    ends = [(e["attempt"], e["pid"]) for e in lines if e["event"] == "end"]
    assert starts == [(1, victim.pid), (2, survivor.pid)], lines
    assert ends == [(2, survivor.pid)], lines

    # One row, one terminal event; the API shows both attempts.
    stack.log.wait_terminal(task_id, final_event="completed")
    assert len(stack.log.query("SELECT id FROM tasks WHERE id = ?", (task_id,))) == 1
    terminal = _terminal_events(stack, task_id)
    assert [(e["event"], e["attempt"], e["worker_id"]) for e in terminal] == [("completed", 2, survivor.worker_id)], \
        terminal
    running_events = [(e["attempt"], e["worker_id"]) for e in record["events"] if e["event"] == "running"]
    assert running_events == [(1, victim.worker_id), (2, survivor.worker_id)], record["events"]
    wait_for(lambda: stack.nats.queue_depth("async") == (0, 0), timeout=30,
             message=lambda: f"pool_async empty (jsz: {stack.nats.consumer('pool_async')})")


def test_retries_with_backoff_then_dead_letter(queue_stack):
    stack = queue_stack(app=EXAMPLE_APP, name="retry")
    stack.worker("async", concurrency=2)

    doomed = stack.submit("flaky", {"fail_times": 5})  # retries=2: attempts 1, 2, 3 all fail
    recovers = stack.submit("flaky", {"fail_times": 1})  # attempt 1 fails, attempt 2 succeeds

    record = stack.wait_task(doomed)
    assert record["status"] == "failed", record
    assert record["attempts"] == 3, record
    assert record["error"]["type"] == "RuntimeError", record
    assert "attempt 3 of flaky fails on purpose" in record["error"]["message"], record
    assert event_names(record) == ["queued", "running", "retrying", "running", "retrying", "running", "failed"], record
    assert [e["attempt"] for e in record["events"]] == [0, 1, 1, 2, 2, 3, 3], record["events"]
    # Backoff: attempt 2 starts ~1 s (±20 %) after attempt 1 failed, attempt 3 ~2 s after attempt 2 failed.
    # Lower bounds only (a slow machine makes the gaps longer, never shorter).
    at = {(e["event"], e["attempt"]): parse_time(e["at"]) for e in record["events"]}
    assert at[("running", 2)] - at[("retrying", 1)] >= 0.7, record["events"]
    assert at[("running", 3)] - at[("retrying", 2)] >= 1.4, record["events"]
    row = stack.log.wait_terminal(doomed, final_event="failed")
    assert row["status"] == "failed" and row["attempts"] == 3, row
    assert len(_terminal_events(stack, doomed)) == 1

    # The last failure is in the dead-letter stream (and nowhere in the work queue).
    wait_for(lambda: (stack.nats.stream("NEUTRINO_DLQ") or {}).get("state", {}).get("messages", 0) >= 1, timeout=30,
             message=lambda: f"a message in NEUTRINO_DLQ (jsz: {stack.nats.stream('NEUTRINO_DLQ')})")
    with stack.nats.wire() as nc:
        dead = nc.stream_message("NEUTRINO_DLQ", "neutrino.dlq.async.flaky")
    assert dead is not None, "no dead letter on neutrino.dlq.async.flaky"
    assert dead["headers"].get("Neutrino-Task-Id") == doomed, dead
    assert dead["headers"].get("Neutrino-Attempts") == "3", dead
    assert json.loads(dead["data"]) == {"args": {"fail_times": 5}}, dead

    record = stack.wait_task(recovers)
    assert record["status"] == "completed", record
    assert record["attempts"] == 2 and record["result"] == {"attempt": 2}, record
    assert event_names(record) == ["queued", "running", "retrying", "running", "completed"], record
    stack.log.wait_terminal(recovers, final_event="completed")
    assert len(_terminal_events(stack, recovers)) == 1

    # Only the task that ran out of retries was dead-lettered; nothing is left in the work queue.
    assert stack.nats.stream("NEUTRINO_DLQ")["state"]["messages"] == 1, stack.nats.stream("NEUTRINO_DLQ")
    wait_for(lambda: stack.nats.queue_depth("async") == (0, 0), timeout=30,
             message=lambda: f"pool_async empty (jsz: {stack.nats.consumer('pool_async')})")
    assert stack.nats.stream("NEUTRINO_TASKS")["state"]["messages"] == 0, stack.nats.stream("NEUTRINO_TASKS")


def test_task_longer_than_ack_wait_runs_once(queue_stack, tmp_path):
    """crunch-like task of 6 s with AckWait 2 s: InProgress heartbeats keep it with its worker. Two workers, so a
    redelivery would have somewhere to run."""
    stack = queue_stack(app=QUEUE_APP, ack_wait=ACK_WAIT_S, name="long")
    stack.worker("async", concurrency=1)
    stack.worker("async", concurrency=1)
    journal = tmp_path / "journal.jsonl"

    task_id = stack.submit("journal", {"path": str(journal), "seconds": 6.0})
    record = stack.wait_task(task_id)
    assert record["status"] == "completed", record
    assert record["attempts"] == 1, record
    assert event_names(record) == ["queued", "running", "completed"], record
    time.sleep(ACK_WAIT_S + 1)  # a late redelivery would show now
    lines = read_journal(journal)
    assert [(e["event"], e["attempt"]) for e in lines] == [("start", 1), ("end", 1)], lines
    record = stack.record(task_id)
    assert event_names(record) == ["queued", "running", "completed"] and record["attempts"] == 1, record
    consumer = stack.nats.consumer("pool_async")
    assert consumer["num_redelivered"] == 0, consumer
    assert (consumer["num_pending"], consumer["num_ack_pending"]) == (0, 0), consumer


def test_timeout_ends_timed_out_without_retry(queue_stack, tmp_path):
    """`overrun` has timeout_secs=1 and retries=2: it ends timed_out after one attempt."""
    stack = queue_stack(app=QUEUE_APP, ack_wait=ACK_WAIT_S, name="timeout")
    stack.worker("async", concurrency=2)
    journal = tmp_path / "journal.jsonl"

    task_id = stack.submit("overrun", {"path": str(journal), "seconds": 30.0})
    record = stack.wait_task(task_id, timeout=60)
    assert record["status"] == "timed_out", record
    assert record["attempts"] == 1, record
    assert record["error"]["type"] == "TimeoutError", record
    assert record["result"] is None, record
    assert event_names(record) == ["queued", "running", "timed_out"], record
    # No retry comes later either (the first backoff would be ~1 s; AckWait 2 s).
    time.sleep(4.0)
    record = stack.record(task_id)
    assert record["status"] == "timed_out" and record["attempts"] == 1, record
    assert event_names(record) == ["queued", "running", "timed_out"], record
    lines = read_journal(journal)
    assert [(e["event"], e["attempt"]) for e in lines] == [("start", 1)], lines
    consumer = stack.nats.consumer("pool_async")
    assert (consumer["num_pending"], consumer["num_ack_pending"]) == (0, 0), consumer
    assert (stack.nats.stream("NEUTRINO_DLQ") or {}).get("state", {}).get("messages", 0) == 0
    # The worker is still healthy: it runs the next task.
    after = stack.submit("ping", {"n": 7})
    assert stack.wait_task(after)["result"] == {"n": 7}

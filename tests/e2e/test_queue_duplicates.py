"""A task id runs once, however often its message is published.

The tests publish straight to JetStream with the NATS text protocol over a socket (conftest's `NatsWire`,
standard library only; no client library is installed):

1. the same message (same subject, body and `Nats-Msg-Id: <task_id>`) published again while the task is queued
   is dropped by JetStream's duplicate window: one message in the stream, one run;
2. a copy that gets past the duplicate window — published with the task id upper-cased as `Nats-Msg-Id`, which
   JetStream compares byte for byte but which names the same task — reaches a worker after the task completed:
   the worker sees the task is already terminal in the task log and acknowledges it without running it.
"""
from __future__ import annotations

import json
import time

import pytest

from conftest import QUEUE_APP, count_events, event_names, read_journal, wait_for


def test_duplicate_publish_of_one_task_id_runs_once(queue_stack, tmp_path):
    stack = queue_stack(app=QUEUE_APP, name="dup")  # no worker yet: the task stays queued
    journal = tmp_path / "journal.jsonl"
    args = {"path": str(journal), "seconds": 0.2}
    task_id = stack.submit("journal", args)
    body = json.dumps({"args": args}).encode()

    with stack.nats.wire() as nc:
        for _ in range(2):
            ack = nc.js_publish("neutrino.async.journal", body, msg_id=task_id)
            assert ack.get("stream") == "NEUTRINO_TASKS" and ack.get("duplicate") is True, ack
    tasks = stack.nats.stream("NEUTRINO_TASKS")
    assert tasks["state"]["messages"] == 1, tasks["state"]
    assert stack.nats.queue_depth("async") == (1, 0), stack.nats.consumer("pool_async")

    worker = stack.worker("async", concurrency=2)
    record = stack.wait_task(task_id)
    assert record["status"] == "completed" and record["attempts"] == 1, record
    assert record["worker_id"] == worker.worker_id, record
    assert event_names(record) == ["queued", "running", "completed"], record

    # A copy past the duplicate window reaches the worker after the task completed: acknowledged, not run.
    with stack.nats.wire() as nc:
        ack = nc.js_publish("neutrino.async.journal", body, msg_id=task_id.upper())
    assert ack.get("duplicate") is not True, f"the upper-cased id was taken as a duplicate by JetStream: {ack}"
    wait_for(lambda: stack.nats.stream("NEUTRINO_TASKS")["state"]["messages"] == 0
             and stack.nats.queue_depth("async") == (0, 0), timeout=30,
             message=lambda: f"the copy consumed (jsz: {stack.nats.consumer('pool_async')})")
    time.sleep(1.0)

    lines = read_journal(journal)
    assert [(e["event"], e["task_id"], e["attempt"]) for e in lines] == [("start", task_id, 1), ("end", task_id, 1)], \
        lines
    record = stack.record(task_id)
    assert record["status"] == "completed" and record["attempts"] == 1, record
    assert event_names(record) == ["queued", "running", "completed"], record
    assert len(stack.log.query("SELECT id FROM tasks")) == 1, stack.log.query("SELECT id, status FROM tasks")
    assert count_events(stack.log, task_id, "completed") == 1


def test_copy_of_a_running_task_waits_for_it_without_being_redelivered(queue_stack, tmp_path):
    """A copy of a task's message (past the duplicate window) reaches the worker that is running the task: the copy
    waits for that attempt to end, kept alive meanwhile (its wait outlasts AckWait 2 s), and is then acknowledged
    without running. The worker keeps a slot free, so its pull requests would take back a copy that lapsed: the copy
    waits once."""
    stack = queue_stack(app=QUEUE_APP, ack_wait=2.0, name="dupwait")
    worker = stack.worker("async", concurrency=3)
    journal = tmp_path / "journal.jsonl"
    args = {"path": str(journal), "seconds": 6.0}
    task_id = stack.submit("journal", args)
    wait_for(lambda: [e for e in read_journal(journal) if e["event"] == "start"], timeout=60,
             message=lambda: f"the task started (journal: {read_journal(journal)})")
    with stack.nats.wire() as nc:
        ack = nc.js_publish("neutrino.async.journal", json.dumps({"args": args}).encode(), msg_id=task_id.upper())
    assert ack.get("duplicate") is not True, ack
    wait_for(lambda: "a task running here was redelivered" in worker.output, timeout=30,
             message=lambda: f"the copy waiting for the running attempt (worker output: {worker.output[-2000:]})")

    record = stack.wait_task(task_id)
    assert record["status"] == "completed" and record["attempts"] == 1, record
    wait_for(lambda: stack.nats.queue_depth("async") == (0, 0), timeout=30,
             message=lambda: f"the copy consumed (jsz: {stack.nats.consumer('pool_async')})")
    lines = read_journal(journal)
    assert [(e["event"], e["attempt"]) for e in lines] == [("start", 1), ("end", 1)], lines
    # A copy that lapsed would have come back and waited a second time.
    assert worker.output.count("a task running here was redelivered") == 1, worker.output[-3000:]
    assert count_events(stack.log, task_id, "completed") == 1

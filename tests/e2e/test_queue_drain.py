"""SIGTERM drains a NATS-mode worker and loses nothing: it stops fetching, lets running tasks finish within
--drain-grace, hands back what is still running after it, and exits 0. Whatever it did not finish, the next worker
runs; every task ends completed, exactly once."""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
from urllib.parse import urlsplit

import pytest

from conftest import NATS_TASK_LOG, QUEUE_APP, count_events, event_names, read_journal, wait_for, wait_for_output


def _completed_once(stack, task_id: str) -> dict:
    stack.log.wait_terminal(task_id, final_event="completed")
    assert count_events(stack.log, task_id, "completed") == 1, stack.log.events(task_id)
    return stack.log.task(task_id)


def test_sigterm_drain_finishes_running_tasks_and_loses_nothing(queue_stack, tmp_path):
    stack = queue_stack(app=QUEUE_APP, name="drain")
    first = stack.worker("async", concurrency=2, drain_grace=10.0)
    journal = tmp_path / "journal.jsonl"
    ids = [stack.submit("journal", {"path": str(journal), "seconds": 2.0, "tag": f"t{i}"}) for i in range(5)]

    # Two run (concurrency 2), three wait in the queue.
    wait_for(lambda: len([e for e in read_journal(journal) if e["event"] == "start"]) == 2, timeout=60,
             message=lambda: f"two tasks started (journal: {read_journal(journal)})")
    running = {e["task_id"] for e in read_journal(journal) if e["event"] == "start"}
    first.ended_by_test = True  # (kept out of failure reports: it is meant to exit)
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait_exit(timeout=60) == 0, first.output[-3000:]

    # The running ones finished on the draining worker, in their first attempt; the rest were never started.
    for task_id in ids:
        if task_id in running:
            record = stack.wait_task(task_id)  # (the NATS task log: its outcome may still be on the way)
            assert record["status"] == "completed", record
            assert record["worker_id"] == first.worker_id and record["attempts"] == 1, record
        else:
            record = stack.record(task_id)
            assert record["status"] == "queued" and event_names(record) == ["queued"], record
    assert stack.nats.queue_depth("async") == (3, 0), stack.nats.consumer("pool_async")

    second = stack.worker("async", concurrency=2)
    for task_id in ids:
        record = stack.wait_task(task_id)
        assert record["status"] == "completed", record
        assert record["worker_id"] == (first.worker_id if task_id in running else second.worker_id), record
        row = _completed_once(stack, task_id)
        assert row["attempts"] == 1, row
    lines = read_journal(journal)
    for task_id in ids:
        assert [e["event"] for e in lines if e["task_id"] == task_id] == ["start", "end"], (task_id, lines)
    wait_for(lambda: stack.nats.queue_depth("async") == (0, 0), timeout=30,
             message=lambda: f"pool_async empty (jsz: {stack.nats.consumer('pool_async')})")


def test_drain_keeps_a_task_longer_than_ack_wait_alive(queue_stack, tmp_path):
    """A task of 6 s with AckWait 2 s, on a worker told to stop 1 s in with --drain-grace 10: the worker keeps sending
    InProgress through the drain (its in-progress ticker stops only after the consumer), so JetStream never hands the
    message to the second worker while the first still runs it; the task runs once and the first worker exits 0."""
    ack_wait = 2.0
    stack = queue_stack(app=QUEUE_APP, ack_wait=ack_wait, name="drainlong")
    first = stack.worker("async", concurrency=1, drain_grace=10.0)
    journal = tmp_path / "journal.jsonl"
    task_id = stack.submit("journal", {"path": str(journal), "seconds": 6.0})
    wait_for(lambda: [e for e in read_journal(journal) if e["event"] == "start"], timeout=60,
             message=lambda: f"the task started (journal: {read_journal(journal)})")
    # A second worker that would take a redelivery.
    stack.worker("async", concurrency=1)
    time.sleep(1.0)
    first.ended_by_test = True
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait_exit(timeout=60) == 0, first.output[-3000:]

    record = stack.wait_task(task_id)
    assert record["status"] == "completed" and record["attempts"] == 1, record
    assert record["worker_id"] == first.worker_id, record
    time.sleep(ack_wait + 1)  # a late redelivery would show now
    lines = read_journal(journal)
    assert [(e["event"], e["attempt"]) for e in lines] == [("start", 1), ("end", 1)], lines
    consumer = stack.nats.consumer("pool_async")
    assert consumer["num_redelivered"] == 0, consumer
    assert (consumer["num_pending"], consumer["num_ack_pending"]) == (0, 0), consumer


def test_sigterm_drain_hands_back_what_outlives_the_grace(queue_stack, tmp_path):
    """--drain-grace 1 s with a task of 8 s: the worker naks it and exits 0; the next worker runs it (attempt 2).

    A nak'd message stays in the consumer's ack-pending set until it is redelivered (nats-server semantics), so /jsz
    cannot tell "handed back" from "abandoned"; what tells is when it comes back: at once for a nak, only after
    AckWait (60 s here) for an abandoned message. The bound below is half of AckWait."""
    ack_wait = 60.0
    stack = queue_stack(app=QUEUE_APP, ack_wait=ack_wait, name="handback")
    first = stack.worker("async", concurrency=1, drain_grace=1.0)
    journal = tmp_path / "journal.jsonl"
    task_id = stack.submit("journal", {"path": str(journal), "seconds": 8.0})
    stack.wait_status(task_id, "running")
    wait_for(lambda: read_journal(journal), timeout=30, message="the task to start")

    first.ended_by_test = True  # (kept out of failure reports: it is meant to exit)
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait_exit(timeout=60) == 0, first.output[-3000:]
    exited = time.monotonic()
    pending, ack_pending = stack.nats.queue_depth("async")
    assert pending + ack_pending == 1, f"the task left the queue: {stack.nats.consumer('pool_async')}"

    second = stack.worker("async", concurrency=1)
    wait_for(lambda: [e for e in read_journal(journal) if e["attempt"] == 2], timeout=ack_wait / 2,
             message=lambda: f"attempt 2 to start well before AckWait ({ack_wait:g} s) would redeliver an abandoned "
                             f"message; {time.monotonic() - exited:.0f}s since the worker exited "
                             f"(jsz: {stack.nats.consumer('pool_async')})")
    record = stack.wait_task(task_id)
    assert record["status"] == "completed", record
    assert record["attempts"] == 2 and record["worker_id"] == second.worker_id, record
    assert record["result"]["attempt"] == 2, record
    running = [(e["attempt"], e["worker_id"]) for e in record["events"] if e["event"] == "running"]
    assert running == [(1, first.worker_id), (2, second.worker_id)], record["events"]
    _completed_once(stack, task_id)
    time.sleep(0.5)
    lines = read_journal(journal)
    assert [(e["event"], e["attempt"]) for e in lines] == [("start", 1), ("start", 2), ("end", 2)], lines


@pytest.mark.skipif(NATS_TASK_LOG, reason="the task log over NATS cannot record anything while nats-server is paused")
def test_gateway_shutdown_waits_for_a_submit_whose_client_left(queue_stack):
    """SIGTERM to the gateway while a submit whose client has hung up waits for JetStream's ack (nats-server paused
    with SIGSTOP): the gateway's shutdown waits for the publish to give up (its 5 s budget) and for the task to be
    recorded `failed`, then exits 0. Without that wait the task log closed first and the task stayed `queued` with
    nobody left to publish it."""
    stack = queue_stack(app=QUEUE_APP, name="gwleft-submit")
    gateway, nats = stack.gateway, stack.nats.proc
    parts = urlsplit(stack.url)
    body = json.dumps({"args": {"path": "/dev/null", "tag": "left"}}).encode()
    os.kill(nats.pid, signal.SIGSTOP)
    try:
        s = socket.create_connection((parts.hostname, parts.port), timeout=30)
        s.sendall(b"POST /api/journal HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.3)  # the submit is waiting for the ack now
        s.close()
        gateway.proc.send_signal(signal.SIGTERM)
        wait_for_output(gateway, "publish failed", timeout=30)
    finally:
        # (The NATS connection's own close waits for a paused server: let it answer once the submit has given up.)
        os.kill(nats.pid, signal.SIGCONT)
    gateway.proc.wait(30)
    assert gateway.proc.returncode == 0, f"gateway exited {gateway.proc.returncode}:\n{gateway.output[-3000:]}"
    with sqlite3.connect(stack.db_path) as conn:
        rows = conn.execute("SELECT status FROM tasks WHERE function_name = 'journal'").fetchall()
    assert rows == [("failed",)], rows

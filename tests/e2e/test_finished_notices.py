"""A worker that records into the task log itself announces each task it finished on core NATS
(`neutrino.control.finished.<pool>`, the task id as the body) right after the commit, and the gateway resumes the
long polls (`GET /tasks/<id>?wait=`) of that task at once instead of at its watcher's next look.

The notice is a hint, never the answer: a forged or early notice for a task that is not terminal must not end a long
poll with a non-terminal record before its deadline."""
from __future__ import annotations

import threading
import time

from conftest import QUEUE_APP

FINISHED = "neutrino.control.finished"


def test_the_notice_follows_the_commit_and_the_long_poll_answers_terminal(queue_stack, tmp_path):
    stack = queue_stack(app=QUEUE_APP, name="notice", task_log="sqlite")
    stack.worker("async", concurrency=2)
    with stack.nats.wire() as nc:
        nc.subscribe(f"{FINISHED}.*")
        for n in range(5):
            task_id = stack.submit("ping", {"n": n})
            resp = stack.get(f"/tasks/{task_id}?wait=30", timeout=40)
            assert resp.status == 200, resp
            record = resp.json()
            assert record["status"] == "completed" and record["result"] == {"n": n}, record
            msg = nc.next_message(timeout=10)
            assert msg is not None, f"no finished notice for {task_id}"
            subject, payload = msg
            assert subject == f"{FINISHED}.async" and payload.decode() == task_id, msg
            # Sent after the commit: the row is terminal in the file by the time anyone hears the notice.
            rows = stack.log.query("SELECT status FROM tasks WHERE id = ?", (task_id,))
            assert rows == [{"status": "completed"}], rows


def test_a_notice_for_a_task_that_is_not_terminal_does_not_end_the_wait(queue_stack, tmp_path):
    stack = queue_stack(app=QUEUE_APP, name="forged")  # no worker: the task stays queued
    task_id = stack.submit("ping", {"n": 1})
    answer: dict = {}

    def long_poll():
        started = time.monotonic()
        answer["resp"] = stack.get(f"/tasks/{task_id}?wait=3", timeout=20)
        answer["elapsed"] = time.monotonic() - started

    poller = threading.Thread(target=long_poll)
    poller.start()
    with stack.nats.wire() as nc:
        for _ in range(5):
            time.sleep(0.3)
            nc.publish(f"{FINISHED}.async", task_id.encode())
            nc.publish(f"{FINISHED}.async", task_id.upper().encode())
            nc.publish(f"{FINISHED}.async", b"not a task id")
    poller.join(timeout=30)
    assert not poller.is_alive()
    resp = answer["resp"]
    assert resp.status == 200, resp
    assert resp.json()["status"] == "queued", resp.json()
    # A lower bound only: the wait ran to its deadline instead of ending at the first notice.
    assert answer["elapsed"] >= 2.5, f"the long poll ended after {answer['elapsed']:.2f} s, before its 3 s deadline"

"""Worker heartbeats (`neutrino.heartbeat.<pool>` on NATS): the gateway's live set in `/pools` gains a worker when
it starts, forgets one that was SIGKILLed once its heartbeats stop for `--heartbeat-timeout`, and drops one at
once when it begins to drain on SIGTERM (its `stopping` heartbeat), before its running task is done."""
from __future__ import annotations

import signal

from conftest import (EXAMPLE_APP, HEARTBEAT_TIMEOUT_S, QUEUE_APP, count_events, read_journal, scrape,
                      wait_for)


def worker_ids(stack, pool: str) -> set[str]:
    return {w["worker_id"] for w in stack.pools()[pool]["workers"]}


def test_killed_worker_expires_from_the_live_set(queue_stack):
    stack = queue_stack(app=QUEUE_APP, name="hb-kill")  # gateway --heartbeat-timeout 2, workers every 0.5 s
    a = stack.worker("async", concurrency=1)
    b = stack.worker("async", concurrency=1)
    wait_for(lambda: worker_ids(stack, "async") == {a.worker_id, b.worker_id}, timeout=30,
             message=lambda: f"both workers in /pools: {stack.pools()['async']['workers']}")

    a.kill()  # SIGKILL: no goodbye; only the missing heartbeats tell
    # Bounded by many heartbeat timeouts (no speed assertion); b keeps being heard throughout.
    wait_for(lambda: worker_ids(stack, "async") == {b.worker_id}, timeout=10 * HEARTBEAT_TIMEOUT_S + 10,
             message=lambda: f"{a.worker_id} to expire from /pools: {stack.pools()['async']['workers']}")
    entry = stack.pools()["async"]
    assert entry["workers_alive"] == 1 and entry["scaling"]["current"] == 1, entry
    wait_for(lambda: scrape(stack.url).value("neutrino_workers_alive", pool="async") == 1, timeout=30,
             message="neutrino_workers_alive{pool=async} == 1")
    # The survivor still works.
    assert stack.wait_task(stack.submit("ping", {"n": 1}))["status"] == "completed"
    assert worker_ids(stack, "async") == {b.worker_id}


def test_sigterm_leaves_the_live_set_at_once_while_it_drains(queue_stack, tmp_path):
    # A heartbeat timeout far longer than the drain: only the `stopping` heartbeat can remove the worker in time.
    stack = queue_stack(app=QUEUE_APP, name="hb-term", gateway=False)
    stack.start_gateway(heartbeat_timeout=120)
    busy = stack.worker("async", concurrency=1, drain_grace=60)
    idle = stack.worker("gpu", concurrency=1)
    wait_for(lambda: worker_ids(stack, "async") == {busy.worker_id} and worker_ids(stack, "gpu") == {idle.worker_id},
             timeout=30, message=lambda: f"both workers in /pools: {stack.pools()}")

    journal = tmp_path / "journal.jsonl"
    task_id = stack.submit("journal", {"path": str(journal), "seconds": 12.0})
    wait_for(lambda: read_journal(journal), timeout=60, message="the task to start")
    busy.ended_by_test = True
    busy.proc.send_signal(signal.SIGTERM)

    def gone_while_draining():
        if busy.worker_id in worker_ids(stack, "async"):
            return None
        return "alive" if busy.alive() else "exited"

    state = wait_for(gone_while_draining, timeout=60, interval=0.1,
                     message=lambda: f"{busy.worker_id} to leave /pools: {stack.pools()['async']['workers']}")
    assert state == "alive", "the draining worker stayed in /pools until it exited"
    assert busy.wait_exit(timeout=90) == 0, busy.output[-3000:]
    record = stack.wait_task(task_id)
    assert record["status"] == "completed" and record["attempts"] == 1, record
    assert count_events(stack.log, task_id, "running") == 1

    # An idle worker: SIGTERM, and it is gone long before the 120 s timeout could have dropped it.
    idle.ended_by_test = True
    idle.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: worker_ids(stack, "gpu") == set(), timeout=30,
             message=lambda: f"{idle.worker_id} to leave /pools: {stack.pools()['gpu']['workers']}")
    assert idle.wait_exit(timeout=60) == 0


def test_http_worker_heartbeats_and_expires(queue_stack):
    stack = queue_stack(app=EXAMPLE_APP, name="hb-http", gateway=False)
    one = stack.http_worker("fast")
    two = stack.http_worker("fast")
    stack.start_gateway(http_pools={"fast": [one.url, two.url]})
    wait_for(lambda: worker_ids(stack, "fast") == {one.worker_id, two.worker_id}, timeout=30,
             message=lambda: f"both HTTP workers in /pools: {stack.pools()['fast']}")
    assert {w["mode"] for w in stack.pools()["fast"]["workers"]} == {"http"}
    one.kill()
    wait_for(lambda: worker_ids(stack, "fast") == {two.worker_id}, timeout=10 * HEARTBEAT_TIMEOUT_S + 10,
             message=lambda: f"{one.worker_id} to expire: {stack.pools()['fast']['workers']}")
    assert stack.post("echo", {"x": 5}).status == 200  # the gateway routes around the dead one

"""`GET /pools`: per pool the queue depth (equal to the JetStream consumer's info while tasks wait for a stopped
pool), the workers the gateway hears from with their busy slots, the last minute's throughput, and the replica
count the scaling policy wants (docs/observability-contract.md)."""
from __future__ import annotations

import math

from conftest import EXAMPLE_APP, QUEUE_APP, parse_time, pools_document, read_journal, wait_for


def policy_desired(scaling: dict, backlog: int) -> int:
    """clamp(ceil(backlog / target), min, max): the queued pools' policy, with no scale-down held by the window."""
    return max(scaling["min"], min(scaling["max"], math.ceil(backlog / scaling["target"])))


def test_queue_depth_matches_the_consumer_while_tasks_wait_for_a_stopped_pool(queue_stack, tmp_path):
    stack = queue_stack(app=QUEUE_APP, name="pools-depth")  # no workers: every task waits
    for n in range(5):
        stack.submit("ping", {"n": n})
    for _ in range(2):
        stack.submit("gpu_journal", {"path": str(tmp_path / "never.jsonl")})

    def matches():
        pools = stack.pools()  # read first: the queue only grows while nothing consumes it
        jsz = {pool: stack.nats.queue_depth(pool) for pool in ("async", "gpu")}
        for pool, (pending, ack_pending) in jsz.items():
            queue = pools[pool]["queue"]
            if (queue["pending"], queue["in_flight"]) != (pending, ack_pending):
                return None
            if queue["oldest_queued_age_seconds"] is None:
                return None
        return pools if jsz == {"async": (5, 0), "gpu": (2, 0)} else None

    pools = wait_for(matches, timeout=30, message=lambda: f"/pools queue depth to equal /jsz "
                     f"({ {p: stack.nats.queue_depth(p) for p in ('async', 'gpu')} }): {stack.pools()}")
    for name, depth in (("async", 5), ("gpu", 2)):
        entry = pools[name]
        assert entry["mode"] == name, entry
        queue = entry["queue"]
        assert queue["depth"] == depth and queue["redelivered"] == 0, entry
        assert queue["consumer"] == f"pool_{name}" and queue["stream"] == "NEUTRINO_TASKS", entry
        assert queue["oldest_queued_age_seconds"] >= 0, entry
        assert entry["workers_alive"] == 0 and entry["workers"] == [] and entry["running"] == 0, entry
        scaling = entry["scaling"]
        assert scaling["current"] == 0, scaling
        assert scaling["desired"] == scaling["recommended"] == policy_desired(scaling, depth), scaling
        assert isinstance(scaling["reason"], str) and scaling["reason"], scaling
    assert pools["gpu"]["scaling"]["min"] == 0 and pools["gpu"]["scaling"]["scale_to_zero"] is True, pools["gpu"]
    assert pools["async"]["scaling"]["min"] == 1 and pools["async"]["scaling"]["scale_to_zero"] is False
    document = pools_document(stack.url)
    assert document["dlq"]["messages"] == 0, document
    parse_time(document["updated_at"])
    # The oldest task's age grows while it waits.
    first = pools["async"]["queue"]["oldest_queued_age_seconds"]
    wait_for(lambda: stack.pools()["async"]["queue"]["oldest_queued_age_seconds"] > first, timeout=30,
             message="oldest_queued_age_seconds to grow")


def test_workers_and_busy_slots(queue_stack, tmp_path):
    stack = queue_stack(app=QUEUE_APP, name="pools-busy")
    worker = stack.worker("async", concurrency=2)
    url = worker.wait_listening()

    def listed():
        entry = stack.pools()["async"]
        # (the first heartbeat may leave before the worker's HTTP port is open: no url yet)
        return entry if entry["workers_alive"] == 1 and len(entry["workers"]) == 1 and entry["workers"][0]["url"] \
            else None

    entry = wait_for(listed, timeout=30, message=lambda: f"the worker in /pools: {stack.pools()['async']}")
    [w] = entry["workers"]
    assert w["worker_id"] == worker.worker_id and w["pid"] == worker.pid, w
    assert w["mode"] == "nats" and w["concurrency"] == 2 and w["busy"] == 0, w
    assert isinstance(w["gpu"], bool) and w["version"] and w["host"], w
    assert w["url"] == url, w
    assert parse_time(w["last_seen"]) >= parse_time(w["started_at"]), w
    assert stack.pools()["gpu"]["workers_alive"] == 0

    journal = tmp_path / "journal.jsonl"
    ids = [stack.submit("journal", {"path": str(journal), "seconds": 8.0, "tag": f"t{i}"}) for i in range(2)]
    wait_for(lambda: len(read_journal(journal)) == 2, timeout=60, message="both tasks to start")

    def both_busy():
        entry = stack.pools()["async"]
        pending, ack_pending = stack.nats.queue_depth("async")
        ok = (entry["workers"] and entry["workers"][0]["busy"] == 2 and entry["running"] == 2
              and entry["queue"]["in_flight"] == ack_pending == 2 and entry["queue"]["pending"] == pending == 0)
        return entry if ok else None

    entry = wait_for(both_busy, timeout=30, message=lambda: f"busy 2, in flight 2 in /pools: {stack.pools()['async']} "
                     f"(jsz {stack.nats.queue_depth('async')})")
    assert entry["scaling"]["desired"] >= policy_desired(entry["scaling"], 2), entry["scaling"]

    for task_id in ids:
        assert stack.wait_task(task_id)["status"] == "completed"

    def idle_with_throughput():
        entry = stack.pools()["async"]
        ok = (entry["workers"] and entry["workers"][0]["busy"] == 0 and entry["running"] == 0
              and entry["queue"]["depth"] == 0 and entry["last_minute"]["completed"] >= 2)
        return entry if ok else None

    entry = wait_for(idle_with_throughput, timeout=30, message=lambda: f"idle, 2 completed: {stack.pools()['async']}")
    minute = entry["last_minute"]
    assert minute["failed"] == 0, minute
    assert minute["p50_ms"] > 0 and minute["p95_ms"] >= minute["p50_ms"], minute
    assert minute["per_second"] > 0, minute


def test_sync_pool_entry(queue_stack):
    stack = queue_stack(app=EXAMPLE_APP, name="pools-sync", gateway=False)
    fast = stack.http_worker("fast", concurrency=3)
    stack.start_gateway(http_pools={"fast": [fast.url]})

    def listed():
        entry = stack.pools()["fast"]
        return entry if entry["workers_alive"] == 1 and len(entry["workers"]) == 1 else None

    entry = wait_for(listed, timeout=30, message=lambda: f"the HTTP worker in /pools: {stack.pools()}")
    assert entry["mode"] == "sync" and entry["queue"] is None, entry
    assert len(entry["workers"]) == 1, entry
    [w] = entry["workers"]
    # Threads (--concurrency 3) and coroutine slots (--max-coroutines 512: examples/app.py has an async def task in
    # pool fast) are reported apart, so the pool's thread utilisation is not diluted by idle coroutine slots.
    assert w["worker_id"] == fast.worker_id and w["mode"] == "http" and w["concurrency"] == 3, w
    assert w["coroutines"] == 512 and w["busy_coroutines"] == 0, w
    assert w["pid"] == fast.pid and w["url"] == fast.url, w
    scaling = entry["scaling"]
    assert (scaling["min"], scaling["max"], scaling["target"]) == (1, 4, 0.7), scaling
    assert scaling["min"] <= scaling["desired"] <= scaling["max"], scaling
    assert stack.post("echo", {"x": 1}).status == 200
    wait_for(lambda: stack.pools()["fast"]["last_minute"]["completed"] >= 1, timeout=30,
             message=lambda: f"the sync call in last_minute: {stack.pools()['fast']}")
    assert {"fast", "async", "gpu"} <= set(stack.pools())

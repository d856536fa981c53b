"""100 concurrent calls through the gateway to two workers: every one answered 200, and the task log holds
exactly those 100 tasks, each once, completed, with one `completed` event each."""
from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import EXAMPLE_APP, Cluster, Launcher, loads_json_column, post_task, wait_for

CALLS = 100
THREADS = 32


@pytest.fixture(scope="module")
def fresh(launcher: Launcher, example_manifest) -> Cluster:
    """Its own cluster and SQLite file, so the file holds nothing but this module's calls."""
    c = launcher.cluster(app=EXAMPLE_APP, manifest=example_manifest, workers=2, concurrency=4, name="concurrency")
    yield c
    c.stop()


def test_hundred_concurrent_calls(fresh: Cluster):
    def call(i: int):
        return i, post_task(fresh.url, "echo", {"x": i, "label": f"c{i}"})

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(call, range(CALLS)))

    bad = [(i, r) for i, r in results if r.status != 200]
    assert not bad, f"{len(bad)} of {CALLS} calls did not answer 200, e.g. {bad[:3]}"
    bodies = {i: r.json() for i, r in results}
    for i, body in bodies.items():
        assert body["status"] == "completed", body
        assert body["result"] == {"x": i, "label": f"c{i}"}, body
    ids = [b["task_id"] for b in bodies.values()]
    assert len(set(ids)) == CALLS, f"task ids not unique: {[k for k, v in Counter(ids).items() if v > 1]}"
    answered_by = Counter(b["worker_id"] for b in bodies.values())
    assert set(answered_by) == set(fresh.worker_ids), f"calls not spread over both workers: {answered_by}"

    log = fresh.log

    def settled():
        # Each process batches its writes: wait until every row is complete (the gateway's `pending`
        # event, which carries the args, may land after the worker's `completed`).
        rows = log.query("SELECT id, status, args, result FROM tasks")
        kinds = log.query("SELECT DISTINCT task_id, event FROM task_events")
        return (len(rows) >= CALLS
                and all(r["status"] == "completed" and r["args"] is not None and r["result"] is not None
                        for r in rows)
                and len(kinds) >= 3 * CALLS)

    wait_for(settled, timeout=60, interval=0.25, message=f"{CALLS} completed tasks in {log.path}")

    rows = log.query("SELECT id, function_name, status, worker_id, args, result FROM tasks")
    stored_ids = [r["id"] for r in rows]
    assert len(stored_ids) == CALLS, f"expected exactly {CALLS} task rows, found {len(stored_ids)}"
    assert set(stored_ids) == set(ids), (
        f"stored ids differ: missing {sorted(set(ids) - set(stored_ids))[:5]}, "
        f"extra {sorted(set(stored_ids) - set(ids))[:5]}"
    )
    by_id = {b["task_id"]: (i, b) for i, b in bodies.items()}
    for r in rows:
        i, body = by_id[r["id"]]
        assert r["status"] == "completed", r
        assert r["function_name"] == "echo", r
        assert r["worker_id"] == body["worker_id"], (r, body)
        assert loads_json_column(r["args"]) == {"x": i, "label": f"c{i}"}, r
        assert loads_json_column(r["result"]) == {"x": i, "label": f"c{i}"}, r

    completed_events = Counter(
        e["task_id"] for e in log.query("SELECT task_id FROM task_events WHERE event = 'completed'")
    )
    assert set(completed_events) == set(ids)
    dupes = {k: v for k, v in completed_events.items() if v != 1}
    assert not dupes, f"tasks with more than one completed event: {dupes}"
    per_task = Counter(e["task_id"] for e in log.query("SELECT task_id FROM task_events"))
    assert set(per_task) == set(ids), "events stored for unknown task ids"
    for task_id in ids:
        names = sorted(e["event"] for e in log.query("SELECT event FROM task_events WHERE task_id = ?", (task_id,)))
        assert names == ["completed", "pending", "running"], (task_id, names)

    stored_by = Counter(r["worker_id"] for r in rows)
    assert set(stored_by) == set(fresh.worker_ids), f"rows not spread over both workers: {stored_by}"

    listing = fresh.get(f"/tasks?status=completed&function=echo&limit={CALLS}")
    assert listing.status == 200, listing
    assert {t["task_id"] for t in listing.json()["tasks"]} == set(ids)

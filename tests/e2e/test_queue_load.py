"""1,000 concurrent submits of a tiny queued task (32 client threads, 2 workers): every one accepted, stored once,
run once, completed; nothing lost, nothing duplicated."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from conftest import QUEUE_APP, loads_json_column, wait_for

SUBMITS = 1000
THREADS = 32


def test_thousand_concurrent_submits(queue_stack):
    stack = queue_stack(app=QUEUE_APP, name="load")
    stack.worker("async", concurrency=4)
    stack.worker("async", concurrency=4)

    def submit(n: int) -> tuple[int, int, str]:
        resp = stack.post("ping", {"n": n})
        body = resp.json() if resp.status == 202 else {}
        return n, resp.status, body.get("task_id") or repr(resp)

    with ThreadPoolExecutor(THREADS) as pool:
        answers = list(pool.map(submit, range(SUBMITS)))
    refused = [a for a in answers if a[1] != 202]
    assert not refused, f"{len(refused)} of {SUBMITS} submits not accepted, e.g. {refused[:3]}"
    ids = {task_id: n for n, _, task_id in answers}
    assert len(ids) == SUBMITS, f"{SUBMITS - len(ids)} duplicate task ids"

    def done():
        rows = stack.log.query("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status")
        counts = {r["status"]: r["n"] for r in rows}
        return counts.get("completed") == SUBMITS and sum(counts.values()) == SUBMITS

    wait_for(done, timeout=600, interval=1.0, message=lambda: "all tasks completed (rows by status: "
             f"{stack.log.query('SELECT status, COUNT(*) AS n FROM tasks GROUP BY status')}; "
             f"jsz: {stack.nats.consumer('pool_async')})")

    rows = stack.log.query("SELECT id, status, attempts, result FROM tasks")
    assert len(rows) == SUBMITS, len(rows)
    assert {r["id"] for r in rows} == set(ids), "the task log's ids differ from the accepted ids"
    for r in rows:
        assert r["status"] == "completed" and r["attempts"] == 1, r
        assert loads_json_column(r["result"]) == {"n": ids[r["id"]]}, r
    per_task = stack.log.query(
        "SELECT task_id, SUM(event = 'completed') AS completed, SUM(event = 'running') AS running, "
        "SUM(event IN ('failed', 'cancelled', 'timed_out', 'retrying')) AS other FROM task_events GROUP BY task_id")
    assert len(per_task) == SUBMITS, len(per_task)
    bad = [p for p in per_task if (p["completed"], p["running"], p["other"]) != (1, 1, 0)]
    assert not bad, f"{len(bad)} tasks with other than one running and one completed event, e.g. {bad[:5]}"

    wait_for(lambda: stack.nats.queue_depth("async") == (0, 0), timeout=60,
             message=lambda: f"pool_async empty (jsz: {stack.nats.consumer('pool_async')})")
    tasks = stack.nats.stream("NEUTRINO_TASKS")
    assert tasks["state"]["messages"] == 0, tasks["state"]
    assert tasks["state"]["last_seq"] == SUBMITS, tasks["state"]  # one stored message per accepted submit
    assert stack.nats.consumer("pool_async")["num_redelivered"] == 0, stack.nats.consumer("pool_async")

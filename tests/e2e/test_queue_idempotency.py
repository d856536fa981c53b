"""Idempotency-Key on queued submits: a repeat within the window returns the task the first request created (and
it runs once); another key, or no key, makes a new task; a malformed key is refused."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from conftest import EXAMPLE_APP, assert_error_body


def test_same_key_same_task_runs_once(queue_stack):
    stack = queue_stack(app=EXAMPLE_APP, name="idem")
    stack.worker("async", concurrency=2)
    headers = {"Idempotency-Key": "order-42"}

    def submit(_):
        return stack.post("generate_report", {"dataset": "k"}, headers=headers)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(submit, range(8)))
    assert all(a.status == 202 for a in answers), answers
    ids = {a.json()["task_id"] for a in answers}
    assert len(ids) == 1, f"one key gave several tasks: {ids}"
    task_id = ids.pop()
    replays = [a for a in answers if a.headers.get("idempotent-replayed") == "true"]
    assert len(replays) == 7, [a.headers for a in answers]

    record = stack.wait_task(task_id)
    assert record["status"] == "completed" and record["attempts"] == 1, record
    assert [e["event"] for e in record["events"]].count("running") == 1, record["events"]
    later = stack.post("generate_report", {"dataset": "k"}, headers=headers)
    assert later.status == 202 and later.json()["task_id"] == task_id and later.json()["status"] == "completed", later

    other = stack.post("generate_report", {"dataset": "k"}, headers={"Idempotency-Key": "order-43"})
    unkeyed = stack.post("generate_report", {"dataset": "k"})
    assert len({task_id, other.json()["task_id"], unkeyed.json()["task_id"]}) == 3
    rows = stack.log.query("SELECT id FROM tasks WHERE function_name = 'generate_report'")
    assert len(rows) == 3, rows


def test_malformed_key_is_400(queue_stack):
    stack = queue_stack(app=EXAMPLE_APP, name="idem-bad")
    assert_error_body(stack.post("generate_report", {"dataset": "k"}, headers={"Idempotency-Key": "x" * 300}), 400, "BadRequest")

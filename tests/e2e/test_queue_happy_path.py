"""Queued tasks on the JetStream path, the way they should go: 202 at once, a worker of the task's pool runs it,
the polling API and the task log show the result. A gpu task waits in its pool's consumer until a gpu worker
comes."""
from __future__ import annotations

import time

import pytest

from conftest import EXAMPLE_APP, event_names, loads_json_column, wait_for


@pytest.fixture
def example_stack(queue_stack):
    """nats-server + gateway + one async worker and one gpu worker, on examples/app.py."""
    stack = queue_stack(app=EXAMPLE_APP, name="happy")
    stack.worker("async", concurrency=2)
    stack.worker("gpu", concurrency=1)
    return stack


def _assert_completed_once(stack, task_id: str, record: dict, *, pool: str, result) -> None:
    assert record["status"] == "completed", record
    assert record["pool"] == pool, record
    assert record["result"] == result, record
    assert record["error"] is None, record
    assert record["attempts"] == 1, record
    assert record["worker_id"] and record["worker_id"].startswith(f"happy-{pool}-"), record
    events = record["events"]
    assert event_names(record) == ["queued", "running", "completed"], events
    assert [e["attempt"] for e in events] == [0, 1, 1], events
    assert events[1]["worker_id"] == events[2]["worker_id"] == record["worker_id"], events
    row = stack.log.wait_terminal(task_id, final_event="completed", columns=("result",))
    assert row["status"] == "completed" and row["attempts"] == 1 and row["pool"] == pool, row
    assert loads_json_column(row["result"]) == result, row


def test_async_task_202_then_completed(example_stack):
    resp = example_stack.post("generate_report", {"dataset": "q3"})
    assert resp.status == 202, resp
    body = resp.json()
    task_id = body["task_id"]
    assert body == {"task_id": task_id, "function": "generate_report", "pool": "async", "status": "queued",
                    "poll_url": f"/tasks/{task_id}"}, body
    # The task is stored before the answer: its record exists at once (queued, or already running/finished).
    first = example_stack.record(task_id)
    assert first["status"] in {"queued", "running", "completed"}, first
    assert first["execution_mode"] == "async" and first["args"] == {"dataset": "q3"}, first

    record = example_stack.wait_task(task_id)
    _assert_completed_once(example_stack, task_id, record, pool="async", result={"dataset": "q3", "rows": 2000})


def test_gpu_task_runs_on_a_gpu_worker(example_stack):
    resp = example_stack.post("train_model", {"data": "mnist", "epochs": 2})
    assert resp.status == 202, resp
    body = resp.json()
    assert body["pool"] == "gpu" and body["status"] == "queued", body
    record = example_stack.wait_task(body["task_id"])
    assert record["execution_mode"] == "gpu", record
    _assert_completed_once(example_stack, body["task_id"], record, pool="gpu",
                           result={"data": "mnist", "epochs": 2, "loss": 0.1})


def test_python_client_submit_wait_and_call(example_stack):
    from neutrino import TaskHandle

    with example_stack.client() as client:
        handle = client.submit("generate_report", dataset="abcd")
        assert isinstance(handle, TaskHandle)
        assert handle.record and handle.record["status"] == "queued", handle.record
        assert handle.status()["status"] in {"queued", "running", "completed"}
        assert handle.wait(timeout=120) == {"dataset": "abcd", "rows": 4000}
        assert handle.status()["status"] == "completed"
        assert handle.cancel() is False  # finished: 409, reported as "nothing to cancel"

        gpu = client.submit("train_model", data="cifar")
        assert gpu.wait(timeout=120) == {"data": "cifar", "epochs": 1, "loss": 0.1}

        # call() on a queued task submits and waits.
        assert client.call("generate_report", dataset="z") == {"dataset": "z", "rows": 1000}
        assert client.call("train_model", data="d", epochs=1) == {"data": "d", "epochs": 1, "loss": 0.1}


def test_gpu_task_waits_for_a_gpu_worker(queue_stack):
    """No gpu worker: the task stays queued in pool_gpu (num_pending ≥ 1 on /jsz); a gpu worker that starts
    later runs it."""
    stack = queue_stack(app=EXAMPLE_APP, name="gpuwait")
    stack.worker("async")  # a worker of another pool must not take it
    task_id = stack.submit("train_model", {"data": "late"})

    wait_for(lambda: stack.nats.queue_depth("gpu")[0] >= 1, timeout=30,
             message=lambda: f"pool_gpu num_pending >= 1 (jsz: {stack.nats.consumer('pool_gpu')})")
    time.sleep(2.0)  # give a wrong worker every chance to take it
    record = stack.record(task_id)
    assert record["status"] == "queued", record
    assert event_names(record) == ["queued"], record
    row = stack.log.task(task_id)
    assert row is not None and row["status"] == "queued", row
    pending, ack_pending = stack.nats.queue_depth("gpu")
    assert pending >= 1 and ack_pending == 0, stack.nats.consumer("pool_gpu")

    gpu = stack.worker("gpu", concurrency=1)
    record = stack.wait_task(task_id)
    assert record["status"] == "completed", record
    assert record["result"] == {"data": "late", "epochs": 1, "loss": 0.1}, record
    assert record["worker_id"] == gpu.worker_id and record["attempts"] == 1, record
    wait_for(lambda: stack.nats.queue_depth("gpu") == (0, 0), timeout=30,
             message=lambda: f"pool_gpu empty (jsz: {stack.nats.consumer('pool_gpu')})")

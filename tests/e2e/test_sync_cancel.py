"""Sync cancel (docs/architecture.md "Cancelling a sync task"): `DELETE /tasks/<id>` of a running sync task answers
202 `cancelling`; the HTTP worker running it hears the cancel broadcast on NATS and interrupts its Python thread;
the caller of the original `POST /api/<task>` gets `409` with status `cancelled` (the Python client raises
`TaskCancelled`), and the task log shows pending → running → cancelled. Through either gateway replica."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from conftest import QUEUE_APP, _server_env, event_names, http_request, new_gateway_id, post_task, read_journal, wait_for


def _started(journal: Path, n: int = 1) -> list[dict]:
    return wait_for(lambda: (s := [e for e in read_journal(journal) if e["event"] == "start"]) and len(s) >= n and s,
                    timeout=60, message=lambda: f"the sync task to start (journal: {read_journal(journal)})")


def _cancel_running_sync(stack, delete_url: str, tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    answer: dict = {}

    def call():
        answer["resp"] = post_task(stack.url, "hold_sync", {"path": str(journal), "seconds": 4.8}, timeout=90)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    task_id = _started(journal)[0]["task_id"]

    asked = time.monotonic()
    resp = http_request("DELETE", f"{delete_url}/tasks/{task_id}")
    assert resp.status == 202, resp
    assert resp.json() == {"task_id": task_id, "status": "cancelling"}, resp
    caller.join(timeout=60)
    assert not caller.is_alive(), "the sync POST did not end after its task was cancelled"
    waited = time.monotonic() - asked
    post = answer["resp"]
    assert post.status == 409, post
    body = post.json()
    assert body["task_id"] == task_id and body["status"] == "cancelled", body
    assert body["error"]["type"] == "Cancelled", body
    assert post.headers.get("x-neutrino-task-id") == task_id, post.headers
    # Interrupted, not run to its end (4.8 s; sync tasks end within 5 s): no `end` in the journal, checked below.
    assert waited < 4.8, f"cancel took {waited:.1f}s for a 4.8 s task"

    record = http_request("GET", f"{stack.url}/tasks/{task_id}").json()
    assert record["status"] == "cancelled" and record["pool"] == "fast", record
    assert record["error"]["type"] == "Cancelled" and record["result"] is None, record
    assert sorted(event_names(record)) == ["cancelled", "pending", "running"], record
    time.sleep(0.5)
    assert [e["event"] for e in read_journal(journal)] == ["start"], read_journal(journal)

    # A finished sync task: 409 TaskFinished, as for any task.
    again = http_request("DELETE", f"{delete_url}/tasks/{task_id}")
    assert again.status == 409 and again.json()["error"]["type"] == "TaskFinished", again


def test_cancel_running_sync_task(queue_stack, tmp_path: Path):
    stack = queue_stack(app=QUEUE_APP, name="sync-cancel", gateway=False)
    worker = stack.http_worker("fast", concurrency=2)
    stack.start_gateway(http_pools={"fast": [worker.url]})
    _cancel_running_sync(stack, stack.url, tmp_path)

    # The worker is fine afterwards: the next call runs to completion.
    journal = tmp_path / "after.jsonl"
    resp = post_task(stack.url, "hold_sync", {"path": str(journal), "seconds": 0.1}, timeout=60)
    assert resp.status == 200 and resp.json()["status"] == "completed", resp


def test_client_call_raises_task_cancelled(queue_stack, tmp_path: Path):
    from neutrino import Client, TaskCancelled

    stack = queue_stack(app=QUEUE_APP, name="sync-cancel-client", gateway=False)
    worker = stack.http_worker("fast", concurrency=1)
    stack.start_gateway(http_pools={"fast": [worker.url]})
    journal = tmp_path / "journal.jsonl"
    raised: dict = {}

    def call():
        with Client(stack.url, timeout=90) as client:
            try:
                client.call("hold_sync", path=str(journal), seconds=4.8)
            except TaskCancelled as exc:
                raised["exc"] = exc

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    task_id = _started(journal)[0]["task_id"]
    assert http_request("DELETE", f"{stack.url}/tasks/{task_id}").status == 202
    caller.join(timeout=60)
    assert not caller.is_alive()
    exc = raised.get("exc")
    assert exc is not None, "Client.call did not raise TaskCancelled"
    assert exc.task_id == task_id and exc.status_code == 409, (exc.task_id, exc.status_code)


def test_cancel_through_another_replica(queue_stack, launcher, tmp_path: Path):
    """NATS task-log mode, two replicas: the call goes through A, the DELETE through B (which learns of the running
    task from NEUTRINO_EVENTS, waiting for it if need be)."""
    stack = queue_stack(app=QUEUE_APP, name="sync-cancel-b", gateway=False, task_log="nats")
    worker = stack.http_worker("fast", concurrency=2)
    stack.start_gateway(http_pools={"fast": [worker.url]})
    b_id = new_gateway_id("sync-cancel-b2")
    b = launcher.spawn("sync-cancel-gateway-b",
                       stack.gateway_argv(db_path=stack.dir / "replica-b.sqlite", gateway_id=b_id,
                                          http_pools={"fast": [worker.url]}),
                       env=_server_env(), log_dir=stack.dir)
    try:
        b_url = b.wait_listening()
        stack.wait_provisioned(b_id)
        _cancel_running_sync(stack, b_url, tmp_path)
    finally:
        b.stop()



def test_without_nats_a_running_sync_task_is_not_cancellable(launcher, queue_manifest, tmp_path: Path):
    """A gateway and worker without NATS (sqlite task log, static --http-pool): no worker could hear a cancel, so
    DELETE of the running sync task answers 409 NotCancellable and the call runs to its end."""
    d = launcher.new_dir("sync-cancel-no-nats")
    db = d / "tasks.sqlite"
    worker = launcher.worker(QUEUE_APP, db, log_dir=d, concurrency=1, task_log="sqlite")
    gateway = launcher.gateway(queue_manifest, {"fast": [worker.url]}, db, log_dir=d)
    journal = tmp_path / "journal.jsonl"
    answer: dict = {}
    caller = threading.Thread(
        target=lambda: answer.update(resp=post_task(gateway.url, "hold_sync", {"path": str(journal), "seconds": 1.0},
                                                    timeout=60)),
        daemon=True)
    caller.start()
    task_id = _started(journal)[0]["task_id"]
    resp = http_request("DELETE", f"{gateway.url}/tasks/{task_id}")
    assert resp.status == 409 and resp.json()["error"]["type"] == "NotCancellable", resp
    assert "--nats" in resp.json()["error"]["message"], resp
    caller.join(60)
    assert answer["resp"].status == 200 and answer["resp"].json()["status"] == "completed", answer

"""The task log over NATS (docs/architecture.md "The task log over NATS"): workers run with `--task-log nats` and
publish their lifecycle events on NEUTRINO_EVENTS; each gateway replica (`--events-via-nats --gateway-id ID`)
commits them into its own SQLite file through its durable consumer `events_<ID>`.

These tests set up their own NATS-mode stacks (`queue_stack(task_log="nats")`), so they run the same whatever
NEUTRINO_E2E_TASK_LOG says:
- a gateway that was down while tasks ran replays what it missed from its durable consumer, nothing lost or doubled;
- two replicas, each with its own file and id, both hold every task with the same timeline, and each answers for
  its own submits at once (read-your-writes);
- a task cancelled while queued never runs on a worker that has no task log to look it up in (the gateway's marker
  on NEUTRINO_SETTLED tells it).
"""
from __future__ import annotations

import time
from pathlib import Path

from conftest import (
    QUEUE_APP,
    TERMINAL_STATUSES,
    TaskLog,
    _server_env,
    count_events,
    event_names,
    http_request,
    new_gateway_id,
    post_task,
    read_journal,
    wait_for,
)


def _consumer(stack, gateway_id: str) -> dict:
    c = stack.nats.consumer(f"events_{gateway_id}", stream="NEUTRINO_EVENTS")
    assert c is not None, f"no consumer events_{gateway_id} on NEUTRINO_EVENTS: {stack.nats.streams().keys()}"
    return c


def _assert_nats_task_log(worker) -> None:
    argv = " ".join(worker.argv)
    assert "--task-log nats" in argv and "sqlite:" not in argv, argv


def _timeline(record: dict) -> list[tuple]:
    return [(e["event"], e["attempt"], e.get("worker_id"), e["at"]) for e in record["events"]]


def _record_when(url: str, task_id: str, ready, what: str, timeout: float = 60.0) -> dict:
    """GET /tasks/<id> on `url` (plain polls; 404 until the replica has the task) until `ready(record)`."""
    last: dict = {}

    def check():
        nonlocal last
        resp = http_request("GET", f"{url}/tasks/{task_id}", timeout=30)
        if resp.status == 404:
            return None
        assert resp.status == 200, f"GET {url}/tasks/{task_id}: {resp!r}"
        last = resp.json()
        return last if ready(last) else None

    return wait_for(check, timeout=timeout, interval=0.05,
                    message=lambda: f"{what} at {url} (last record: {last})")


def _completed_timeline(record: dict) -> bool:
    return record.get("status") == "completed" and event_names(record) == ["queued", "running", "completed"]


def test_restarted_gateway_replays_what_it_missed(queue_stack, tmp_path: Path):
    """The gateway stops while async tasks run; they finish without it; a new gateway on the same file with the same
    --gateway-id applies every event it missed from its durable consumer: all tasks completed, once each."""
    stack = queue_stack(app=QUEUE_APP, name="ev-restart", task_log="nats")
    worker = stack.worker("async", concurrency=2)
    _assert_nats_task_log(worker)
    journal = tmp_path / "journal.jsonl"
    # Two long tasks run while the gateway stops; the four short ones start only after the long ones end.
    plan = [3.0, 3.0, 0.3, 0.3, 0.3, 0.3]
    ids = [stack.submit("journal", {"path": str(journal), "seconds": s, "tag": f"t{i}"}) for i, s in enumerate(plan)]
    wait_for(lambda: len([e for e in read_journal(journal) if e["event"] == "start"]) >= 2, timeout=60,
             message=lambda: f"the two long tasks to start (journal: {read_journal(journal)})")

    old = stack.gateway
    old.stop()
    assert old.proc.returncode == 0, f"gateway exited {old.proc.returncode} on SIGTERM:\n{old.output[-3000:]}"

    # Without a gateway the worker finishes everything (its acks wait for the events' PubAcks, not for a gateway).
    wait_for(lambda: len([e for e in read_journal(journal) if e["event"] == "end"]) == len(ids), timeout=120,
             message=lambda: f"all {len(ids)} tasks to end (journal: {read_journal(journal)})")
    wait_for(lambda: stack.nats.queue_depth("async") == (0, 0), timeout=60,
             message=lambda: f"pool_async empty (jsz: {stack.nats.consumer('pool_async')})")
    missed = _consumer(stack, stack.gateway_id)
    assert missed["num_pending"] > 0, f"no events waited for the stopped gateway (the test proves nothing): {missed}"
    completed_in_file = [t for t in ids if (stack.log.task(t) or {}).get("status") == "completed"]
    assert len(completed_in_file) < len(ids), "every outcome reached the file before the gateway stopped"

    stack.start_gateway()  # same --gateway-id, same file
    for task_id in ids:
        record = stack.wait_task(task_id)
        assert record["status"] == "completed" and record["attempts"] == 1, record
        assert record["worker_id"] == worker.worker_id, record
        assert event_names(record) == ["queued", "running", "completed"], record
        assert [e["attempt"] for e in record["events"]] == [0, 1, 1], record["events"]

    log = stack.log
    assert sorted(r["id"] for r in log.query("SELECT id FROM tasks")) == sorted(ids)
    for task_id in ids:
        assert sorted(e["event"] for e in log.events(task_id)) == ["completed", "queued", "running"], \
            (task_id, log.events(task_id))
    lines = read_journal(journal)
    for task_id in ids:
        assert [e["event"] for e in lines if e["task_id"] == task_id] == ["start", "end"], (task_id, lines)
    # The durable consumer caught up and acknowledged everything it applied.
    wait_for(lambda: (lambda c: c["num_pending"] == 0 and c["num_ack_pending"] == 0)(_consumer(stack, stack.gateway_id)),
             timeout=60, message=lambda: f"events_{stack.gateway_id} drained: {_consumer(stack, stack.gateway_id)}")


def test_two_replicas_each_hold_every_task(queue_stack, launcher, tmp_path: Path):
    """Replicas A and B (own SQLite file, own id) in front of one async pool: what is submitted through one is
    answered at once by that one (read-your-writes) and shows up with the same full timeline through the other."""
    stack = queue_stack(app=QUEUE_APP, name="ev-replicas", task_log="nats")  # replica A
    a_url, a_id = stack.url, stack.gateway_id
    b_id = new_gateway_id("ev-replicas-b")
    b_db = stack.dir / "replica-b.sqlite"
    b = launcher.spawn("ev-replicas-gateway-b", stack.gateway_argv(db_path=b_db, gateway_id=b_id),
                       env=_server_env(), log_dir=stack.dir)
    try:
        b_url = b.wait_listening()
        stack.wait_provisioned(b_id)
        assert a_id != b_id and b_db != stack.db_path
        worker = stack.worker("async", concurrency=2)
        _assert_nats_task_log(worker)
        journal = tmp_path / "journal.jsonl"

        submitted = {}
        for entry_url, other_url, tag in ((a_url, b_url, "via-a"), (b_url, a_url, "via-b")):
            args = {"path": str(journal), "seconds": 0.2, "tag": tag}
            resp = post_task(entry_url, "journal", args)
            assert resp.status == 202, resp
            task_id = resp.json()["task_id"]
            submitted[tag] = task_id
            # Read-your-writes: the replica that answered 202 has the task at once.
            first = http_request("GET", f"{entry_url}/tasks/{task_id}")
            assert first.status == 200, f"{entry_url} does not know the task it just accepted: {first!r}"
            first = first.json()
            assert first["status"] in {"queued", "running", "completed"}, first
            assert first["function"] == "journal" and first["args"] == args, first

            # The other replica gets the whole timeline from NEUTRINO_EVENTS.
            other = _record_when(other_url, task_id, _completed_timeline, f"task {task_id} ({tag}) completed")
            mine = _record_when(entry_url, task_id, _completed_timeline, f"task {task_id} ({tag}) completed")
            for record in (mine, other):
                assert record["attempts"] == 1 and record["worker_id"] == worker.worker_id, record
                assert record["args"] == args and record["function"] == "journal" and record["pool"] == "async", record
                assert record["result"]["task_id"] == task_id and record["result"]["tag"] == tag, record
                assert [e["attempt"] for e in record["events"]] == [0, 1, 1], record["events"]
            assert _timeline(other) == _timeline(mine), (mine["events"], other["events"])
            for key in ("created_at", "started_at", "completed_at", "result", "error", "duration_ms"):
                assert other[key] == mine[key], (key, mine, other)

        # A cancel through B of a task queued through A (no gpu worker: it stays queued) reaches A too.
        queued = stack.submit("gpu_journal", {"path": str(journal)})
        _record_when(b_url, queued, lambda r: r["status"] == "queued", f"task {queued} queued")
        resp = http_request("DELETE", f"{b_url}/tasks/{queued}")
        assert resp.status == 200 and resp.json()["status"] == "cancelled", resp
        on_a = _record_when(a_url, queued, lambda r: r["status"] == "cancelled", f"task {queued} cancelled")
        assert event_names(on_a) == ["queued", "cancelled"], on_a

        # Both files hold every task, each once, with one terminal event each.
        every = sorted([*submitted.values(), queued])
        for db in (stack.db_path, b_db):
            log = TaskLog(db)
            wait_for(lambda: sorted(r["id"] for r in log.query("SELECT id FROM tasks")) == every, timeout=30,
                     message=lambda: f"tasks {every} in {db}: {log.query('SELECT id, status FROM tasks')}")
            for task_id in every:
                row = log.wait_terminal(task_id)
                terminal = [e["event"] for e in log.events(task_id) if e["event"] in TERMINAL_STATUSES]
                assert terminal == [row["status"]], (db, task_id, log.events(task_id))
        lines = read_journal(journal)
        assert sorted(e["task_id"] for e in lines if e["event"] == "start") == sorted(submitted.values()), lines
    finally:
        b.stop()
    assert b.proc.returncode == 0, f"replica B exited {b.proc.returncode} on SIGTERM:\n{b.output[-3000:]}"


def test_cancelled_while_queued_never_runs_on_a_worker_without_task_log(queue_stack, tmp_path: Path):
    """DELETE of a queued gpu task (no gpu worker yet) through a NATS-mode gateway: the gateway stores a marker on
    NEUTRINO_SETTLED; a `--task-log nats` gpu worker started later skips the task and runs the next one."""
    stack = queue_stack(app=QUEUE_APP, name="ev-cancel", task_log="nats")
    journal = tmp_path / "journal.jsonl"
    task_id = stack.submit("gpu_journal", {"path": str(journal)})
    keep = stack.submit("gpu_journal", {"path": str(journal)})  # queued behind it, not cancelled

    resp = stack.delete(task_id)
    assert resp.status == 200, resp
    assert resp.json() == {"task_id": task_id, "status": "cancelled"}, resp
    record = stack.record(task_id)
    assert record["status"] == "cancelled" and record["error"]["type"] == "Cancelled", record
    assert event_names(record) == ["queued", "cancelled"], record
    with stack.nats.wire() as nc:
        marker = nc.stream_message("NEUTRINO_SETTLED", f"neutrino.settled.gpu.{task_id}")
        unmarked = nc.stream_message("NEUTRINO_SETTLED", f"neutrino.settled.gpu.{keep}")
    assert marker is not None, f"no cancel marker for {task_id}: {stack.nats.stream('NEUTRINO_SETTLED')}"
    assert unmarked is None, unmarked
    assert stack.nats.queue_depth("gpu") == (2, 0), stack.nats.consumer("pool_gpu")

    gpu = stack.worker("gpu", concurrency=1)  # no task log: it can only learn of the cancel from the marker
    _assert_nats_task_log(gpu)
    done = stack.wait_task(keep)
    assert done["status"] == "completed" and done["worker_id"] == gpu.worker_id, done
    # The cancelled message came first in the queue: the worker took it off without running it.
    wait_for(lambda: stack.nats.queue_depth("gpu") == (0, 0), timeout=30,
             message=lambda: f"pool_gpu empty (jsz: {stack.nats.consumer('pool_gpu')})")
    assert {e["task_id"] for e in read_journal(journal)} == {keep}, read_journal(journal)
    record = stack.record(task_id)
    assert record["status"] == "cancelled" and "running" not in event_names(record), record
    assert record["started_at"] is None and record["attempts"] == 0, record
    row = stack.log.task(task_id)
    assert row["status"] == "cancelled" and row["started_at"] is None, row
    assert count_events(stack.log, task_id, "running") == 0


def test_a_nats_restart_does_not_run_a_finished_task_again(queue_stack, tmp_path):
    """NATS stops while a `--task-log nats` worker runs a task and comes back: the acks lost with the server make
    JetStream redeliver finished tasks after AckWait, and the worker, which has no task log, must recognise them
    (its NEUTRINO_SETTLED marker) instead of running them again. Each task runs once and ends completed."""
    stack = queue_stack(app=QUEUE_APP, ack_wait=2.0, name="ev-outage", task_log="nats")
    stack.worker("async", concurrency=1)
    journal = tmp_path / "journal.jsonl"
    tasks = [stack.submit("journal", {"path": str(journal), "seconds": 2.0, "tag": f"b{i}"}) for i in range(3)]
    stack.wait_status(tasks[0], "running")
    stack.nats.stop()
    wait_for(lambda: [e for e in read_journal(journal) if e["event"] == "end"], timeout=60,
             message="the running task to end while NATS is down")
    stack.nats.start()
    for task_id in tasks:
        assert stack.wait_task(task_id)["status"] == "completed"
    wait_for(lambda: stack.nats.queue_depth("async") == (0, 0), timeout=60, message="pool_async empty")
    time.sleep(2.0 + 1.0)  # one more AckWait: a redelivery still to come would show up in the journal
    lines = read_journal(journal)
    for task_id in tasks:
        assert [e["event"] for e in lines if e["task_id"] == task_id] == ["start", "end"], lines
        assert count_events(stack.log, task_id, "completed") == 1

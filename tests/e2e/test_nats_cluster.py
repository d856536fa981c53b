"""A 3-node JetStream cluster on 127.0.0.1 under load, with nodes SIGKILLed and restarted.

A gateway and two NATS workers are connected to all three nodes (`--nats a,b,c --stream-replicas 3`). While tasks are
submitted at a steady pace, the node leading NEUTRINO_TASKS (or, with the task log over NATS, NEUTRINO_EVENTS) is
SIGKILLed and restarted; once it has caught up, another node goes the same way. Afterwards:

- every submit answered 202 reached a terminal status exactly once in the task log, and ran (so it was stored);
- every other answer was a 503 with Retry-After whose task is `failed` and never ran;
- the work queue is empty, and how often a task was redelivered or run twice is counted and reported, with the
  longest submit stall and the number of 503s.

NEUTRINO_CLUSTER_SUBMITS (default 400) sets the load; NEUTRINO_CLUSTER_REPORT names a file the figures are appended
to as JSON lines (bench/cluster_failover.sh uses both).
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import pytest

from conftest import (
    NATS_SERVER_BIN,
    QUEUE_APP,
    TERMINAL_STATUSES,
    QueueStack,
    read_journal,
    wait_for,
)
from natscluster import NatsCluster

SUBMITS = int(os.environ.get("NEUTRINO_CLUSTER_SUBMITS", "400"))
SUBMIT_SECONDS = max(20.0, SUBMITS / 20.0)  # the load is spread over this long, both failovers inside it
THREADS = 8
ACK_WAIT_S = 5.0
TASK_SECONDS = 0.02


pytestmark = pytest.mark.skipif(not (os.path.isfile(NATS_SERVER_BIN) and os.access(NATS_SERVER_BIN, os.X_OK)),
                                reason="nats-server is not installed (Debian package nats-server)")


class Load:
    """Submits `total` journal tasks from THREADS threads at a steady pace; a 503 is retried (a new task) after a
    short pause, as a client honouring Retry-After would, only sooner."""

    def __init__(self, stack: QueueStack, journal: Path, total: int, seconds: float):
        self.stack = stack
        self.journal = journal
        self.total = total
        self.seconds = seconds
        self.lock = threading.Lock()
        self.accepted: dict[str, int] = {}  # task id -> submit number
        self.refused: list[dict[str, Any]] = []  # one per 503
        self.unexpected: list[str] = []
        self.stalls: list[float] = []  # per submit: first attempt -> its 202
        self.latencies: list[float] = []  # per request
        self._next = 0
        self.started = 0.0
        self.threads = [threading.Thread(target=self._run, name=f"submit-{i}", daemon=True) for i in range(THREADS)]

    def start(self) -> "Load":
        self.started = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout: float) -> None:
        for t in self.threads:
            t.join(timeout)
            assert not t.is_alive(), "a submitting thread hangs"

    @property
    def done(self) -> int:
        with self.lock:
            return len(self.accepted)

    def _take(self) -> Optional[int]:
        with self.lock:
            if self._next >= self.total:
                return None
            n = self._next
            self._next += 1
            return n

    def _run(self) -> None:
        while (n := self._take()) is not None:
            due = self.started + n * self.seconds / self.total
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            first = time.monotonic()
            while True:
                t0 = time.monotonic()
                try:
                    resp = self.stack.post("journal", {"path": str(self.journal), "seconds": TASK_SECONDS,
                                                       "tag": f"s{n}"})
                except Exception as exc:  # noqa: BLE001 - recorded, asserted on by the test
                    with self.lock:
                        self.unexpected.append(f"submit {n}: {exc!r}")
                    return
                elapsed = time.monotonic() - t0
                with self.lock:
                    self.latencies.append(elapsed)
                if resp.status == 202:
                    with self.lock:
                        self.accepted[resp.json()["task_id"]] = n
                        self.stalls.append(time.monotonic() - first)
                    break
                if resp.status == 503:
                    body = resp.json()
                    with self.lock:
                        self.refused.append({"task_id": (body.get("error") or {}).get("task_id"), "submit": n,
                                             "retry_after": resp.headers.get("retry-after"), "seconds": elapsed,
                                             "type": (body.get("error") or {}).get("type")})
                    time.sleep(0.2)
                    continue
                with self.lock:
                    self.unexpected.append(f"submit {n}: {resp!r}")
                return


def _kill_and_restart(cluster: NatsCluster, victim: int, down_for: float = 3.0) -> dict:
    name = cluster.names[victim]
    killed_at = time.monotonic()
    cluster.kill(victim)
    time.sleep(down_for)
    cluster.start_node(victim)
    return {"node": name, "down_s": round(time.monotonic() - killed_at, 1)}


def _stack(launcher, queue_manifest: Path, name: str, task_log: str) -> tuple[QueueStack, NatsCluster]:
    d = launcher.new_dir(name)
    cluster = NatsCluster(launcher, d, size=3).start()
    stack = QueueStack(launcher=launcher, dir=d, name=name, app=QUEUE_APP, manifest=queue_manifest, ack_wait=ACK_WAIT_S,
                       nats=cluster, db_path=d / "tasks.sqlite", task_log=task_log)  # type: ignore[arg-type]
    return stack, cluster


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _failover_under_load(stack: QueueStack, cluster: NatsCluster, journal: Path, watched_stream: str) -> dict:
    replicas = ["--stream-replicas", "3"]
    stack.start_gateway(extra_args=replicas)
    for _ in range(2):
        stack.worker("async", concurrency=4, ack_wait=ACK_WAIT_S, extra_args=replicas)
    streams = ["NEUTRINO_TASKS", "NEUTRINO_DLQ", "NEUTRINO_SETTLED"]
    if stack.task_log == "nats":
        streams.append("NEUTRINO_EVENTS")
    for name in streams:
        s = wait_for(lambda: cluster.stream(name), timeout=60, message=f"stream {name}")
        assert s["config"]["num_replicas"] == 3, (name, s["config"])

    load = Load(stack, journal, SUBMITS, SUBMIT_SECONDS).start()
    kills = []
    # First failover: the leader of the watched stream, once a quarter of the load is in.
    wait_for(lambda: load.done >= SUBMITS // 4 or load.unexpected, timeout=300, message="a quarter of the submits")
    first = cluster.index(wait_for(lambda: cluster.stream_leader(watched_stream), timeout=30, message="a leader"))
    kills.append({"stream_leader_of": watched_stream, **_kill_and_restart(cluster, first)})
    cluster.wait_current(watched_stream)
    # Second failover: another node (the watched stream's new leader when that is another node, else the pool
    # consumer's leader or simply the next node).
    wait_for(lambda: load.done >= (SUBMITS * 3) // 5 or load.unexpected, timeout=300, message="60% of the submits")
    candidates = [cluster.stream_leader(watched_stream), cluster.consumer_leader("pool_async")]
    second = next((cluster.index(c) for c in candidates if c and cluster.index(c) != first), (first + 1) % cluster.size)
    kills.append({"stream_leader_of": watched_stream if cluster.names[second] == candidates[0] else None,
                  **_kill_and_restart(cluster, second)})
    load.join(timeout=600)
    assert not load.unexpected, load.unexpected[:5]
    assert len(load.accepted) == SUBMITS, f"{SUBMITS - len(load.accepted)} submits never accepted"

    # Every 202: terminal in the task log.
    log = stack.log
    ids = list(load.accepted)

    def all_terminal() -> bool:
        rows = log.query("SELECT status, COUNT(*) AS n FROM tasks WHERE status IN ('completed','failed','cancelled',"
                         "'timed_out') AND id IN (SELECT value FROM json_each(?)) GROUP BY status", (json.dumps(ids),))
        return sum(r["n"] for r in rows) == len(ids)

    wait_for(all_terminal, timeout=600, interval=1.0,
             message=lambda: f"every accepted task terminal ({log.query('SELECT status, COUNT(*) AS n FROM tasks GROUP BY status')})")
    cluster.wait_current(watched_stream)
    wait_for(lambda: cluster.queue_depth("async") == (0, 0), timeout=120,
             message=lambda: f"pool_async empty ({cluster.consumer('pool_async')})")

    rows = {r["id"]: r for r in log.query("SELECT id, status, attempts, error FROM tasks")}
    events = log.query("SELECT task_id, event, attempt FROM task_events")
    terminal_events = Counter(e["task_id"] for e in events if e["event"] in TERMINAL_STATUSES)
    running_events = Counter(e["task_id"] for e in events if e["event"] == "running")
    by_kind: dict[str, Counter] = {}
    for e in events:
        by_kind.setdefault(e["event"], Counter())[e["task_id"]] += 1
    runs = Counter(j["task_id"] for j in read_journal(journal) if j["event"] == "start")

    not_completed = [(i, rows.get(i)) for i in ids if (rows.get(i) or {}).get("status") != "completed"]
    assert not not_completed, f"{len(not_completed)} accepted tasks did not complete, e.g. {not_completed[:3]}"
    twice_terminal = {i: terminal_events[i] for i in ids if terminal_events[i] != 1}
    # One terminal event per task, except for a task that really ran twice: the documented at-least-once case of a
    # task running past AckWait when its consumer's leader dies (it is counted in the report below).
    unexplained = {i: n for i, n in twice_terminal.items() if n == 0 or runs[i] < 2}
    assert not unexplained, f"accepted tasks without exactly one terminal event: {list(unexplained.items())[:5]}"
    never_ran = [i for i in ids if runs[i] == 0]
    assert not never_ran, f"{len(never_ran)} accepted tasks never ran (not stored?), e.g. {never_ran[:3]}"
    if stack.task_log == "nats":
        # Nothing the workers published was lost across the kills: every task's queued, running and completed
        # events reached the gateway's file.
        missing = {i: [k for k in ("queued", "running", "completed") if by_kind.get(k, Counter())[i] == 0] for i in ids}
        missing = {i: m for i, m in missing.items() if m}
        assert not missing, f"{len(missing)} tasks lack events, e.g. {list(missing.items())[:5]}"

    for r in load.refused:
        assert r["retry_after"], f"a 503 without Retry-After: {r}"
        assert r["type"] == "QueueUnavailable", r
        if r["task_id"]:
            row = rows.get(r["task_id"])
            assert row and row["status"] == "failed", f"a refused task is {row}"
            assert runs[r["task_id"]] == 0, f"a refused task ran: {r}"

    report = {
        "task_log": stack.task_log,
        "watched_stream": watched_stream,
        "submits": SUBMITS,
        "kills": kills,
        "accepted": len(ids),
        "refused_503": len(load.refused),
        # Deliveries after the first: those that ran again, and those a worker skipped because the task log (or
        # NEUTRINO_SETTLED) showed the task already finished (a lost ack) or refused.
        "redelivered_tasks": sum(1 for i in ids if running_events[i] > 1 or runs[i] > 1),
        "skipped_deliveries": dict(Counter(m.group(1) for w in stack.workers for m in re.finditer(
            r"status=(\w+)[^\n]*skipped a task that must not run", w.output))),
        "ran_twice": sum(1 for i in ids if runs[i] > 1),
        "terminal_duplicates": len(twice_terminal),
        "longest_stall_s": round(max(load.stalls), 2),
        "submit_p50_ms": round(_percentile(load.latencies, 0.50) * 1000, 1),
        "submit_p99_ms": round(_percentile(load.latencies, 0.99) * 1000, 1),
        "longest_503_s": round(max((r["seconds"] for r in load.refused), default=0.0), 2),
    }
    print("\ncluster failover:", json.dumps(report))
    out = os.environ.get("NEUTRINO_CLUSTER_REPORT")
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(report) + "\n")
    return report


def test_killing_the_task_streams_leader_under_load_loses_nothing(launcher, queue_manifest, tmp_path):
    stack, cluster = _stack(launcher, queue_manifest, "cluster-sqlite", "sqlite")
    try:
        report = _failover_under_load(stack, cluster, tmp_path / "journal.jsonl", "NEUTRINO_TASKS")
        assert report["ran_twice"] == 0, report
    finally:
        stack.stop()


def test_killing_the_events_streams_leader_loses_no_event(launcher, queue_manifest, tmp_path):
    stack, cluster = _stack(launcher, queue_manifest, "cluster-nats", "nats")
    try:
        _failover_under_load(stack, cluster, tmp_path / "journal.jsonl", "NEUTRINO_EVENTS")
    finally:
        stack.stop()

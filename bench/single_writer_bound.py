#!/usr/bin/env python3
"""What one SQLite writer per host could buy queued tasks at most: `async_bench.py`'s 16-producer phase with the
task log shared as shipped (gateway and both NATS workers writing one file) against each worker writing a file of
its own (no process shares a file with another writer: no pages reread after another's commit, no wait for the
file's write lock). A measurement for bench/README.md, not part of `make bench`.

The separate-files stack is not a product configuration: the gateway's file never sees a task finish, so this script
counts completed rows in the workers' files instead, and its start-up check waits for its task's row there. It
bounds what a relay (workers handing their events to the gateway's writer) could gain before paying for the
hand-over; a loose bound, since three files also mean three writers committing in parallel: the relay built on it
gained nothing (bench/README.md, twenty-second round).

Starts alternate: shared, separate, shared, separate... Environment: BENCH_BOUND_STARTS=2 (per mode),
BENCH_BOUND_RUNS=2 (16-producer runs per start), plus async_bench.py's BENCH_ASYNC_TASKS / BENCH_ASYNC_THREADS.
Run with bench/.venv/bin/python after `make build-release`.
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import async_bench as A  # noqa: E402

STARTS = int(os.environ.get("BENCH_BOUND_STARTS", "2"))
RUNS = int(os.environ.get("BENCH_BOUND_RUNS", "2"))
WORKER_FILES = ("w1.db", "w2.db")


class SeparateFilesSide(A.NeutrinoSide):
    """The benchmark's Neutrino stack with each NATS worker recording into a file of its own."""

    def __init__(self, state: Path):
        super().__init__(state)
        self._workers: dict[str, sqlite3.Connection] = {}

    def worker_db(self, i: int) -> Path:
        return self.state / WORKER_FILES[i - 1]

    def _rows(self, sql: str, params: tuple = ()) -> list:
        """`sql` on every worker file that exists yet, a connection each kept for the run (the poll runs every 5 ms)."""
        rows = []
        for name in WORKER_FILES:
            if name not in self._workers:
                if not (self.state / name).exists():
                    continue
                self._workers[name] = sqlite3.connect(str(self.state / name), timeout=10, check_same_thread=False)
            rows += self._workers[name].execute(sql, params).fetchall()
        return rows

    def check(self, client: A.NeutrinoClient) -> dict:
        # The gateway's file never sees the task finish here: wait for its row in a worker's file instead.
        task_id = client.submit()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = self._rows("SELECT status, result, worker_id FROM tasks WHERE id = ?", (task_id,))
            if rows and rows[0][0] == "completed":
                return {"result": json.loads(rows[0][1]), "worker_id": rows[0][2]}
            time.sleep(0.05)
        raise A.TaskError(f"task {task_id} did not complete in a worker's file")

    def counts(self) -> dict:
        completed = self._rows("SELECT coalesce(sum(n), 0) FROM task_groups WHERE status = 'completed'")
        return {"completed": sum(row[0] for row in completed)}

    def stop(self) -> None:
        for db in self._workers.values():
            db.close()
        super().stop()


def measure(side_type: type, label: str) -> None:
    side = side_type(Path(tempfile.mkdtemp(prefix="bound-")))
    try:
        side.start()
        for run in range(RUNS):
            res = A.Result(key="neutrino", label=label)
            before = A.cpu_by_kind(side.procs)
            side.throughput(res)
            after = A.cpu_by_kind(side.procs)
            cpu = {k: (after[k] - before.get(k, 0.0)) * 1e6 / max(1, res.tp_submitted) for k in after}
            parts = " · ".join(f"{k} {v:,.0f}" for k, v in sorted(cpu.items()))
            print(f"{label:14s} run {run + 1}: {res.throughput:,.0f} tasks/s (unfinished {res.tp_unfinished}); "
                  f"CPU per task {parts} = {sum(cpu.values()):,.0f} µs", flush=True)
    finally:
        side.stop()


def main() -> int:
    try:
        for _ in range(STARTS):
            measure(A.NeutrinoSide, "shared file")
            measure(SeparateFilesSide, "own files")
    except (A.Skip, A.StartError) as e:
        print(f"cannot measure: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""What one SQLite writer per host could buy queued tasks at most: `async_bench.py`'s 16-producer phase with the
task log shared as shipped (gateway and both NATS workers writing one file) against each worker writing a file of
its own (no process shares a file with another writer: no pages reread after another's commit, no wait for the
file's write lock). A measurement for bench/README.md, not part of `make bench`.

The separate-files stack is not a product configuration: the gateway's file never sees a task finish, so this script
counts completed rows in the workers' files instead, and its start-up check only submits a task. It bounds what a
relay (workers handing their events to the gateway's writer) could gain before paying for the hand-over; a loose
bound, since three files also mean three writers committing in parallel: the relay built on it gained nothing
(bench/README.md, twenty-second round).

Starts alternate: shared, separate, shared, separate... Environment: BENCH_BOUND_STARTS=2 (per mode),
BENCH_BOUND_RUNS=2 (16-producer runs per start), plus async_bench.py's BENCH_ASYNC_TASKS / BENCH_ASYNC_THREADS.
Run with bench/.venv/bin/python after `make build-release`.
"""
from __future__ import annotations

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

    def start(self) -> None:
        shipped = A.start_nats_worker

        def own_file_worker(state: Path, i: int, db: Path, url: str, concurrency: int):
            return shipped(state, i, state / WORKER_FILES[i - 1], url, concurrency)

        A.start_nats_worker = own_file_worker
        real_wait = A.NeutrinoClient.wait
        # The start-up check waits for its task in the gateway's file, which never sees it finish here.
        A.NeutrinoClient.wait = lambda client, task_id: (time.sleep(0.5), {"result": None, "worker_id": "?"})[1]
        try:
            super().start()
        finally:
            A.start_nats_worker = shipped
            A.NeutrinoClient.wait = real_wait

    def counts(self) -> dict:
        completed = 0
        for name in WORKER_FILES:
            path = self.state / name
            if not path.exists():
                continue
            db = sqlite3.connect(str(path), timeout=10)
            try:
                row = db.execute("SELECT coalesce(sum(n), 0) FROM task_groups WHERE status = 'completed'").fetchone()
                completed += row[0]
            finally:
                db.close()
        return {"completed": completed}


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
    if not A.common.WORKER_BIN.exists() or not A.common.GATEWAY_BIN.exists():
        print(f"build first: {A.common.GATEWAY_BIN} (make build-release)", file=sys.stderr)
        return 2
    for _ in range(STARTS):
        measure(A.NeutrinoSide, "shared file")
        measure(SeparateFilesSide, "own files")
    return 0


if __name__ == "__main__":
    sys.exit(main())

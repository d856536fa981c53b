#!/usr/bin/env python3
"""Where a queued task's CPU goes in a NATS worker: CPU per task, by process and by thread.

  1. nats-server -js (temporary store) and neutrino-gateway --nats, one SQLite task log; no worker yet.
  2. BENCH_DRAIN_TASKS (4,000) `echo` tasks submitted from 8 threads, all answered 202 (queued in JetStream).
  3. BENCH_DRAIN_WORKERS (2) `neutrino-worker --mode nats --concurrency BENCH_DRAIN_CONCURRENCY (2)` start and
     drain them. From the first completion to the last, the CPU of every worker thread (`/proc/<pid>/task/*/stat`,
     threads grouped by name) and of nats-server, divided by the tasks completed meanwhile.

No client runs during the drain, so the figures are the workers' own (and nats-server's share). Prints a Markdown
table; asserts nothing. Run with bench/.venv's Python or any Python 3.9+ (stdlib only), after a release build:

  python3 bench/worker_drain.py            BENCH_DRAIN_RUNS=3 to repeat, BENCH_NEUTRINO_BIN_DIR as for bench/run.py
"""
from __future__ import annotations

import collections
import http.client
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run as common  # noqa: E402
from async_bench import BODY, async_manifest, start_nats, start_nats_worker, start_queue_gateway, wait_log  # noqa: E402
from run import START_TIMEOUT, cpu_seconds, log  # noqa: E402

TASKS = int(os.environ.get("BENCH_DRAIN_TASKS", "4000"))
WORKERS = int(os.environ.get("BENCH_DRAIN_WORKERS", "2"))
CONCURRENCY = int(os.environ.get("BENCH_DRAIN_CONCURRENCY", "2"))
RUNS = int(os.environ.get("BENCH_DRAIN_RUNS", "1"))
TICKS = os.sysconf("SC_CLK_TCK")


LABELS = {"oot.default-qos": "Swift cooperative pool", "-qos.overcommit": "dispatch's timer thread",
          "tasklog-writer": "task-log writer", "tasklog-ckpt": "task-log checkpoint",
          "TP": "task-log reader pool", "py": "Python threads", "nats-fetch": "nats-fetch (pull requests)"}


def label(thread: str) -> str:
    if thread.startswith("nats-async"):
        return "cnats I/O thread"
    return LABELS.get(thread, thread)


def threads_cpu(pids: list) -> collections.Counter:
    """CPU ticks per thread name (digits and '#', '-' stripped: `py-3` and `py-4` count as `py`)."""
    out: collections.Counter = collections.Counter()
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            name = text[text.index("(") + 1:text.rindex(")")].rstrip("0123456789-#") or "?"
            fields = text.rsplit(")", 1)[1].split()
            out[name] += int(fields[11]) + int(fields[12])
    return out


def submit_all(port: int, n: int) -> None:
    def run(k: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(k):
            c.request("POST", "/api/echo", body=BODY, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            if r.status != 202:
                raise RuntimeError(f"submit answered {r.status}")
        c.close()

    threads = [threading.Thread(target=run, args=(n // 8 + (1 if i < n % 8 else 0),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def one_run(state: Path) -> tuple:
    db = state / "tasks.db"
    procs: list = []
    try:
        manifest = async_manifest(state)
        url = start_nats(state, procs)
        nats = procs[-1]
        gateway = start_queue_gateway(state, manifest, db, url)
        procs.append(gateway)
        submit_all(gateway.wait_listening(START_TIMEOUT), TASKS)
        workers = [start_nats_worker(state, i, db, url, CONCURRENCY) for i in range(1, WORKERS + 1)]
        procs += workers
        for w in workers:
            wait_log(w, b"consuming pool_async from", START_TIMEOUT)
        reader = sqlite3.connect(str(db), timeout=10)

        def completed() -> int:
            return reader.execute("SELECT coalesce(sum(n), 0) FROM task_groups WHERE status = 'completed'").fetchone()[0]

        deadline = time.monotonic() + 300
        while completed() == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        pids = [w.p.pid for w in workers]
        done0, nats0, threads0, t0 = completed(), cpu_seconds([nats]), threads_cpu(pids), time.perf_counter()
        while completed() < TASKS and time.monotonic() < deadline:
            time.sleep(0.01)
        done1, nats1, threads1, t1 = completed(), cpu_seconds([nats]), threads_cpu(pids), time.perf_counter()
        reader.close()
        n = max(1, done1 - done0)
        per_task = {name: (threads1[name] - threads0[name]) * 1e6 / TICKS / n for name in threads1}
        return n, t1 - t0, per_task, (nats1 - nats0) * 1e6 / n
    finally:
        for p in reversed(procs):
            p.stop()


def main() -> int:
    runs = []
    for i in range(RUNS):
        state = Path(tempfile.mkdtemp(prefix="neutrino-drain-"))
        try:
            runs.append(one_run(state))
        finally:
            if os.environ.get("BENCH_KEEP") != "1":
                shutil.rmtree(state, ignore_errors=True)
        n, seconds, per_task, nats = runs[-1]
        log(f"run {i + 1}: {n} tasks in {seconds:.2f} s ({n / seconds:,.0f}/s), workers "
            f"{sum(per_task.values()):.0f} µs per task, nats-server {nats:.0f}")
    names = sorted({k for _, _, per_task, _ in runs for k, v in per_task.items() if v >= 1},
                   key=lambda k: -max(r[2].get(k, 0) for r in runs))
    print(f"\n## NATS workers draining {TASKS:,} queued `echo` tasks: CPU per task\n")
    print(f"- {WORKERS} × `neutrino-worker --mode nats --concurrency {CONCURRENCY}`, one SQLite task log; "
          f"binaries: {common.BIN_DIR}; nproc {os.cpu_count()}, load avg {os.getloadavg()[0]:.2f} at the end\n")
    print("| thread (all workers) | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " |")
    print("|---|" + "---:|" * len(runs))
    for name in names:
        print(f"| {label(name)} | " + " | ".join(f"{r[2].get(name, 0):.0f} µs" for r in runs) + " |")
    print("| **workers, all threads** | " + " | ".join(f"**{sum(r[2].values()):.0f} µs**" for r in runs) + " |")
    print("| nats-server | " + " | ".join(f"{r[3]:.0f} µs" for r in runs) + " |")
    print("| tasks/s while draining | " + " | ".join(f"{r[0] / r[1]:,.0f}" for r in runs) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

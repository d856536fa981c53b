#!/usr/bin/env python3
"""The async half of `make bench`: queued tasks, Neutrino (JetStream) against Celery 5 + Redis.

Both sides run the same `echo(x, label)` as a queued task (bench/async_app.py, bench/celery_app.py):

  neutrino  nats-server -js (temporary store), neutrino-gateway --nats, 2 x neutrino-worker --mode nats
            --pool async --concurrency 2, one SQLite task log
  celery    redis-server (temporary, no persistence) as broker and result backend,
            celery worker --pool prefork --concurrency 2

One side runs at a time (started on free 127.0.0.1 ports, checked with one task, measured, stopped). For each:

  1. one producer: BENCH_ASYNC_SUBMITS (2,000) submits one after another, after 100 unmeasured ones: the time
     for `POST /api/echo` to answer 202 (a keep-alive connection) / for `echo.delay()` to return; then every
     result fetched (`GET /tasks/<id>?wait=30` on the same connection / `AsyncResult.get()`). Its throughput is
     all 2,100 tasks over the time from the first submit to the last result. Before the submits, Neutrino's
     producer times 1,000 `GET /healthz` on its connection (after 100 unmeasured): the client's round trip to a
     gateway that does no work, two of which every task of this phase takes (the submit and the fetch); the table
     shows what that floor leaves of the 3× target's time per task. Then 1,000 more submits with every
     worker process stopped (SIGSTOP on its process group, continued after): the submit with nothing but the
     broker, the gateway and the client on the cores; those tasks run once the workers continue.
  2. throughput: BENCH_ASYNC_TASKS (5,000) tasks submitted from BENCH_ASYNC_THREADS (16) threads at once, timed
     until every one is terminal. Neutrino: a poll of the task log (count of terminal rows, every 5 ms).
     Celery: each thread calls AsyncResult.get() on its own results once it has submitted them. The CPU each
     kind of process used meanwhile (/proc; the client is this Python process) is divided by the tasks.
  3. end-to-end latency at low load: BENCH_ASYNC_E2E (300) times, after 20 unmeasured: submit one task and wait
     for its result: `GET /tasks/<id>?wait=30` / `AsyncResult.get()`.

Between phases every task of the previous one is waited for, so phases don't overlap. Prints a Markdown
table with issue 14's targets (submit p50 <= 0.5 ms, p99 <= 2 ms; one producer >= 3x Celery's tasks/s, 16
producers >= 10x; end-to-end p50 below Celery's) and what the client and the broker alone allow; asserts nothing.

Run by bench/run.sh with bench/.venv's Python (which has celery[redis]); stdlib otherwise, and it reuses
bench/run.py's process handling.

Environment:
  BENCH_ASYNC_SUBMITS=2000  BENCH_ASYNC_TASKS=5000  BENCH_ASYNC_THREADS=16  BENCH_ASYNC_E2E=300
  BENCH_ASYNC_ONLY=neutrino,celery   which sides to run
  BENCH_ASYNC_DRAIN_TIMEOUT=300      seconds to wait for a phase's tasks to finish
  BENCH_SKIP_NEUTRINO=reason, BENCH_SKIP_CELERY=reason   skip a side (run.sh sets them when an install failed)
  BENCH_NEUTRINO_BIN_DIR=.build/release, BENCH_START_TIMEOUT=60, BENCH_KEEP=1   as for bench/run.py
"""
from __future__ import annotations

import contextlib
import datetime
import http.client
import importlib
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run as common  # noqa: E402  (the sync benchmark: Proc, free_port, log, ...)
from run import REPO, START_TIMEOUT, Proc, Skip, StartError, fmt_ms, free_port, log  # noqa: E402

SUBMITS = int(os.environ.get("BENCH_ASYNC_SUBMITS", "2000"))
TASKS = int(os.environ.get("BENCH_ASYNC_TASKS", "5000"))
THREADS = int(os.environ.get("BENCH_ASYNC_THREADS", "16"))
E2E = int(os.environ.get("BENCH_ASYNC_E2E", "300"))
DRAIN_TIMEOUT = float(os.environ.get("BENCH_ASYNC_DRAIN_TIMEOUT", "300"))
SUBMIT_WARMUP = 100
PAUSED_SUBMITS = 1000  # submits with the workers paused (SIGSTOP): what the broker and the gateway/client alone take
FLOOR_REQUESTS = 1000  # GET /healthz back to back before the submits: the client's round trip to a do-nothing endpoint
E2E_WARMUP = 20
WORKERS = 2  # neutrino-worker processes (Celery: one worker, --concurrency 2 prefork children)
CONCURRENCY = 2  # Python threads per Neutrino worker; prefork children of the (one) Celery worker
BODY = b'{"args":{"x":42,"label":"bench"}}'
TERMINAL = ("completed", "failed", "cancelled", "timed_out")

# Issue 14's targets: submit p50 ≤ 0.5 ms and p99 ≤ 2 ms (the seed's bar: < 10 ms); one producer ≥ 3× Celery's
# tasks/s; 16 producers ≥ 10×; end-to-end p50 below Celery's.
TARGET_SUBMIT_P50_MS = 0.5
TARGET_SUBMIT_P99_MS = 2.0
SEED_SUBMIT_P99_MS = 10.0
TARGET_SEQUENTIAL_SPEEDUP = 3.0
TARGET_SPEEDUP = 10.0


# --------------------------------------------------------------------------- results

@dataclass
class Result:
    key: str
    label: str
    error: str = ""  # why the side has no numbers (skipped, failed to start, ...)
    submit_ms: list = field(default_factory=list)
    submit_errors: int = 0
    tp_submitted: int = 0
    tp_submit_s: float = 0.0
    tp_total_s: float = 0.0
    tp_failed: int = 0  # terminal but not completed
    tp_unfinished: int = 0  # not terminal by the drain timeout
    tp_errors: int = 0  # submits that failed
    e2e_ms: list = field(default_factory=list)
    e2e_errors: int = 0
    seq_tasks: int = 0  # one producer: tasks submitted back to back whose result was then fetched and correct
    seq_s: float = 0.0  # from its first submit to the last result fetched
    paused_submit_ms: list = field(default_factory=list)  # submits while every worker process is stopped
    fetch_ms: list = field(default_factory=list)  # one producer: each `GET /tasks/<id>?wait=30` of a finished task
    floor_us: float = 0.0  # one producer: p50 of the client's round trip to `GET /healthz` on its connection
    tp_cpu_us: dict = field(default_factory=dict)  # 16 producers: CPU per task (µs) of each process kind
    notes: list = field(default_factory=list)
    done: set = field(default_factory=set)  # the phases measured: "submit", "paused", "throughput", "e2e"

    @property
    def throughput(self) -> float:
        done = self.tp_submitted - self.tp_unfinished
        return done / self.tp_total_s if self.tp_total_s else 0.0

    @property
    def sequential_throughput(self) -> float:
        return self.seq_tasks / self.seq_s if self.seq_s else 0.0


def percentile(values: list, p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class TaskError(Exception):
    pass


# --------------------------------------------------------------------------- helpers

def wait_tcp(proc: Proc, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.p.poll() is not None:
            raise StartError(f"{proc.name} exited with status {proc.p.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise StartError(
                    f"{proc.name} did not accept connections on port {port} within {timeout:.0f} s") from None
            time.sleep(0.05)


def wait_log(proc: Proc, needle: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in proc.log_path.read_bytes():
        if proc.p.poll() is not None:
            raise StartError(f"{proc.name} exited with status {proc.p.returncode} before printing {needle.decode()!r}")
        if time.monotonic() > deadline:
            raise StartError(f"{proc.name} did not print {needle.decode()!r} within {timeout:.0f} s")
        time.sleep(0.05)


def run_threads(n: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def process_kind(name: str) -> str:
    """What a server process is, for the CPU-per-task split (the workers summed)."""
    if "worker" in name:
        return "workers"
    if name.startswith("neutrino-gateway"):
        return "gateway"
    return "nats-server" if name.startswith("nats-server") else "redis" if name.startswith("redis") else name


def cpu_by_kind(procs: list) -> dict:
    """CPU seconds so far of each kind of server (process groups: Celery's prefork children too), and of this
    process, the client."""
    out: dict = {}
    for p, seconds in common.cpu_seconds_each(procs):
        kind = process_kind(p.name)
        out[kind] = out.get(kind, 0.0) + seconds
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["client"] = usage.ru_utime + usage.ru_stime
    return out


def timed_submits(submit: Callable[[], Any], count: int, times_ms: list, res: Result, errors: tuple) -> list:
    """`SUBMIT_WARMUP + count` submits back to back; each one's time after the warm-up is appended to `times_ms`
    (ms). Returns what the submits that succeeded returned; one that raised `errors` counts in `res.submit_errors`."""
    out = []
    for i in range(SUBMIT_WARMUP + count):
        t0 = time.perf_counter()
        try:
            out.append(submit())
        except errors:
            res.submit_errors += 1
            continue
        if i >= SUBMIT_WARMUP:
            times_ms.append((time.perf_counter() - t0) * 1e3)
    return out


NEUTRINO_SUBMIT_ERRORS = (TaskError, OSError, ValueError)


@contextlib.contextmanager
def paused(procs: list):
    """Every worker process (its whole process group: Celery's prefork children too) stopped with SIGSTOP inside,
    continued on the way out; the brokers, the gateway and the client run as usual."""
    groups = [p.p.pid for p in procs if process_kind(p.name) == "workers" and p.p.poll() is None]
    for pgid in groups:
        os.killpg(pgid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def shares(total: int, parts: int) -> list:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# --------------------------------------------------------------------------- Neutrino

class NeutrinoClient:
    """One keep-alive connection to the gateway (one per thread)."""

    def __init__(self, port: int):
        self.port = port
        self.conn: Optional[http.client.HTTPConnection] = None

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def request(self, method: str, path: str, body: Optional[bytes] = None) -> tuple:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = self._connect()
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def submit(self) -> str:
        status, data = self.request("POST", "/api/echo", BODY)
        if status != 202:
            raise TaskError(f"HTTP {status}: {data[:200].decode(errors='replace')}")
        return json.loads(data)["task_id"]

    def wait(self, task_id: str) -> dict:
        status, data = self.request("GET", f"/tasks/{task_id}?wait=30")
        if status != 200:
            raise TaskError(f"HTTP {status}: {data[:200].decode(errors='replace')}")
        record = json.loads(data)
        if record.get("status") != "completed" or (record.get("result") or {}).get("x") != 42:
            raise TaskError(f"task {task_id}: {json.dumps(record)[:300]}")
        return record

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def async_manifest(state: Path) -> Path:
    """bench/async_app.py's manifest (`neutrino.cli openapi`), written into `state`."""
    manifest = state / "openapi-async.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "python"),
                                                                       os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-m", "neutrino.cli", "openapi", str(BENCH / "async_app.py"),
                        "-o", str(manifest)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or not manifest.exists():
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
        raise StartError(f"`neutrino.cli openapi bench/async_app.py` failed: {tail[0][:200]}")
    return manifest


def start_nats(state: Path, procs: list) -> str:
    """nats-server -js on a free loopback port, its store under `state` (appended to `procs`); its URL."""
    nats_server = shutil.which("nats-server")
    if not nats_server:
        raise Skip("nats-server not installed (apt-get install nats-server)")
    port = free_port()
    nats = Proc("nats-server", [nats_server, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(state / "nats")],
                state / "nats-server.log")
    procs.append(nats)
    wait_tcp(nats, port, START_TIMEOUT)
    return f"nats://127.0.0.1:{port}"


def start_nats_worker(state: Path, i: int, db: Path, url: str, concurrency: int) -> Proc:
    """`neutrino-worker --mode nats --pool async` number `i` on bench/async_app.py, recording into `db`."""
    argv = [str(common.WORKER_BIN), "--mode", "nats", "--pool", "async", "--app", str(BENCH / "async_app.py"),
            "--concurrency", str(concurrency), "--task-log", f"sqlite:{db}", "--nats", url,
            "--python-path", str(REPO / "python"), "--drain-grace", "5", "--log-level", "warning"]
    return Proc(f"neutrino-nats-worker-{i}", argv, state / f"neutrino-nats-worker-{i}.log")


def start_queue_gateway(state: Path, manifest: Path, db: Path, url: str) -> Proc:
    """`neutrino-gateway --nats` with `manifest`, recording into `db` (call `wait_listening` for its port)."""
    return Proc("neutrino-gateway-async", [str(common.GATEWAY_BIN), "--manifest", str(manifest), "--nats", url,
                                           "--task-log", f"sqlite:{db}", "--port", "0"],
                state / "neutrino-gateway-async.log")


class NeutrinoSide:
    key = "neutrino"
    label = f"neutrino: gateway + nats + {WORKERS} workers ×{CONCURRENCY}"

    def __init__(self, state: Path):
        self.state = state
        self.port = 0
        self.db = state / "tasks-async.db"
        self.procs: list = []
        self._reader: Optional[sqlite3.Connection] = None

    def start(self) -> None:
        reason = os.environ.get("BENCH_SKIP_NEUTRINO", "")
        if reason:
            raise Skip(reason)
        if not common.WORKER_BIN.exists() or not common.GATEWAY_BIN.exists():
            raise Skip(f"binaries not built ({common.BIN_DIR}/neutrino-{{gateway,worker}} missing)")
        for binary in (common.WORKER_BIN, common.GATEWAY_BIN):
            h = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30)
            if "--nats" not in h.stdout + h.stderr:
                raise Skip(f"{binary.name} --help shows no --nats: the binaries in {common.BIN_DIR} predate "
                           "the JetStream path (rebuild: make build-release)")

        manifest = async_manifest(self.state)
        url = start_nats(self.state, self.procs)
        workers = [start_nats_worker(self.state, i, self.worker_db(i), url, CONCURRENCY) for i in range(1, WORKERS + 1)]
        self.procs += workers
        for w in workers:
            wait_log(w, b"consuming pool_async from", START_TIMEOUT)
        gateway = start_queue_gateway(self.state, manifest, self.db, url)
        self.procs.append(gateway)
        self.port = gateway.wait_listening(START_TIMEOUT)
        # Sanity: one task end to end (the consumers may still be being provisioned: retry briefly).
        client = NeutrinoClient(self.port)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                record = self.check(client)
                log(f"  check: {json.dumps(record.get('result'))} by {record.get('worker_id')}")
                break
            except (TaskError, OSError) as e:
                if time.monotonic() > deadline:
                    raise StartError(f"the check task did not complete: {e}") from e
                time.sleep(0.2)
            finally:
                client.close()

    def worker_db(self, i: int) -> Path:
        """The task-log file worker `i` records into: the gateway's."""
        return self.db

    def check(self, client: NeutrinoClient) -> dict:
        """One task end to end: its final record (raises TaskError/OSError while the stack is not ready)."""
        return client.wait(client.submit())

    # -- the task log, read directly (the throughput phase's "all terminal" test)

    def counts(self) -> dict:
        if self._reader is None:
            self._reader = sqlite3.connect(str(self.db), timeout=10, check_same_thread=False)
        # task_groups holds the count of every (status, function, pool, mode), kept exact by triggers: a read of a few
        # rows. `SELECT status, count(*) FROM tasks GROUP BY status` walks an index of every task (0.8 ms at 7,000
        # rows, 3 ms at 26,000), and every 5 ms that took 15-60 % of a core from the stack being measured.
        rows = self._reader.execute("SELECT status, sum(n) FROM task_groups GROUP BY status").fetchall()
        return dict(rows)

    def unfinished(self) -> int:
        return sum(n for status, n in self.counts().items() if status not in TERMINAL)

    def drain(self, expected_terminal: Optional[int] = None, timeout: float = DRAIN_TIMEOUT) -> float:
        """Wait until no task is unfinished (and, if given, at least `expected_terminal` are terminal);
        returns the perf_counter() time it was seen."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.counts()
            terminal = sum(counts.get(s, 0) for s in TERMINAL)
            pending = sum(n for s, n in counts.items() if s not in TERMINAL)
            if pending == 0 and (expected_terminal is None or terminal >= expected_terminal):
                return time.perf_counter()
            if time.monotonic() > deadline:
                return time.perf_counter()
            time.sleep(0.005)

    # -- phases

    def submit_latency(self, res: Result) -> None:
        """The submits back to back, then every result fetched over the same connection (the one-producer
        throughput: from the first submit to the last result)."""
        client = NeutrinoClient(self.port)
        try:
            res.floor_us = self.round_trip_floor(client)
            start = time.perf_counter()
            ids = timed_submits(client.submit, SUBMITS, res.submit_ms, res, NEUTRINO_SUBMIT_ERRORS)
            for task_id in ids:
                t0 = time.perf_counter()
                try:
                    client.wait(task_id)
                    res.seq_tasks += 1
                    res.fetch_ms.append((time.perf_counter() - t0) * 1e3)
                except (TaskError, OSError, ValueError):
                    pass
            res.seq_s = time.perf_counter() - start
        finally:
            client.close()
        self.drain()

    def paused_submits(self, res: Result) -> None:
        """Submits back to back with the workers stopped: the gateway, nats-server and the task log alone. The tasks
        run once the workers continue (drained before the next phase)."""
        client = NeutrinoClient(self.port)
        try:
            with paused(self.procs):
                timed_submits(client.submit, PAUSED_SUBMITS, res.paused_submit_ms, res, NEUTRINO_SUBMIT_ERRORS)
        finally:
            client.close()
        self.drain()

    @staticmethod
    def round_trip_floor(client: NeutrinoClient) -> float:
        """p50, in µs, of `GET /healthz` (no task log, no NATS) back to back on the producer's connection: what this
        client and the gateway's HTTP cost a request before any work. A task of the one-producer phase takes two."""
        times = []
        for i in range(SUBMIT_WARMUP + FLOOR_REQUESTS):
            t0 = time.perf_counter()
            status, _ = client.request("GET", "/healthz")
            if status == 200 and i >= SUBMIT_WARMUP:
                times.append((time.perf_counter() - t0) * 1e6)
        return percentile(times, 50) if times else 0.0

    def throughput(self, res: Result) -> None:
        before = self.counts()
        terminal_before = sum(before.get(s, 0) for s in TERMINAL)
        completed_before = before.get("completed", 0)
        ok = [0] * THREADS
        errors = [0] * THREADS
        per_thread = shares(TASKS, THREADS)
        barrier = threading.Barrier(THREADS + 1)

        def submitter(i: int) -> None:
            client = NeutrinoClient(self.port)
            barrier.wait()
            try:
                for _ in range(per_thread[i]):
                    try:
                        client.submit()
                        ok[i] += 1
                    except (TaskError, OSError, ValueError):
                        errors[i] += 1
            finally:
                client.close()

        threads = [threading.Thread(target=submitter, args=(i,), daemon=True) for i in range(THREADS)]
        for t in threads:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        submitted_at = time.perf_counter()
        res.tp_submitted, res.tp_errors = sum(ok), sum(errors)
        end = self.drain(expected_terminal=terminal_before + res.tp_submitted)
        after = self.counts()
        terminal = sum(after.get(s, 0) for s in TERMINAL) - terminal_before
        res.tp_unfinished = max(0, res.tp_submitted - terminal)
        res.tp_failed = terminal - (after.get("completed", 0) - completed_before)
        res.tp_submit_s, res.tp_total_s = submitted_at - start, end - start

    def end_to_end(self, res: Result) -> None:
        client = NeutrinoClient(self.port)
        try:
            for i in range(E2E_WARMUP + E2E):
                t0 = time.perf_counter()
                try:
                    client.wait(client.submit())
                except (TaskError, OSError, ValueError) as e:
                    res.e2e_errors += 1
                    if res.e2e_errors == 1:
                        res.notes.append(f"first end-to-end error: {e}")
                    continue
                if i >= E2E_WARMUP:
                    res.e2e_ms.append((time.perf_counter() - t0) * 1e3)
        finally:
            client.close()

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.close()
        for p in reversed(self.procs):  # gateway and workers first, nats-server last
            p.stop()


# --------------------------------------------------------------------------- Celery

class CelerySide:
    key = "celery"
    label = f"celery 5 + redis, prefork ×{CONCURRENCY}"

    def __init__(self, state: Path):
        self.state = state
        self.procs: list = []
        self.echo: Any = None
        self.app: Any = None

    def start(self) -> None:
        reason = os.environ.get("BENCH_SKIP_CELERY", "")
        if reason:
            raise Skip(reason)
        try:
            import celery  # noqa: F401
            import redis  # noqa: F401
        except ImportError as e:
            raise Skip(f"not installed ({e}; bench/run.sh installs celery[redis] into bench/.venv)") from None
        redis_server = shutil.which("redis-server")
        if not redis_server:
            raise Skip("redis-server not installed (apt-get install redis-server)")
        port = free_port()
        server = Proc("redis-server", [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(self.state), "--daemonize", "no"],
                      self.state / "redis-server.log")
        self.procs.append(server)
        wait_tcp(server, port, START_TIMEOUT)
        redis_url = f"redis://127.0.0.1:{port}"
        os.environ["BENCH_REDIS_URL"] = redis_url  # read by celery_app, here and in the worker
        os.environ["BENCH_ASYNC_THREADS"] = str(THREADS)
        celery_bin = Path(sys.executable).parent / "celery"
        argv = [str(celery_bin) if celery_bin.exists() else sys.executable] + ([] if celery_bin.exists() else
                                                                              ["-m", "celery"])
        argv += ["--workdir", str(BENCH), "-A", "celery_app", "worker", "--pool", "prefork",
                 "--concurrency", str(CONCURRENCY), "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
                 "--hostname", f"bench-{os.getpid()}@%h"]
        worker = Proc("celery-worker", argv, self.state / "celery-worker.log", env=dict(os.environ))
        self.procs.append(worker)
        module = importlib.import_module("celery_app")
        self.app, self.echo = module.app, module.echo
        # Sanity: one task end to end (waits for the worker to come up).
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if worker.p.poll() is not None:
                raise StartError(f"celery worker exited with status {worker.p.returncode}")
            try:
                result = self.echo.delay(42, "bench").get(timeout=2)
                log(f"  check: {json.dumps(result)}")
                if result.get("x") != 42:
                    raise StartError(f"check task returned {result!r}")
                break
            except Exception as e:  # celery.exceptions.TimeoutError while the worker starts
                if isinstance(e, StartError):
                    raise
                if time.monotonic() > deadline:
                    raise StartError(f"the check task did not complete within {START_TIMEOUT:.0f} s: {e!r}") from e

    def submit(self) -> Any:
        return self.echo.delay(42, "bench")

    def _get(self, result: Any) -> bool:
        try:
            value = result.get(timeout=DRAIN_TIMEOUT)
            return isinstance(value, dict) and value.get("x") == 42
        except Exception:
            return False

    def submit_latency(self, res: Result) -> None:
        start = time.perf_counter()
        results = timed_submits(self.submit, SUBMITS, res.submit_ms, res, (Exception,))
        for r in results:  # every result, which also drains the queue before the next phase
            t0 = time.perf_counter()
            if self._get(r):
                res.seq_tasks += 1
                res.fetch_ms.append((time.perf_counter() - t0) * 1e3)
        res.seq_s = time.perf_counter() - start

    def paused_submits(self, res: Result) -> None:
        with paused(self.procs):
            results = timed_submits(self.submit, PAUSED_SUBMITS, res.paused_submit_ms, res, (Exception,))
        for r in results:  # drain before the next phase
            self._get(r)

    def throughput(self, res: Result) -> None:
        ok = [0] * THREADS
        failed = [0] * THREADS
        errors = [0] * THREADS
        submitted_at = [0.0] * THREADS
        per_thread = shares(TASKS, THREADS)
        barrier = threading.Barrier(THREADS + 1)

        def submitter(i: int) -> None:
            results = []
            barrier.wait()
            for _ in range(per_thread[i]):
                try:
                    results.append(self.echo.delay(42, "bench"))
                except Exception:
                    errors[i] += 1
            submitted_at[i] = time.perf_counter()
            ok[i] = len(results)
            for r in results:
                if not self._get(r):
                    failed[i] += 1

        threads = [threading.Thread(target=submitter, args=(i,), daemon=True) for i in range(THREADS)]
        for t in threads:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        end = time.perf_counter()
        res.tp_submitted, res.tp_errors, res.tp_failed = sum(ok), sum(errors), sum(failed)
        res.tp_submit_s, res.tp_total_s = max(submitted_at) - start, end - start

    def end_to_end(self, res: Result) -> None:
        for i in range(E2E_WARMUP + E2E):
            t0 = time.perf_counter()
            try:
                value = self.echo.delay(42, "bench").get(timeout=30)
                if value.get("x") != 42:
                    raise TaskError(f"result {value!r}")
            except Exception as e:
                res.e2e_errors += 1
                if res.e2e_errors == 1:
                    res.notes.append(f"first end-to-end error: {e!r}")
                continue
            if i >= E2E_WARMUP:
                res.e2e_ms.append((time.perf_counter() - t0) * 1e3)

    def stop(self) -> None:
        if self.app is not None:
            try:
                self.app.close()
            except Exception:
                pass
        for p in reversed(self.procs):  # the worker first, redis-server last
            p.stop()


# --------------------------------------------------------------------------- driving

CELERY_PROBLEM = re.compile(r"^\[[^\]]*(ERROR|CRITICAL)/[^\]]*\].*$", re.M)


def measure(side: Any, res: Result, ctx: common.Ctx) -> None:
    log(f"=== async: {side.label}")
    try:
        try:
            side.start()
        except Skip as e:
            log(f"skip {side.label}: {e}")
            res.error = str(e) if str(e).startswith("not installed") else f"skipped: {e}"
            return
        except StartError as e:
            ctx.failed = True
            tails = "\n".join(f"  {p.name} ({p.log_path}):\n{p.log_tail()}" for p in side.procs)
            log(f"FAILED {side.label}: {e}\n{tails}")
            res.error = f"failed to start: {e}"
            return
        log(f"  submit latency: {SUBMITS} sequential submits (+{SUBMIT_WARMUP} warm-up)")
        side.submit_latency(res)
        res.done.add("submit")
        log(f"    p50 {fmt_ms(percentile(res.submit_ms, 50))}, p99 {fmt_ms(percentile(res.submit_ms, 99))}, "
            f"errors {res.submit_errors}; every result fetched after {res.seq_s:.2f} s "
            f"({res.sequential_throughput:,.0f} tasks/s)")
        log(f"  submit latency with the workers paused: {PAUSED_SUBMITS} sequential submits (+{SUBMIT_WARMUP} warm-up)")
        side.paused_submits(res)
        res.done.add("paused")
        log(f"    p50 {fmt_ms(percentile(res.paused_submit_ms, 50))}, "
            f"p99 {fmt_ms(percentile(res.paused_submit_ms, 99))}")
        log(f"  throughput: {TASKS} tasks from {THREADS} threads, until all are terminal")
        before = cpu_by_kind(side.procs)
        side.throughput(res)
        after = cpu_by_kind(side.procs)
        if res.tp_submitted:
            res.tp_cpu_us = {k: (after[k] - before.get(k, 0.0)) * 1e6 / res.tp_submitted for k in after}
        res.done.add("throughput")
        log(f"    submitted in {res.tp_submit_s:.2f} s, all terminal after {res.tp_total_s:.2f} s "
            f"({res.throughput:,.0f} tasks/s); failed {res.tp_failed}, unfinished {res.tp_unfinished}, "
            f"submit errors {res.tp_errors}")
        log(f"  end-to-end latency: {E2E} x (submit one, wait for its result)")
        side.end_to_end(res)
        res.done.add("e2e")
        log(f"    p50 {fmt_ms(percentile(res.e2e_ms, 50))}, p99 {fmt_ms(percentile(res.e2e_ms, 99))}, "
            f"errors {res.e2e_errors}")
        for p in side.procs:
            if p.p.poll() is not None:
                ctx.failed = True
                res.notes.append(f"{p.name} exited ({p.p.returncode}) during the run")
    finally:
        procs = list(side.procs)
        side.stop()
        for p in procs:
            if p.name.startswith("neutrino"):
                common.scan_log(p, res.label, ctx)
            elif p.name.startswith("celery"):
                try:
                    hits = CELERY_PROBLEM.findall(p.log_path.read_text(errors="replace"))
                except OSError:
                    hits = []
                if hits:
                    ctx.keep = True
                    ctx.notes.append(f"{res.label}: {p.name} logged {len(hits)} ERROR/CRITICAL lines "
                                     f"(see {p.log_path.name})")


def versions() -> str:
    parts = []
    for binary, flag in (("nats-server", "--version"), ("redis-server", "--version")):
        path = shutil.which(binary)
        if path:
            try:
                out = subprocess.run([path, flag], capture_output=True, text=True, timeout=10).stdout.strip()
                m = re.search(r"v=?(\d+\.\d+\.\d+)", out)
                parts.append(f"{binary} {m.group(1) if m else out[:40]}")
            except (OSError, subprocess.TimeoutExpired):
                pass
    try:
        import importlib.metadata as md
        for name in ("celery", "kombu", "redis"):
            try:
                parts.append(f"{name} {md.version(name)}")
            except md.PackageNotFoundError:
                pass
    except ImportError:
        pass
    return ", ".join(parts)


def header(load_at_start: float) -> list:
    commit = ""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=REPO, timeout=10).stdout.strip()
        if subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO,
                          timeout=10).stdout.strip():
            commit += " (+ uncommitted changes)"
    except (OSError, subprocess.TimeoutExpired):
        pass
    build = common.BIN_DIR.name
    return [
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M:%S %Z')}",
        (f"- machine: nproc {os.cpu_count()}, {platform.system()} {platform.release()}, "
        f"load avg {load_at_start:.2f} at start"),
        f"- repo: {commit or 'no commit'}; Neutrino binaries: {common.BIN_DIR}"
        + (" (**debug build**: not representative)" if build == "debug" else ""),
        f"- stack: {versions()}",
        (f"- load: {SUBMITS:,} sequential submits (+{SUBMIT_WARMUP} warm-up); {TASKS:,} tasks from {THREADS} "
        f"threads; {E2E} sequential submit+wait (+{E2E_WARMUP} warm-up). Client: one Python process "
        f"({platform.python_implementation()} {platform.python_version()}), http.client keep-alive / "
        f"`echo.delay()` + `AsyncResult.get()`"),
    ]


def cell_ms(values: list, p: float) -> str:
    return fmt_ms(percentile(values, p)) if values else "–"


def verdict(met: bool) -> str:
    return "met" if met else "not met"


def ratio_target(n: Result, c: Result, phase: str, value: Callable[[Result], float], target: float) -> str:
    text = f"neutrino ≥ {target:g}× celery"
    if phase in n.done and phase in c.done and value(c) > 0:
        ratio = value(n) / value(c)
        text += f": {ratio:.1f}× ({verdict(ratio >= target)})"
    return text


def cpu_cell(r: Result) -> str:
    """CPU per task of each process kind, client first, and the sum."""
    if not r.tp_cpu_us:
        return "–"
    order = sorted(r.tp_cpu_us, key=lambda k: (k != "client", k))
    parts = " · ".join(f"{k} {r.tp_cpu_us[k]:,.0f}" for k in order)
    return f"{parts} = {sum(r.tp_cpu_us.values()):,.0f}"


def ceiling_note(n: Result, c: Result) -> str:
    """What the client and the broker alone allow: with the gateway and the workers costing nothing, this machine's
    cores could run at most cores / (client + broker CPU per task) tasks a second."""
    fixed = n.tp_cpu_us.get("client", 0.0) + n.tp_cpu_us.get("nats-server", 0.0)
    if not fixed or not c.throughput:
        return ""
    cores = len(os.sched_getaffinity(0))  # the cores this process may use, as `nproc` counts them
    most = cores * 1e6 / fixed
    return (f"the client and nats-server alone use {fixed:,.0f} µs per task: even with a free gateway and free "
            f"workers, {cores} cores run at most {most:,.0f} tasks/s = {most / c.throughput:.1f}× celery")


def floor_note(n: Result, c: Result) -> str:
    """What the target leaves for the work of a task: the one-producer target's time per task (1 / (3 × celery's
    tasks/s)) less the client's two round trips to a do-nothing endpoint (the submit and the fetch)."""
    if not n.floor_us or "submit" not in c.done or not c.sequential_throughput:
        return ""
    budget = 1e6 / (TARGET_SEQUENTIAL_SPEEDUP * c.sequential_throughput)
    most = 1e6 / (2 * n.floor_us)
    return (f"at most {most:,.0f} tasks/s = {most / c.sequential_throughput:.1f}× celery with submits and fetches "
            f"that cost nothing; {TARGET_SEQUENTIAL_SPEEDUP:g}× allows {budget:,.0f} µs per task, which leaves "
            f"{budget - 2 * n.floor_us:,.0f} µs for the JetStream publish and its acknowledgement, the durable commit "
            f"of the queued row and the read of the result")


def table(n: Result, c: Result) -> list:
    p50 = percentile(n.submit_ms, 50) if n.submit_ms else None
    p99 = percentile(n.submit_ms, 99) if n.submit_ms else None
    p50_target = f"≤ {TARGET_SUBMIT_P50_MS:g} ms" + (f": neutrino {verdict(p50 <= TARGET_SUBMIT_P50_MS)}"
                                                     if p50 is not None else "")
    submit_target = f"≤ {TARGET_SUBMIT_P99_MS:g} ms (seed bar < {SEED_SUBMIT_P99_MS:g} ms)"
    if p99 is not None:
        submit_target += ": neutrino " + ("met" if p99 <= TARGET_SUBMIT_P99_MS else
                                          "not met; seed bar met" if p99 < SEED_SUBMIT_P99_MS else "not met")
    paused_target = ""
    if n.paused_submit_ms:
        paused_p50 = percentile(n.paused_submit_ms, 50)
        paused_target = (f"≤ {TARGET_SUBMIT_P50_MS:g} ms: neutrino {verdict(paused_p50 <= TARGET_SUBMIT_P50_MS)} without "
                         "the workers on the same cores")
    e2e_target = "neutrino below celery"
    if "e2e" in n.done and "e2e" in c.done and n.e2e_ms and c.e2e_ms:
        e2e_target += f": {verdict(percentile(n.e2e_ms, 50) < percentile(c.e2e_ms, 50))}"
    rows_spec = [
        (f"submit p50 ({SUBMITS:,} sequential)", "submit", lambda r: cell_ms(r.submit_ms, 50), p50_target),
        ("submit p99", "submit", lambda r: cell_ms(r.submit_ms, 99), submit_target),
        (f"submit p50 / p99 with every worker paused ({PAUSED_SUBMITS:,} sequential; the broker and the gateway alone)",
         "paused", lambda r: f"{cell_ms(r.paused_submit_ms, 50)} / {cell_ms(r.paused_submit_ms, 99)}", paused_target),
        (f"one producer: {SUBMIT_WARMUP + SUBMITS:,} submits, then every result fetched (tasks/s)", "submit",
         lambda r: f"{r.sequential_throughput:,.0f}",
         ratio_target(n, c, "submit", lambda r: r.sequential_throughput, TARGET_SEQUENTIAL_SPEEDUP)),
        ("one producer: fetching a result (p50)", "submit", lambda r: cell_ms(r.fetch_ms, 50), ""),
        ("one producer: the client's round trip to `GET /healthz` (p50; two per task)", "submit",
         lambda r: f"{r.floor_us:,.0f} µs" if r.floor_us else "–", floor_note(n, c)),
        (f"{TASKS:,} tasks from {THREADS} threads: all submitted after", "throughput",
         lambda r: f"{r.tp_submit_s:.2f} s", ""),
        (f"{TASKS:,} tasks: all terminal after", "throughput", lambda r: f"{r.tp_total_s:.2f} s", ""),
        (f"{THREADS} producers: throughput (tasks/s, to all terminal)", "throughput",
         lambda r: f"{r.throughput:,.0f}", ratio_target(n, c, "throughput", lambda r: r.throughput, TARGET_SPEEDUP)),
        (f"{THREADS} producers: CPU per task, µs", "throughput", cpu_cell, ceiling_note(n, c)),
        (f"end-to-end p50 (submit + wait, {E2E} sequential)", "e2e", lambda r: cell_ms(r.e2e_ms, 50), e2e_target),
        ("end-to-end p99", "e2e", lambda r: cell_ms(r.e2e_ms, 99), ""),
        ("errors: submit / failed / unfinished / end-to-end", "", errors_cell, ""),
    ]
    out = [f"| measure | {n.label} | {c.label} | target |", "|---|---:|---:|---|"]
    first = True  # a side without numbers shows why in the first row only
    for name, phase, fn, target in rows_spec:
        cells = []
        for r in (n, c):
            if r.error:
                cells.append(r.error if first else "")
            elif (phase and phase not in r.done) or not r.done:
                cells.append("–")
            else:
                cells.append(fn(r))
        first = False
        out.append(f"| {name} | {cells[0]} | {cells[1]} | {target} |")
    return out


def errors_cell(r: Result) -> str:
    text = f"{r.submit_errors + r.tp_errors} / {r.tp_failed} / {r.tp_unfinished} / {r.e2e_errors}"
    return f"**{text}**" if (r.submit_errors + r.tp_errors + r.tp_failed + r.tp_unfinished + r.e2e_errors) else text


def main() -> int:
    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    only = {s.strip() for s in os.environ.get("BENCH_ASYNC_ONLY", "").split(",") if s.strip()}
    if only - {"neutrino", "celery"}:
        print(f"bench: unknown BENCH_ASYNC_ONLY sides {sorted(only - {'neutrino', 'celery'})}; "
              "known: neutrino, celery", file=sys.stderr)
        return 2
    ctx = common.Ctx(state=Path(tempfile.mkdtemp(prefix="neutrino-bench-async-")))
    log(f"async: state and logs in {ctx.state}")
    head = header(os.getloadavg()[0])
    n = Result("neutrino", NeutrinoSide.label)
    c = Result("celery", CelerySide.label)
    interrupted = False
    try:
        for res, side_cls in ((n, NeutrinoSide), (c, CelerySide)):
            if only and res.key not in only:
                res.error = "not run (BENCH_ASYNC_ONLY)"
                continue
            measure(side_cls(ctx.state), res, ctx)
    except (KeyboardInterrupt, SystemExit):
        interrupted = True
        log("interrupted; stopping servers")
        for res in (n, c):
            if not res.error and not res.done:
                res.error = "interrupted"
    finally:
        Proc.stop_all()

    print()
    print("## Async tasks: queued echo(x, label), Neutrino (NATS JetStream) vs Celery 5 (Redis)"
          + (" (INTERRUPTED, partial)" if interrupted else ""))
    print()
    print("\n".join(head))
    print()
    print("\n".join(table(n, c)))
    print()
    for r in (n, c):
        for note in r.notes:
            print(f"- note: {r.label}: {note}")
    for note in ctx.notes:
        print(f"- note: {note}")
    if ctx.failed or ctx.keep or os.environ.get("BENCH_KEEP"):
        print(f"- logs: {ctx.state}")
    else:
        shutil.rmtree(ctx.state, ignore_errors=True)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Neutrino benchmark orchestration (stdlib only; bench/run.sh installs and builds, then runs this).

For each target — Neutrino gateway + 2 HTTP workers, one Neutrino worker direct, uvicorn+Starlette
with 1 and 2 worker processes, Ray Serve — it starts the server(s) on free 127.0.0.1 ports, waits
(bounded) until `POST /api/echo` answers, runs wrk at each concurrency (warm-up, then the measured
run), stops the server(s), and moves on, so only one server runs at a time. Prints a Markdown
table. Nothing here asserts on timings.

Environment:
  BENCH_SECONDS=10         measured seconds per (target, concurrency)
  BENCH_WARMUP=2           warm-up seconds before each measured run (0: none)
  BENCH_CONCURRENCY=1,32   connection counts (wrk threads: 1 for c=1, else 2)
  BENCH_ONLY=...           comma list of targets to run, from:
                           neutrino, neutrino-auth, neutrino-direct, uvicorn-1, uvicorn-2, nginx-uvicorn-2, ray
                           (nginx-uvicorn-2: uvicorn-2 behind nginx, the reference for a proxy hop's cost)
                           (neutrino-auth: the gateway with --api-keys, every request with a bearer key)
  BENCH_START_TIMEOUT=60   seconds to wait for a server to come up (Ray: max(this, 180))
  BENCH_WORKER_PATH=/api/echo   path of the echo task on a worker called directly
  BENCH_SLEEP=1            also run sleep_ms(10) (an I/O-bound call) at c=32 on the rows that have it (0: skip)
  BENCH_BURST=1024         also run echo at this many connections on neutrino, uvicorn-2 and nginx-uvicorn-2: a burst
                           far above the workers' connections, where what counts is what is refused (0: skip)
  BENCH_RAY_REPLICAS=2     Ray Serve replicas
  BENCH_PAIRS=3            alternating pairs for the paired ratios (Neutrino and uvicorn-2 both up, runs taking
                           turns, so a host whose speed drifts weighs on both sides alike; 0: skip)
  BENCH_PAIR_SECONDS=5     measured seconds per run of a pair (after 1 s of warm-up)
  BENCH_KEEP=1             keep the state/log directory (it is kept anyway when a server failed)
  BENCH_SKIP_NEUTRINO=reason    skip the Neutrino rows (run.sh sets it when swift build fails)
  BENCH_NEUTRINO_BIN_DIR=.build/release   where neutrino-gateway and neutrino-worker are
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = BENCH / ".venv"
RAY_VENV = BENCH / ".venv-ray"
RAY_FAILED = RAY_VENV / "bench-install-failed"  # written by run.sh with the reason
LUA = BENCH / "post.lua"
BIN_DIR = Path(os.environ.get("BENCH_NEUTRINO_BIN_DIR", REPO / ".build" / "release"))
WORKER_BIN = BIN_DIR / "neutrino-worker"
GATEWAY_BIN = BIN_DIR / "neutrino-gateway"

BODY = os.environ.get("BENCH_BODY", '{"args":{"x":42,"label":"bench"}}')
SLEEP_BODY = '{"args":{"ms":10}}'
SLEEP = os.environ.get("BENCH_SLEEP", "1") != "0"
BURST = int(os.environ.get("BENCH_BURST", "1024"))
#: The rows that also take the burst: the headline pair and the proxy yardstick.
BURST_TARGETS = ("neutrino", "uvicorn-2", "nginx-uvicorn-2")
BENCH_APP = "bench/bench_app.py"
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "2"))
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,32").split(",") if c.strip()]
PAIRS = int(os.environ.get("BENCH_PAIRS", "3"))
PAIR_SECONDS = int(os.environ.get("BENCH_PAIR_SECONDS", "5"))
START_TIMEOUT = float(os.environ.get("BENCH_START_TIMEOUT", "60"))
WORKER_PATH = os.environ.get("BENCH_WORKER_PATH", "/api/echo")
RAY_REPLICAS = int(os.environ.get("BENCH_RAY_REPLICAS", "2"))
LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """All live descendants of pid (from /proc), so that children that left the process
    group (Ray's actors do) are still stopped."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class Proc:
    """A server process in its own session (so the terminal's Ctrl-C goes to us, not it),
    stdout+stderr to a log file."""

    live: list["Proc"] = []

    def __init__(self, name: str, argv: list[str], log_path: Path, env: Optional[dict] = None):
        self.name, self.argv, self.log_path = name, argv, log_path
        log(f"start {name}: {' '.join(argv)}")
        self._log = open(log_path, "wb")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  cwd=REPO, env=env)
        Proc.live.append(self)

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + l for l in lines[-n:])

    def wait_listening(self, timeout: float) -> int:
        """Port from the `listening on http://127.0.0.1:PORT` line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = LISTENING.search(self.log_path.read_bytes())
            if m:
                return int(m.group(1))
            if self.p.poll() is not None:
                raise StartError(f"{self.name} exited with status {self.p.returncode} before "
                                 f"printing 'listening on'")
            time.sleep(0.05)
        raise StartError(f"{self.name} printed no 'listening on http://127.0.0.1:PORT' line "
                         f"within {timeout:.0f} s (still running: is stdout flushed after it?)")

    def stop(self, grace: float = 10.0) -> None:
        if self not in Proc.live:
            return
        Proc.live.remove(self)
        kids = descendants(self.p.pid)
        pgid = self.p.pid  # start_new_session: the process leads its own group
        if self.p.poll() is None:
            try:
                os.kill(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM for {grace:.0f} s; killing it")
        # Whatever is left, in its group or among the children seen before: SIGKILL.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()

    @classmethod
    def stop_all(cls) -> None:
        for p in reversed(list(cls.live)):
            p.stop(grace=5.0)


class StartError(Exception):
    pass


class Skip(Exception):
    pass


#: The API key the current target's requests carry (`Authorization: Bearer`; post.lua reads BENCH_AUTH), or "";
#: and a read-only key for the benchmark's own `GET /tasks` on that target.
AUTH = {"key": "", "reader": ""}


def post(url: str, body: str = BODY, timeout: float = 5.0) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if AUTH["key"]:
        headers["Authorization"] = f"Bearer {AUTH['key']}"
    req = urllib.request.Request(url, data=body.encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


#: Targets whose gateway writes the task log on a thread of its own, after the answers.
GATEWAY_TARGETS = ("neutrino", "neutrino-auth")


def task_log_caught_up(url: str, timeout: float = 60.0) -> None:
    """Returns once the gateway behind `url` has committed every task-log event recorded so far: `GET /tasks` waits
    for its writer first. Called after a load and before its CPU is read, so the CPU per call includes the writes the
    load caused even when the writer fell behind (a writer that defers its work must not look cheaper)."""
    headers = {"Authorization": f"Bearer {AUTH['reader']}"} if AUTH["reader"] else {}
    base = url.split("/api/", 1)[0]
    req = urllib.request.Request(f"{base}/tasks?limit=1", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"GET /tasks answered {e.code}: the task log's catch-up could not be waited for") from e
    except OSError as e:  # URLError and timeouts
        raise RuntimeError(f"GET /tasks failed ({e}): the task log's catch-up could not be waited for") from e


def wait_answering(url: str, timeout: float, procs: list[Proc]) -> str:
    """Bounded wait until POST url gives any HTTP answer; returns a note if it is not a 2xx
    with the echoed x (the run still goes ahead, its errors show in the table)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        for p in procs:
            if p.p.poll() is not None:
                raise StartError(f"{p.name} exited with status {p.p.returncode}")
        try:
            status, data = post(url, timeout=2.0)
        except (OSError, urllib.error.URLError) as e:
            last = f"{type(e).__name__}: {e}"
            time.sleep(0.1)
            continue
        text = data[:200].decode(errors="replace")
        if not 200 <= status < 300:
            if status in (502, 503, 504):  # a gateway/proxy whose backends are not ready yet
                last = f"HTTP {status}: {text}"
                time.sleep(0.2)
                continue
            return f"sanity check: HTTP {status} {text}"
        try:
            doc = json.loads(data)
        except ValueError:
            return f"sanity check: 2xx but not JSON: {text}"
        if '"x": 42' not in json.dumps(doc) and '"x":42' not in text:
            return f"sanity check: 2xx but no x=42 in {text}"
        log(f"  {url} -> {status} {text}")
        return ""
    raise StartError(f"{url} did not answer within {timeout:.0f} s (last: {last})")


# --------------------------------------------------------------------------- wrk

@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    sock: dict  # connect/read/write/timeout

    @property
    def sock_total(self) -> int:
        return sum(self.sock.values())


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    """From post.lua's BENCH_RESULT line if present (exact microseconds), else from wrk's
    own --latency text."""
    m = re.search(r"^BENCH_RESULT (.*)$", out, re.M)
    if m:
        kv = dict(tok.split("=", 1) for tok in m.group(1).split())
        n, dur = int(kv["requests"]), int(kv["duration_us"])
        return WrkResult(
            rps=n / (dur / 1e6) if dur else 0.0,
            p50_ms=int(kv["p50_us"]) / 1e3, p99_ms=int(kv["p99_us"]) / 1e3, requests=n,
            non2xx=int(kv["status_errors"]),
            sock={k: int(kv[k]) for k in ("connect", "read", "write", "timeout")})
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    n = int(re.search(r"^\s+(\d+) requests in", out, re.M).group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    non2xx = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    sock = dict(zip(("connect", "read", "write", "timeout"),
                    map(int, m.groups()))) if m else dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    return WrkResult(rps, p50, p99, n, non2xx, sock)


def wrk(url: str, conns: int, seconds: int, log_path: Path, body: str = BODY) -> WrkResult:
    threads = 1 if conns == 1 else 2
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency",
            "--timeout", "5s", "-s", str(LUA), url]
    env = dict(os.environ, BENCH_BODY=body, BENCH_AUTH=AUTH["key"])
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 60)
    with open(log_path, "a") as f:
        f.write(f"$ {' '.join(argv)}\n{r.stdout}{r.stderr}\n")
    if r.returncode != 0:
        raise RuntimeError(f"wrk exited {r.returncode}: {r.stderr.strip()[-300:]}")
    return parse_wrk(r.stdout)


# --------------------------------------------------------------------------- CPU and memory

_TICK = os.sysconf("SC_CLK_TCK")


def _group_stats(procs: list[Proc]) -> list[tuple[Proc, list[list[str]]]]:
    """/proc/<pid>/stat fields of every process in each server's process group (uvicorn's workers too), the pid
    first."""
    groups = {p.p.pid: (p, []) for p in procs}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()  # from field 3 (state) on
        pgrp = int(fields[2])
        if pgrp in groups:
            groups[pgrp][1].append([entry, *fields])
    return list(groups.values())


def cpu_seconds_each(procs: list[Proc]) -> list[tuple[Proc, float]]:
    """User + system CPU so far of each server (its process group), from one walk of /proc."""
    return [(p, sum((int(f[12]) + int(f[13])) / _TICK for f in stats)) for p, stats in _group_stats(procs)]


def cpu_seconds(procs: list[Proc]) -> float:
    """User + system CPU of the servers' processes so far."""
    return sum(seconds for _, seconds in cpu_seconds_each(procs))


def rss_mb(procs: list[Proc]) -> list[tuple[Proc, float]]:
    """Resident memory of each server (its process group), in MB."""
    page = os.sysconf("SC_PAGE_SIZE")
    return [(p, sum(int(f[22]) * page for f in stats) / 1e6) for p, stats in _group_stats(procs)]


def rss_split_mb(pid: int) -> tuple[float, float, float]:
    """(resident, anonymous, file-backed) memory of one process in MB, from /proc/<pid>/status. File-backed pages
    are the executable's and the libraries' code and data mapped in, much of it shared with other processes."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[name] = int(value.split()[0]) * 1024 / 1e6  # kB (KiB) -> MB, as rss_mb
    file_backed = fields.get("RssFile", 0.0) + fields.get("RssShmem", 0.0)
    return fields.get("VmRSS", 0.0), fields.get("RssAnon", 0.0), file_backed


def rss_split_by_server(procs: list[Proc]) -> list[tuple[Proc, float, float, float]]:
    """rss_split_mb summed over each server's process group (uvicorn's worker processes too)."""
    out = []
    for p, stats in _group_stats(procs):
        totals = [0.0, 0.0, 0.0]
        for f in stats:
            try:
                for i, v in enumerate(rss_split_mb(int(f[0]))):
                    totals[i] += v
            except OSError:  # the process ended in between
                pass
        out.append((p, *totals))
    return out


def interpreter_baseline_mb() -> Optional[float]:
    """Resident memory of a bare CPython process (the interpreter a worker embeds) that has imported the bench app and
    the SDK, as the worker's interpreter has: what "a worker < 40 MB plus its interpreter" subtracts."""
    code = ("import sys, runpy; sys.path[:0] = [sys.argv[1], sys.argv[2]]; runpy.run_path(sys.argv[3]); "
            "sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.readline()")
    p = subprocess.Popen([sys.executable, "-c", code, str(REPO / "python"), str(Path(BENCH_APP).parent), BENCH_APP],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        if p.stdout.readline().strip() != b"ready":
            return None
        return rss_split_mb(p.pid)[0]
    except OSError:
        return None
    finally:
        p.kill()
        p.wait(10)


# --------------------------------------------------------------------------- targets

@dataclass
class Row:
    target: str
    conns: Optional[int] = None
    result: Optional[WrkResult] = None
    error: str = ""
    workload: str = "echo"
    cpu_ms: Optional[float] = None  # CPU per call across the target's processes (user + system)
    rss_mb: Optional[str] = None  # resident memory after the run, per process


@dataclass
class Target:
    key: str
    label: str
    start: Callable[["Ctx"], tuple[str, list[Proc], str]]  # -> (url, procs, note)
    start_timeout: float = START_TIMEOUT
    sleep: bool = True  # has POST /api/sleep_ms
    call: str = "echo"  # what its URL runs, for the table


@dataclass
class Ctx:
    state: Path
    notes: list = field(default_factory=list)
    failed: bool = False
    keep: bool = False  # keep the logs (a server logged problems)
    neutrino_ready: Optional[str] = None  # None: not checked yet; "": ok; else skip reason
    manifest: Optional[Path] = None
    # target key -> [(process name, resident MB, anonymous MB, file-backed MB)] once started, before any load
    idle_memory: dict = field(default_factory=dict)
    # target key -> {process name: resident MB} after its last run
    loaded_memory: dict = field(default_factory=dict)


def neutrino_check(ctx: Ctx) -> None:
    if ctx.neutrino_ready is not None:
        if ctx.neutrino_ready:
            raise Skip(ctx.neutrino_ready)
        return
    reason = ""
    if os.environ.get("BENCH_SKIP_NEUTRINO"):
        reason = os.environ["BENCH_SKIP_NEUTRINO"]
    elif not WORKER_BIN.exists() or not GATEWAY_BIN.exists():
        reason = f"binaries not built ({BIN_DIR}/neutrino-{{gateway,worker}} missing)"
    else:
        try:
            h = subprocess.run([str(WORKER_BIN), "--help"], capture_output=True, text=True,
                               timeout=30)
            if "--mode" not in h.stdout + h.stderr:
                reason = "neutrino-worker --help shows no --mode (HTTP worker not built yet)"
        except (OSError, subprocess.TimeoutExpired) as e:
            reason = f"neutrino-worker --help failed: {e}"
    if not reason:
        manifest = ctx.state / "openapi.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "python"),
                                                          env.get("PYTHONPATH")]))
        r = subprocess.run([sys.executable, "-m", "neutrino.cli", "openapi", BENCH_APP,
                            "-o", str(manifest)], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0 or not manifest.exists():
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
            reason = f"`neutrino.cli openapi` failed: {tail[0][:200]}"
        ctx.manifest = manifest
    ctx.neutrino_ready = reason
    if reason:
        raise Skip(reason)


def start_worker(ctx: Ctx, name: str, db: Path) -> Proc:
    # As `neutrino up` starts a fast worker: its default threads (--fast-concurrency 16) and log level.
    argv = [str(WORKER_BIN), "--mode", "http", "--pool", "fast",
                       "--app", BENCH_APP, "--port", "0", "--concurrency", "16",
                       "--task-log", f"sqlite:{db}",
                       "--python-path", str(REPO / "python")]
    return Proc(name, argv, ctx.state / f"{name}.log")


def start_neutrino_auth(ctx: Ctx):
    """The same as start_neutrino, with --api-keys: every request is authenticated (a SHA-256 of the key, a
    constant-time compare, the scope check, the per-key counters) and its task tagged with the key id."""
    neutrino_check(ctx)
    keys = ctx.state / "api-keys.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "python"), env.get("PYTHONPATH")]))
    created = {}
    # The load's key may only submit; the benchmark's own reads (the task log's catch-up) use a second, read-only key.
    for name, scope in (("bench", "submit"), ("bench-reader", "read")):
        r = subprocess.run([sys.executable, "-m", "neutrino.cli", "keys", "create", "--name", name, "--scopes",
                            scope, "--file", str(keys)], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            raise Skip(f"`neutrino keys create` failed: {(r.stderr or r.stdout).strip()[-200:]}")
        created[name] = r.stdout.strip()
    AUTH["key"], AUTH["reader"] = created["bench"], created["bench-reader"]
    return start_neutrino(ctx, extra=["--api-keys", str(keys)], db_name="tasks-auth.db")


def start_neutrino(ctx: Ctx, extra: Optional[list[str]] = None, db_name: str = "tasks-gateway.db"):
    neutrino_check(ctx)
    db = ctx.state / db_name  # one task log for the gateway and its workers
    workers = [start_worker(ctx, f"neutrino-worker-{i}", db) for i in (1, 2)]
    ports = [w.wait_listening(START_TIMEOUT) for w in workers]
    pool = ",".join(f"http://127.0.0.1:{p}" for p in ports)
    argv = [str(GATEWAY_BIN), "--manifest", str(ctx.manifest),
                       "--http-pool", f"fast={pool}",
                       "--task-log", f"sqlite:{db}", "--port", "0", *(extra or [])]
    gw = Proc("neutrino-gateway", argv, ctx.state / "neutrino-gateway.log")
    port = gw.wait_listening(START_TIMEOUT)
    return f"http://127.0.0.1:{port}/api/echo", workers + [gw]


def start_neutrino_direct(ctx: Ctx):
    neutrino_check(ctx)
    w = start_worker(ctx, "neutrino-worker-direct", ctx.state / "tasks-direct.db")
    port = w.wait_listening(START_TIMEOUT)
    return f"http://127.0.0.1:{port}{WORKER_PATH}", [w]


def start_uvicorn(workers: int):
    def start(ctx: Ctx):
        py = VENV / "bin" / "python"
        if not py.exists():
            raise Skip("bench/.venv missing (run bench/run.sh)")
        port = free_port()
        argv = [str(py), "-m", "uvicorn", "starlette_app:app", "--app-dir", str(BENCH),
                "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                "--no-access-log", "--log-level", "warning"]
        p = Proc(f"uvicorn-{workers}", argv, ctx.state / f"uvicorn-{workers}.log")
        return f"http://127.0.0.1:{port}/api/echo", [p]
    return start


def start_nginx_uvicorn(ctx: Ctx):
    """uvicorn+Starlette with 2 processes behind nginx (one worker process per core, keep-alive connections to the
    upstream): the cheapest reverse-proxy hop there is on this machine, the reference for the gateway's own hop."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        raise Skip("not installed: nginx (apt-get install nginx-light; bench/run.sh does)")
    url, procs = start_uvicorn(2)(ctx)
    upstream = url.split("//", 1)[1].split("/", 1)[0]
    port = free_port()
    conf = ctx.state / "nginx.conf"
    conf.write_text(f"""worker_processes auto;
daemon off;
pid {ctx.state}/nginx.pid;
error_log {ctx.state}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {ctx.state}/nginx-body;
  proxy_temp_path {ctx.state}/nginx-proxy;
  upstream app {{ server {upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
    proxy = Proc("nginx", [nginx, "-c", str(conf), "-e", str(ctx.state / "nginx-error.log")], ctx.state / "nginx.log")
    return f"http://127.0.0.1:{port}/api/echo", [*procs, proxy]


def start_ray(ctx: Ctx):
    py = RAY_VENV / "bin" / "python"
    if RAY_FAILED.exists():
        raise Skip("not installed (" + RAY_FAILED.read_text(errors="replace").strip()[:200] + ")")
    if not py.exists():
        raise Skip("not installed (bench/.venv-ray missing; run bench/run.sh)")
    r = subprocess.run([str(py), "-c", "import ray.serve"], capture_output=True, text=True)
    if r.returncode != 0:
        raise Skip("not installed (import ray.serve failed: "
                   + (r.stderr.strip().splitlines() or [""])[-1][:200] + ")")
    port = free_port()
    argv = [str(py), str(BENCH / "ray_app.py"), "--port", str(port),
            "--replicas", str(RAY_REPLICAS), "--temp-dir", str(ctx.state / "ray")]
    p = Proc("ray-serve", argv, ctx.state / "ray-serve.log",
             env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    p.wait_listening(max(START_TIMEOUT, 180))
    return f"http://127.0.0.1:{port}/api/echo", [p]


# The targets whose memory is read once they are up and idle, before any load.
MEMORY_TARGETS = ("neutrino", "uvicorn-2")
IDLE_SETTLE_S = 2.0

TARGETS = [
    Target("neutrino", "neutrino: gateway + 2 workers", start_neutrino),
    Target("neutrino-auth", "neutrino: gateway + 2 workers, API key", start_neutrino_auth, sleep=False),
    Target("neutrino-direct", "neutrino: 1 worker direct", start_neutrino_direct),
    Target("uvicorn-1", "uvicorn+starlette, 1 process", start_uvicorn(1)),
    Target("uvicorn-2", "uvicorn+starlette, 2 processes", start_uvicorn(2)),
    Target("nginx-uvicorn-2", "nginx → uvicorn+starlette, 2 processes", start_nginx_uvicorn),
    Target("ray", f"ray serve, {RAY_REPLICAS} replicas", start_ray, max(START_TIMEOUT, 180), sleep=False),
]


def run_target(t: Target, ctx: Ctx, rows: list[Row]) -> None:
    """Appends its rows as they are measured, so an interrupt keeps what was done."""
    log(f"=== {t.label}")
    AUTH["key"] = AUTH["reader"] = ""
    procs: list[Proc] = []
    try:
        try:
            url, procs = t.start(ctx)
            procs = list(procs)
            note = wait_answering(url, t.start_timeout, procs)
        except Skip as e:
            log(f"skip {t.label}: {e}")
            msg = str(e) if str(e).startswith("not installed") else f"skipped: {e}"
            rows.append(Row(t.label, error=msg))
            return
        except StartError as e:
            ctx.failed = True
            procs = procs or [p for p in Proc.live]
            tails = "\n".join(f"  {p.name} ({p.log_path}):\n{p.log_tail()}" for p in procs)
            log(f"FAILED {t.label}: {e}\n{tails}")
            rows.append(Row(t.label, error=f"failed to start: {e}"))
            return
        if note:
            ctx.notes.append(f"{t.label}: {note}")
            log(note)
        if t.key in MEMORY_TARGETS:
            time.sleep(IDLE_SETTLE_S)  # the start-up's one-off work done, as an idle server sits
            ctx.idle_memory[t.key] = [(p.name, rss, anon, file) for p, rss, anon, file in rss_split_by_server(procs)]
        runs = [(t.call, url, BODY, c) for c in CONCURRENCY]
        if SLEEP and t.sleep:
            runs.append(("sleep_ms(10)", url.rsplit("/", 1)[0] + "/sleep_ms", SLEEP_BODY, 32))
        if BURST > 0 and t.key in BURST_TARGETS and BURST not in CONCURRENCY:
            runs.append((t.call, url, BODY, BURST))
        for workload, run_url, body, c in runs:
            wlog = ctx.state / f"wrk-{t.key}.log"
            try:
                if WARMUP > 0:
                    wrk(run_url, c, WARMUP, wlog, body)
                before = cpu_seconds(procs)
                res = wrk(run_url, c, SECONDS, wlog, body)
                if t.key in GATEWAY_TARGETS:
                    task_log_caught_up(run_url)
                used = cpu_seconds(procs) - before
                calls = res.requests
                cpu_ms = used / calls * 1000 if calls and used > 0 else None
                resident = rss_mb(procs)
                rss = ", ".join(f"{p.name.replace('neutrino-', '')} {m:.0f}" for p, m in resident)
                log(f"  {workload} c={c}: {res.rps:.0f} req/s, p50 {res.p50_ms:.3f} ms, "
                    f"p99 {res.p99_ms:.3f} ms, non-2xx {res.non2xx}, socket errors {res.sock_total}, "
                    f"cpu/call {cpu_ms if cpu_ms is None else round(cpu_ms, 3)} ms, RSS MB {rss}")
                rows.append(Row(t.label, c, res, workload=workload, cpu_ms=cpu_ms, rss_mb=rss))
                if c != BURST:  # the memory targets are for the c=32 load; the burst row shows its own RSS
                    ctx.loaded_memory[t.key] = {p.name: m for p, m in resident}
            except (RuntimeError, ValueError, AttributeError, subprocess.TimeoutExpired) as e:
                ctx.failed = True
                log(f"  {workload} c={c}: wrk failed: {e}")
                rows.append(Row(t.label, c, error=f"wrk failed: {e}", workload=workload))
            for p in procs:
                if p.p.poll() is not None:
                    ctx.failed = True
                    ctx.notes.append(f"{t.label}: {p.name} exited ({p.p.returncode}) during the run")
    finally:
        # procs started before a failure in t.start are in Proc.live too
        started = list(procs) or list(Proc.live)
        for p in reversed(list(Proc.live)):
            p.stop()
        for p in started:
            scan_log(p, t.label, ctx)


SWIFT_LOG_PROBLEM = re.compile(r"^\S+ (warning|error|critical) ", re.M)


def scan_log(p: Proc, label: str, ctx: Ctx) -> None:
    """Problems a server logged but its HTTP answers don't show (e.g. a task log that can't be
    written) become notes under the table. Matches swift-log's `TIME LEVEL label: ...` lines."""
    try:
        text = p.log_path.read_text(errors="replace")
    except OSError:
        return
    hits = [m.start() for m in SWIFT_LOG_PROBLEM.finditer(text)]
    if hits:
        ctx.keep = True
        levels = Counter(m.group(1) for m in SWIFT_LOG_PROBLEM.finditer(text))
        first = text[hits[0]:].split("\n", 1)[0][:220]
        last = text[hits[-1]:].split("\n", 1)[0][:220]
        counts = ", ".join(f"{n} {lvl}" for lvl, n in levels.most_common())
        ctx.notes.append(f"{label}: {p.name} logged {counts} lines (see {p.log_path.name}); "
                         f"first: `{first}`" + (f"; last: `{last}`" if len(hits) > 1 else ""))


# --------------------------------------------------------------------------- report

def fmt_ms(v: float) -> str:
    return f"{v:.2f} ms" if v >= 1 else f"{v * 1000:.0f} µs"


def version_of(py: Path, mods: list[str]) -> str:
    if not py.exists():
        return ""
    code = ("import importlib.metadata as m\n"
            f"for n in {mods!r}:\n"
            "    try: print(f'{n} {m.version(n)}')\n"
            "    except Exception: pass\n")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    return ", ".join(r.stdout.split("\n")).strip(", ")


def header() -> list[str]:
    def out(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10,
                                  cwd=REPO).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    wrk_v = ""
    try:
        r = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        wrk_v = (r.stdout + r.stderr).splitlines()[0].split(" [")[0]
    except (OSError, IndexError):
        pass
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = out(["git", "rev-parse", "--short", "HEAD"]) or "no commit"
    if out(["git", "status", "--porcelain"]):
        commit += " (+ uncommitted changes)"
    return [
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- machine: nproc {os.cpu_count()} ({out(['nproc'])} usable), {cpu}, "
        f"{platform.system()} {platform.release()}, load avg {os.getloadavg()[0]:.2f} at start",
        f"- repo: {commit}",
        f"- load: {wrk_v}, POST {BODY}, {SECONDS} s per run after {WARMUP} s warm-up; "
        f"c=1 with -t1, otherwise -t2",
        f"- python stack: {version_of(VENV / 'bin' / 'python', ['starlette', 'uvicorn', 'uvloop', 'httptools'])}"
        + (f"; {version_of(RAY_VENV / 'bin' / 'python', ['ray'])}" if (RAY_VENV / 'bin' / 'python').exists() else ""),
    ]


def table(rows: list[Row]) -> list[str]:
    out = ["| target | call | conns | req/s | p50 | p99 | CPU per call | RSS (MB) after | non-2xx | socket errors |",
           "|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        if r.result is None:
            c = str(r.conns) if r.conns else "–"
            out.append(f"| {r.target} | {r.workload} | {c} | {r.error} | | | | | | |")
            continue
        x = r.result
        sock = str(x.sock_total)
        if x.sock_total:
            sock += " (" + ", ".join(f"{k} {v}" for k, v in x.sock.items() if v) + ")"
        non2xx = f"**{x.non2xx}**" if x.non2xx else "0"
        if x.sock_total:
            sock = f"**{sock}**"
        cpu = fmt_ms(r.cpu_ms) if r.cpu_ms is not None else "n/a"
        out.append(f"| {r.target} | {r.workload} | {r.conns} | {x.rps:,.0f} | {fmt_ms(x.p50_ms)} | "
                   f"{fmt_ms(x.p99_ms)} | {cpu} | {r.rss_mb or ''} | {non2xx} | {sock} |")
    return out


def measured_row(rows: list[Row], key: str, workload: str = "echo", conns: int = 32) -> Optional[Row]:
    """The measured row of target `key` (TARGETS) for that workload and connection count, if it ran."""
    label = next(t.label for t in TARGETS if t.key == key)
    return next((r for r in rows if r.target == label and r.workload == workload and r.conns == conns
                 and r.result is not None), None)


def ratios(rows: list[Row]) -> list[str]:
    """Neutrino (gateway + 2 workers) against uvicorn + Starlette with 2 processes, per workload at c=32."""
    out = []
    for workload in ("echo", "sleep_ms(10)"):
        n, u = measured_row(rows, "neutrino", workload), measured_row(rows, "uvicorn-2", workload)
        if n is None or u is None or not u.result.rps:
            continue
        line = (f"- {workload} c=32, Neutrino ÷ uvicorn-2: req/s {n.result.rps / u.result.rps:.2f}×, "
                f"p99 {fmt_ms(n.result.p99_ms)} vs {fmt_ms(u.result.p99_ms)}")
        if n.cpu_ms is not None and u.cpu_ms is not None:
            line += f", CPU per call {fmt_ms(n.cpu_ms)} vs {fmt_ms(u.cpu_ms)}"
        out.append(line)
    n, u = (measured_row(rows, key, "echo", BURST) for key in ("neutrino", "uvicorn-2"))
    if BURST > 0 and n is not None and u is not None and u.result.rps:
        out.append(f"- echo c={BURST} (a burst): Neutrino ÷ uvicorn-2: req/s {n.result.rps / u.result.rps:.2f}×; refused "
                   f"(non-2xx) {n.result.non2xx:,} vs {u.result.non2xx:,}, socket errors {n.result.sock_total:,} vs "
                   f"{u.result.sock_total:,}, p99 {fmt_ms(n.result.p99_ms)} vs {fmt_ms(u.result.p99_ms)}")
    return out


def memory_lines(ctx: Ctx) -> list[str]:
    """The issue's memory targets: the gateway idle (< 30 MB) and under the c=32 runs (< 100 MB), a worker's own share
    (its RSS less a bare CPython that imported the same app: < 40 MB), beside uvicorn's processes."""
    out = []
    for key, procs in ctx.idle_memory.items():
        label = next(t.label for t in TARGETS if t.key == key)
        loaded = ctx.loaded_memory.get(key, {})
        parts = []
        for name, rss, anon, file in procs:
            after = loaded.get(name)
            parts.append(f"{name.replace('neutrino-', '')} {rss:.1f} MB idle (anonymous {anon:.1f}, file-backed "
                         f"{file:.1f})" + (f", {after:.1f} MB after the runs" if after is not None else ""))
        out.append(f"- memory, {label}: " + "; ".join(parts))
    neutrino = {name: rss for name, rss, _, _ in ctx.idle_memory.get("neutrino", [])}
    if "neutrino-gateway" in neutrino:
        idle, loaded = neutrino["neutrino-gateway"], ctx.loaded_memory.get("neutrino", {}).get("neutrino-gateway")
        out.append(f"- gateway RSS idle {idle:.1f} MB: {'met' if idle < 30 else 'not met'} (< 30 MB)"
                   + (f"; after the c=32 runs {loaded:.1f} MB: {'met' if loaded < 100 else 'not met'} (< 100 MB)"
                      if loaded is not None else ""))
    workers = [rss for name, rss in neutrino.items() if name.startswith("neutrino-worker")]
    if workers:
        base = interpreter_baseline_mb()
        if base is not None:
            own = max(workers) - base
            out.append(f"- worker RSS idle {max(workers):.1f} MB, of which a bare CPython with the same app imported "
                       f"{base:.1f} MB: the worker's own {own:.1f} MB, {'met' if own < 40 else 'not met'} (< 40 MB)")
    return out


def paired_ratios(ctx: Ctx) -> list[str]:
    """The headline ratios again, from runs that take turns: Neutrino (gateway + 2 workers) and uvicorn + Starlette with
    2 processes are both up (idle between their turns), and each pair is a run of one right after a run of the other,
    echo and sleep_ms(10) at c=32. The rows above run one target after another over minutes; on a shared host whose
    speed drifts (this project's machines have drifted 1.8x within minutes) their ratio says as much about the host
    as about the servers. Each pair's ratio is taken, and their median reported with the range."""
    if PAIRS <= 0:
        return []
    procs: list[Proc] = []
    out: list[str] = []
    try:
        urls = {}
        for key, start in (("neutrino", start_neutrino), ("uvicorn-2", start_uvicorn(2))):
            url, started = start(ctx)
            procs += list(started)
            wait_answering(url, START_TIMEOUT, procs)
            urls[key] = url
        workloads = [("echo", "", BODY)] + ([("sleep_ms(10)", "/sleep_ms", SLEEP_BODY)] if SLEEP else [])
        for workload, path, body in workloads:
            rps: dict[str, list[float]] = {"neutrino": [], "uvicorn-2": []}
            cpu: dict[str, list[float]] = {"neutrino": [], "uvicorn-2": []}
            for i in range(PAIRS):
                # Alternate which side goes first, so neither always follows the other's load.
                order = ["neutrino", "uvicorn-2"] if i % 2 == 0 else ["uvicorn-2", "neutrino"]
                for key in order:
                    url = urls[key] if not path else urls[key].rsplit("/", 1)[0] + path
                    mine = [p for p in procs if p.name.startswith("neutrino") == (key == "neutrino")]
                    wlog = ctx.state / f"wrk-pairs-{key}.log"
                    wrk(url, 32, 1, wlog, body)
                    before = cpu_seconds(mine)
                    res = wrk(url, 32, PAIR_SECONDS, wlog, body)
                    if key in GATEWAY_TARGETS:
                        task_log_caught_up(url)
                    used = cpu_seconds(mine) - before
                    rps[key].append(res.rps)
                    if res.requests and used > 0:
                        cpu[key].append(used / res.requests * 1000)
                    log(f"  pair {i + 1} {key} {workload} c=32: {res.rps:.0f} req/s")
            ratios = sorted(n / u for n, u in zip(rps["neutrino"], rps["uvicorn-2"]) if u)
            if not ratios:
                continue
            line = (f"- paired ({PAIRS} alternating pairs of {PAIR_SECONDS} s): {workload} c=32, Neutrino ÷ uvicorn-2: "
                    f"req/s {statistics.median(ratios):.2f}× (pairs {ratios[0]:.2f}–{ratios[-1]:.2f}×; "
                    f"{statistics.median(rps['neutrino']):,.0f} vs {statistics.median(rps['uvicorn-2']):,.0f} req/s)")
            if cpu["neutrino"] and cpu["uvicorn-2"]:
                line += (f", CPU per call {fmt_ms(statistics.median(cpu['neutrino']))} vs "
                         f"{fmt_ms(statistics.median(cpu['uvicorn-2']))}")
            out.append(line)
    except (Skip, StartError, RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
        out.append(f"- paired ratios: not measured ({e})")
    return out  # the caller stops the servers (Proc.stop_all), also when interrupted


def gateway_hop(rows: list[Row]) -> str:
    def p50(label_prefix: str) -> Optional[float]:
        for r in rows:
            if r.target.startswith(label_prefix) and r.conns == 1 and r.result and r.workload == "echo":
                return r.result.p50_ms
        return None
    a, b = p50(TARGETS[0].label), p50(TARGETS[2].label)
    if 1 not in CONCURRENCY:
        return "gateway hop p50: n/a (no c=1 run)"
    if a is None or b is None:
        return "gateway hop p50: n/a (needs both Neutrino rows at c=1)"
    return (f"gateway hop p50 (c=1): {fmt_ms(a - b) if a >= b else '-' + fmt_ms(b - a)} "
            f"(gateway+2 workers {fmt_ms(a)} − worker direct {fmt_ms(b)})" + auth_cost(rows))


def proxy_hop(rows: list[Row]) -> str:
    """What a proxy hop costs in CPU per call at c=32 (echo): Neutrino's gateway (gateway + 2 workers − one worker
    direct) beside nginx's (nginx → uvicorn-2 − uvicorn-2), so the gateway's overhead is read against the cheapest
    hop there is on the same machine, not only against a server with no hop at all."""
    found = [measured_row(rows, key) for key in ("neutrino", "neutrino-direct", "nginx-uvicorn-2", "uvicorn-2")]
    if any(r is None or r.cpu_ms is None for r in found):
        return ""
    n, d, g, u = (r.cpu_ms for r in found)
    line = (f"- proxy hop, CPU per call at c=32 (echo): Neutrino's gateway {fmt_ms(n - d)} (gateway + 2 workers "
            f"{fmt_ms(n)} − worker direct {fmt_ms(d)}); nginx {fmt_ms(g - u)} (nginx → uvicorn-2 {fmt_ms(g)} − "
            f"uvicorn-2 {fmt_ms(u)})")
    if found[3].result.rps:
        line += f"; nginx → uvicorn-2 ÷ uvicorn-2: req/s {found[2].result.rps / found[3].result.rps:.2f}×"
    return line


def auth_cost(rows: list[Row]) -> str:
    """What authenticating each request adds at c=1 (p50 with an API key − p50 without), if both rows ran."""
    def p50(label: str) -> Optional[float]:
        return next((r.result.p50_ms for r in rows if r.target == label and r.conns == 1 and r.result), None)
    a, b = p50(TARGETS[1].label), p50(TARGETS[0].label)
    if a is None or b is None:
        return ""
    return f"; API key on: p50 {fmt_ms(a)} ({'+' if a >= b else '-'}{fmt_ms(abs(a - b))})"


# --------------------------------------------------------------------------- main

def main() -> int:
    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    if not shutil.which("wrk"):
        print("bench: wrk not found (apt-get install -y wrk, or run bench/run.sh)", file=sys.stderr)
        return 2
    only = {s.strip() for s in os.environ.get("BENCH_ONLY", "").split(",") if s.strip()}
    unknown = only - {t.key for t in TARGETS}
    if unknown:
        print(f"bench: unknown BENCH_ONLY targets {sorted(unknown)}; "
              f"known: {[t.key for t in TARGETS]}", file=sys.stderr)
        return 2
    ctx = Ctx(state=Path(tempfile.mkdtemp(prefix="neutrino-bench-")))
    log(f"state and logs in {ctx.state}")
    head = header()
    rows: list[Row] = []
    interrupted = False
    try:
        for t in TARGETS:
            if not only or t.key in only:
                run_target(t, ctx, rows)
    except (KeyboardInterrupt, SystemExit):
        interrupted = True
        rows.append(Row(t.label, error="interrupted"))
        log("interrupted; stopping servers")
    finally:
        Proc.stop_all()
    paired: list[str] = []
    if not interrupted and (not only or {"neutrino", "uvicorn-2"} <= only):
        log("=== paired ratios: neutrino and uvicorn-2 taking turns")
        try:
            paired = paired_ratios(ctx)
        except (KeyboardInterrupt, SystemExit):
            interrupted = True
            log("interrupted; stopping servers")
        finally:
            Proc.stop_all()

    print()
    print("## Neutrino benchmark: sync calls over HTTP, echo(x, label) and sleep_ms(10)"
          + (" (INTERRUPTED, partial)" if interrupted else ""))
    print()
    print("\n".join(head))
    print()
    print("\n".join(table(rows)))
    print()
    if not only or {"neutrino", "neutrino-direct"} <= only:
        print(gateway_hop(rows))
        print()
    for line in ratios(rows) + [proxy_hop(rows)] + paired + memory_lines(ctx):
        if line:
            print(line)
    for n in ctx.notes:
        print(f"- note: {n}")
    if ctx.failed or ctx.keep or os.environ.get("BENCH_KEEP"):
        print(f"- logs: {ctx.state}")
    else:
        shutil.rmtree(ctx.state, ignore_errors=True)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())

"""Fixtures for Neutrino's end-to-end tests: real gateway and worker processes, real HTTP, a real SQLite file.

Every process listens on 127.0.0.1 port 0; its URL is read from the `listening on http://HOST:PORT` line it
prints on stdout (bounded wait). Every process started here is stopped in fixture teardown: SIGTERM, then
SIGKILL after 10 s. Loops are bounded; nothing asserts on how fast something ran (the machines are shared).

Binaries come from $NEUTRINO_BIN_DIR (default `<repo>/.build/debug`); the suite is skipped, with a message,
when they are missing.

Task-log mode ($NEUTRINO_E2E_TASK_LOG, docs/architecture.md "The task log over NATS"):
- `sqlite` (default): workers write the gateway's SQLite file directly (`--task-log sqlite:PATH`).
- `nats`: every gateway the fixtures start gets a nats-server (one per cluster/stack) and `--nats URL
  --events-via-nats --gateway-id <unique id>`; every worker gets `--task-log nats --nats URL` and publishes its
  events on NEUTRINO_EVENTS, which the gateway commits into its own file. That file is still the complete task
  log (TaskLog reads it), but worker events reach it asynchronously. Tests inherently about the direct file are
  marked `@pytest.mark.sqlite_task_log_only("why")` and skipped in this mode.

NATS authentication (issue 12; $NEUTRINO_E2E_NATS_AUTH, default 1): every `NatsServer` runs with the users and
permissions `neutrino up` generates (`neutrino.natsauth`: `gateway`, `worker_<pool>` per pool, plus `e2e`, which
may do anything, for `NatsWire`). `Launcher.spawn` hands each gateway or worker whose `--nats` is such a server
its own credentials in the environment (the gateway's, or those of the worker's `--pool`), unless the test set
NEUTRINO_NATS_USER itself; so every test runs with authorisation on, at no extra cost. 0 turns it off.
"""
from __future__ import annotations

import base64
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional
from urllib.parse import urlsplit

import pytest

from neutrino.natsauth import NatsCredentials, authorization_block, inbox_prefix

# --------------------------------------------------------------------------------------------------- paths

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parents[1]
PYTHON_SDK = REPO_ROOT / "python"
EXAMPLE_APP = REPO_ROOT / "examples" / "app.py"
APPS_DIR = E2E_DIR / "apps"
EXTRA_APP = APPS_DIR / "extra_app.py"
VENV_APP = APPS_DIR / "venv_app.py"
CORO_APP = APPS_DIR / "coro_app.py"


def _bin_dir() -> Path:
    configured = os.environ.get("NEUTRINO_BIN_DIR")
    if not configured:
        return REPO_ROOT / ".build" / "debug"
    path = Path(configured)
    return path if path.is_absolute() else (REPO_ROOT / path)


BIN_DIR = _bin_dir()
GATEWAY_BIN = BIN_DIR / "neutrino-gateway"
WORKER_BIN = BIN_DIR / "neutrino-worker"

# The SDK (package `neutrino`) is imported by the tests themselves (Client, errors, manifest builder).
if str(PYTHON_SDK) not in sys.path:
    sys.path.insert(0, str(PYTHON_SDK))

# ------------------------------------------------------------------------------------------------ timeouts
# Generous: debug builds on a shared 2-core machine. None of these is an assertion on speed.
STARTUP_TIMEOUT_S = 180.0  # process start -> "listening on" line
STOP_GRACE_S = 10.0  # SIGTERM -> SIGKILL
HTTP_TIMEOUT_S = 120.0  # one HTTP request
SETTLE_TIMEOUT_S = 30.0  # batched task-log writes reaching the SQLite file
EXIT_TIMEOUT_S = 180.0  # a process expected to exit on its own
# Heartbeats of the JetStream stacks' workers, and how long their gateway keeps a silent worker: short, so the
# heartbeat tests wait seconds, not minutes; 4 missed heartbeats before a worker is forgotten.
HEARTBEAT_INTERVAL_S = 0.5
HEARTBEAT_TIMEOUT_S = 2.0

# ------------------------------------------------------------------------------------------ task-log mode

TASK_LOG_MODES = ("sqlite", "nats")
TASK_LOG_MODE = (os.environ.get("NEUTRINO_E2E_TASK_LOG") or "sqlite").strip().lower()
if TASK_LOG_MODE not in TASK_LOG_MODES:
    raise pytest.UsageError(f"NEUTRINO_E2E_TASK_LOG={TASK_LOG_MODE!r}: expected one of {', '.join(TASK_LOG_MODES)}")
NATS_TASK_LOG = TASK_LOG_MODE == "nats"

_GATEWAY_IDS = itertools.count(1)


def new_gateway_id(name: str) -> str:
    """A gateway id unique in this session (it names the durable `events_<id>` on NEUTRINO_EVENTS)."""
    token = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    return f"e2e-{token}-{os.getpid()}-{next(_GATEWAY_IDS)}"


def worker_task_log_args(db_path: Optional[Path], nats_url: Optional[str], task_log: str) -> list[str]:
    """A worker's task-log flags: `--task-log sqlite:PATH`, or `--task-log nats` (its `--nats URL` is added by the
    caller, which also wants it for heartbeats and the queue)."""
    if task_log == "nats":
        assert nats_url, "a --task-log nats worker needs a NATS URL"
        return ["--task-log", "nats"]
    assert db_path is not None, "a --task-log sqlite worker needs the SQLite file"
    return ["--task-log", f"sqlite:{db_path}"]


def gateway_events_args(nats_url: str, gateway_id: str) -> list[str]:
    """What makes a gateway record the workers' events from NATS into its own file."""
    return ["--nats", nats_url, "--events-via-nats", "--gateway-id", gateway_id]


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_task_log_only(reason): about the direct SQLite task log; skipped when "
                   "NEUTRINO_E2E_TASK_LOG=nats")


def pytest_report_header(config) -> str:
    return f"neutrino task log: {TASK_LOG_MODE} (NEUTRINO_E2E_TASK_LOG)"


def pytest_collection_modifyitems(config, items) -> None:
    if not NATS_TASK_LOG:
        return
    for item in items:
        marker = item.get_closest_marker("sqlite_task_log_only")
        if marker is not None:
            why = marker.args[0] if marker.args else marker.kwargs.get("reason", "about the direct SQLite task log")
            item.add_marker(pytest.mark.skip(reason=f"NEUTRINO_E2E_TASK_LOG=nats: {why}"))


TERMINAL_STATUSES = {"completed", "failed", "cancelled", "timed_out"}
ALL_STATUSES = {"pending", "queued", "running", "completed", "failed", "cancelled", "timed_out"}

LISTENING_RE = re.compile(r"listening on (http://[^\s/]+)")

_ALL_PROCESSES: list["ServerProcess"] = []  # for failure reports


# -------------------------------------------------------------------------------------------- skip guard

def _binaries_missing() -> list[str]:
    return [str(p) for p in (GATEWAY_BIN, WORKER_BIN) if not (p.is_file() and os.access(p, os.X_OK))]


@pytest.fixture(scope="session", autouse=True)
def _require_binaries() -> None:
    missing = _binaries_missing()
    if missing:
        pytest.skip(
            "Neutrino binaries not built: missing " + ", ".join(missing)
            + " (run `swift build`, or set NEUTRINO_BIN_DIR to the folder holding neutrino-gateway and neutrino-worker)"
        )


# ------------------------------------------------------------------------------------------------- helpers

def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.1,
             message: "str | Callable[[], str]" = "condition") -> Any:
    """Poll `predicate` until it returns a truthy value; bounded by `timeout` seconds.
    `message` (or what it returns, evaluated on failure) says what was awaited."""
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline, then reported
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            what = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def uuid7() -> str:
    """A UUIDv7 string (time-ordered), the shape of the gateway's task ids."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = (rand >> 62) & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise AssertionError(f"HTTP {self.status} body is not JSON: {self.body[:500]!r}") from exc

    def __repr__(self) -> str:  # shows up in assertion messages
        return f"HttpResponse(status={self.status}, body={self.body[:800]!r})"


def http_request(
    method: str,
    url: str,
    *,
    body: Optional[bytes] = None,
    json_body: Any = None,
    headers: Optional[dict[str, str]] = None,
    timeout: float = HTTP_TIMEOUT_S,
) -> HttpResponse:
    """One HTTP request on a fresh connection (so it is safe from any thread)."""
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1", f"tests talk to loopback only, not {url}"
    hdrs = {"Connection": "close"}
    if json_body is not None:
        body = json.dumps(json_body).encode()
    if body is not None:
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return HttpResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def post_task(base_url: str, task: str, args: Any = None, *, headers: Optional[dict[str, str]] = None,
              timeout: float = HTTP_TIMEOUT_S) -> HttpResponse:
    return http_request("POST", f"{base_url}/api/{task}", json_body={"args": {} if args is None else args},
                        headers=headers, timeout=timeout)


def assert_error_body(resp: HttpResponse, status: int, error_type: Optional[str] = None) -> dict:
    """Every error answer is JSON `{"error": {"type", "message", ...}}`; returns the parsed body."""
    assert resp.status == status, f"expected HTTP {status}, got {resp!r}"
    body = resp.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"no error object in {body!r}"
    err = body["error"]
    assert isinstance(err.get("type"), str) and err["type"], f"error.type missing in {body!r}"
    assert isinstance(err.get("message"), str) and err["message"], f"error.message missing in {body!r}"
    if error_type is not None:
        assert err["type"] == error_type, f"expected error.type {error_type!r}, got {body!r}"
    return body


# ------------------------------------------------------------------------------------------ SQLite reader

class TaskLog:
    """Read-only view of the SQLite task log file the processes write."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        return conn

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        conn = self._connect()
        try:
            return [dict(r) for r in conn.execute(sql, tuple(params)).fetchall()]
        finally:
            conn.close()

    def task(self, task_id: str) -> Optional[dict[str, Any]]:
        rows = self.query("SELECT * FROM tasks WHERE id = ?", (task_id,))
        assert len(rows) <= 1, f"task id {task_id} stored {len(rows)} times"
        return rows[0] if rows else None

    def events(self, task_id: str) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM task_events WHERE task_id = ? ORDER BY rowid", (task_id,))

    def wait_terminal(self, task_id: str, *, final_event: Optional[str] = None, events: Iterable[str] = (),
                      columns: Iterable[str] = (), timeout: float = SETTLE_TIMEOUT_S) -> dict[str, Any]:
        """The task's row once it shows a terminal status, the given events are stored, and the given
        columns are non-NULL.

        Task-log writes are batched off the request path by each process (the gateway's `pending` event,
        which carries the args, may reach the file after the worker's events), so the file may trail the
        HTTP answer briefly; the polling API is checked separately, without waiting.
        """
        wanted = set(events) | ({final_event} if final_event else set())
        columns = tuple(columns)

        def ready():
            row = self.task(task_id)
            if not row or row["status"] not in TERMINAL_STATUSES:
                return None
            if any(row[c] is None for c in columns):
                return None
            if wanted and not wanted <= {e["event"] for e in self.events(task_id)}:
                return None
            return row

        return wait_for(ready, timeout=timeout, message=lambda: (
            f"task {task_id} to reach a terminal status with events {sorted(wanted)} and columns "
            f"{list(columns)} set in {self.path} (row now: {self.task(task_id)})"))


def parse_time(value: Any) -> float:
    """A timestamp from the task log or the API (ISO-8601 text or epoch number) as epoch seconds."""
    if isinstance(value, (int, float)):
        v = float(value)
        return v / 1000.0 if v > 1e11 else v  # epoch ms or s
    assert isinstance(value, str) and value, f"not a timestamp: {value!r}"
    from datetime import datetime, timezone

    text = value.strip().replace(" ", "T", 1)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # fromisoformat (3.11) accepts up to 6 fractional digits; trim longer ones.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def loads_json_column(value: Any) -> Any:
    """A JSON column of the task log (TEXT or BLOB) decoded."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode()
    assert isinstance(value, str), f"expected JSON text, got {value!r}"
    return json.loads(value)


# --------------------------------------------------------------------------------------------- processes

def _server_env(extra: Optional[dict[str, str]] = None, drop: Iterable[str] = ()) -> dict[str, str]:
    env = dict(os.environ)
    # The worker's interpreter must see only what the flags (and an explicit VIRTUAL_ENV) give it.
    for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", *drop):
        env.pop(key, None)
    env.update(extra or {})
    return env


class ServerProcess:
    """A child process whose combined stdout/stderr is drained by a thread and kept for diagnostics."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], log_path: Path):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self.url: Optional[str] = None
        self.ended_by_test = False  # stopped or killed on purpose (kept out of failure reports)
        self._log = open(log_path, "w", encoding="utf-8", errors="replace")
        self._log.write("$ " + " ".join(argv) + "\n")
        self._log.flush()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(REPO_ROOT),
        )
        self._reader = threading.Thread(target=self._drain, name=f"drain-{name}", daemon=True)
        self._reader.start()
        _ALL_PROCESSES.append(self)

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            with self._lock:
                self._lines.append(line)
                try:
                    self._log.write(line)
                    self._log.flush()
                except ValueError:
                    pass
            if self.url is None:
                m = LISTENING_RE.search(line)
                if m:
                    self.url = m.group(1)
                    self._listening.set()

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(self._lines)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_listening(self, timeout: float = STARTUP_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.1):
            if self.proc.poll() is not None:
                self._reader.join(5)
                if self.url:
                    break
                raise AssertionError(
                    f"{self.name} exited with code {self.proc.returncode} before printing 'listening on':\n"
                    f"{self.output[-4000:]}"
                )
            if time.monotonic() >= deadline:
                self.stop()
                raise AssertionError(
                    f"{self.name} printed no 'listening on http://HOST:PORT' line within {timeout:.0f}s:\n"
                    f"{self.output[-4000:]}"
                )
        assert self.url is not None
        host = urlsplit(self.url).hostname
        assert host == "127.0.0.1", f"{self.name} listens on {self.url}, expected loopback 127.0.0.1"
        return self.url

    def wait_exit(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout:.0f}s:\n{self.output[-4000:]}") from None
        self._reader.join(5)
        return code

    def kill(self) -> None:
        """SIGKILL (the crash case); waits for the process to be gone."""
        self.ended_by_test = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_GRACE_S."""
        self.ended_by_test = True
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(30)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        with self._lock:
            self._log.close()


class GatewayAccess:
    """HTTP access to a running gateway (`self.gateway`) and its task log (`self.db_path`)."""

    @property
    def url(self) -> str:
        assert self.gateway is not None and self.gateway.url
        return self.gateway.url

    @property
    def log(self) -> TaskLog:
        return TaskLog(self.db_path)

    def client(self):
        from neutrino import Client

        return Client(self.url, timeout=HTTP_TIMEOUT_S)

    def post(self, task: str, args: Any = None, **kw) -> HttpResponse:
        return post_task(self.url, task, args, **kw)

    def get(self, path: str, **kw) -> HttpResponse:
        return http_request("GET", self.url + path, **kw)


@dataclass
class Cluster(GatewayAccess):
    """A gateway in front of `workers` (pool "fast"), all logging into `db` (in the NATS task-log mode: the
    workers publish on `nats`, the gateway `gateway_id` commits into `db`)."""

    gateway: ServerProcess
    workers: list[ServerProcess]
    worker_ids: list[str]
    db_path: Path
    manifest: Path
    nats: Optional["NatsServer"] = None
    gateway_id: Optional[str] = None
    _stopped: bool = field(default=False, repr=False)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.gateway.stop()
        for w in self.workers:
            w.stop()
        if self.nats is not None:
            self.nats.stop()


class Launcher:
    """Starts processes and remembers them all, so nothing outlives the session even if a fixture fails."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self._procs: list[ServerProcess] = []
        self._counter = itertools.count(1)
        self._standalone_nats: Optional["NatsServer"] = None

    def standalone_nats(self) -> "NatsServer":
        """A nats-server for `--task-log nats` workers started without a gateway (one per session, on demand)."""
        if self._standalone_nats is None:
            self._standalone_nats = NatsServer(self, self.new_dir("nats-standalone")).start()
        return self._standalone_nats

    def new_dir(self, prefix: str) -> Path:
        d = self.base_dir / f"{prefix}-{next(self._counter)}"
        d.mkdir(parents=True)
        return d

    def spawn(self, name: str, argv: list[str], *, env: dict[str, str], log_dir: Path) -> ServerProcess:
        env = with_nats_credentials(argv, env)
        p = ServerProcess(name, argv, env=env, log_path=log_dir / f"{name}.log")
        self._procs.append(p)
        return p

    def worker(
        self,
        app: Path,
        db_path: Path,
        *,
        log_dir: Path,
        worker_id: Optional[str] = None,
        pool: str = "fast",
        concurrency: int = 2,
        env_extra: Optional[dict[str, str]] = None,
        wait: bool = True,
        nats_url: Optional[str] = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        task_log: Optional[str] = None,
        extra_args: Iterable[str] = (),
        port: int = 0,
    ) -> ServerProcess:
        """An HTTP-mode worker (on `port`, 0: a free one); with `nats_url` it also sends heartbeats (every
        `heartbeat_interval` s).

        `task_log` (default: the session's mode) picks `--task-log sqlite:<db_path>` or `--task-log nats`; a NATS-mode
        worker given no `nats_url` publishes to the session's standalone nats-server."""
        task_log = task_log or TASK_LOG_MODE
        if task_log == "nats" and not nats_url:
            nats_url = self.standalone_nats().url
        argv = [
            str(WORKER_BIN), "--mode", "http", "--pool", pool, "--app", str(app),
            "--host", "127.0.0.1", "--port", str(port), "--concurrency", str(concurrency),
            *worker_task_log_args(db_path, nats_url, task_log), "--python-path", str(PYTHON_SDK),
        ]
        if worker_id:
            argv += ["--worker-id", worker_id]
        if nats_url:
            argv += ["--nats", nats_url, "--heartbeat-interval", f"{heartbeat_interval:g}"]
        argv += list(extra_args)
        p = self.spawn(f"worker-{worker_id or next(self._counter)}", argv, env=_server_env(env_extra), log_dir=log_dir)
        if wait:
            p.wait_listening()
        return p

    def gateway(
        self,
        manifest: Path,
        pools: dict[str, list[str]],
        db_path: Path,
        *,
        log_dir: Path,
        max_body_bytes: Optional[int] = None,
        nats: Optional["NatsServer"] = None,
        gateway_id: Optional[str] = None,
        extra_args: Iterable[str] = (),
    ) -> ServerProcess:
        """A gateway on `db_path`; with `nats` and `gateway_id` (the NATS task-log mode) it also records the events
        published on that server (`--nats --events-via-nats --gateway-id`) and is returned once its events consumer
        exists."""
        argv = [str(GATEWAY_BIN), "--manifest", str(manifest)]
        for pool, urls in pools.items():
            argv += ["--http-pool", f"{pool}=" + ",".join(urls)]
        argv += ["--task-log", f"sqlite:{db_path}", "--host", "127.0.0.1", "--port", "0"]
        if max_body_bytes is not None:
            argv += ["--max-body-bytes", str(max_body_bytes)]
        if nats is not None:
            assert gateway_id, "a gateway recording events from NATS needs its id"
            argv += gateway_events_args(nats.url, gateway_id)
        argv += list(extra_args)
        p = self.spawn(f"gateway-{next(self._counter)}", argv, env=_server_env(), log_dir=log_dir)
        p.wait_listening()
        if nats is not None:
            nats.wait_events_consumer(gateway_id)
        return p

    def cluster(
        self,
        *,
        app: Path,
        manifest: Path,
        workers: int = 2,
        concurrency: int = 4,
        max_body_bytes: Optional[int] = None,
        name: str = "cluster",
        gateway_args: Iterable[str] = (),
    ) -> Cluster:
        d = self.new_dir(name)
        db = d / "tasks.sqlite"
        # The NATS task-log mode: a nats-server of the cluster's own, the workers publish their events on it.
        nats = NatsServer(self, d).start() if NATS_TASK_LOG else None
        gateway_id = new_gateway_id(name) if nats else None
        nats_url = nats.url if nats else None
        ids = [f"{name}-w{i + 1}" for i in range(workers)]
        procs = [self.worker(app, db, log_dir=d, worker_id=wid, concurrency=concurrency, wait=False, nats_url=nats_url)
                 for wid in ids]
        for p in procs:
            p.wait_listening()
        gw = self.gateway(manifest, {"fast": [p.url for p in procs]}, db, log_dir=d, max_body_bytes=max_body_bytes,
                          nats=nats, gateway_id=gateway_id, extra_args=gateway_args)
        return Cluster(gateway=gw, workers=procs, worker_ids=ids, db_path=db, manifest=manifest, nats=nats,
                       gateway_id=gateway_id)

    def stop_all(self) -> None:
        errors = []
        for p in reversed(self._procs):
            try:
                p.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                errors.append(f"{p.name}: {exc!r}")
        if errors:
            raise RuntimeError("failed to stop: " + "; ".join(errors))


def build_manifest(app: Path, out: Path) -> Path:
    """`python3 -m neutrino.cli openapi APP -o FILE`, the way a user builds the gateway's manifest."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PYTHON_SDK)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run(
        [sys.executable, "-m", "neutrino.cli", "openapi", str(app), "-o", str(out)],
        cwd=str(REPO_ROOT), env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"manifest build failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    doc = json.loads(out.read_text())
    assert str(doc.get("openapi", "")).startswith("3.1"), f"not an OpenAPI 3.1 document: {str(doc)[:300]}"
    return out


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def launcher(tmp_path_factory) -> Iterable[Launcher]:
    l = Launcher(tmp_path_factory.mktemp("neutrino-e2e"))
    yield l
    l.stop_all()


@pytest.fixture(scope="session")
def example_manifest(tmp_path_factory) -> Path:
    return build_manifest(EXAMPLE_APP, tmp_path_factory.mktemp("manifest") / "openapi.json")


@pytest.fixture(scope="session")
def extra_manifest(tmp_path_factory) -> Path:
    return build_manifest(EXTRA_APP, tmp_path_factory.mktemp("manifest-extra") / "openapi.json")


SHARED_MAX_BODY_BYTES = 64 * 1024


@pytest.fixture(scope="session")
def cluster(launcher: Launcher, example_manifest: Path) -> Iterable[Cluster]:
    """The shared cluster: gateway (--max-body-bytes 64 KiB) + 2 workers (concurrency 4) on examples/app.py."""
    c = launcher.cluster(app=EXAMPLE_APP, manifest=example_manifest, workers=2, concurrency=4,
                         max_body_bytes=SHARED_MAX_BODY_BYTES, name="shared")
    yield c
    c.stop()


@pytest.fixture(scope="session")
def extra_cluster(launcher: Launcher, extra_manifest: Path) -> Iterable[Cluster]:
    """Gateway + 1 worker on tests/e2e/apps/extra_app.py."""
    c = launcher.cluster(app=EXTRA_APP, manifest=extra_manifest, workers=1, concurrency=2, name="extra")
    yield c
    c.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the output tail of every server process that is running or died unasked."""
    report = yield
    shown = [p for p in _ALL_PROCESSES if p.alive() or not p.ended_by_test]
    if report.failed and shown:
        parts = []
        for p in shown:
            state = "running" if p.alive() else f"exited {p.proc.returncode}"
            tail = "".join(p.output.splitlines(keepends=True)[-25:])
            parts.append(f"--- {p.name} ({state}, pid {p.pid}, log {p.log_path})\n{tail}")
        report.sections.append(("neutrino processes", "\n".join(parts)))
    return report


# ===================================================================================== JetStream path
# Queued (async / gpu) tasks: a private `nats-server -js` per test stack, a gateway started with `--nats`, and
# `neutrino-worker --mode nats` workers started and stopped by the tests. Everything listens on 127.0.0.1 with
# ports the processes pick themselves (nats-server `-p -1 -m -1`, gateway `--port 0`) and reports on stdout.

QUEUE_APP = APPS_DIR / "queue_app.py"
NATS_SERVER_BIN = shutil.which("nats-server") or "/usr/sbin/nats-server"
NATS_READY_RE = re.compile(r"Server is ready")
NATS_CLIENT_PORT_RE = re.compile(r"Listening for client connections on 127\.0\.0\.1:(\d+)")
NATS_MONITOR_PORT_RE = re.compile(r"Starting http monitor on 127\.0\.0\.1:(\d+)")
NATS_AUTH = os.environ.get("NEUTRINO_E2E_NATS_AUTH", "1") != "0"
#: The pools the e2e apps use; a NatsServer has a worker user for each (more with `NatsServer(pools=...)`).
E2E_POOLS = ("fast", "async", "gpu")
E2E_NATS_ADMIN = "e2e"
#: "127.0.0.1:PORT" of each running authenticated NatsServer -> its users.
_NATS_CREDENTIALS: dict[str, NatsCredentials] = {}


def with_nats_credentials(argv: list[str], env: dict[str, str]) -> dict[str, str]:
    """`env` plus the NATS user and password of the process `argv` starts, when its `--nats` names an
    authenticated NatsServer of this session and `env` has no NEUTRINO_NATS_USER: the gateway's for
    neutrino-gateway, `worker_<pool>`'s for a neutrino-worker of `--pool` (default fast)."""
    if "--nats" not in argv or "NEUTRINO_NATS_USER" in env:
        return env
    urls = argv[argv.index("--nats") + 1].split(",")
    creds = next((_NATS_CREDENTIALS[u.split("://")[-1]] for u in urls if u.split("://")[-1] in _NATS_CREDENTIALS), None)
    if creds is None:
        return env
    binary = Path(argv[0]).name
    if binary == "neutrino-gateway":
        return {**env, **creds.gateway_env()}
    pool = argv[argv.index("--pool") + 1] if "--pool" in argv else "fast"
    assert f"worker_{pool}" in creds.passwords, f"no NATS user for pool {pool}: give NatsServer(pools=...) it"
    return {**env, **creds.worker_env(pool)}


CONSUMING_RE = re.compile(r"consuming (pool_[a-z0-9_]+) from (nats://\S+)")
TASK_WAIT_TIMEOUT_S = 120.0  # a queued task reaching a terminal status (generous; not a speed assertion)


def wait_for_output(proc: ServerProcess, pattern: "str | re.Pattern[str]", *, timeout: float = STARTUP_TIMEOUT_S,
                    start: int = 0) -> "re.Match[str]":
    """The first match of `pattern` in `proc`'s combined output (from character `start` on); fails early when the
    process exits without printing it."""
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern

    def found():
        m = regex.search(proc.output, start)
        if m:
            return m
        if not proc.alive():
            proc._reader.join(5)
            m = regex.search(proc.output, start)
            if m:
                return m
            raise AssertionError(f"{proc.name} exited with code {proc.proc.returncode} before printing "
                                 f"{regex.pattern!r}:\n{proc.output[-4000:]}")
        return None

    deadline = time.monotonic() + timeout
    while True:
        m = found()
        if m:
            return m
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{proc.name} printed no {regex.pattern!r} within {timeout:.0f}s:\n{proc.output[-4000:]}")
        time.sleep(0.05)


def queued_pools(manifest: Path) -> set[str]:
    """The pools of the manifest's async and gpu tasks (the ones that get a JetStream consumer)."""
    doc = json.loads(Path(manifest).read_text())
    pools = set()
    for item in doc.get("paths", {}).values():
        op = item.get("post") or {}
        if op.get("x-neutrino-mode") in ("async", "gpu"):
            pools.add(op["x-neutrino-pool"])
    return pools


class NatsServer:
    """`nats-server -js` on loopback with its store under `store_dir`. `start()` again after `stop()` restarts it on
    the same client and monitoring ports and the same store."""

    def __init__(self, launcher: Launcher, log_dir: Path, *, auth: Optional[bool] = None,
                 pools: Iterable[str] = E2E_POOLS):
        self.launcher = launcher
        self.log_dir = log_dir
        self.auth = NATS_AUTH if auth is None else auth
        self.credentials: Optional[NatsCredentials] = (
            NatsCredentials.generate(pools, admin=E2E_NATS_ADMIN) if self.auth else None)
        self.store_dir = log_dir / "js"
        self.port: Optional[int] = None
        self.monitor_port: Optional[int] = None
        self.proc: Optional[ServerProcess] = None
        self._starts = 0

    @property
    def url(self) -> str:
        assert self.port
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        assert self.monitor_port
        return f"http://127.0.0.1:{self.monitor_port}"

    def start(self) -> "NatsServer":
        assert self.proc is None or not self.proc.alive(), "nats-server is already running"
        self._starts += 1
        argv = [NATS_SERVER_BIN, "-js", "-a", "127.0.0.1", "-p", str(self.port or -1),
                "-m", str(self.monitor_port or -1), "-sd", str(self.store_dir)]
        if self.credentials is not None:
            # The users and their permissions from a file (mode 0600), the rest from the flags.
            conf = self.log_dir / "nats-auth.conf"
            conf.touch(mode=0o600)
            conf.write_text(authorization_block(self.credentials))
            argv[1:1] = ["-c", str(conf)]
        self.proc = self.launcher.spawn(f"nats-{self._starts}", argv, env=_server_env(), log_dir=self.log_dir)
        wait_for_output(self.proc, NATS_READY_RE, timeout=60)
        self.port = int(wait_for_output(self.proc, NATS_CLIENT_PORT_RE, timeout=5).group(1))
        if self.credentials is not None:
            _NATS_CREDENTIALS[f"127.0.0.1:{self.port}"] = self.credentials
        self.monitor_port = int(wait_for_output(self.proc, NATS_MONITOR_PORT_RE, timeout=5).group(1))
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    # -- monitoring (/jsz) --------------------------------------------------------------------------------

    def jsz(self) -> dict:
        resp = http_request("GET", f"{self.monitor_url}/jsz?acc=%24G&consumers=true&config=true", timeout=30)
        assert resp.status == 200, f"/jsz answered {resp!r}"
        return resp.json()

    def streams(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for account in self.jsz().get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                out[stream["name"]] = stream
        return out

    def stream(self, name: str) -> Optional[dict]:
        return self.streams().get(name)

    def consumer(self, name: str, stream: str = "NEUTRINO_TASKS") -> Optional[dict]:
        s = self.stream(stream)
        for c in (s or {}).get("consumer_detail") or []:
            if c.get("name") == name:
                return c
        return None

    def wait_events_consumer(self, gateway_id: str, timeout: float = 60.0) -> dict:
        """The durable `events_<gateway_id>` on NEUTRINO_EVENTS once the gateway has provisioned it."""
        name = f"events_{gateway_id}"
        return wait_for(lambda: self.consumer(name, stream="NEUTRINO_EVENTS"), timeout=timeout,
                        message=lambda: f"the gateway to provision the events consumer {name} "
                                        f"(streams: {sorted(self.streams())})")

    def queue_depth(self, pool: str) -> tuple[int, int]:
        """(num_pending, num_ack_pending) of the pool's consumer."""
        c = self.consumer(f"pool_{pool}")
        assert c is not None, f"no consumer pool_{pool} in /jsz: {self.streams().keys()}"
        return int(c.get("num_pending", 0)), int(c.get("num_ack_pending", 0))

    # -- the wire protocol, for what HTTP cannot do (direct publishes, JetStream API requests) ---------

    def wire(self, user: Optional[str] = E2E_NATS_ADMIN, password: Optional[str] = None) -> "NatsWire":
        """A raw client; on an authenticated server as `user` (default the all-powerful `e2e`; None: no
        credentials), with `password` (default: the user's own)."""
        assert self.port
        if self.credentials is None:
            return NatsWire("127.0.0.1", self.port)
        if user is not None and password is None:
            password = self.credentials.password(user)
        return NatsWire("127.0.0.1", self.port, user=user, password=password)

    def client_env(self, user: str) -> dict[str, str]:
        """NEUTRINO_NATS_USER/PASSWORD of `user` (empty without authentication)."""
        return self.credentials.env(user) if self.credentials is not None else {}


class NatsWire:
    """A minimal NATS client over a plain socket (the text protocol: CONNECT, SUB, PUB/HPUB, MSG/HMSG, PING/PONG),
    enough to publish to JetStream with headers and to make JetStream API requests. Standard library only."""

    def __init__(self, host: str, port: int, timeout: float = 30.0, *, user: Optional[str] = None,
                 password: Optional[str] = None):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        # A user may subscribe to its own inboxes only (neutrino.natsauth).
        self.inbox = f"{inbox_prefix(user) if user else '_INBOX'}.e2e{uuid.uuid4().hex}"
        self._counter = itertools.count(1)
        line = self.file.readline()
        assert line.startswith(b"INFO "), f"not a NATS server greeting: {line[:200]!r}"
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                   "lang": "python-e2e", "version": "0", "protocol": 1}
        if user is not None:
            connect.update(user=user, **{"pass": password or ""})
        self._send(b"CONNECT " + json.dumps(connect).encode() + b"\r\n" + b"SUB " + self.inbox.encode()
                   + b".* 1\r\nPING\r\n")
        while True:
            kind, _ = self._read()
            if kind == "PONG":
                break

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.sock.close()

    def __enter__(self) -> "NatsWire":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self) -> tuple[str, Any]:
        """The next protocol message: ("MSG", (subject, headers_bytes, payload)), ("PONG", None), ..."""
        while True:
            line = self.file.readline()
            if not line:
                raise AssertionError("NATS connection closed by the server")
            line = line.rstrip(b"\r\n")
            op, _, rest = line.partition(b" ")
            op = op.upper()
            if op == b"PING":
                self._send(b"PONG\r\n")
                continue
            if op in (b"+OK", b"INFO"):
                continue
            if op == b"PONG":
                return "PONG", None
            if op == b"-ERR":
                raise AssertionError(f"NATS error: {rest.decode(errors='replace')}")
            if op == b"MSG":
                parts = rest.split()
                size = int(parts[-1])
                data = self.file.read(size + 2)[:size]
                return "MSG", (parts[0].decode(), b"", data)
            if op == b"HMSG":
                parts = rest.split()
                hdr_len, total = int(parts[-2]), int(parts[-1])
                raw = self.file.read(total + 2)[:total]
                return "MSG", (parts[0].decode(), raw[:hdr_len], raw[hdr_len:])
            raise AssertionError(f"unexpected NATS protocol line {line[:200]!r}")

    def request(self, subject: str, payload: bytes = b"", headers: Optional[dict[str, str]] = None) -> bytes:
        """Publishes with a reply inbox and returns the reply's payload (fails on 'no responders')."""
        reply = f"{self.inbox}.{next(self._counter)}"
        if headers:
            hdr = ("NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
            size = len(hdr) + len(payload)
            self._send(f"HPUB {subject} {reply} {len(hdr)} {size}\r\n".encode() + hdr + payload + b"\r\n")
        else:
            self._send(f"PUB {subject} {reply} {len(payload)}\r\n".encode() + payload + b"\r\n")
        while True:
            kind, msg = self._read()
            if kind != "MSG" or msg[0] != reply:
                continue
            _, hdrs, data = msg
            if hdrs.startswith(b"NATS/1.0 503"):
                raise AssertionError(f"no responders for {subject}")
            return data

    def js_publish(self, subject: str, payload: bytes, msg_id: Optional[str] = None,
                   headers: Optional[dict[str, str]] = None) -> dict:
        """A JetStream publish; returns the PubAck `{"stream","seq","duplicate"?}` (fails on a JetStream error)."""
        hdrs = dict(headers or {})
        if msg_id is not None:
            hdrs["Nats-Msg-Id"] = msg_id
        ack = json.loads(self.request(subject, payload, hdrs or None))
        assert "error" not in ack, f"JetStream refused the publish to {subject}: {ack}"
        return ack

    def _round_trip(self, data: bytes) -> None:
        """Sends `data` + PING and reads up to the PONG: the server has processed `data` when this returns."""
        self._send(data + b"PING\r\n")
        while self._read()[0] != "PONG":
            pass

    def subscribe(self, subject: str) -> None:
        """A core subscription (sid 2), in place when this returns."""
        self._round_trip(f"SUB {subject} 2\r\n".encode())

    def publish(self, subject: str, payload: bytes) -> None:
        """A core publish, routed by the server when this returns."""
        self._round_trip(f"PUB {subject} {len(payload)}\r\n".encode() + payload + b"\r\n")

    def next_message(self, timeout: float) -> Optional[tuple[str, bytes]]:
        """The next message of a subscription made with `subscribe` as (subject, payload), or None after `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                kind, msg = self._read()
                if kind == "MSG" and not msg[0].startswith(self.inbox):
                    return msg[0], msg[2]
        except (socket.timeout, TimeoutError):
            return None
        finally:
            self.sock.settimeout(30.0)

    def js_api(self, what: str, body: Optional[dict] = None) -> dict:
        """A JetStream API request, e.g. js_api("STREAM.MSG.GET.NEUTRINO_DLQ", {"last_by_subj": ...})."""
        return json.loads(self.request(f"$JS.API.{what}", json.dumps(body or {}).encode()))

    def stream_message(self, stream: str, last_by_subject: str) -> Optional[dict]:
        """The last message of `stream` on a subject: {"subject","seq","headers":{...},"data":bytes}, or None."""
        answer = self.js_api(f"STREAM.MSG.GET.{stream}", {"last_by_subj": last_by_subject})
        msg = answer.get("message")
        if not msg:
            return None
        headers: dict[str, str] = {}
        if msg.get("hdrs"):
            for line in base64.b64decode(msg["hdrs"]).decode().split("\r\n")[1:]:
                if ":" in line:
                    k, _, v = line.partition(":")
                    headers[k.strip()] = v.strip()
        return {"subject": msg.get("subject"), "seq": msg.get("seq"), "headers": headers,
                "data": base64.b64decode(msg.get("data") or "")}


@dataclass
class QueueStack(GatewayAccess):
    """nats-server + a gateway started with `--nats` (no sync pool) + NATS-mode workers, all on one task log.

    `task_log` ("sqlite" or "nats"; default: the session's NEUTRINO_E2E_TASK_LOG): with "nats" the workers publish
    their events (`--task-log nats`) and the gateway records them into `db_path` (`--events-via-nats --gateway-id
    <gateway_id>`; a restarted gateway keeps the id, so it resumes its durable consumer)."""

    launcher: Launcher
    dir: Path
    name: str
    app: Path
    manifest: Path
    ack_wait: float
    nats: NatsServer
    db_path: Path
    gateway: Optional[ServerProcess] = None
    workers: list[ServerProcess] = field(default_factory=list)
    task_log: str = field(default_factory=lambda: TASK_LOG_MODE)
    gateway_id: Optional[str] = None
    _worker_counter: Any = field(default_factory=lambda: itertools.count(1), repr=False)
    _gateway_counter: Any = field(default_factory=lambda: itertools.count(1), repr=False)

    def __post_init__(self) -> None:
        assert self.task_log in TASK_LOG_MODES, self.task_log
        if self.task_log == "nats" and self.gateway_id is None:
            self.gateway_id = new_gateway_id(self.name)

    # -- processes ---------------------------------------------------------------------------------------

    def gateway_argv(self, *, db_path: Optional[Path] = None, gateway_id: Optional[str] = None,
                     http_pools: Optional[dict[str, list[str]]] = None, heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
                     extra_args: Iterable[str] = ()) -> list[str]:
        """The command line of a gateway of this stack (on `db_path`, default the stack's file; in the NATS task-log
        mode with `--events-via-nats --gateway-id <gateway_id>`, default the stack's id)."""
        argv = [str(GATEWAY_BIN), "--manifest", str(self.manifest), "--task-log", f"sqlite:{db_path or self.db_path}",
                "--host", "127.0.0.1", "--port", "0", "--nats", self.nats.url, "--ack-wait", f"{self.ack_wait:g}",
                "--heartbeat-timeout", f"{heartbeat_timeout:g}"]
        if self.task_log == "nats":
            argv += ["--events-via-nats", "--gateway-id", gateway_id or self.gateway_id]
        for pool, urls in (http_pools or {}).items():
            argv += ["--http-pool", f"{pool}=" + ",".join(urls)]
        argv += list(extra_args)
        return argv

    def wait_provisioned(self, gateway_id: Optional[str] = None) -> None:
        """Until the gateway provisioned every queued pool's consumer (and, in the NATS task-log mode, its events
        consumer `events_<gateway_id>`)."""
        wanted = {f"pool_{p}" for p in queued_pools(self.manifest)}

        def provisioned():
            s = self.nats.stream("NEUTRINO_TASKS")
            have = {c.get("name") for c in (s or {}).get("consumer_detail") or []}
            return wanted <= have and self.nats.stream("NEUTRINO_DLQ") is not None

        wait_for(provisioned, timeout=60, message=lambda: f"the gateway to provision consumers {sorted(wanted)}")
        if self.task_log == "nats":
            self.nats.wait_events_consumer(gateway_id or self.gateway_id)

    def start_gateway(self, *, http_pools: Optional[dict[str, list[str]]] = None,
                      heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S, extra_args: Iterable[str] = (),
                      env_extra: Optional[dict[str, str]] = None) -> ServerProcess:
        """The gateway (`--nats`, `--heartbeat-timeout`, `--http-pool` for each of `http_pools`); waits until it
        provisioned every queued pool's consumer."""
        argv = self.gateway_argv(http_pools=http_pools, heartbeat_timeout=heartbeat_timeout, extra_args=extra_args)
        n = next(self._gateway_counter)
        self.gateway = self.launcher.spawn(f"{self.name}-gateway" + (f"-{n}" if n > 1 else ""), argv,
                                           env=_server_env(env_extra), log_dir=self.dir)
        self.gateway.wait_listening()
        # The gateway provisions the stream and every queued pool's consumer in the background.
        self.wait_provisioned()
        return self.gateway

    def worker(self, pool: str, *, worker_id: Optional[str] = None, concurrency: int = 2,
               drain_grace: float = 2.0, ack_wait: Optional[float] = None, wait: bool = True,
               heartbeat_interval: float = HEARTBEAT_INTERVAL_S, extra_args: Iterable[str] = (),
               env_extra: Optional[dict[str, str]] = None) -> ServerProcess:
        """A `--mode nats` worker of `pool` (heartbeats every `heartbeat_interval` s; `/metrics` on an ephemeral
        port, its `url` once it printed `listening on`); waits for its `consuming pool_<pool>` line unless
        wait=False."""
        worker_id = worker_id or f"{self.name}-{pool}-w{next(self._worker_counter)}"
        argv = [str(WORKER_BIN), "--mode", "nats", "--pool", pool, "--app", str(self.app),
                "--python-path", str(PYTHON_SDK), *worker_task_log_args(self.db_path, self.nats.url, self.task_log),
                "--nats", self.nats.url,
                "--concurrency", str(concurrency), "--ack-wait", f"{(ack_wait or self.ack_wait):g}",
                "--drain-grace", f"{drain_grace:g}", "--worker-id", worker_id,
                "--host", "127.0.0.1", "--port", "0", "--heartbeat-interval", f"{heartbeat_interval:g}", *extra_args]
        p = self.launcher.spawn(f"worker-{worker_id}", argv, env=_server_env(env_extra), log_dir=self.dir)
        p.worker_id = worker_id  # type: ignore[attr-defined]
        self.workers.append(p)
        if wait:
            self.wait_consuming(p, pool)
        return p

    def http_worker(self, pool: str = "fast", *, worker_id: Optional[str] = None, concurrency: int = 2,
                    wait: bool = True, extra_args: Iterable[str] = (),
                    env_extra: Optional[dict[str, str]] = None) -> ServerProcess:
        """A `--mode http` worker of `pool` that also heartbeats over this stack's NATS (start it before the
        gateway, which is given its URL: `start_gateway(http_pools={pool: [w.url]})`)."""
        worker_id = worker_id or f"{self.name}-{pool}-h{next(self._worker_counter)}"
        p = self.launcher.worker(self.app, self.db_path, log_dir=self.dir, worker_id=worker_id, pool=pool,
                                 concurrency=concurrency, wait=wait, nats_url=self.nats.url, task_log=self.task_log,
                                 extra_args=extra_args, env_extra=env_extra)
        p.worker_id = worker_id  # type: ignore[attr-defined]
        self.workers.append(p)
        return p

    def pools(self) -> dict[str, dict]:
        """GET /pools as {pool name: entry}."""
        return pools_by_name(self.url)

    @staticmethod
    def wait_consuming(p: ServerProcess, pool: str) -> None:
        m = wait_for_output(p, CONSUMING_RE)
        assert m.group(1) == f"pool_{pool}", f"{p.name} consumes {m.group(1)}, expected pool_{pool}"

    def stop(self) -> None:
        for w in reversed(self.workers):
            w.stop()
        if self.gateway is not None:
            self.gateway.stop()
        self.nats.stop()

    # -- HTTP -------------------------------------------------------------------------------------------

    def delete(self, task_id: str) -> HttpResponse:
        return http_request("DELETE", f"{self.url}/tasks/{task_id}")

    def submit(self, task: str, args: Any = None) -> str:
        """POST /api/<task>; asserts the 202 answer of a queued task and returns its id."""
        resp = self.post(task, args)
        assert resp.status == 202, f"POST /api/{task} {args!r}: expected 202, got {resp!r}"
        body = resp.json()
        task_id = body.get("task_id")
        assert isinstance(task_id, str) and task_id, f"no task_id in {body!r}"
        assert body.get("status") == "queued", f"202 body without status queued: {body!r}"
        assert body.get("function") == task, body
        assert body.get("poll_url") == f"/tasks/{task_id}", body
        return task_id

    def record(self, task_id: str) -> dict:
        resp = self.get(f"/tasks/{task_id}")
        assert resp.status == 200, f"GET /tasks/{task_id}: {resp!r}"
        return resp.json()

    def wait_task(self, task_id: str, *, timeout: float = TASK_WAIT_TIMEOUT_S) -> dict:
        """The record once terminal, by long polls (`?wait=`, at most 30 s each); bounded by `timeout`."""
        deadline = time.monotonic() + timeout
        record: dict = {}
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"task {task_id} not terminal after {timeout:.0f}s; last record: {record}")
            wait = max(1, min(30, int(remaining)))
            resp = self.get(f"/tasks/{task_id}?wait={wait}", timeout=wait + HTTP_TIMEOUT_S)
            assert resp.status == 200, f"GET /tasks/{task_id}?wait={wait}: {resp!r}"
            record = resp.json()
            if record.get("status") in TERMINAL_STATUSES:
                return record

    def wait_status(self, task_id: str, status: str, *, timeout: float = 60.0) -> dict:
        """The record once it shows `status` (e.g. running), by plain polls."""
        return wait_for(lambda: (r := self.record(task_id)) and r.get("status") == status and r, timeout=timeout,
                        interval=0.05, message=lambda: f"task {task_id} to be {status} (now {self.record(task_id)})")


def event_names(record: dict, *, attempt: Optional[int] = None) -> list[str]:
    """The `event` of each entry in a task record's `events` (optionally of one attempt), in order."""
    return [e["event"] for e in record.get("events") or [] if attempt is None or e.get("attempt") == attempt]


def count_events(log: TaskLog, task_id: str, event: str) -> int:
    """How many `event` rows the task log's task_events holds for the task."""
    rows = log.query("SELECT COUNT(*) AS n FROM task_events WHERE task_id = ? AND event = ?", (task_id, event))
    return int(rows[0]["n"])


def read_journal(path: Path) -> list[dict]:
    """The lines appended by tests/e2e/apps/queue_app.py's tasks (one JSON object per line)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def queue_manifest(tmp_path_factory) -> Path:
    return build_manifest(QUEUE_APP, tmp_path_factory.mktemp("manifest-queue") / "openapi.json")


@pytest.fixture
def queue_stack(launcher: Launcher, request) -> Iterable[Callable[..., QueueStack]]:
    """A factory: `queue_stack(app=EXAMPLE_APP|QUEUE_APP, ack_wait=30, name=..., task_log=None)` starts nats-server and
    a gateway (`--nats`, `--ack-wait`), with no workers (start them with `stack.worker(pool, ...)`). `task_log`
    ("sqlite" or "nats") overrides the session's NEUTRINO_E2E_TASK_LOG. Everything it started is stopped when the
    test ends."""
    if not (os.path.isfile(NATS_SERVER_BIN) and os.access(NATS_SERVER_BIN, os.X_OK)):
        pytest.skip("nats-server is not installed (Debian package nats-server)")
    stacks: list[QueueStack] = []

    def make(*, app: Path = EXAMPLE_APP, ack_wait: float = 30.0, name: str = "queue",
             gateway: bool = True, task_log: Optional[str] = None) -> QueueStack:
        d = launcher.new_dir(name)
        if Path(app) in (QUEUE_APP, EXAMPLE_APP):
            manifest = request.getfixturevalue("queue_manifest" if Path(app) == QUEUE_APP else "example_manifest")
        else:
            manifest = build_manifest(Path(app), d / "openapi.json")
        stack = QueueStack(launcher=launcher, dir=d, name=name, app=Path(app), manifest=manifest, ack_wait=ack_wait,
                           nats=NatsServer(launcher, d), db_path=d / "tasks.sqlite",
                           task_log=task_log or TASK_LOG_MODE)
        stacks.append(stack)
        stack.nats.start()
        if gateway:
            stack.start_gateway()
        return stack

    yield make
    for s in reversed(stacks):
        s.stop()


# ============================================================================== observability helpers
# /pools and /metrics (docs/observability-contract.md).

def pools_document(base_url: str, headers: Optional[dict[str, str]] = None) -> dict:
    resp = http_request("GET", f"{base_url}/pools", headers=headers, timeout=30)
    assert resp.status == 200, f"GET /pools: {resp!r}"
    return resp.json()


def pools_by_name(base_url: str, headers: Optional[dict[str, str]] = None) -> dict[str, dict]:
    """GET /pools as {pool name: entry}."""
    document = pools_document(base_url, headers)
    assert isinstance(document.get("pools"), list), f"no pools list in {document!r}"
    return {entry["name"]: entry for entry in document["pools"]}


@dataclass
class Scrape:
    """One /metrics answer parsed with prometheus_client's text parser (which fails on invalid exposition)."""

    text: str
    families: dict[str, Any]  # family name -> prometheus_client Metric

    @classmethod
    def parse(cls, text: str) -> "Scrape":
        from prometheus_client.parser import text_string_to_metric_families

        families = {}
        for family in text_string_to_metric_families(text):
            assert family.name not in families, f"metric family {family.name} exposed twice"
            families[family.name] = family
        return cls(text, families)

    def family(self, name: str) -> Any:
        """The family by its exposed name (`neutrino_tasks_total` finds the counter family `neutrino_tasks`)."""
        for key in (name, name[: -len("_total")] if name.endswith("_total") else name):
            if key in self.families:
                return self.families[key]
        raise AssertionError(f"no metric {name} in /metrics; have {sorted(self.families)}")

    def has(self, name: str) -> bool:
        try:
            self.family(name)
        except AssertionError:
            return False
        return True

    def samples(self, name: str, **labels: str) -> list[Any]:
        """Samples named `name` (e.g. `neutrino_task_duration_seconds_count`) whose labels include `labels`."""
        out = []
        for family in self.families.values():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    out.append(sample)
        return out

    def value(self, name: str, **labels: str) -> float:
        """The sum of the matching samples' values (0 when none matches)."""
        return float(sum(sample.value for sample in self.samples(name, **labels)))


def scrape(base_url: str) -> Scrape:
    """GET /metrics (Prometheus text format) and parse it."""
    resp = http_request("GET", f"{base_url}/metrics", timeout=30)
    assert resp.status == 200, f"GET {base_url}/metrics: {resp!r}"
    content_type = resp.headers.get("content-type", "")
    assert content_type.startswith("text/plain"), f"/metrics Content-Type {content_type!r}"
    return Scrape.parse(resp.body.decode())

"""Fixtures for Neutrino's end-to-end tests: real gateway and worker processes, real HTTP, a real SQLite file.

Every process listens on 127.0.0.1 port 0; its URL is read from the `listening on http://HOST:PORT` line it
prints on stdout (bounded wait). Every process started here is stopped in fixture teardown: SIGTERM, then
SIGKILL after 10 s. Loops are bounded; nothing asserts on how fast something ran (the machines are shared).

Binaries come from $NEUTRINO_BIN_DIR (default `<repo>/.build/debug`); the suite is skipped, with a message,
when they are missing.
"""
from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import signal
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

# --------------------------------------------------------------------------------------------------- paths

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parents[1]
PYTHON_SDK = REPO_ROOT / "python"
EXAMPLE_APP = REPO_ROOT / "examples" / "app.py"
APPS_DIR = E2E_DIR / "apps"
EXTRA_APP = APPS_DIR / "extra_app.py"
VENV_APP = APPS_DIR / "venv_app.py"


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


@dataclass
class Cluster:
    """A gateway in front of `workers` (pool "fast"), all logging into `db`."""

    gateway: ServerProcess
    workers: list[ServerProcess]
    worker_ids: list[str]
    db_path: Path
    manifest: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        assert self.gateway.url
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

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.gateway.stop()
        for w in self.workers:
            w.stop()


class Launcher:
    """Starts processes and remembers them all, so nothing outlives the session even if a fixture fails."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self._procs: list[ServerProcess] = []
        self._counter = itertools.count(1)

    def new_dir(self, prefix: str) -> Path:
        d = self.base_dir / f"{prefix}-{next(self._counter)}"
        d.mkdir(parents=True)
        return d

    def spawn(self, name: str, argv: list[str], *, env: dict[str, str], log_dir: Path) -> ServerProcess:
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
    ) -> ServerProcess:
        argv = [
            str(WORKER_BIN), "--mode", "http", "--pool", pool, "--app", str(app),
            "--host", "127.0.0.1", "--port", "0", "--concurrency", str(concurrency),
            "--task-log", f"sqlite:{db_path}", "--python-path", str(PYTHON_SDK),
        ]
        if worker_id:
            argv += ["--worker-id", worker_id]
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
    ) -> ServerProcess:
        argv = [str(GATEWAY_BIN), "--manifest", str(manifest)]
        for pool, urls in pools.items():
            argv += ["--http-pool", f"{pool}=" + ",".join(urls)]
        argv += ["--task-log", f"sqlite:{db_path}", "--host", "127.0.0.1", "--port", "0"]
        if max_body_bytes is not None:
            argv += ["--max-body-bytes", str(max_body_bytes)]
        p = self.spawn(f"gateway-{next(self._counter)}", argv, env=_server_env(), log_dir=log_dir)
        p.wait_listening()
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
    ) -> Cluster:
        d = self.new_dir(name)
        db = d / "tasks.sqlite"
        ids = [f"{name}-w{i + 1}" for i in range(workers)]
        procs = [self.worker(app, db, log_dir=d, worker_id=wid, concurrency=concurrency, wait=False) for wid in ids]
        for p in procs:
            p.wait_listening()
        gw = self.gateway(manifest, {"fast": [p.url for p in procs]}, db, log_dir=d, max_body_bytes=max_body_bytes)
        return Cluster(gateway=gw, workers=procs, worker_ids=ids, db_path=db, manifest=manifest)

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

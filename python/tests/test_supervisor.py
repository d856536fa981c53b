"""Supervision in ``neutrino up``: workers that exit on their own are restarted in their slot (same name, worker id
and port), at once after exit 0/75, else with a backoff that doubles and resets; requested stops (Ctrl-C, the
autoscaler's drains) are never restarted; a worker that fails at start-up stops ``up`` with its traceback shown;
the gateway or nats-server dying stops everything.

Small Python scripts stand in for the workers, the gateway and nats-server; everything listens on loopback, every
wait is bounded."""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from neutrino.local.restarts import RESTARTS_ENV, Backoff, describe_exit, plan_restart
from neutrino.local.supervisor import Child, StartupError, Supervisor
from neutrino.local.workers import QueueWorkers


#: The line the supervisor prints when it restarts a worker.
RESTART_LINE = re.compile(r"; restart \d+ (now|in )")


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


# -- the policy ----------------------------------------------------------------------------------------


def test_backoff_doubles_from_one_second_up_to_thirty() -> None:
    backoff = Backoff()
    crashes, delays = 0, []
    for _ in range(8):
        delay, crashes = plan_restart(1, uptime=0.5, crashes=crashes, backoff=backoff)
        delays.append(delay)
    assert delays == [0, 1, 2, 4, 8, 16, 30, 30]  # a serving worker's first crash restarts at once
    assert backoff.delay(10_000) == 30  # no overflow however long the crash loop


def test_backoff_resets_after_thirty_seconds_up() -> None:
    backoff = Backoff()
    assert plan_restart(-9, uptime=29.9, crashes=5, backoff=backoff) == (16, 6)
    assert plan_restart(-9, uptime=30.0, crashes=5, backoff=backoff) == (0, 1)
    assert plan_restart(-9, uptime=0.1, crashes=0, backoff=backoff, ready=False) == (1, 1)  # never ready: back off


def test_a_worker_that_started_a_task_restarts_at_once_however_often_it_crashes() -> None:
    backoff = Backoff()
    # It said it started a task, so the crash was a task's: no backoff, the count starts over.
    assert plan_restart(-9, uptime=0.4, crashes=5, backoff=backoff, ran_task=True) == (0, 1)
    assert plan_restart(1, uptime=0.4, crashes=1, backoff=backoff, ran_task=True) == (0, 1)
    # One that never started a task still backs off, as does one that never became ready.
    assert plan_restart(1, uptime=0.4, crashes=1, backoff=backoff, ran_task=False) == (1, 2)
    assert plan_restart(1, uptime=0.4, crashes=1, backoff=backoff, ready=False, ran_task=True) == (2, 2)
    assert plan_restart(1, uptime=0.4, crashes=0, backoff=Backoff(immediate_first=False), ran_task=True) == (1, 1)


def test_exit_0_and_75_restart_at_once_unless_before_ready() -> None:
    backoff = Backoff()
    assert plan_restart(0, uptime=3, crashes=2, backoff=backoff) == (0, 2)
    assert plan_restart(75, uptime=3, crashes=2, backoff=backoff) == (0, 2)
    assert plan_restart(75, uptime=300, crashes=2, backoff=backoff) == (0, 0)
    # Exiting 0 before it was ever ready would otherwise restart in a tight loop: it counts as a crash.
    assert plan_restart(0, uptime=0.1, crashes=2, backoff=backoff, ready=False) == (4, 3)


def test_describe_exit() -> None:
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(75) == "exited with status 75 (EX_TEMPFAIL)"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(-signal.SIGSEGV) == "was killed by SIGSEGV"


def test_startup_error_report() -> None:
    assert StartupError("w-1 exited with status 1").report() == "w-1 exited with status 1"
    error = StartupError("w-1 exited with status 1", ["Traceback (most recent call last):", "", "ValueError: x", " "])
    assert error.report() == (
        "w-1 exited with status 1; its output:\n    Traceback (most recent call last):\n\n    ValueError: x"
    )
    error = StartupError("w-1 exited with status 1", ["last line"], omitted=2000)
    assert error.report() == "w-1 exited with status 1; its output (the last 1 lines):\n    last line"


# -- the Supervisor with stand-in workers --------------------------------------------------------------

# A stand-in worker: appends {"restarts", "pid", "at"} to LOG, then acts out PLAN[restarts] = [ready, up_for, status]
# or [ready, up_for, status, ran_task] (up_for None: run until SIGTERM, then exit 0; ran_task: says it started a task).
WORKER = r"""
import json, os, signal, sys, time
log, plan = sys.argv[1], json.loads(sys.argv[2])
restarts = int(os.environ.get("NEUTRINO_WORKER_RESTARTS", "-1"))
with open(log, "a") as f:
    f.write(json.dumps({"restarts": restarts, "pid": os.getpid(), "at": time.monotonic()}) + "\n")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
ready, up_for, status, *ran_task = plan[min(max(restarts, 0), len(plan) - 1)]
if ready:
    print("listening on http://127.0.0.1:1", flush=True)
if ran_task and ran_task[0]:
    print("some output of its own", flush=True)
    print("started its first task", flush=True)
    time.sleep(0.1)  # the relay reads the line before the exit is seen
if up_for is None:
    while True:
        time.sleep(0.05)
time.sleep(up_for)
sys.exit(status)
"""


class Running:
    """A Supervisor whose supervise() loop runs on a thread; stopped (and its children with it) on exit."""

    def __init__(self, backoff: Backoff) -> None:
        self.out = io.StringIO()
        self.supervisor = Supervisor(out=self.out, backoff=backoff)
        self.status: Optional[int] = None
        self._thread = threading.Thread(target=self._supervise, daemon=True)

    def _supervise(self) -> None:
        self.status = self.supervisor.supervise()

    def __enter__(self) -> "Running":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.supervisor.request_stop()
        self._thread.join(10)
        self.supervisor.stop_all(grace=5)

    def stop(self) -> None:
        self.supervisor.request_stop()
        self._thread.join(10)
        assert not self._thread.is_alive()

    @property
    def text(self) -> str:
        return self.out.getvalue()

    def wait_line(self, pattern: str, timeout: float = 10.0) -> str:
        regex = re.compile(pattern)
        found = wait_for(lambda: regex.search(self.text), timeout, f"{pattern!r} in:\n{self.text}")
        return found.group(0)  # type: ignore[union-attr]


def spawn_worker(supervisor: Supervisor, log: Path, plan: list, name: str = "w-1") -> Child:
    argv = [sys.executable, "-S", "-c", WORKER, str(log), json.dumps(plan)]
    return supervisor.spawn(name, argv, restart=lambda child: argv)


def starts(log: Path) -> List[Dict[str, float]]:
    """The stand-in's start records (a line still being written is left for the next look)."""
    if not log.exists():
        return []
    records = []
    for line in log.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records


def test_backoff_grows_then_resets_after_staying_up(tmp_path: Path) -> None:
    log = tmp_path / "starts.jsonl"
    crash = [True, 0, 1]
    # reset_after leaves the crashing starts ample time, even on a loaded machine, to count as quick crashes.
    plan = [crash, crash, crash, crash, [True, 2.1, 1], [True, None, 0]]
    with Running(Backoff(first=0.05, cap=0.2, reset_after=2.0)) as run:
        spawn_worker(run.supervisor, log, plan)
        wait_for(lambda: len(starts(log)) == 6, what="the 5th restart")
        run.wait_line(r"w-1 exited with status 1 after [\d.]+ s; restart 5 now")
    # The first crash of a serving worker restarts at once, then doubling, capped at 0.2; after 2.1 s up it starts over.
    expected = ["0", "0.05", "0.1", "0.2", "0"]
    delays = [("0" if d == "now" else d.removeprefix("in ").removesuffix(" s"))
              for d in re.findall(r"w-1 exited with status 1 after [\d.]+ s; restart \d (now|in [\d.]+ s)", run.text)]
    assert delays == expected, run.text
    records = starts(log)
    assert [r["restarts"] for r in records] == [0, 1, 2, 3, 4, 5]
    for before, after, delay in zip(records, records[1:], expected):
        assert after["at"] - before["at"] >= float(delay) * 0.9  # each restart waited its delay


def test_crashes_after_a_task_started_restart_at_once(tmp_path: Path) -> None:
    log = tmp_path / "starts.jsonl"
    # Four crashes in a row, each after the worker started a task (a poison task calling os._exit, say), then one
    # that crashes before starting any: only that one waits out the backoff.
    task_crash = [True, 0, 1, True]
    plan = [task_crash, task_crash, task_crash, task_crash, [True, 0, 1], [True, None, 0]]
    with Running(Backoff(first=0.5)) as run:
        spawn_worker(run.supervisor, log, plan)
        wait_for(lambda: len(starts(log)) == 6, what="the 5th restart")
    delays = re.findall(r"w-1 exited with status 1 after [\d.]+ s; restart \d (now|in [\d.]+ s)", run.text)
    assert delays == ["now", "now", "now", "now", "in 0.5 s"], run.text


def test_exit_0_and_75_restart_at_once(tmp_path: Path) -> None:
    log = tmp_path / "starts.jsonl"
    plan = [[True, 0, 75], [True, 0, 0], [True, None, 0]]
    with Running(Backoff(first=30)) as run:  # a backoff would outlast every wait below
        spawn_worker(run.supervisor, log, plan)
        wait_for(lambda: len(starts(log)) == 3, what="two immediate restarts")
        run.wait_line(r"w-1 exited with status 75 \(EX_TEMPFAIL\) after [\d.]+ s; restart 1 now")
        run.wait_line(r"w-1 exited with status 0 after [\d.]+ s; restart 2 now")
    assert [r["restarts"] for r in starts(log)] == [0, 1, 2]


def test_exit_0_before_ready_backs_off(tmp_path: Path) -> None:
    log = tmp_path / "starts.jsonl"
    with Running(Backoff(first=0.05)) as run:
        spawn_worker(run.supervisor, log, [[False, 0, 0], [True, None, 0]])
        run.wait_line(r"w-1 exited with status 0 after [\d.]+ s, before it was ready; restart 1 in 0\.05 s")
        wait_for(lambda: len(starts(log)) == 2, what="the restart")


def test_retired_worker_is_not_restarted(tmp_path: Path) -> None:
    log = tmp_path / "starts.jsonl"
    with Running(Backoff(first=0.05)) as run:
        child = spawn_worker(run.supervisor, log, [[True, None, 0]])
        wait_for(child.listening.is_set, what="ready")
        run.supervisor.retire(child)  # the autoscaler's drain: SIGTERM, exit 0
        wait_for(lambda: not run.supervisor.supervises(child), what="the drained worker to be forgotten")
        run.stop()
        assert run.status == 0
    assert "w-1 drained and exited with status 0" in run.text
    assert not RESTART_LINE.search(run.text)
    assert len(starts(log)) == 1


def test_worker_retired_while_waiting_to_restart_is_dropped(tmp_path: Path) -> None:
    log = tmp_path / "starts.jsonl"
    with Running(Backoff(first=30, immediate_first=False)) as run:
        child = spawn_worker(run.supervisor, log, [[True, 0, 1], [True, None, 0]])
        run.wait_line(r"w-1 exited with status 1 after [\d.]+ s; restart 1 in 30 s")
        run.supervisor.retire(child)
        assert not run.supervisor.supervises(child)
        run.wait_line("w-1 removed while it waited to be restarted")
    assert len(starts(log)) == 1


def test_stop_all_does_not_restart(tmp_path: Path) -> None:
    log = tmp_path / "starts.jsonl"
    run = Running(Backoff(first=0.05))
    with run:
        children = [spawn_worker(run.supervisor, log, [[True, None, 0]], name=f"w-{i}") for i in (1, 2)]
        for child in children:
            wait_for(child.listening.is_set, what="ready")
        run.stop()  # Ctrl-C: supervise() returns 0, then stop_all
        assert run.status == 0
    assert all(child.process.poll() is not None for child in children)
    assert len(starts(log)) == 2 and not RESTART_LINE.search(run.text)


def test_a_non_worker_child_exiting_stops_supervision(tmp_path: Path) -> None:
    with Running(Backoff(first=0.05)) as run:
        run.supervisor.spawn("gateway", [sys.executable, "-S", "-c", "import os; os.kill(os.getpid(), 9)"], ready=None)
        wait_for(lambda: run.status is not None, what="supervise() to return")
    assert run.status == 1
    assert "neutrino: gateway was killed unexpectedly by SIGKILL; stopping" in run.text


# A stand-in for neutrino-worker --mode nats: records argv and NEUTRINO_WORKER_RESTARTS, announces its consumer.
NATS_WORKER = """\
#!{python}
import json, os, signal, sys, time
args = sys.argv[1:]
record = {{"argv": args, "pid": os.getpid(), "restarts": os.environ.get("NEUTRINO_WORKER_RESTARTS")}}
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(record) + "\\n")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("consuming pool_" + args[args.index("--pool") + 1] + " from nats://fake", flush=True)
while True:
    time.sleep(0.05)
"""


def test_queue_worker_keeps_its_slot_while_it_waits_to_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = tmp_path / "neutrino-worker"
    binary.write_text(NATS_WORKER.format(python=sys.executable))
    binary.chmod(0o755)
    log = tmp_path / "starts.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    with Running(Backoff(first=30, immediate_first=False)) as run:
        workers = QueueWorkers(run.supervisor, str(binary), ["--app", "app.py"], {"async": 12.0})
        child = workers.start("async")
        wait_for(child.listening.is_set, what="consuming")
        [first] = starts(log)
        assert first["restarts"] == "0"
        argv = first["argv"]
        assert argv[argv.index("--worker-id") + 1] == "async-1" and argv[argv.index("--drain-grace") + 1] == "12"
        os.kill(child.process.pid, signal.SIGKILL)
        run.wait_line(r"async-1 was killed by SIGKILL after [\d.]+ s; restart 1 in 30 s")
        # Still the pool's worker: the autoscaler must not start another in its place ...
        [state] = workers.running("async")
        assert state.name == "async-1"
        # ... and may drain it: it is dropped, not restarted.
        workers.retire("async", state)
        assert workers.running("async") == []
    assert len(starts(log)) == 1


# -- `neutrino up` with fake binaries -------------------------------------------------------------------

SYNC_APP = """
from neutrino import App

app = App("supervised")

@app.task()
def echo(x: int) -> dict:
    return {"x": x}
"""

ASYNC_APP = """
from neutrino import App

app = App("supervised_async")

@app.task()
def echo(x: int) -> dict:
    return {"x": x}

@app.task(execution_mode="async")
def report(dataset: str) -> dict:
    return {}
"""

# A stand-in for neutrino-worker and neutrino-gateway: records argv, pid and NEUTRINO_WORKER_RESTARTS; listens on
# 127.0.0.1:--port (0: any) and announces it; as a NATS worker announces its consumer; with FAKE_IMPORT_ERROR set,
# a worker prints a traceback on stderr and exits 1 before it listens, as the real one does when the app fails to
# import.
FAKE_SERVER = """\
#!{python}
import json, os, signal, socket, sys, time
args = sys.argv[1:]
name = os.path.basename(sys.argv[0])
def flag(option):
    return args[args.index(option) + 1] if option in args else None
record = {{"argv": args, "pid": os.getpid(), "restarts": os.environ.get("NEUTRINO_WORKER_RESTARTS")}}
with open(os.path.join(os.environ["FAKE_LOG_DIR"], f"{{name}}-{{os.getpid()}}.json"), "w") as f:
    json.dump(record, f)
if name == "neutrino-worker" and os.environ.get("FAKE_IMPORT_ERROR"):
    sys.stderr.write(
        "error: cannot import the app " + flag("--app") + "\\n"
        "Traceback (most recent call last):\\n"
        '  File "' + flag("--app") + '", line 2, in <module>\\n'
        "    import missing_dependency\\n"
        "ModuleNotFoundError: No module named 'missing_dependency'\\n"
    )
    sys.exit(1)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if flag("--mode") == "nats":
    print(f"consuming pool_{{flag('--pool')}} from {{flag('--nats')}}", flush=True)
else:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", int(flag("--port") or 0)))
    server.listen(16)
    print(f"listening on http://127.0.0.1:{{server.getsockname()[1]}}", flush=True)
while True:
    time.sleep(0.05)
"""

FAKE_NATS = """\
#!{python}
import json, os, signal, socket, sys, time
args = sys.argv[1:]
with open(os.path.join(os.environ["FAKE_LOG_DIR"], f"nats-server-{{os.getpid()}}.json"), "w") as f:
    json.dump({{"argv": args, "pid": os.getpid()}}, f)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
conf = dict(line.split(": ", 1) for line in open(args[args.index("-c") + 1]) if line[:5] in ("host:", "port:"))
server.bind((conf["host"].strip(), int(conf["port"])))
server.listen(16)
while True:
    time.sleep(0.05)
"""


class Up:
    """``python -m neutrino up`` with the fake binaries; its output read on a thread, every wait bounded."""

    def __init__(self, tmp_path: Path, app_source: str, *extra: str, **env: str) -> None:
        self.bin, self.log = tmp_path / "bin", tmp_path / "log"
        self.bin.mkdir()
        self.log.mkdir()
        for name, script in (("neutrino-worker", FAKE_SERVER), ("neutrino-gateway", FAKE_SERVER),
                             ("nats-server", FAKE_NATS)):
            (self.bin / name).write_text(script.format(python=sys.executable))
            (self.bin / name).chmod(0o755)
        app = tmp_path / "supervised_app.py"
        app.write_text(app_source)
        environment = {**os.environ, "FAKE_LOG_DIR": str(self.log), "PYTHONUNBUFFERED": "1",
                       "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", **env}
        environment.pop(RESTARTS_ENV, None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "neutrino", "up", str(app), "--bin-dir", str(self.bin), "--state-dir",
             str(tmp_path / "state"), "--port", "0", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment, cwd=tmp_path,
        )
        self.lines: List[str] = []
        self._queue: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_line(self, pattern: str, timeout: float = 30.0, start: int = 0) -> str:
        """The first line from ``start`` on that matches ``pattern``, waiting for it when need be."""
        regex = re.compile(pattern)
        for line in self.lines[start:]:
            if regex.search(line):
                return line
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if regex.search(line):
                return line
        raise AssertionError(f"{pattern!r} not seen; output:\n" + "\n".join(self.lines))

    def finish(self, timeout: float = 30.0, interrupt: bool = True) -> int:
        """Wait for exit (after a SIGINT with ``interrupt``); returns the exit status, all output read."""
        if interrupt and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(5)
        while True:
            try:
                line = self._queue.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return self.process.returncode

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def started(self, binary: str) -> List[dict]:
        found = []
        for path in sorted(self.log.glob(f"{binary}-*.json")):
            try:
                found.append(json.loads(path.read_text()))
            except ValueError:  # being written
                continue
        return found

    def worker_starts(self, worker_id: str) -> List[dict]:
        return [r for r in self.started("neutrino-worker") if flag(r["argv"], "--worker-id") == worker_id]


def flag(argv: List[str], name: str) -> Optional[str]:
    return argv[argv.index(name) + 1] if name in argv else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_restarts_a_killed_http_worker_on_the_same_port(tmp_path: Path) -> None:
    up = Up(tmp_path, SYNC_APP, "--fast-workers", "2")
    try:
        up.wait_line("Press Ctrl-C to stop.")
        [first] = up.worker_starts("fast-1")
        assert first["restarts"] == "0" and flag(first["argv"], "--port") == "0"
        url = re.search(r"fast-1 \| listening on (http://127\.0\.0\.1:(\d+))", up.text)
        assert url, up.text
        [gateway] = up.started("neutrino-gateway")
        assert url.group(1) in flag(gateway["argv"], "--http-pool")

        os.kill(first["pid"], signal.SIGKILL)
        up.wait_line(r"neutrino: fast-1 was killed by SIGKILL after [\d.]+ s; restart 1 now$")  # a serving worker's first crash
        mark = len(up.lines)
        restarted = wait_for(lambda: len(up.worker_starts("fast-1")) == 2 and up.worker_starts("fast-1")[1],
                             what="fast-1 to start again")
        assert restarted["restarts"] == "1"  # type: ignore[index]
        assert flag(restarted["argv"], "--port") == url.group(2)  # type: ignore[index]
        assert flag(restarted["argv"], "--pool") == "fast"  # type: ignore[index]
        up.wait_line(rf"fast-1 \| listening on {re.escape(url.group(1))}$", start=mark)  # the URL the gateway has
        assert [r["restarts"] for r in up.worker_starts("fast-2")] == ["0"]  # the others run on
        assert up.started("neutrino-gateway") == [gateway] and alive(gateway["pid"])
    finally:
        status = up.finish()
    assert status == 0, up.text
    assert "stopping" in up.text and "exited unexpectedly" not in up.text
    everyone = up.started("neutrino-worker") + up.started("neutrino-gateway")
    assert not any(alive(record["pid"]) for record in everyone)


def test_up_stops_with_the_traceback_when_a_worker_cannot_import_the_app(tmp_path: Path) -> None:
    up = Up(tmp_path, ASYNC_APP, "--fast-workers", "2", FAKE_IMPORT_ERROR="1")
    status = up.finish(interrupt=False)
    assert status == 1, up.text
    text = up.text
    # The worker's own lines, as they came ...
    assert re.search(r"fast-1 \| ModuleNotFoundError: No module named 'missing_dependency'", text), text
    # ... and once more below everything, with the reason: start-up stops, nothing is restarted.
    reason = re.search(r"neutrino: error: (\S+) exited with status 1 before it was (listening|consuming its queue) "
                       r"\(a worker that fails to start is not restarted\); its output:\n((?:    .*\n?)+)", text)
    assert reason, text
    block = reason.group(3)
    assert "error: cannot import the app" in block and "Traceback (most recent call last):" in block
    assert "    import missing_dependency" in block and "ModuleNotFoundError" in block
    assert text.rstrip().endswith("No module named 'missing_dependency'")  # the last thing on screen
    assert not RESTART_LINE.search(text)
    workers = up.started("neutrino-worker")
    ids = [flag(r["argv"], "--worker-id") for r in workers]
    assert len(ids) == len(set(ids)) and set(ids) <= {"fast-1", "fast-2", "async-1"}  # each slot started once
    assert up.started("neutrino-gateway") == []
    assert not any(alive(r["pid"]) for r in workers + up.started("nats-server"))


def test_up_stops_when_nats_server_dies(tmp_path: Path) -> None:
    up = Up(tmp_path, ASYNC_APP, "--fast-workers", "1", "--no-autoscale")
    try:
        up.wait_line("Press Ctrl-C to stop.")
        [nats] = up.started("nats-server")
        [queue_worker] = up.worker_starts("async-1")
        assert queue_worker["restarts"] == "0"
        os.kill(nats["pid"], signal.SIGKILL)
        up.wait_line(r"neutrino: nats was killed unexpectedly by SIGKILL; stopping")
    finally:
        status = up.finish()
    assert status == 1, up.text
    everyone = up.started("neutrino-worker") + up.started("neutrino-gateway")
    assert not any(alive(record["pid"]) for record in everyone)
    assert not RESTART_LINE.search(up.text)



def test_env_reaches_every_child(tmp_path: Path) -> None:
    """Supervisor(env=...) sets its variables in each child's environment (the workers' VIRTUAL_ENV), a restartable
    worker's (with NEUTRINO_WORKER_RESTARTS beside them) and a plain child's."""
    out = io.StringIO()
    supervisor = Supervisor(out=out, env={"VIRTUAL_ENV": "/some/venv"})
    log = tmp_path / "env.jsonl"
    code = (
        "import json, os, sys\n"
        "open(sys.argv[1], 'a').write(json.dumps([os.environ.get('VIRTUAL_ENV'), "
        "os.environ.get('NEUTRINO_WORKER_RESTARTS')]) + '\\n')\n"
    )
    argv = [sys.executable, "-S", "-c", code, str(log)]
    supervisor.spawn("once", argv)
    supervisor.spawn("again", argv, restart=lambda child: argv)
    try:
        wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 2, 10, "two children to write")
    finally:
        supervisor.stop_all(grace=5)
    seen = {tuple(json.loads(line)) for line in log.read_text().splitlines()}
    assert seen == {("/some/venv", "0"), ("/some/venv", None)}, seen


def test_worker_virtualenv_is_the_venv_this_python_runs_from(monkeypatch) -> None:
    from neutrino.local import stack

    monkeypatch.setattr(sys, "prefix", "/opt/venv")
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    assert stack.worker_virtualenv() == "/opt/venv"
    monkeypatch.setattr(sys, "base_prefix", "/opt/venv")
    assert stack.worker_virtualenv() is None

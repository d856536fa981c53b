"""The local autoscaler of `neutrino up`, end to end: the real CLI as a subprocess (nats-server, gateway, NATS
workers it starts and drains), `--scale async=1:3:2:4 --scale gpu=0:1:1:4`.

A burst of slow async tasks grows the async pool from 1 to its max of 3 and, once the burst is done and the 4 s
window passed, back to 1; a gpu task brings the gpu pool from 0 to 1, and it goes back to 0. Scaling loses and
repeats nothing: every task completes in its first attempt with one `running` event, and runs exactly once by the
app's own journal."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import (BIN_DIR, NATS_SERVER_BIN, PYTHON_SDK, QUEUE_APP, REPO_ROOT, TaskLog, count_events,
                      http_request, pools_by_name, post_task, read_journal, wait_for, _server_env)

DECISION_RE = re.compile(r"autoscaler: (\w+) (\d+) → (\d+) \((.*)\)")
BURST = 8  # journal tasks of SECONDS each; backlog 8 / target 2 → 4, clamped to max 3
SECONDS = 4.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Up:
    """`python -m neutrino up ...` with its output collected line by line, each with its arrival time."""

    def __init__(self, argv: list[str], log_path: Path):
        env = _server_env({"PYTHONPATH": str(PYTHON_SDK), "PYTHONUNBUFFERED": "1"})
        self.log = open(log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen([sys.executable, "-m", "neutrino", "up", *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env,
                                     cwd=str(REPO_ROOT))
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
            self.log.write(line)
            self.log.flush()

    @property
    def text(self) -> str:
        with self._lock:
            return "\n".join(line for _, line in self.lines)

    def decisions(self, pool: str) -> list[tuple[float, int, int, str]]:
        with self._lock:
            lines = list(self.lines)
        out = []
        for at, line in lines:
            m = DECISION_RE.search(line)
            if m and m.group(1) == pool:
                out.append((at, int(m.group(2)), int(m.group(3)), line.strip()))
        return out

    def wait_line(self, pattern: str, timeout: float) -> str:
        regex = re.compile(pattern)

        def seen():
            m = regex.search(self.text)
            if m:
                return m.group(0)
            assert self.proc.poll() is None, f"neutrino up exited with {self.proc.returncode}:\n{self.text[-5000:]}"
            return None

        return wait_for(seen, timeout=timeout, interval=0.1,
                        message=lambda: f"{pattern!r} in neutrino up's output:\n{self.text[-5000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(30)
        self._reader.join(10)
        self.log.close()
        return code


@pytest.fixture
def up(tmp_path):
    if not (os.path.isfile(NATS_SERVER_BIN) and os.access(NATS_SERVER_BIN, os.X_OK)):
        pytest.skip("nats-server is not installed (Debian package nats-server)")
    started: list[Up] = []

    def start(*extra: str, app: Path = QUEUE_APP) -> Up:
        argv = [str(app), "--bin-dir", str(BIN_DIR), "--state-dir", str(tmp_path / "state"),
                "--host", "127.0.0.1", "--port", str(_free_port()), "--nats-port", str(_free_port()), *extra]
        u = Up(argv, tmp_path / "neutrino-up.log")
        started.append(u)
        return u

    yield start
    for u in started:
        if u.proc.poll() is None:
            u.stop()


def test_async_scales_out_under_a_burst_and_back_in_gpu_scales_from_zero_and_back(up, tmp_path):
    u = up("--scale", "async=1:3:2:4", "--scale", "gpu=0:1:1:4", "--concurrency", "1",
           "--heartbeat-interval", "0.5")
    u.wait_line(r"Press Ctrl-C to stop\.", timeout=240)
    gateway = re.search(r"gateway\s+(http://127\.0\.0\.1:\d+)", u.text).group(1)
    assert f"dashboard   {gateway}/" in u.text and f"{gateway}/pools" in u.text and f"{gateway}/metrics" in u.text
    assert "pool gpu    0 NATS workers (gpu)" in u.text and "pool async  1 NATS worker (async)" in u.text

    wait_for(lambda: pools_by_name(gateway)["async"]["workers_alive"] == 1, timeout=60,
             message=lambda: f"the first async worker in /pools: {pools_by_name(gateway)['async']}")
    pools = pools_by_name(gateway)
    assert pools["gpu"]["workers_alive"] == 0 and pools["gpu"]["scaling"]["desired"] == 0, pools["gpu"]
    assert (pools["async"]["scaling"]["min"], pools["async"]["scaling"]["max"]) == (1, 3), pools["async"]

    journal = tmp_path / "journal.jsonl"
    t0 = time.monotonic()
    ids = []
    for i in range(BURST):
        resp = post_task(gateway, "journal", {"path": str(journal), "seconds": SECONDS, "tag": f"b{i}"})
        assert resp.status == 202, resp
        ids.append(resp.json()["task_id"])
    resp = post_task(gateway, "gpu_journal", {"path": str(journal), "seconds": 2.0})
    assert resp.status == 202, resp
    gpu_id = resp.json()["task_id"]
    ids.append(gpu_id)

    # Out: async reaches its max of 3 (in one step or more), gpu 0 → 1; the gateway hears the new workers.
    u.wait_line(r"autoscaler: async \d → 3 ", timeout=120)
    u.wait_line(r"autoscaler: gpu 0 → 1 ", timeout=120)
    wait_for(lambda: pools_by_name(gateway)["async"]["workers_alive"] == 3, timeout=120,
             message=lambda: f"3 async workers in /pools: {pools_by_name(gateway)['async']}")

    for task_id in ids:
        resp = http_request("GET", f"{gateway}/tasks/{task_id}?wait=60", timeout=90)
        deadline = time.monotonic() + 240
        while resp.json().get("status") not in ("completed", "failed", "cancelled", "timed_out"):
            assert time.monotonic() < deadline, resp
            resp = http_request("GET", f"{gateway}/tasks/{task_id}?wait=60", timeout=90)
        assert resp.json()["status"] == "completed", resp
    t_done = time.monotonic()

    # In: after the window, async back to 1 and gpu to 0; the drained workers exit 0.
    wait_for(lambda: (d := u.decisions("async")) and d[-1][2] == 1 and u.decisions("gpu")[-1][2] == 0,
             timeout=120, interval=0.2,
             message=lambda: f"async back to 1 and gpu to 0:\n{u.text[-5000:]}")
    wait_for(lambda: len(re.findall(r"autoscaler: (async-\d+|gpu-\d+) drained and exited with status 0", u.text)) >= 3,
             timeout=240, message=lambda: f"3 drained workers to exit 0:\n{u.text[-5000:]}")
    wait_for(lambda: (p := pools_by_name(gateway))["async"]["workers_alive"] == 1 and p["gpu"]["workers_alive"] == 0,
             timeout=60, message=lambda: f"/pools to show 1 async and 0 gpu workers: {pools_by_name(gateway)}")
    assert "exited unexpectedly" not in u.text

    # Nothing lost, nothing run twice.
    log = TaskLog(tmp_path / "state" / "tasks.db")
    for task_id in ids:
        row = log.wait_terminal(task_id, final_event="completed")
        assert row["status"] == "completed" and row["attempts"] == 1, row
        assert count_events(log, task_id, "running") == 1, log.events(task_id)
        assert count_events(log, task_id, "retrying") == 0, log.events(task_id)
    entries = read_journal(journal)
    for task_id in ids:
        assert [e["event"] for e in entries if e["task_id"] == task_id] == ["start", "end"], (task_id, entries)
    assert {e["attempt"] for e in entries} == {1}
    assert len({e["pid"] for e in entries if e["pool"] == "async"}) >= 2  # the burst really spread out

    # The recorded sequence (shown with -s, and on failure): decision lines with seconds since the burst.
    sequence = [(at - t0, line) for pool in ("async", "gpu") for at, _, _, line in u.decisions(pool)]
    drained = [(at - t0, line) for at, line in u.lines if "drained and exited" in line]
    print(f"\nburst of {BURST} × {SECONDS:g} s submitted at t=0; all tasks completed at t={t_done - t0:.1f} s")
    for at, line in sorted(sequence + drained):
        print(f"  t={at:6.1f} s  {line}")

    assert u.stop() == 0, u.text[-5000:]

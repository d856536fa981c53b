#!/usr/bin/env python3
"""Fault-containment figures (issue 11), as users get them: `neutrino up` with its default flags, the poison app
from tests/e2e/apps/poison_app.py. Prints a Markdown table; asserts nothing (timings are noisy here).

1. Capacity back after stuck tasks: 8 calls that swallow their TimeoutError and keep sleeping take every Python
   thread of the 2 fast workers x 4 threads; how long until 8 concurrent calls are served again.
2. Healthy throughput during a poison storm: closed-loop `echo` from 16 client threads for BENCH_FAULT_SECONDS,
   without poison, then with 1 poison call per 50 (rotating: raise, swallowed timeout, os._exit); the ratio.
3. A worker SIGKILLed: seconds until `/pools` shows it restarted and it serves again.

Environment: BENCH_NEUTRINO_BIN_DIR (default .build/release), BENCH_FAULT_SECONDS (default 10).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN_DIR = Path(os.environ.get("BENCH_NEUTRINO_BIN_DIR", REPO / ".build" / "release"))
APP = REPO / "tests" / "e2e" / "apps" / "poison_app.py"
SECONDS = float(os.environ.get("BENCH_FAULT_SECONDS", "10"))
PY = os.environ.get("PYTHON", sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, task: str, args: dict, timeout: float = 30.0) -> tuple[int, dict]:
    body = json.dumps({"args": args}).encode()
    req = urllib.request.Request(f"{url}/api/{task}", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError:
        return 0, {}


def get(url: str, path: str) -> dict:
    with urllib.request.urlopen(f"{url}{path}", timeout=10) as r:
        return json.loads(r.read())


class Stack:
    def __init__(self, state: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        state.mkdir(parents=True, exist_ok=True)
        self.log = open(state / "up.log", "w")
        self.proc = subprocess.Popen(
            [PY, "-m", "neutrino.cli", "up", str(APP), "--port", str(self.port), "--state-dir", str(state),
             "--bin-dir", str(BIN_DIR), "--fast-workers", "2", "--concurrency", "4"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "python")})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"neutrino up exited: see {state / 'up.log'}")
            try:
                if post(self.url, "echo", {"x": 1}, timeout=2)[0] == 200:
                    return
            except Exception:
                pass
            time.sleep(0.2)
        raise SystemExit("neutrino up did not serve within 120 s")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def capacity_back(stack: Stack) -> float:
    threads = [threading.Thread(target=post, args=(stack.url, "stubborn_sleep", {"seconds": 120}, 60)) for _ in range(8)]
    start = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(0.2)
    deadline = start + 60
    while time.monotonic() < deadline:
        results: list[int] = []
        batch = [threading.Thread(target=lambda: results.append(post(stack.url, "slow", {"seconds": 0.05}, 2)[0]))
                 for _ in range(8)]
        for t in batch:
            t.start()
        for t in batch:
            t.join()
        if results.count(200) == 8:
            elapsed = time.monotonic() - start
            for t in threads:
                t.join(5)
            return elapsed
        time.sleep(0.1)
    return float("nan")


def throughput(stack: Stack, poison_rate: float, poisons: list[tuple[str, dict]]) -> tuple[float, int]:
    """Closed-loop `echo` from 16 client threads for SECONDS; meanwhile `poison_rate` poison calls a second are fired
    from their own threads (their answers are not counted). Returns healthy req/s and failed healthy calls."""
    stop = time.monotonic() + SECONDS
    ok = [0]
    failed = [0]
    lock = threading.Lock()

    def client() -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            status, _ = post(stack.url, "echo", {"x": n}, 10)
            with lock:
                if status == 200:
                    ok[0] += 1
                else:
                    failed[0] += 1

    def poisoner() -> None:
        i = 0
        while poison_rate and time.monotonic() < stop:
            task, args = poisons[i % len(poisons)]
            threading.Thread(target=post, args=(stack.url, task, args, 10), daemon=True).start()
            i += 1
            time.sleep(1 / poison_rate)

    threads = [threading.Thread(target=client) for _ in range(16)] + [threading.Thread(target=poisoner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(7)  # let stuck poison calls end before the next measure
    return ok[0] / SECONDS, failed[0]


def restart_time(stack: Stack) -> float:
    """SIGKILL worker `fast-1`; seconds until a call is answered by it again (its slot restarted by `neutrino up`)."""
    out = subprocess.run(["pgrep", "-f", "--", "--worker-id fast-1"], capture_output=True, text=True).stdout.split()
    if not out:
        return float("nan")
    start = time.monotonic()
    os.kill(int(out[0]), signal.SIGKILL)
    while time.monotonic() - start < 60:
        status, body = post(stack.url, "echo", {"x": 1}, timeout=5)
        if status == 200 and body.get("worker_id") == "fast-1" and time.monotonic() - start > 0.05:
            return time.monotonic() - start
        time.sleep(0.02)
    return float("nan")


def main() -> None:
    if not (BIN_DIR / "neutrino-worker").exists():
        raise SystemExit(f"no binaries in {BIN_DIR}: build first")
    rows = []
    with tempfile.TemporaryDirectory(prefix="neutrino-faults-") as d:
        stack = Stack(Path(d) / "a")
        try:
            rows.append(("SIGKILLed worker serving again (restarted by `neutrino up`)", f"{restart_time(stack):.1f} s"))
            back = capacity_back(stack)
            rows.append(("capacity back after 8 stuck tasks (timeout 1 s, default hard grace 5 s)", f"{back:.1f} s"))
            base, base_failed = throughput(stack, 0, [])
            rows.append(("healthy echo throughput, no poison (16 clients)", f"{base:.0f} req/s ({base_failed} failed)"))
            rate = max(1.0, base / 50)  # one poison for every 50 healthy calls
            storm, storm_failed = throughput(stack, rate, [("boom_task", {}), ("stubborn_sleep", {"seconds": 3})])
            rows.append((f"... during a poison storm of {rate:.0f}/s = 1 per 50 (raises; swallows its timeout and sleeps on)",
                         f"{storm:.0f} req/s ({storm_failed} failed), {storm / base:.2f}x" if base else "n/a"))
            crash, crash_failed = throughput(stack, rate / 10, [("die", {})])
            rows.append((f"... with {rate / 10:.1f} `os._exit` calls/s = 1 per 500 (its worker dies; `neutrino up` restarts it)",
                         f"{crash:.0f} req/s ({crash_failed} failed), {crash / base:.2f}x" if base else "n/a"))
        finally:
            stack.stop()
    print("\n### Fault containment (`neutrino up`, 2 fast workers x 4 threads)\n")
    print("| measure | value |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
